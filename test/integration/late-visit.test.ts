import { randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { rebuild, startArchiver, startIngest, startQuery, startStream } from '../../app/start.js'
import type { RunningArchiver } from '../../batch/archive-role.js'
import { generateWorkload, type SegmentPage } from '../../bench/workload.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import type { TallyConfig } from '../../core/config.js'
import { createLogger } from '../../core/log.js'
import { migrate } from '../../core/migrate.js'
import type { Site } from '../../core/ports/site-store.js'
import type { RunningIngest } from '../../ingest/role.js'
import type { RunningQuery } from '../../query/role.js'
import type { RunningStream } from '../../stream/role.js'
import { cleanup, eventually, testConfig } from '../helpers/context.js'
import { waitCaughtUp } from '../helpers/stream.js'

/**
 * A late event that joins two visits, end to end on Kafka and Cassandra with the roles in process
 * (ingest, stream worker, archiver, query): two visits of one visitor 40 minutes apart are counted
 * by the stream as two bounces; a page view between them arrives later than the grace, so the
 * stream leaves it (the query API's numbers do not move, the windows are not final); a rebuild of
 * the day makes them one visit of three page views lasting 40 minutes, and `meta` reads the
 * windows final.
 *
 * The stream's watermark is the partitions' latest receive time, so one grace cannot take the two
 * visits on time and, seconds later, the event between them late: the stream runs with a grace of
 * 3 h while the visits arrive, then is restarted with one of 30 min (an operator lowering
 * TALLY_GRACE_MS) before the late event is sent.
 */

const MIN = 60_000
const HOUR = 3_600_000
const DAY = 86_400_000
const logger = createLogger('silent')

/** The visits' times, minute-aligned, ~1 h back; all three events on one UTC day. */
function visitTimes(now: number): { first: number; joining: number; second: number } {
  let first = Math.floor((now - 75 * MIN) / MIN) * MIN
  // Near midnight UTC: move the visits back to end 5 minutes before it (still inside the first grace).
  if (Math.floor(first / DAY) !== Math.floor((first + 40 * MIN) / DAY))
    first = Math.floor((first + 40 * MIN) / DAY) * DAY - 45 * MIN
  return { first, joining: first + 20 * MIN, second: first + 40 * MIN }
}

const NOW = Date.now()
const T = visitTimes(NOW)
const DAY_START = Math.floor(T.first / DAY) * DAY
const DATE = new Date(DAY_START).toISOString().slice(0, 10)
const HOUR_FIRST = Math.floor(T.first / HOUR) * HOUR
const HOUR_SECOND = Math.floor(T.second / HOUR) * HOUR
const SITE = `late-join-${Date.now().toString(36)}.test`

let dataDir: string
let onTime: TallyConfig
let lowered: TallyConfig
let cassandra: ReturnType<typeof createCassandraClient>
let site: Site
let readToken = ''
let ingest: RunningIngest | undefined
let stream: RunningStream | undefined
let archiver: RunningArchiver | undefined
let query: RunningQuery | undefined

// A human page view of the generator, cloned so ingest parses ours like the workload's.
const human = generateWorkload({
  seed: 5,
  sites: [SITE],
  events: 200,
  start: new Date(NOW),
  spanMs: HOUR,
}).events.find((e) => !e.isBot && e.payload.type === 'page')!

function pageView(tsMs: number, path: string): SegmentPage {
  const base = human.payload as SegmentPage
  const iso = new Date(tsMs).toISOString()
  const page = { ...(base.context.page ?? base.properties), path, url: `https://${SITE}${path}` }
  return {
    type: 'page',
    properties: page,
    messageId: randomUUID(),
    anonymousId: 'joined-visitor',
    context: { ...base.context, page },
    timestamp: iso,
    sentAt: iso,
  }
}

async function send(...events: SegmentPage[]): Promise<void> {
  const res = await fetch(`${ingest!.url}/v1/import`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: `Basic ${Buffer.from(`${site.writeKey}:`).toString('base64')}`,
    },
    body: JSON.stringify({ batch: events }),
  })
  const body = (await res.json()) as { accepted: number; rejected: unknown[] }
  expect(res.status, JSON.stringify(body)).toBe(200)
  expect(body).toMatchObject({ accepted: events.length, rejected: [] })
}

async function stats<A>(path: string): Promise<A> {
  const res = await fetch(`${query!.url}${path}`, { headers: { authorization: `Bearer ${readToken}` } })
  const body = await res.text()
  expect(res.status, body).toBe(200)
  return JSON.parse(body) as A
}

const VISIT_METRICS = 'pageviews,visits,bounce_rate,visit_duration,views_per_visit'

interface Meta {
  windows: { count: number; final: number; provisional: number; ranges: Array<{ status: string }> }
  visits: { windows_without_data: number }
}
interface Aggregate {
  results: Record<string, { value: number }>
  meta: Meta
}
interface Timeseries {
  results: Array<Record<string, number | string>>
  meta: Meta
}

const aggregate = () =>
  stats<Aggregate>(`/v1/stats/aggregate?site=${SITE}&from=${DATE}&to=${DATE}&metrics=${VISIT_METRICS}`)
const timeseries = () =>
  stats<Timeseries>(
    `/v1/stats/timeseries?site=${SITE}&interval=hour&from=${new Date(HOUR_FIRST).toISOString()}&to=${new Date(HOUR_SECOND + HOUR).toISOString()}&metrics=${VISIT_METRICS}`,
  )

/** The hourly points by hand: each visit counts in the hour it started. */
function expectedPoints(
  visits: Array<{ start: number; pageviews: number; bounce: boolean; durationS: number }>,
) {
  const points = new Map<number, Record<string, number>>()
  for (let h = HOUR_FIRST; h <= HOUR_SECOND; h += HOUR)
    points.set(h, { pageviews: 0, visits: 0, bounces: 0, durationS: 0, visitPageviews: 0 })
  for (const v of visits) {
    const p = points.get(Math.floor(v.start / HOUR) * HOUR)!
    p.visits! += 1
    p.bounces! += v.bounce ? 1 : 0
    p.durationS! += v.durationS
    p.visitPageviews! += v.pageviews
  }
  return [...points].map(([h, p]) => ({
    date: new Date(h).toISOString(),
    visits: p.visits,
    bounce_rate: p.visits ? Math.round((100 * p.bounces!) / p.visits!) : 0,
    visit_duration: p.visits ? Math.round(p.durationS! / p.visits!) : 0,
    views_per_visit: p.visits ? Math.round((100 * p.visitPageviews!) / p.visits!) / 100 : 0,
  }))
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Asks `read` until its answer satisfies `ok` (a few seconds at most); returns that answer. */
function until<A>(read: () => Promise<A>, ok: (a: A) => boolean): Promise<A> {
  return eventually(
    async () => {
      const a = await read()
      return ok(a) ? a : undefined
    },
    10_000,
    'the query API to answer the new data version',
  )
}

async function startStreamWith(config: TallyConfig): Promise<void> {
  await stream?.close()
  stream = await startStream(config, logger, { port: 0 })
}

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'tally-late-visit-'))
  onTime = testConfig({
    PORT: '0',
    TALLY_DATA_DIR: dataDir,
    TALLY_FLUSH_INTERVAL_MS: '150',
    TALLY_GRACE_MS: String(3 * HOUR),
  })
  lowered = { ...onTime, stream: { ...onTime.stream, graceMs: 30 * MIN } }
  await migrate(onTime)
  cassandra = createCassandraClient(onTime.cassandra, { keyspace: onTime.cassandra.keyspace })
  await cassandra.connect()
  const created = await new CassandraSiteStore(cassandra).create({ siteId: SITE, domain: SITE, origins: [] })
  site = created.site
  readToken = created.readToken
  ingest = await startIngest(onTime, logger)
  archiver = await startArchiver(onTime, logger, { flushIntervalMs: 200, port: 0 })
  query = await startQuery(onTime, logger)
  await startStreamWith(onTime)
}, 120_000)

afterAll(async () => {
  await query?.close()
  await stream?.close()
  await archiver?.close()
  await ingest?.close()
  await cassandra?.shutdown()
  await cleanup(onTime)
  await rm(dataDir, { recursive: true, force: true })
})

describe('a late event that joins two visits (Kafka + Cassandra, roles in process)', () => {
  // By hand: /v1 at first, /v3 40 minutes later (the gap is 30 minutes: two one-page visits, two
  // bounces of 0 s); /v2 at first + 20 min joins them: one visit of 3 page views, 2400 s, no bounce.
  const twoVisits = {
    pageviews: { value: 2 },
    visits: { value: 2 },
    bounce_rate: { value: 100 },
    visit_duration: { value: 0 },
    views_per_visit: { value: 1 },
  }
  const oneVisit = {
    pageviews: { value: 3 },
    visits: { value: 1 },
    bounce_rate: { value: 0 },
    visit_duration: { value: 2400 },
    views_per_visit: { value: 3 },
  }
  const twoPoints = expectedPoints([
    { start: T.first, pageviews: 1, bounce: true, durationS: 0 },
    { start: T.second, pageviews: 1, bounce: true, durationS: 0 },
  ])
  const onePoint = expectedPoints([{ start: T.first, pageviews: 3, bounce: false, durationS: 2400 }])
  const pointsOf = (a: Timeseries) =>
    a.results.map(({ date, visits, bounce_rate, visit_duration, views_per_visit }) => ({
      date,
      visits,
      bounce_rate,
      visit_duration,
      views_per_visit,
    }))

  it('the stream counts two visits on time and leaves the late event; a rebuild of the day joins them, final', async () => {
    expect(onTime.stream.visitGapMs).toBe(30 * MIN)
    // On time (inside the 3 h grace): two visits.
    await send(pageView(T.first, '/v1'), pageView(T.second, '/v3'))
    await waitCaughtUp(onTime, cassandra)
    // The query role re-reads a data version after the stream's notice (README: within a second).
    const streamed = await until(aggregate, (a) => a.results.visits?.value === 2)
    expect(streamed.results).toEqual(twoVisits)
    expect(streamed.meta.windows.final).toBe(0)
    expect(streamed.meta.visits.windows_without_data).toBe(0)
    const streamedSeries = await timeseries()
    expect(pointsOf(streamedSeries)).toEqual(twoPoints)
    expect(streamedSeries.results.every((p) => p.status !== 'final')).toBe(true)

    // The grace lowered to 30 min: the page view between them (older than the watermark − grace)
    // arrives late. The stream leaves it: same numbers, windows still not final.
    await startStreamWith(lowered)
    expect(T.joining).toBeLessThan(Date.now() - lowered.stream.graceMs)
    await send(pageView(T.joining, '/v2'))
    await waitCaughtUp(onTime, cassandra)
    expect(await stream!.registryText()).toMatch(/tally_stream_records_total\{outcome="late"\} 1\b/)
    await sleep(onTime.query.notifiedVersionMaxAgeMs + 500)
    const left = await aggregate()
    expect(left.results).toEqual(twoVisits)
    expect(left.meta.windows.final).toBe(0)
    const leftSeries = await timeseries()
    expect(pointsOf(leftSeries)).toEqual(twoPoints)
    expect(leftSeries.results.every((p) => p.status !== 'final')).toBe(true)
    expect(leftSeries.meta.windows.final).toBe(0)

    // The rebuild of the day (it waits for the archive to hold the whole log) corrects them.
    const result = await rebuild(onTime, logger, {
      from: DAY_START,
      to: DAY_START + DAY,
      waitArchiveMs: 60_000,
    })
    expect(result.status).toBe('succeeded')
    // A rebuild's answers show once the query role re-reads the site's final mark (README: within a second).
    const rebuilt = await until(aggregate, (a) => a.meta.windows.final > 0)
    expect(rebuilt.results).toEqual(oneVisit)
    expect(rebuilt.meta.windows).toMatchObject({ provisional: 0, open: 0, ranges: [{ status: 'final' }] })
    expect(rebuilt.meta.windows.final).toBe(rebuilt.meta.windows.count)
    expect(rebuilt.meta.visits.windows_without_data).toBe(0)
    const rebuiltSeries = await timeseries()
    expect(pointsOf(rebuiltSeries)).toEqual(onePoint)
    expect(rebuiltSeries.results.map((p) => p.status)).toEqual(onePoint.map(() => 'final'))
    expect(rebuiltSeries.meta.windows).toMatchObject({ provisional: 0, final: onePoint.length })
    expect(rebuiltSeries.meta.visits.windows_without_data).toBe(0)
  }, 180_000)
})
