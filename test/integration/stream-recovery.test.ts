import { readFile } from 'node:fs/promises'
import { beforeAll, describe, expect, it } from 'vitest'
import { type GeneratedEvent, truthOf } from '../../bench/workload.js'
import { createLogger } from '../../core/log.js'
import type { Site } from '../../core/ports/site-store.js'
import { envOf } from '../helpers/context.js'
import { type RoleProcess, spawnRole, waitForLog } from '../helpers/processes.js'
import { compareWithTruth, feed, ingestApp, waitCaughtUp } from '../helpers/stream.js'
import { recentWorkload, type StreamSetup, streamSetups } from '../helpers/stream-setup.js'

/** Small on purpose: the bounds below are stated in it. */
const SESSION_TIMEOUT_MS = 8000
const PARTITIONS = 4
const STREAM_ENV = {
  TALLY_FLUSH_INTERVAL_MS: '150',
  TALLY_GRACE_MS: '300000',
  TALLY_STREAM_SESSION_TIMEOUT_MS: String(SESSION_TIMEOUT_MS),
  TALLY_STREAM_CONCURRENCY: '4',
}

const logger = createLogger('silent')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

type Setup = StreamSetup
const setUp = streamSetups(STREAM_ENV, PARTITIONS)
const workloadFor = (sites: Site[], seed: number) => recentWorkload(sites, seed, 30_000)

/**
 * A steady load: small chunks with pauses until stopped. Resolves with the events fed, the truth
 * the numbers are compared with.
 */
function steadyFeed(
  s: Setup,
  events: GeneratedEvent[],
): { stop(): Promise<GeneratedEvent[]>; halt(): Promise<void> } {
  let stopping = false
  const done = (async () => {
    const app = await ingestApp(s.config, s.producer, s.sites, logger)
    const keyOf = (id: string) => s.sites.find((x) => x.siteId === id)!.writeKey
    let fed = 0
    try {
      while (!stopping && fed < events.length) {
        const chunk = events.slice(fed, fed + 60)
        await feed(app, chunk, keyOf)
        fed += chunk.length
        await sleep(200)
      }
    } finally {
      await app.close()
    }
    if (!stopping) throw new Error('the workload ran out before the test stopped feeding')
    return events.slice(0, fed)
  })()
  // Held until stop() or halt(): a feed failing after the test failed must not go unhandled.
  done.catch(() => undefined)
  return {
    stop: () => {
      stopping = true
      return done
    },
    halt: async () => {
      stopping = true
      await Promise.allSettled([done])
    },
  }
}

/** Every partition's checkpoint (next offset), sampled every 100 ms, with the time it was read. */
function checkpointSampler(s: Setup) {
  const samples: Array<{ atMs: number; offsets: Map<number, number> }> = []
  let running = true
  const loop = (async () => {
    while (running) {
      const rs = await s.cassandra.execute(
        'SELECT partition, next_offset FROM stream_group_checkpoints WHERE consumer_group = ? AND topic = ?',
        [s.config.stream.group, s.config.kafka.topicRaw],
        { prepare: true },
      )
      samples.push({
        atMs: Date.now(),
        offsets: new Map(rs.rows.map((r) => [Number(r.get('partition')), Number(r.get('next_offset'))])),
      })
      await sleep(100)
    }
  })()
  return {
    samples,
    /** The first time at or after `fromMs` when every partition is past its offset at `fromMs`. */
    allAdvancedAfter(fromMs: number): number | undefined {
      const base = samples.find((x) => x.atMs >= fromMs)
      if (!base) return undefined
      for (const x of samples) {
        if (x.atMs <= base.atMs) continue
        let all = true
        for (let p = 0; p < PARTITIONS; p++)
          if ((x.offsets.get(p) ?? 0) <= (base.offsets.get(p) ?? 0)) all = false
        if (all) return x.atMs
      }
      return undefined
    },
    /** The longest time any partition's checkpoint stood still between `fromMs` and `toMs`. */
    longestStallMs(fromMs: number, toMs: number): { partition: number; ms: number } {
      const inRange = samples.filter((x) => x.atMs >= fromMs && x.atMs <= toMs)
      let worst = { partition: -1, ms: 0 }
      for (let p = 0; p < PARTITIONS; p++) {
        let since = inRange[0]?.atMs ?? fromMs
        let last = inRange[0]?.offsets.get(p)
        for (const x of inRange) {
          const v = x.offsets.get(p)
          if (v !== last) {
            last = v
            since = x.atMs
          }
          if (x.atMs - since > worst.ms) worst = { partition: p, ms: x.atMs - since }
        }
      }
      return worst
    },
    stop: async () => {
      running = false
      await loop
    },
  }
}

async function expectExact(s: Setup, events: GeneratedEvent[]): Promise<void> {
  const ids = s.sites.map((x) => x.siteId)
  const counted = events.filter((e) => !e.isLate)
  const now = Date.now()
  const mismatches = await compareWithTruth(
    s.cassandra,
    s.config.stream.hllPrecision,
    truthOf(counted, ids),
    ids,
    now - 2 * 86_400_000,
    now + 86_400_000,
    counted,
  )
  expect(mismatches).toEqual([])
}

async function sigterm(p: RoleProcess): Promise<void> {
  p.child.kill('SIGTERM')
  const { code } = await p.exited
  expect({ code, logFile: p.logFile }).toEqual({ code: 0, logFile: p.logFile })
}

/** Waits until every partition's checkpoint advances: the worker owns them all and is counting. */
async function waitCounting(
  sampler: ReturnType<typeof checkpointSampler>,
  timeoutMs = 60_000,
): Promise<void> {
  const from = Date.now()
  while (sampler.allAdvancedAfter(from) === undefined) {
    if (Date.now() - from > timeoutMs) throw new Error('the worker never counted on every partition')
    await sleep(100)
  }
}

/** After a failed assertion: stop the load, the sampler and any worker still running. */
async function tidy(
  load: { halt(): Promise<void> },
  sampler: { stop(): Promise<void> },
  processes: RoleProcess[],
): Promise<void> {
  await load.halt()
  await sampler.stop()
  for (const p of processes) {
    if (p.child.exitCode === null && p.child.signalCode === null) {
      p.child.kill('SIGKILL')
      await p.exited
    }
  }
}

describe('stream worker recovery (real Kafka, Cassandra, processes)', () => {
  let a: Setup
  let b: Setup
  beforeAll(async () => {
    a = await setUp()
    b = await setUp()
  })

  it('resumes counting within the session timeout (plus a rebalance) after a SIGKILL under load', async () => {
    const env = { ...envOf(a.config), ...STREAM_ENV }
    const sampler = checkpointSampler(a)
    const load = steadyFeed(a, workloadFor(a.sites, 21))
    const first = spawnRole('stream', env, 'stream-recovery-kill')
    const processes = [first]
    try {
      await waitForLog(first, /partition restored/)
      await waitCounting(sampler)
      const killedAtMs = Date.now()
      first.child.kill('SIGKILL')
      expect((await first.exited).signal).toBe('SIGKILL')
      const second = spawnRole('stream', env, 'stream-recovery-restart')
      processes.push(second)
      // A write sent just before the kill may still land: the baseline is read a second later.
      let resumedAtMs: number | undefined
      while (resumedAtMs === undefined && Date.now() - killedAtMs < SESSION_TIMEOUT_MS + 20_000) {
        await sleep(100)
        resumedAtMs = sampler.allAdvancedAfter(killedAtMs + 1000)
      }
      const fed = await load.stop()
      await waitCaughtUp(a.config, a.cassandra, 120_000)
      await sampler.stop()
      await sigterm(second)
      expect(resumedAtMs, 'counting never resumed on every partition').toBeDefined()
      const recoveryMs = resumedAtMs! - killedAtMs
      // The dead member holds its partitions until its session times out; then one rebalance, the
      // restore of the partitions and a flush. 5 s covers those on a loaded 2-core machine.
      expect(recoveryMs, `recovery took ${recoveryMs} ms`).toBeLessThanOrEqual(SESSION_TIMEOUT_MS + 5000)
      await expectExact(a, fed)
    } finally {
      await tidy(load, sampler, processes)
    }
  })

  it('a second worker whose metrics port is taken exits with a clear error and stalls nobody', async () => {
    const env = { ...envOf(b.config), ...STREAM_ENV }
    const sampler = checkpointSampler(b)
    const load = steadyFeed(b, workloadFor(b.sites, 22))
    const running = spawnRole('stream', env, 'stream-recovery-running')
    const processes = [running]
    try {
      await waitForLog(running, /stream worker running/)
      const url = /"url":"(http:\/\/[^"]+)"/.exec(await readFile(running.logFile, 'utf8'))?.[1]
      expect(url).toBeDefined()
      const port = new URL(url!).port
      await waitCounting(sampler)
      const startedAtMs = Date.now()
      const second = spawnRole('stream', { ...env, PORT: port }, 'stream-recovery-port-taken')
      processes.push(second)
      const { code } = await second.exited
      const exitedAtMs = Date.now()
      // Had it joined and died, its partitions would stand still until its session timed out.
      await sleep(SESSION_TIMEOUT_MS + 2000)
      const fed = await load.stop()
      await waitCaughtUp(b.config, b.cassandra, 120_000)
      await sampler.stop()
      const stall = sampler.longestStallMs(startedAtMs, exitedAtMs + SESSION_TIMEOUT_MS + 2000)
      expect(stall.ms, `partition ${stall.partition} stood still ${stall.ms} ms`).toBeLessThan(
        SESSION_TIMEOUT_MS / 2,
      )
      const log = await readFile(second.logFile, 'utf8')
      expect({ code, error: /TALLY_ERR_PORT_IN_USE/.test(log), port: log.includes(`:${port} `) }).toEqual({
        code: 1,
        error: true,
        port: true,
      })
      expect(running.child.exitCode).toBeNull()
      await sigterm(running)
      await expectExact(b, fed)
    } finally {
      await tidy(load, sampler, processes)
    }
  })
})
