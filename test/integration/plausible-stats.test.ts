import { parse } from 'csv-parse/sync'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startStream } from '../../app/start.js'
import { dimensionValues, type GeneratedEvent, generateWorkload } from '../../bench/workload.js'
import { CassandraAggregateReader } from '../../core/cassandra/aggregate-reader.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { loadConfig } from '../../core/config.js'
import { openEmbedded } from '../../core/embedded/index.js'
import { HyperLogLog } from '../../core/hll.js'
import { createKafka } from '../../core/kafka/client.js'
import { KafkaBatchingProducer } from '../../core/kafka/producer.js'
import { createLogger } from '../../core/log.js'
import { migrate } from '../../core/migrate.js'
import type { AggregateReader } from '../../core/ports/aggregate-store.js'
import type { Site, SiteStore } from '../../core/ports/site-store.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import { CheckpointFreshness } from '../../query/freshness.js'
import { createStreamMetrics } from '../../stream/metrics.js'
import { tempDataDir } from '../contract/backends.js'
import { cleanup, testConfig } from '../helpers/context.js'
import { feed, ingestApp, streamEmbeddedToEnd, waitCaughtUp } from '../helpers/stream.js'
import { visitKey, visitTruthOf } from '../helpers/visit-truth.js'

/**
 * Plausible's Stats API v1 through the query API, over aggregates the real stream wrote from a
 * generated workload, on Kafka + Cassandra and on the embedded backend: a table of requests whose
 * expected answers are computed here from the workload (counts, the HyperLogLog estimate of the true
 * visitor set, visits from test/helpers/visit-truth.ts), Plausible's error answers, and CSV read
 * back with csv-parse.
 */

const DAY = 86_400_000
const GRACE_MS = 3 * DAY
const logger = createLogger('silent')
const COUNTED = new Set(['track', 'page', 'screen'])
const today = Math.floor(Date.now() / DAY) * DAY
/** The two UTC days before today hold the traffic. */
const D1 = today - 2 * DAY
const D2 = today - DAY
const day = (ms: number) => new Date(ms).toISOString().slice(0, 10)
const tsOf = (e: GeneratedEvent) => Date.parse(e.payload.timestamp)

interface Setup {
  app: FastifyInstance
  site: Site
  token: string
  precision: number
  events: GeneratedEvent[]
  close(): Promise<void>
}

function workload(siteId: string): GeneratedEvent[] {
  return generateWorkload({
    seed: 18,
    sites: [siteId],
    events: 1500,
    start: new Date(D1),
    spanMs: 2 * DAY,
    visitors: 120,
    lateShare: 0,
  }).events
}

async function queryApp(
  reader: AggregateReader,
  sites: SiteStore,
  group: string,
  topic: string,
  partitions: number,
  precision: number,
): Promise<FastifyInstance> {
  return buildQueryApp({
    reader,
    auth: new ReadAccessCache(sites),
    sites,
    freshness: new CheckpointFreshness(reader, { group, topic, partitions, graceMs: GRACE_MS, cacheMs: 0 }),
    logger,
    hllPrecision: precision,
  })
}

async function cassandraSetup(): Promise<Setup> {
  const config = testConfig({ TALLY_FLUSH_INTERVAL_MS: '200', TALLY_GRACE_MS: String(GRACE_MS) })
  await migrate(config)
  const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await cassandra.connect()
  const producer = new KafkaBatchingProducer(createKafka(config.kafka))
  const store = new CassandraSiteStore(cassandra)
  const created = await store.create({ siteId: 'pl-c', domain: 'pl-cassandra.test', origins: [] })
  const events = workload('pl-c')
  const ingest = await ingestApp(config, producer, [created.site], logger)
  await feed(ingest, events, () => created.site.writeKey)
  await ingest.close()
  const stream = await startStream(config, logger)
  try {
    await waitCaughtUp(config, cassandra)
  } finally {
    await stream.close()
  }
  const reader = new CassandraAggregateReader(cassandra, config.stream.hllPrecision)
  const app = await queryApp(
    reader,
    store,
    config.stream.group,
    config.kafka.topicRaw,
    config.kafka.partitions,
    config.stream.hllPrecision,
  )
  return {
    app,
    site: created.site,
    token: created.readToken,
    precision: config.stream.hllPrecision,
    events,
    close: async () => {
      await app.close()
      await producer.close()
      await cassandra.shutdown()
      await cleanup(config)
    },
  }
}

async function embeddedSetup(): Promise<Setup> {
  const config = loadConfig({
    TALLY_FLUSH_INTERVAL_MS: '100',
    TALLY_GRACE_MS: String(GRACE_MS),
    LOG_LEVEL: 'silent',
  })
  const data = tempDataDir()
  const topic = config.kafka.topicRaw
  const backend = openEmbedded({
    dataDir: data.dir,
    hllPrecision: config.stream.hllPrecision,
    ttlSeconds: config.stream.ttlSeconds,
    topics: [
      { topic, partitions: config.kafka.partitions },
      { topic: config.kafka.topicDeadLetter, partitions: 1 },
    ],
    logger,
  })
  const created = await backend.sites.create({ siteId: 'pl-e', domain: 'pl-embedded.test', origins: [] })
  const events = workload('pl-e')
  const writer = backend.log.writer()
  const ingest = await ingestApp(config, writer, [created.site], logger)
  await feed(ingest, events, () => created.site.writeKey)
  await ingest.close()
  await writer.close()
  await streamEmbeddedToEnd(backend, {
    stream: config.stream,
    topic,
    deadLetterTopic: config.kafka.topicDeadLetter,
    metrics: createStreamMetrics(),
    logger,
  })
  const app = await queryApp(
    backend.reader,
    backend.sites,
    config.stream.group,
    topic,
    config.kafka.partitions,
    config.stream.hllPrecision,
  )
  return {
    app,
    site: created.site,
    token: created.readToken,
    precision: config.stream.hllPrecision,
    events,
    close: async () => {
      await app.close()
      await backend.close()
      data.remove()
    },
  }
}

/** The truth of [fromMs, toMs) for events `keep` keeps (dimension values as Tally labels them). */
function truthOf(s: Setup, fromMs: number, toMs: number, keep: (e: GeneratedEvent) => boolean = () => true) {
  const seen = new Set<string>()
  const counted = s.events.filter((e) => {
    if (seen.has(e.payload.messageId)) return false
    seen.add(e.payload.messageId)
    const t = tsOf(e)
    return !e.isBot && COUNTED.has(e.payload.type) && t >= fromMs && t < toMs && keep(e)
  })
  const sketch = new HyperLogLog(s.precision)
  for (const e of counted) sketch.add(e.payload.anonymousId)
  return {
    events: counted.length,
    pageviews: counted.filter((e) => e.payload.type === 'page').length,
    visitors: Math.round(sketch.estimate()),
  }
}

/** Visits that started in the UTC days of [fromMs, toMs), with Plausible's roundings. */
function visitsOf(s: Setup, fromMs: number, toMs: number, dim = '', value = '') {
  const rows = visitTruthOf(s.events)
  const c = { visits: 0, bounces: 0, ms: 0, pages: 0 }
  for (let d = fromMs; d < toMs; d += DAY) {
    const r = rows.get(visitKey(s.site.siteId, 'day', d, dim, value))
    if (!r) continue
    c.visits += r.visits
    c.bounces += r.bounces
    c.ms += r.visitDurationMs
    c.pages += r.visitPageviews
  }
  return {
    visits: c.visits,
    bounce_rate: c.visits ? Math.round((100 * c.bounces) / c.visits) : 0,
    visit_duration: c.visits ? Math.round(c.ms / 1000 / c.visits) : 0,
    views_per_visit: c.visits ? Math.round((100 * c.pages) / c.visits) / 100 : 0,
  }
}

const pct = (before: number, now: number) =>
  before === 0 ? (now > 0 ? 100 : 0) : Math.round(((now - before) / before) * 100)

async function get(s: Setup, path: string, params: Record<string, string>, token: string | null = s.token) {
  return s.app.inject({
    method: 'GET',
    url: `${path}?${new URLSearchParams(params)}`,
    headers: token === null ? {} : { authorization: `Bearer ${token}` },
  })
}

async function ok(s: Setup, path: string, params: Record<string, string>): Promise<{ results: unknown }> {
  const res = await get(s, path, params)
  expect(res.statusCode, `${path} ${JSON.stringify(params)}: ${res.body}`).toBe(200)
  return res.json() as { results: unknown }
}

const setups: Record<string, Setup> = {}

beforeAll(async () => {
  setups.cassandra = await cassandraSetup()
  setups.embedded = await embeddedSetup()
}, 240_000)

afterAll(async () => {
  for (const s of Object.values(setups)) await s.close()
})

describe.each(['cassandra', 'embedded'])("Plausible's Stats API v1 on %s", (name) => {
  const s = () => setups[name]!

  it('aggregate: a day, a custom range, compare=previous_period, site_id as id or domain', async () => {
    const site = s().site
    const metrics = 'visitors,pageviews,events,visits,bounce_rate,visit_duration,views_per_visit'
    const expected = (from: number, to: number) => ({ ...truthOf(s(), from, to), ...visitsOf(s(), from, to) })
    const valuesOf = (r: unknown) =>
      Object.fromEntries(Object.entries(r as Record<string, { value: number }>).map(([k, v]) => [k, v.value]))
    const one = await ok(s(), '/api/v1/stats/aggregate', {
      site_id: site.siteId,
      period: 'day',
      date: day(D1),
      metrics,
    })
    expect(valuesOf(one.results)).toEqual(expected(D1, D1 + DAY))
    const byDomain = await ok(s(), '/api/v1/stats/aggregate', {
      site_id: site.domain,
      period: 'custom',
      date: `${day(D1)},${day(D2)}`,
      metrics,
    })
    expect(valuesOf(byDomain.results)).toEqual(expected(D1, D2 + DAY))
    expect(expected(D1, D2 + DAY).pageviews).toBeGreaterThan(100)

    const compared = (await ok(s(), '/api/v1/stats/aggregate', {
      site_id: site.siteId,
      period: 'day',
      date: day(D2),
      metrics: 'visitors,pageviews,bounce_rate',
      compare: 'previous_period',
    })) as { results: Record<string, { value: number; change: number }> }
    const now = expected(D2, D2 + DAY)
    const before = expected(D1, D1 + DAY)
    expect(compared.results).toEqual({
      visitors: { value: now.visitors, change: pct(before.visitors, now.visitors) },
      pageviews: { value: now.pageviews, change: pct(before.pageviews, now.pageviews) },
      bounce_rate: { value: now.bounce_rate, change: now.bounce_rate - before.bounce_rate },
    })
  })

  it('timeseries: days of 7d, hours of a day, months; filtered on one property', async () => {
    const site = s().site.siteId
    const week = (await ok(s(), '/api/v1/stats/timeseries', {
      site_id: site,
      period: '7d',
      date: day(D2),
      metrics: 'visitors,pageviews',
    })) as { results: Array<Record<string, unknown>> }
    expect(week.results).toEqual(
      Array.from({ length: 7 }, (_, i) => {
        const from = D2 - (6 - i) * DAY
        const t = truthOf(s(), from, from + DAY)
        return { date: day(from), visitors: t.visitors, pageviews: t.pageviews }
      }),
    )
    const hours = (await ok(s(), '/api/v1/stats/timeseries', {
      site_id: site,
      period: 'day',
      date: day(D1),
      metrics: 'pageviews',
    })) as { results: Array<{ date: string; pageviews: number }> }
    expect(hours.results).toHaveLength(24)
    hours.results.forEach((p, h) => {
      const from = D1 + h * 3_600_000
      expect(p).toEqual({
        date: `${day(D1)} ${String(h).padStart(2, '0')}:00:00`,
        pageviews: truthOf(s(), from, from + 3_600_000).pageviews,
      })
    })
    const page = dimensionValues(s().events.find((e) => e.payload.type === 'page' && !e.isBot)!).path
    const months = (await ok(s(), '/api/v1/stats/timeseries', {
      site_id: site,
      period: 'custom',
      date: `${day(D1)},${day(D2)}`,
      interval: 'month',
      metrics: 'visitors,events',
      filters: `event:page==${page}`,
    })) as { results: Array<Record<string, unknown>> }
    const monthStarts = [...new Set([D1, D2].map((d) => `${day(d).slice(0, 7)}-01`))]
    expect(months.results).toEqual(
      monthStarts.map((m) => {
        const start = Math.max(Date.parse(m), D1)
        const end = Math.min(Date.UTC(Number(m.slice(0, 4)), Number(m.slice(5, 7)), 1), D2 + DAY)
        const t = truthOf(s(), start, end, (e) => dimensionValues(e).path === page)
        return { date: m, visitors: t.visitors, events: t.events }
      }),
    )
  })

  it('breakdown: pages with visitors, sources with visits; ==, != and wildcard filters', async () => {
    const site = s().site.siteId
    const range = { site_id: site, period: 'custom', date: `${day(D1)},${day(D2)}` }
    const pages = (await ok(s(), '/api/v1/stats/breakdown', {
      ...range,
      property: 'event:page',
      metrics: 'visitors,pageviews',
      limit: '1000',
    })) as { results: Array<{ page: string; visitors: number; pageviews: number }> }
    const paths = [
      ...new Set(
        s()
          .events.filter((e) => !e.isBot)
          .map((e) => dimensionValues(e).path),
      ),
    ]
    const expected = paths
      .map((p) => ({ page: p, ...truthOf(s(), D1, D2 + DAY, (e) => dimensionValues(e).path === p) }))
      .filter((r) => r.events > 0)
      .map(({ page, visitors, pageviews }) => ({ page, visitors, pageviews }))
    expect([...pages.results].sort((a, b) => (a.page < b.page ? -1 : 1))).toEqual(
      expected.sort((a, b) => (a.page < b.page ? -1 : 1)),
    )
    for (let i = 1; i < pages.results.length; i++)
      expect(pages.results[i - 1]!.visitors).toBeGreaterThanOrEqual(pages.results[i]!.visitors)

    const sources = (await ok(s(), '/api/v1/stats/breakdown', {
      ...range,
      property: 'visit:source',
      metrics: 'visits,bounce_rate',
    })) as { results: Array<{ source: string; visits: number; bounce_rate: number }> }
    expect(sources.results.length).toBeGreaterThan(1)
    for (const r of sources.results) {
      const v = visitsOf(s(), D1, D2 + DAY, 'source', r.source)
      expect(r).toEqual({ source: r.source, visits: v.visits, bounce_rate: v.bounce_rate })
    }

    // A wildcard and a negation, answered from the values they match.
    const prefix = paths[0]!.slice(0, 2)
    const wild = (await ok(s(), '/api/v1/stats/aggregate', {
      ...range,
      metrics: 'pageviews,visitors',
      filters: `event:page==${prefix}*`,
    })) as { results: Record<string, { value: number }> }
    const wildTruth = truthOf(s(), D1, D2 + DAY, (e) => dimensionValues(e).path.startsWith(prefix))
    expect(wild.results).toEqual({
      pageviews: { value: wildTruth.pageviews },
      visitors: { value: wildTruth.visitors },
    })
    const not = (await ok(s(), '/api/v1/stats/aggregate', {
      ...range,
      metrics: 'events',
      filters: `event:page!=${paths[0]}`,
    })) as { results: Record<string, { value: number }> }
    expect(not.results.events!.value).toBe(
      truthOf(s(), D1, D2 + DAY, (e) => dimensionValues(e).path !== paths[0]).events,
    )
  })

  it('names devices, systems and browsers as Plausible does, in breakdowns and filters', async () => {
    // Plausible's names (its Stats API documentation: Desktop, Tablet, Mobile; Mac; and Matomo's
    // device detector's GNU/Linux, Chrome OS, Microsoft Edge, Samsung Browser) for what ua-parser-js
    // calls so.
    const PLAUSIBLE: Record<'device' | 'os' | 'browser', Record<string, string>> = {
      device: { desktop: 'Desktop', mobile: 'Mobile', tablet: 'Tablet' },
      os: { 'Mac OS': 'Mac', Linux: 'GNU/Linux', 'Chromium OS': 'Chrome OS' },
      browser: { Edge: 'Microsoft Edge', 'Samsung Internet': 'Samsung Browser' },
    }
    const name = (p: keyof typeof PLAUSIBLE, v: string) => PLAUSIBLE[p][v] ?? v
    const range = { site_id: s().site.siteId, period: 'custom', date: `${day(D1)},${day(D2)}` }
    const humans = s().events.filter((e) => !e.isBot)
    for (const p of ['device', 'os', 'browser'] as const) {
      const rows = (await ok(s(), '/api/v1/stats/breakdown', {
        ...range,
        property: `visit:${p}`,
        metrics: 'visitors,pageviews',
      })) as { results: Array<Record<string, string | number>> }
      const expected = [...new Set(humans.map((e) => dimensionValues(e)[p]))]
        .map((v) => {
          const t = truthOf(s(), D1, D2 + DAY, (e) => dimensionValues(e)[p] === v)
          return { [p]: name(p, v), visitors: t.visitors, pageviews: t.pageviews, events: t.events }
        })
        .filter((r) => r.events > 0)
        .map(({ events: _, ...r }) => r)
      const byName = (a: Record<string, unknown>, b: Record<string, unknown>) =>
        String(a[p]) < String(b[p]) ? -1 : 1
      expect([...rows.results].sort(byName)).toEqual(expected.sort(byName))
    }
    const filtered = async (filters: string) =>
      (
        (await ok(s(), '/api/v1/stats/aggregate', { ...range, metrics: 'events', filters })) as {
          results: { events: { value: number } }
        }
      ).results.events.value
    const events = (keep: (e: GeneratedEvent) => boolean) => truthOf(s(), D1, D2 + DAY, keep).events
    expect(await filtered('visit:device==Desktop')).toBe(
      events((e) => dimensionValues(e).device === 'desktop'),
    )
    expect(await filtered('visit:device==Mobile|Tablet')).toBe(
      events((e) => ['mobile', 'tablet'].includes(dimensionValues(e).device)),
    )
    expect(await filtered('visit:os==Mac')).toBe(events((e) => dimensionValues(e).os === 'Mac OS'))
    expect(await filtered('visit:os==GNU*')).toBe(events((e) => dimensionValues(e).os === 'Linux'))
    expect(await filtered('visit:browser!=Microsoft Edge')).toBe(
      events((e) => dimensionValues(e).browser !== 'Edge'),
    )
    expect(events((e) => dimensionValues(e).os === 'Linux')).toBeGreaterThan(0)
    // Tally's own names keep working in every form of filter (== took them before the renaming).
    const notDesktop = events((e) => dimensionValues(e).device !== 'desktop')
    expect(events((e) => dimensionValues(e).device === 'desktop')).toBeGreaterThan(0)
    expect(await filtered('visit:device!=desktop')).toBe(notDesktop)
    expect(await filtered('visit:device!=Desktop')).toBe(notDesktop)
    expect(await filtered('visit:device==desk*')).toBe(events((e) => dimensionValues(e).device === 'desktop'))
    expect(await filtered('visit:os==Mac OS*')).toBe(events((e) => dimensionValues(e).os === 'Mac OS'))
  })

  it("answers Plausible's errors: tokens, parameters, and what the rollups cannot answer", async () => {
    const site = s().site.siteId
    const base = { site_id: site, period: 'day', date: day(D1) }
    const missing = await get(s(), '/api/v1/stats/aggregate', base, null)
    expect([missing.statusCode, missing.json()]).toEqual([
      401,
      { error: 'Missing API key. Please use a valid Plausible API key as a Bearer Token.' },
    ])
    for (const [params, token] of [
      [base, 'rt_not-a-token'],
      [{ ...base, site_id: 'nowhere.test' }, s().token],
    ] as const) {
      const res = await get(s(), '/api/v1/stats/aggregate', params, token)
      expect(res.statusCode).toBe(401)
      expect(res.json().error).toMatch(/^Invalid API key or site ID/)
    }
    const bad: Array<[Record<string, string>, string, RegExp]> = [
      [{ ...base, period: 'week' }, 'aggregate', /period/],
      [{ ...base, period: 'custom', date: '2024-01-05' }, 'aggregate', /date/],
      [{ ...base, metrics: 'conversion_rate' }, 'aggregate', /goal/],
      [{ ...base, metrics: 'planets' }, 'aggregate', /planets/],
      [{ ...base, property: 'visit:city' }, 'breakdown', /supported: event:page/],
      [{ ...base }, 'breakdown', /property/],
      [{ ...base, property: 'event:page', metrics: 'bounce_rate' }, 'breakdown', /not by event:page/],
      [
        { ...base, property: 'visit:browser', filters: 'event:page==/a;visit:country==DE' },
        'breakdown',
        /can be filtered on visit:browser only/,
      ],
      [{ ...base, filters: 'event:page==/a;visit:country==DE' }, 'aggregate', /one filter/],
      [{ ...base, filters: 'event:page' }, 'aggregate', /Unable to parse filter/],
    ]
    for (const [params, endpoint, message] of bad) {
      const res = await get(s(), `/api/v1/stats/${endpoint}`, params)
      expect({ params, status: res.statusCode }).toEqual({ params, status: 400 })
      expect(Object.keys(res.json())).toEqual(['error'])
      expect(res.json().error).toMatch(message)
    }
    const realtime = await get(s(), '/api/v1/stats/realtime/visitors', { site_id: s().site.domain })
    expect([realtime.statusCode, realtime.json()]).toEqual([
      200,
      truthOf(s(), Date.now() - 5 * 60_000, Date.now() + 60_000).visitors,
    ])
  })

  it('format=csv: breakdown, timeseries and the aggregates export read back equal the JSON', async () => {
    const site = s().site.siteId
    const params = {
      site,
      from: day(D1),
      to: day(D2),
      property: 'path',
      metrics: 'visitors,pageviews,events',
    }
    const read = async (path: string, p: Record<string, string>) => {
      const res = await s().app.inject({
        method: 'GET',
        url: `${path}?${new URLSearchParams(p)}`,
        headers: { authorization: `Bearer ${s().token}` },
      })
      expect(res.statusCode, res.body).toBe(200)
      return res
    }
    const json = (await read('/v1/stats/breakdown', params)).json() as {
      results: Array<Record<string, unknown>>
    }
    const csv = await read('/v1/stats/breakdown', { ...params, format: 'csv' })
    expect(csv.headers['content-type']).toBe('text/csv; charset=utf-8')
    expect(csv.headers['content-disposition']).toMatch(/attachment; filename=".*\.csv"/)
    const rows = parse(csv.body, { columns: true, cast: true }) as Array<Record<string, unknown>>
    expect(rows.map((r) => ({ ...r, path: String(r.path) }))).toEqual(json.results)

    const ts = { site, from: day(D1), to: day(D2), interval: 'hour', metrics: 'visitors,pageviews' }
    const tsJson = (await read('/v1/stats/timeseries', ts)).json() as {
      results: Array<Record<string, unknown>>
    }
    const tsCsv = parse((await read('/v1/stats/timeseries', { ...ts, format: 'csv' })).body, {
      columns: true,
      cast: true,
      castDate: false,
    })
    expect(tsCsv).toEqual(tsJson.results)

    const ex = { site, from: day(D1), to: day(D2), interval: 'day', property: 'path' }
    const nd = (await read('/v1/export/aggregates', ex)).body
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
    const exCsv = await read('/v1/export/aggregates', { ...ex, format: 'csv' })
    expect(exCsv.headers['content-type']).toBe('text/csv; charset=utf-8')
    const exRows = parse(exCsv.body, { columns: true }) as Array<Record<string, string>>
    const ndRows = nd.filter((l) => l.type === 'row')
    expect(exRows).toEqual(
      ndRows.map((r) =>
        Object.fromEntries(
          ['window_start', 'path', 'events', 'pageviews', 'bot_events', 'visitors', 'final', 'status'].map(
            (k) => [k, String(r[k])],
          ),
        ),
      ),
    )
    expect(exRows.length).toBeGreaterThan(5)
  })
})
