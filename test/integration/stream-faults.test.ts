import { beforeAll, describe, expect, it } from 'vitest'
import { type GeneratedEvent, truthOf } from '../../bench/workload.js'
import type { Site } from '../../core/ports/site-store.js'
import { envOf } from '../helpers/context.js'
import { type RoleProcess, seeded, spawnRole, waitForLog } from '../helpers/processes.js'
import { compareWithTruth, waitCaughtUp } from '../helpers/stream.js'
import { feedSlowly, recentWorkload, type StreamSetup, streamSetups } from '../helpers/stream-setup.js'

const STREAM_ENV = {
  TALLY_FLUSH_INTERVAL_MS: '150',
  TALLY_GRACE_MS: '300000',
  TALLY_STREAM_SESSION_TIMEOUT_MS: '6000',
  TALLY_STREAM_CONCURRENCY: '3',
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

type Setup = StreamSetup
const setUp = streamSetups(STREAM_ENV, 4)
const workloadFor = (sites: Site[], seed: number) => recentWorkload(sites, seed, 6_000)

async function expectExact(s: Setup, events: GeneratedEvent[]): Promise<void> {
  const ids = s.sites.map((x) => x.siteId)
  const truth = truthOf(
    events.filter((e) => !e.isLate),
    ids,
  )
  const now = Date.now()
  const mismatches = await compareWithTruth(
    s.cassandra,
    s.config.stream.hllPrecision,
    truth,
    ids,
    now - 2 * 86_400_000,
    now + 86_400_000,
    events.filter((e) => !e.isLate),
  )
  expect(mismatches).toEqual([])
}

async function stop(p: RoleProcess, signal: NodeJS.Signals): Promise<void> {
  p.child.kill(signal)
  const { code, signal: got } = await p.exited
  if (signal === 'SIGTERM') expect({ code, logFile: p.logFile }).toEqual({ code: 0, logFile: p.logFile })
  else expect(got).toBe('SIGKILL')
}

describe('stream workers under faults (real Kafka, Cassandra, processes)', () => {
  let a: Setup
  let b: Setup
  beforeAll(async () => {
    a = await setUp()
    b = await setUp()
  })

  it('keeps every number exact while a worker is SIGKILLed at random points and restarted', async () => {
    const seed = Date.now() % 100_000
    const random = seeded(seed)
    const events = workloadFor(a.sites, 7)
    const env = { ...envOf(a.config), ...STREAM_ENV }
    let worker = spawnRole('stream', env, 'stream-kill')
    const feeding = feedSlowly(a, events, 40, 600)
    let kills = 0
    while (kills < 4) {
      // Kill only once it owns partitions and is working, at a random point of its work.
      await waitForLog(worker, /partition restored/)
      await sleep(200 + random() * 1500)
      await stop(worker, 'SIGKILL')
      kills++
      worker = spawnRole('stream', env, 'stream-kill')
    }
    await feeding
    await waitCaughtUp(a.config, a.cassandra, 120_000)
    await stop(worker, 'SIGTERM')
    expect(kills, `chaos seed ${seed}`).toBe(4)
    // The kills interrupted real work: partitions changed owner (new epochs) several times.
    const epochs = await a.cassandra.execute(
      'SELECT epoch FROM stream_epochs WHERE consumer_group = ? AND topic = ? AND partition IN (0, 1, 2, 3)',
      [a.config.stream.group, a.config.kafka.topicRaw],
      { prepare: true },
    )
    expect(Math.max(...epochs.rows.map((r) => Number(r.get('epoch'))))).toBeGreaterThanOrEqual(4)
    await expectExact(a, events)
  })

  it('keeps every number exact while workers go 1 → 2 → 1 (rebalances)', async () => {
    const events = workloadFor(b.sites, 11)
    const env = { ...envOf(b.config), ...STREAM_ENV }
    const first = spawnRole('stream', env, 'stream-rebalance-1')
    const feeding = feedSlowly(b, events, 30, 400)
    await waitForLog(first, /partition restored/)
    const second = spawnRole('stream', env, 'stream-rebalance-2')
    // 1 → 2: the second worker takes some partitions over from the first.
    await waitForLog(second, /partition restored/)
    await sleep(1000)
    await stop(first, 'SIGTERM')
    await feeding
    await waitCaughtUp(b.config, b.cassandra, 120_000)
    await stop(second, 'SIGTERM')
    await expectExact(b, events)
  })
})
