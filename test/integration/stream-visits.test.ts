import { beforeAll, describe, expect, it } from 'vitest'
import { type GeneratedEvent, truthOf } from '../../bench/workload.js'
import { CassandraAggregateReader } from '../../core/cassandra/aggregate-reader.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { createLogger } from '../../core/log.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import { CheckpointFreshness } from '../../query/freshness.js'
import { envOf } from '../helpers/context.js'
import { type RoleProcess, seeded, spawnRole, waitForLog } from '../helpers/processes.js'
import { compareWithTruth, waitCaughtUp } from '../helpers/stream.js'
import { feedSlowly, type StreamSetup, streamSetups } from '../helpers/stream-setup.js'
import { type VisitCounts, visitKey, visitTruthOf } from '../helpers/visit-truth.js'
import { compareVisits, visitWorkload } from '../helpers/visit-workload.js'

/**
 * Visits through the stream on real Kafka and Cassandra, with spawned workers (`bin/tally.js
 * stream`, run `npm run build` first): the workload of test/helpers/visit-workload.ts gives the
 * truth computed apart (test/helpers/visit-truth.ts) while a worker is SIGKILLed at random points
 * and restarted, and while workers go 1 → 2 → 1; read through the AggregateReader (every window and
 * breakdown) and through the query API.
 */

const GRACE_MS = 3 * 3_600_000
const STREAM_ENV = {
  TALLY_FLUSH_INTERVAL_MS: '150',
  TALLY_GRACE_MS: String(GRACE_MS),
  TALLY_STREAM_SESSION_TIMEOUT_MS: '6000',
  TALLY_STREAM_CONCURRENCY: '3',
}
const DAY = 86_400_000

const logger = createLogger('silent')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

type Setup = StreamSetup
const setUp = streamSetups(STREAM_ENV, 4, ['v-one.test', 'v-two.test'])

async function expectExact(s: Setup, events: GeneratedEvent[], now: number): Promise<void> {
  const ids = s.sites.map((x) => x.siteId)
  const onTime = events.filter((e) => !e.isLate)
  const truth = visitTruthOf(onTime, s.config.stream.visitGapMs)
  const reader = new CassandraAggregateReader(s.cassandra, s.config.stream.hllPrecision)
  const from = now - 2 * DAY
  const to = now + DAY
  expect(await compareVisits(reader, truth, ids, from, to)).toEqual([])
  expect(
    await compareWithTruth(s.cassandra, s.config.stream.hllPrecision, truthOf(onTime, ids), ids, from, to),
  ).toEqual([])
  await expectQueryApi(s, truth, now)
}

/** The query API's visit metrics over the workload's days equal the truth's sums. */
async function expectQueryApi(s: Setup, truth: Map<string, VisitCounts>, now: number): Promise<void> {
  const reader = new CassandraAggregateReader(s.cassandra, s.config.stream.hllPrecision)
  const app = await buildQueryApp({
    reader,
    auth: new ReadAccessCache(new CassandraSiteStore(s.cassandra)),
    freshness: new CheckpointFreshness(reader, {
      group: s.config.stream.group,
      topic: s.config.kafka.topicRaw,
      partitions: s.config.kafka.partitions,
      graceMs: s.config.stream.graceMs,
      cacheMs: 0,
    }),
    logger,
    hllPrecision: s.config.stream.hllPrecision,
    retentionSeconds: s.config.stream.ttlSeconds,
  })
  try {
    const from = new Date(now - DAY).toISOString().slice(0, 10)
    const to = new Date(now).toISOString().slice(0, 10)
    for (const site of s.sites.map((x) => x.siteId)) {
      const sum: VisitCounts = { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 }
      for (const day of [Date.parse(from), Date.parse(to)]) {
        const c = truth.get(visitKey(site, 'day', day))
        if (!c) continue
        sum.visits += c.visits
        sum.bounces += c.bounces
        sum.visitDurationMs += c.visitDurationMs
        sum.visitPageviews += c.visitPageviews
      }
      const res = await app.inject({
        method: 'GET',
        url: `/v1/stats/aggregate?site=${site}&from=${from}&to=${to}&metrics=visits,bounce_rate,visit_duration,views_per_visit`,
        headers: { authorization: `Bearer ${s.readTokens.get(site)}` },
      })
      expect(res.statusCode, res.body).toBe(200)
      const body = res.json() as { results: Record<string, { value: number }> }
      expect(sum.visits).toBeGreaterThan(10)
      expect(body.results).toEqual({
        visits: { value: sum.visits },
        bounce_rate: { value: Math.round((100 * sum.bounces) / sum.visits) },
        visit_duration: { value: Math.round(sum.visitDurationMs / 1000 / sum.visits) },
        views_per_visit: { value: Math.round((100 * sum.visitPageviews) / sum.visits) / 100 },
      })
    }
  } finally {
    await app.close()
  }
}

async function stop(p: RoleProcess, signal: NodeJS.Signals): Promise<void> {
  p.child.kill(signal)
  const { code, signal: got } = await p.exited
  if (signal === 'SIGTERM') expect({ code, logFile: p.logFile }).toEqual({ code: 0, logFile: p.logFile })
  else expect(got).toBe('SIGKILL')
}

describe('visits through the stream (real Kafka, Cassandra, processes)', () => {
  let a: Setup
  let b: Setup
  beforeAll(async () => {
    a = await setUp()
    b = await setUp()
  })

  it('equal the truth while a worker is SIGKILLed at random points and restarted', async () => {
    const seed = Date.now() % 100_000
    const random = seeded(seed)
    const now = Date.now()
    const events = visitWorkload(
      a.sites.map((x) => x.siteId),
      17,
      now,
      GRACE_MS,
      4000,
    )
    const env = { ...envOf(a.config), ...STREAM_ENV }
    let worker = spawnRole('stream', env, 'visits-kill')
    const feeding = feedSlowly(a, events, 40, 500, 50)
    let kills = 0
    while (kills < 4) {
      await waitForLog(worker, /partition restored/)
      await sleep(200 + random() * 1500)
      await stop(worker, 'SIGKILL')
      kills++
      worker = spawnRole('stream', env, 'visits-kill')
    }
    await feeding
    await waitCaughtUp(a.config, a.cassandra, 120_000)
    // Stopped once running (a SIGTERM before its handlers are in place would kill it).
    await waitForLog(worker, /stream worker running/)
    await stop(worker, 'SIGTERM')
    expect(kills, `chaos seed ${seed}`).toBe(4)
    await expectExact(a, events, now)
  })

  it('equal the truth while workers go 1 → 2 → 1 (rebalances)', async () => {
    const now = Date.now()
    const events = visitWorkload(
      b.sites.map((x) => x.siteId),
      23,
      now,
      GRACE_MS,
      4000,
    )
    const env = { ...envOf(b.config), ...STREAM_ENV }
    const first = spawnRole('stream', env, 'visits-rebalance-1')
    const feeding = feedSlowly(b, events, 30, 400, 50)
    await waitForLog(first, /partition restored/)
    const second = spawnRole('stream', env, 'visits-rebalance-2')
    await waitForLog(second, /partition restored/)
    await sleep(1000)
    await stop(first, 'SIGTERM')
    await feeding
    await waitCaughtUp(b.config, b.cassandra, 120_000)
    await stop(second, 'SIGTERM')
    await expectExact(b, events, now)
  })
})
