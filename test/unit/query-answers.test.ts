import type { FastifyInstance } from 'fastify'
import { afterEach, describe, expect, it } from 'vitest'
import type { Granularity } from '../../core/aggregate/definition.js'
import { CassandraAggregateReader } from '../../core/cassandra/aggregate-reader.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { hashToken } from '../../core/keys.js'
import { createLogger } from '../../core/log.js'
import type { AggregateReader, MergedWindow, StreamProgress } from '../../core/ports/aggregate-store.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import { AnswerCache } from '../../query/cache.js'
import {
  CheckpointFreshness,
  type DataSnapshot,
  type Freshness,
  type SnapshotSource,
} from '../../query/freshness.js'
import { createQueryMetrics, type QueryMetrics } from '../../query/metrics.js'

/**
 * Stats answers over HTTP with the answer cache, on a fake store: the body sent is the answer's
 * JSON, a cached answer is sent as stored (the store is not read again) until the data version
 * changes, and every request is counted by route and status.
 */

const DAY = 86_400_000
const TOKEN = 'rt_answers'
const SITE = 'answers.test'
const NOW = Date.parse('2024-05-20T12:00:00Z')
const logger = createLogger('silent')

const site: Site = {
  siteId: SITE,
  domain: SITE,
  origins: [],
  writeKey: 'wk_answers',
  readTokenHashes: [hashToken(TOKEN)],
  createdAt: NOW - DAY,
} as unknown as Site

const freshness: Freshness = {
  completeThroughMs: NOW - 3_600_000,
  receivedThroughMs: NOW,
  graceMs: 300_000,
  partitionsReporting: 1,
  partitionsExpected: 1,
}

/** A store whose days hold `events` each, counting its reads; a snapshot of `mark` and `version`. */
function fixture() {
  const state = { events: 5, version: 'v1', mark: 'm1', reads: 0, snapshots: 0 }
  const reader = {
    totals: async (_site: string, g: Granularity, fromMs: number, toMs: number): Promise<MergedWindow[]> => {
      state.reads++
      const out: MergedWindow[] = []
      if (g === 'day')
        for (let t = fromMs; t < toMs; t += DAY)
          out.push({
            windowStart: t,
            events: state.events,
            pageviews: state.events,
            botEvents: 0,
            visitors: new Uint8Array(0),
            final: false,
          })
      return out
    },
  } as unknown as AggregateReader
  const source: SnapshotSource = {
    current: async () => freshness,
    snapshot: async (): Promise<DataSnapshot> => {
      state.snapshots++
      return { freshness, version: `${state.mark}|${state.version}`, finalMark: state.mark }
    },
  }
  return { state, reader, source }
}

let app: FastifyInstance | undefined
afterEach(async () => {
  await app?.close()
  app = undefined
})

async function start(
  f: ReturnType<typeof fixture>,
  metrics?: QueryMetrics,
  options: { source?: SnapshotSource; now?: () => number } = {},
): Promise<FastifyInstance> {
  app = await buildQueryApp({
    reader: f.reader,
    auth: new ReadAccessCache({
      get: async (id) => (id === SITE ? site : undefined),
      list: async () => [site],
    }),
    freshness: options.source ?? f.source,
    logger,
    now: options.now ?? (() => NOW),
    retentionSeconds: { minute: 0, hour: 0, day: 0 },
    ...(metrics ? { metrics } : {}),
  })
  return app
}

const timeseries = `/v1/stats/timeseries?site=${SITE}&from=2024-05-01&to=2024-05-08&interval=day&metrics=events`
const get = (a: FastifyInstance, url: string, token = TOKEN) =>
  a.inject({ method: 'GET', url, headers: { authorization: `Bearer ${token}` } })

describe('stats answers', () => {
  it('sends the answer as JSON with its headers', async () => {
    const a = await start(fixture())
    const res = await get(a, timeseries)
    expect(res.statusCode, res.body).toBe(200)
    expect(res.headers['content-type']).toBe('application/json; charset=utf-8')
    expect(res.headers['cache-control']).toBe('private, no-cache')
    expect(Number(res.headers['content-length'])).toBe(Buffer.byteLength(res.body))
    const body = res.json() as { results: Array<{ date: string; events: number }>; meta: { site: string } }
    expect(body.results).toHaveLength(8)
    expect(body.results[0]).toEqual({ date: '2024-05-01T00:00:00.000Z', events: 5, status: 'closed' })
    expect(body.results.every((p) => p.events === 5)).toBe(true)
  })

  it('sends a cached answer as stored while the version is the same, a new one after it changed', async () => {
    const f = fixture()
    const a = await start(f)
    const first = await get(a, timeseries)
    const readsAfterFirst = f.state.reads
    // The store changes without a version change: the stored answer is still what is sent.
    f.state.events = 9
    const second = await get(a, timeseries)
    expect(second.body).toBe(first.body)
    expect(f.state.reads).toBe(readsAfterFirst)
    // The version is read for every request, cached answer or not.
    expect(f.state.snapshots).toBe(2)

    // A rebuild (new final mark, so a new version): these settled days are read again.
    f.state.mark = 'm2'
    const third = await get(a, timeseries)
    expect(f.state.reads).toBeGreaterThan(readsAfterFirst)
    expect((third.json() as { results: Array<{ events: number }> }).results[0]!.events).toBe(9)
  })

  it('keeps an error answer out of the cache and answers it as an error', async () => {
    const a = await start(fixture())
    const res = await get(a, `/v1/stats/timeseries?site=${SITE}&from=2024-05-01&to=2024-05-08&interval=week`)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toMatchObject({ success: false, code: 'TALLY_ERR_BAD_PARAMETER', where: 'interval' })
  })

  it('counts requests by route and status, and their latency by route', async () => {
    const metrics = createQueryMetrics()
    const a = await start(fixture(), metrics)
    await get(a, timeseries)
    await get(a, timeseries)
    expect((await get(a, timeseries, 'rt_wrong')).statusCode).toBe(401)
    const text = await metrics.registry.metrics()
    expect(text).toContain('tally_query_requests_total{route="/v1/stats/timeseries",status="200"} 2')
    expect(text).toContain('tally_query_requests_total{route="/v1/stats/timeseries",status="401"} 1')
    expect(text).toContain('tally_query_request_seconds_count{route="/v1/stats/timeseries"} 3')
    expect(text).toContain('tally_query_in_flight_requests 0')
    expect(text).toContain('tally_query_cache_total{outcome="hit"} 1')
    expect(text).toContain('tally_query_cache_total{outcome="miss"} 1')
  })

  it('with a reusable data version (snapshotMaxAgeMs), serves the stored answer without reads until the version is read again', async () => {
    const f = fixture()
    const clock = { t: NOW }
    const progress = { offset: 1, reads: 0 }
    const source = new CheckpointFreshness(
      {
        streamProgress: async (): Promise<StreamProgress[]> => {
          progress.reads++
          return [
            { partition: 0, nextOffset: progress.offset, watermarkMs: NOW, updatedAtMs: progress.offset },
          ]
        },
        finalMark: async () => f.state.mark,
      },
      { group: 'g', topic: 't', partitions: 1, graceMs: 300_000, snapshotMaxAgeMs: 100, now: () => clock.t },
    )
    const a = await start(f, undefined, { source, now: () => clock.t })
    // Up to today: its window is not settled, so a flush changes it.
    const recent = `/v1/stats/timeseries?site=${SITE}&from=2024-05-14&to=2024-05-20&interval=day&metrics=events`
    const first = await get(a, recent)
    expect(first.statusCode, first.body).toBe(200)
    const storeReads = f.state.reads
    expect(progress.reads).toBe(1)

    // A flush lands (more events, a new checkpoint) soon after that version read: the answer read
    // under it is still sent, with no read of the version or of the store.
    f.state.events = 9
    progress.offset = 2
    clock.t += 49
    const second = await get(a, recent)
    expect(second.body).toBe(first.body)
    expect(progress.reads).toBe(1)
    expect(f.state.reads).toBe(storeReads)

    // Past the age limit (100 ms) the version is read again, and the new data answers.
    clock.t += 52
    const third = await get(a, recent)
    expect(progress.reads).toBe(2)
    expect((third.json() as { results: Array<{ events: number }> }).results.at(-1)!.events).toBe(9)
  })

  it('parses a URL again when the minute changes: period=day answers the new day after midnight', async () => {
    const f = fixture()
    const clock = { t: Date.parse('2024-05-20T23:59:30Z') }
    const a = await start(f, undefined, { now: () => clock.t })
    const url = `/v1/stats/timeseries?site=${SITE}&period=7d&interval=day&metrics=events`
    const before = (await get(a, url)).json() as { results: Array<{ date: string }> }
    expect(before.results.at(-1)!.date).toBe('2024-05-20T00:00:00.000Z')
    clock.t = Date.parse('2024-05-21T00:00:30Z')
    const after = (await get(a, url)).json() as { results: Array<{ date: string }> }
    expect(after.results.at(-1)!.date).toBe('2024-05-21T00:00:00.000Z')
    expect(after.results).toHaveLength(7)
  })
})

describe('AnswerCache.peek', () => {
  it('gives a stored answer of the same version once computed, and nothing else; counts only what it gives', async () => {
    let hits = 0
    const cache = new AnswerCache(undefined, { onHit: () => hits++ })
    let finish: (v: { n: number }) => void = () => {}
    const computing = cache.answer('k', 'v1', () => new Promise<{ n: number }>((r) => (finish = r)))
    expect(cache.peek('k', 'v1')).toBeUndefined()
    finish({ n: 1 })
    await computing
    expect(cache.peek('k', 'v1')).toEqual({ n: 1 })
    expect(cache.peek('k', 'v2')).toBeUndefined()
    expect(cache.peek('other', 'v1')).toBeUndefined()
    expect(hits).toBe(1)
    // A failed computation leaves nothing to give.
    await expect(cache.answer('bad', 'v1', () => Promise.reject(new Error('store down')))).rejects.toThrow()
    expect(cache.peek('bad', 'v1')).toBeUndefined()
  })
})

describe('an aggregate store that cannot answer', () => {
  it('answers 503 with a retry hint, naming the service, not an internal error (Cassandra unreachable, real driver)', async () => {
    // Nothing listens on port 1: the driver finds no host, as in a Cassandra outage.
    const client = createCassandraClient(
      {
        contactPoints: ['127.0.0.1:1'],
        localDataCenter: 'datacenter1',
        consistency: 'ONE',
        username: undefined,
        password: undefined,
      },
      { keyspace: 'tally', connectTimeoutMs: 1000 },
    )
    try {
      const f = fixture()
      const a = await start({ ...f, reader: new CassandraAggregateReader(client, 12) })
      const res = await get(a, timeseries)
      expect(res.statusCode, res.body).toBe(503)
      expect(res.headers['retry-after']).toBe('1')
      expect(res.json()).toMatchObject({
        success: false,
        code: 'TALLY_ERR_SERVICE_UNAVAILABLE',
        message: expect.stringMatching(/^cassandra: /),
      })
    } finally {
      await client.shutdown()
    }
  })
})
