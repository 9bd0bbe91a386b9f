import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { dimensionValues, type GeneratedEvent, generateWorkload } from '../../bench/workload.js'
import { DIMENSION_GRANULARITIES, type Granularity, windowStart } from '../../core/aggregate/definition.js'
import { capValues, keptValues, OTHER } from '../../core/aggregate/props.js'
import { HyperLogLog } from '../../core/hll.js'
import { createLogger } from '../../core/log.js'
import type { AggregateReader, MergedValues } from '../../core/ports/aggregate-store.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import { CheckpointFreshness } from '../../query/freshness.js'
import type { tempDataDir } from '../contract/backends.js'
import type { EventLogHarness } from '../contract/event-log.js'
import { archiveWholeLog, rebuildFromArchive } from '../helpers/archive-log.js'
import { testConfig } from '../helpers/context.js'
import { backends, closePipeline, type Harness, openPipeline } from '../helpers/pipeline-backends.js'
import { ingestAll, streamToEnd } from '../helpers/stream.js'
import { type VisitCounts, visitKey, visitTruthOf } from '../helpers/visit-truth.js'

/**
 * The cap on the open-ended dimensions (TALLY_DIMENSION_VALUES_MAX, issue 17 point 7) end to end,
 * on both backends: a generated workload with 300 paths and 120 referrers (duplicates, bots,
 * identify calls, campaigns) goes through ingest and the stream (visits counted), then the archive
 * and a rebuild, with a cap of 25 values per window. Read back under the cap rule (as the query API
 * reads), every hour and day breakdown by path, referrer, source, utm_source and utm_campaign
 * equals the truth computed here from the events (the workload's own labels, folded by the rule:
 * counts exact, visitors register-exact) and so do the visit counts of the session dimensions (the
 * visits computed here without core/aggregate/visits.ts), first from the stream's rows, then from
 * the rebuild's final rows. The query API's path breakdown of the range is the truth folded over
 * the range, with meta.values_capped. Entry and exit pages are kept by the rule over their day's
 * paths (core/aggregate/props.ts DAY_PATH_CAPPED): their visit counts, read back as the query
 * reads them, equal the visits computed here folded by the day's paths, after the stream and after
 * the rebuild, and so does the query API's entry_page breakdown of the range.
 */

const DAY = 86_400_000
const HOUR = 3_600_000
const logger = createLogger('silent')
const MAX = 25
// Within the stream's grace (below): the stream counts every event, none is left to the batch.
const START = Date.now() - 3 * HOUR
const GRACE_MS = 4 * HOUR
const RANGE_FROM = Math.floor(START / DAY) * DAY - DAY
const RANGE_TO = Math.floor(Date.now() / DAY) * DAY + DAY
const CAPPED = ['path', 'referrer', 'source', 'utm_source', 'utm_campaign'] as const
const SESSION = new Set(['referrer', 'source', 'utm_source', 'utm_campaign'])
const PAGES = ['entry_page', 'exit_page'] as const

interface Cell {
  events: number
  /** Bot events: not counted, but their values are values of the window (the cap rule sees them). */
  bots: number
  visitors: Set<string>
  visits: VisitCounts
}

function cell(): Cell {
  return {
    events: 0,
    bots: 0,
    visitors: new Set(),
    visits: { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 },
  }
}

/** Truth per `granularity|windowStart|dimension|value`, from the events (not duplicates, identify). */
function truthOf(events: readonly GeneratedEvent[]): Map<string, Cell> {
  const out = new Map<string, Cell>()
  for (const e of events) {
    const p = e.payload
    if (e.isDuplicate || !['track', 'page', 'screen'].includes(p.type)) continue
    const ts = Date.parse(p.timestamp)
    const dims = dimensionValues(e)
    for (const g of DIMENSION_GRANULARITIES) {
      for (const d of CAPPED) {
        const k = `${g}|${windowStart(ts, g)}|${d}|${dims[d]}`
        const c = out.get(k) ?? cell()
        if (e.isBot) c.bots++
        else {
          c.events++
          c.visitors.add(p.anonymousId ?? p.userId ?? p.messageId)
        }
        out.set(k, c)
      }
    }
  }
  return out
}

function addVisits(to: VisitCounts, c: Partial<VisitCounts>): void {
  to.visits += c.visits ?? 0
  to.bounces += c.bounces ?? 0
  to.visitDurationMs += c.visitDurationMs ?? 0
  to.visitPageviews += c.visitPageviews ?? 0
}

/** The kept paths of a UTC day by the rule, from the truth: every value of the day's path (bots' too). */
function keptDayPaths(truth: Map<string, Cell>, day: number): Set<string> {
  const prefix = `day|${day}|path|`
  return keptValues(
    [...truth.keys()].filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length)),
    MAX,
  )
}

/** The visits of one page dimension's windows (`granularity|windowStart`) in the truth, by page. */
function pageVisits(
  visitTruth: Map<string, VisitCounts>,
  siteId: string,
  g: Granularity,
  from: number,
  d: string,
): Map<string, VisitCounts> {
  const prefix = visitKey(siteId, g, from, d, '')
  const out = new Map<string, VisitCounts>()
  for (const [k, v] of visitTruth) if (k.startsWith(prefix)) out.set(k.slice(prefix.length), v)
  return out
}

/**
 * Differences between the visit counts of entry and exit pages `reader` holds, folded as the query
 * folds them (by the rule over the day's stored paths and the pages read), and the truth folded by
 * the rule over the day's paths, per hour and day window.
 */
async function comparePages(
  reader: AggregateReader,
  siteId: string,
  truth: Map<string, Cell>,
  visitTruth: Map<string, VisitCounts>,
): Promise<string[]> {
  const out: string[] = []
  const windows = new Set([...truth.keys()].map((k) => k.split('|').slice(0, 2).join('|')))
  for (const w of windows) {
    const [g, ws] = w.split('|') as [Granularity, string]
    const from = Number(ws)
    const to = from + (g === 'hour' ? HOUR : DAY)
    const day = Math.floor(from / DAY) * DAY
    const kept = keptDayPaths(truth, day)
    const storedPaths = await reader.breakdownDetailed(siteId, 'day', 'path', day, day + DAY)
    for (const d of PAGES) {
      const expected = new Map<string, VisitCounts>()
      for (const [page, v] of pageVisits(visitTruth, siteId, g, from, d)) {
        if (!truth.has(`day|${day}|path|${page}`))
          out.push(`${d}=${page}: a page that no event of the day has`)
        const k = kept.has(page) ? page : OTHER
        const e = expected.get(k) ?? { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 }
        addVisits(e, v)
        expected.set(k, e)
      }
      const read = await reader.breakdownDetailed(siteId, g, d, from, to)
      const storedKept = keptValues(new Set([...storedPaths.values.keys(), ...read.values.keys()]), MAX)
      const actual = new Map<string, VisitCounts>()
      for (const [page, v] of read.values) {
        const k = storedKept.has(page) ? page : OTHER
        const a = actual.get(k) ?? { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 }
        addVisits(a, v)
        actual.set(k, a)
      }
      const zero = JSON.stringify({ visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 })
      for (const value of new Set([...expected.keys(), ...actual.keys()])) {
        const e = JSON.stringify(expected.get(value) ?? JSON.parse(zero))
        const a = JSON.stringify(actual.get(value) ?? JSON.parse(zero))
        if (a !== e) out.push(`${siteId} ${g} ${new Date(from).toISOString()} ${d}=${value}: ${a} ≠ ${e}`)
      }
    }
  }
  return out
}

/** Differences between what `reader` holds (read under the cap rule) and the truth, per window. */
async function compare(
  reader: AggregateReader,
  precision: number,
  siteId: string,
  truth: Map<string, Cell>,
  visitTruth: Map<string, VisitCounts>,
): Promise<string[]> {
  const out: string[] = []
  const windows = new Set([...truth.keys()].map((k) => k.split('|').slice(0, 2).join('|')))
  for (const w of windows) {
    const [g, ws] = w.split('|') as [Granularity, string]
    const from = Number(ws)
    const to = from + (g === 'hour' ? HOUR : DAY)
    for (const d of CAPPED) {
      // Truth under the cap: the values the rule keeps over the window's values, the rest in (other).
      const cells = new Map<string, Cell>()
      for (const [k, c] of truth) {
        const [gg, wws, dd, value] = k.split('|')
        if (gg === g && wws === ws && dd === d) cells.set(value!, c)
      }
      const kept = keptValues(cells.keys(), MAX)
      const fold = (value: string) => (kept.has(value) ? value : OTHER)
      const expected = new Map<string, Cell>()
      for (const [value, c] of cells) {
        const e = expected.get(fold(value)) ?? cell()
        e.events += c.events
        e.bots += c.bots
        for (const id of c.visitors) e.visitors.add(id)
        expected.set(fold(value), e)
      }
      if (SESSION.has(d)) {
        const prefix = visitKey(siteId, g, from, d, '')
        for (const [k, v] of visitTruth) {
          if (!k.startsWith(prefix)) continue
          const value = k.slice(prefix.length)
          // A visit's value is its first event's, an event of the window.
          if (!cells.has(value)) out.push(`${k}: a visit value that no event of the window has`)
          const e = expected.get(fold(value)) ?? cell()
          addVisits(e.visits, v)
          expected.set(fold(value), e)
        }
      }
      const read = await reader.breakdownDetailed(siteId, g, d, from, to, { visitors: true })
      const merge = (a: MergedValues | undefined, b: MergedValues): MergedValues => {
        if (!a) return { ...b }
        const h = HyperLogLog.fromBytes(a.visitors)
        if (b.visitors.length > 0) h.merge(HyperLogLog.fromBytes(b.visitors))
        const visits = { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 }
        addVisits(visits, a)
        addVisits(visits, b)
        return {
          events: a.events + b.events,
          pageviews: a.pageviews + b.pageviews,
          botEvents: a.botEvents + b.botEvents,
          visitors: h.toBytes(),
          ...visits,
        }
      }
      const { values: actual } = capValues(read.values, MAX, merge)
      for (const value of new Set([...expected.keys(), ...actual.keys()])) {
        const e = expected.get(value)
        const a = actual.get(value)
        const where = `${siteId} ${g} ${new Date(from).toISOString()} ${d}=${value}`
        if ((a?.events ?? 0) !== (e?.events ?? 0) || (a?.botEvents ?? 0) !== (e?.bots ?? 0)) {
          out.push(
            `${where}: events ${a?.events ?? 0} ≠ ${e?.events ?? 0}, bots ${a?.botEvents ?? 0} ≠ ${e?.bots ?? 0}`,
          )
          continue
        }
        if (SESSION.has(d)) {
          const av = { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 }
          if (a) addVisits(av, a)
          const ev = e?.visits ?? av
          if (JSON.stringify(av) !== JSON.stringify(ev))
            out.push(`${where}: visits ${JSON.stringify(av)} ≠ ${JSON.stringify(ev)}`)
        }
        if (!e) continue
        const h = new HyperLogLog(precision)
        for (const id of e.visitors) h.add(id)
        const stored = a && a.visitors.length > 0 ? HyperLogLog.fromBytes(a.visitors).estimate() : 0
        if (stored !== h.estimate()) out.push(`${where}: visitors ${stored} ≠ ${h.estimate()}`)
      }
    }
  }
  return out
}

describe.each(backends)('dimension value caps, stream and rebuild (%s)', (_name, openStore, openLog) => {
  let store: Harness
  let log: EventLogHarness
  let topic: string
  let data: ReturnType<typeof tempDataDir>
  let config = testConfig()
  let site: Site
  let readToken: string
  const siteId = `caps-${Date.now()}.test`

  beforeAll(async () => {
    ;({ store, log, topic, config, data } = await openPipeline(openStore, openLog, {
      dataPrefix: 'tally-caps-',
      env: {
        TALLY_DIMENSION_VALUES_MAX: String(MAX),
        TALLY_GRACE_MS: String(GRACE_MS),
        TALLY_FLUSH_INTERVAL_MS: '100',
      },
    }))
    const created = await store.sites.create({ siteId, domain: siteId, origins: [] })
    site = created.site
    readToken = created.readToken
  }, 60_000)

  afterAll(async () => {
    await closePipeline({ log, store, data })
  })

  const events = generateWorkload({
    seed: 71,
    sites: ['a'],
    events: 3000,
    start: new Date(START),
    spanMs: 2 * HOUR,
    paths: 300,
    referrers: 120,
    campaignShare: 0.3,
    lateShare: 0,
  }).events.map((e) => ({ ...e, siteId }))
  const truth = truthOf(events)

  it('the workload passes the cap of every capped dimension checked in some window', () => {
    expect(events.some((e) => e.isDuplicate)).toBe(true)
    expect(events.some((e) => e.isBot)).toBe(true)
    for (const d of ['path', 'referrer', 'source']) {
      const perWindow = new Map<string, number>()
      for (const k of truth.keys()) {
        const [g, ws, dd] = k.split('|')
        if (dd === d) perWindow.set(`${g}|${ws}`, (perWindow.get(`${g}|${ws}`) ?? 0) + 1)
      }
      expect(Math.max(...perWindow.values()), d).toBeGreaterThan(MAX)
    }
  })

  it('the stream counts them per hour and day, values past the cap under (other), visits too', async () => {
    await ingestAll(log, config, [site], events, logger)
    await streamToEnd(log, store, {
      topic,
      group: `caps-${topic}`,
      stream: config.stream,
      logger,
    })
    const visitTruth = visitTruthOf(events, config.stream.visitGapMs)
    expect(await compare(store.reader, store.precision, siteId, truth, visitTruth)).toEqual([])
    // The stream held fewer path rows than the day has paths: it folded some at once.
    const day = [...truth.keys()].find((k) => k.startsWith('day|'))!.split('|')[1]!
    const paths = [...truth.keys()].filter((k) => k.startsWith(`day|${day}|path|`)).length
    const held = await store.reader.breakdownDetailed(siteId, 'day', 'path', Number(day), Number(day) + DAY)
    expect(held.values.has(OTHER)).toBe(true)
    expect(held.values.size).toBeLessThan(paths)
    // Entry and exit pages: the truth folds some (the cap is exercised), and the stream's rows
    // read as the query reads them equal it; a page row is a path the day's rows hold, or (other)
    // (so the page rows are bounded as the path rows are).
    const kept = keptDayPaths(truth, Number(day))
    for (const d of PAGES) {
      const pages = pageVisits(visitTruth, siteId, 'day', Number(day), d)
      expect(
        [...pages.keys()].some((p) => !kept.has(p)),
        d,
      ).toBe(true)
      const rows = await store.reader.breakdownDetailed(siteId, 'day', d, Number(day), Number(day) + DAY)
      for (const page of rows.values.keys())
        if (page !== OTHER) expect(held.values.has(page), page).toBe(true)
    }
    expect(await comparePages(store.reader, siteId, truth, visitTruth)).toEqual([])
    await expectPageBreakdown()
  }, 180_000)

  it('a rebuild gives the same numbers, final, with at most the kept values and (other) counted', async () => {
    await archiveWholeLog(log, store, {
      topic,
      archiveDir: join(data.dir, 'archive'),
      owner: 'caps-test',
      logger,
    })
    const result = await rebuildFromArchive(
      store,
      {
        topic,
        dataDir: data.dir,
        owner: 'caps-test',
        logger,
        visitGapMs: config.stream.visitGapMs,
        settings: { dimensionValuesMax: MAX },
      },
      { fromMs: RANGE_FROM, toMs: RANGE_TO, siteId },
    )
    expect(result.status).toBe('succeeded')
    const visitTruth = visitTruthOf(events, config.stream.visitGapMs)
    expect(await compare(store.reader, store.precision, siteId, truth, visitTruth)).toEqual([])
    const day = Number([...truth.keys()].find((k) => k.startsWith('day|'))!.split('|')[1]!)
    for (const d of CAPPED) {
      const read = await store.reader.breakdownDetailed(siteId, 'day', d, day, day + DAY)
      expect([...read.windows.values()].every((x) => x.final)).toBe(true)
      // Rows the stream held for values the rebuild folded read as zeros: the counted values are
      // at most the kept ones, (other) and the always-kept (none)/(direct)/Direct / None; a session
      // dimension's visit rows are capped by the visits' own values (batch/visits.ts capVisitRows),
      // which may keep up to MAX values more, with visit counts only.
      const counted = [...read.values.values()].filter(
        (v) => v.events > 0 || v.botEvents > 0 || (v.visits ?? 0) > 0,
      )
      expect(counted.length, d).toBeLessThanOrEqual((SESSION.has(d) ? 2 * MAX : MAX) + 2)
    }
    expect(await comparePages(store.reader, siteId, truth, visitTruth)).toEqual([])
    // A rebuilt window's pages with visits are among the day's kept paths, or (other).
    for (const d of PAGES) {
      const read = await store.reader.breakdownDetailed(siteId, 'day', d, day, day + DAY)
      const kept = keptDayPaths(truth, day)
      const counted = [...read.values.entries()].filter(([, v]) => (v.visits ?? 0) > 0).map(([p]) => p)
      for (const page of counted) expect(kept.has(page) || page === OTHER, `${d}=${page}`).toBe(true)
      expect(counted.length, d).toBeLessThanOrEqual(MAX + 1)
    }
    await expectPageBreakdown()
  }, 180_000)

  const queryApp = () =>
    buildQueryApp({
      reader: store.reader,
      auth: new ReadAccessCache(store.sites),
      freshness: new CheckpointFreshness(store.reader, {
        group: `caps-${topic}`,
        topic,
        partitions: 3,
        graceMs: GRACE_MS,
        cacheMs: 0,
      }),
      logger,
      hllPrecision: store.precision,
      dimensionValuesMax: MAX,
    })

  /**
   * The query API's breakdown of [from, to) by `property` (metric `metric`), which must say a cap
   * folded values (meta.values_capped, meta.values_max): value → metric, the values above 0.
   */
  async function cappedBreakdown(
    property: string,
    metric: 'events' | 'visits',
    from: number,
    to: number,
  ): Promise<Map<string, number>> {
    const app = await queryApp()
    try {
      const search = new URLSearchParams({
        site: siteId,
        from: new Date(from).toISOString(),
        to: new Date(to).toISOString(),
        property,
        metrics: metric,
        limit: '1000',
      })
      const res = await app.inject({
        method: 'GET',
        url: `/v1/stats/breakdown?${search}`,
        headers: { authorization: `Bearer ${readToken}` },
      })
      expect(res.statusCode, res.body).toBe(200)
      const body = res.json() as {
        results: Array<Record<string, string | number>>
        meta: { values_capped?: boolean; values_max?: number }
      }
      expect(body.meta.values_capped).toBe(true)
      expect(body.meta.values_max).toBe(MAX)
      return new Map(
        body.results
          .filter((r) => Number(r[metric]) > 0)
          .map((r) => [String(r[property]), Number(r[metric])] as const),
      )
    } finally {
      await app.close()
    }
  }

  /**
   * The query API's entry_page breakdown of three hours equals the visits computed here, folded by
   * the rule over the paths of the range's UTC days, with meta.values_capped when a visit's page
   * was folded.
   */
  async function expectPageBreakdown(): Promise<void> {
    const from = Math.floor(START / HOUR) * HOUR
    const to = from + 3 * HOUR
    const visitTruth = visitTruthOf(events, config.stream.visitGapMs)
    const dayPaths = new Set<string>()
    for (let day = Math.floor(from / DAY) * DAY; day < to; day += DAY) {
      const prefix = `day|${day}|path|`
      for (const k of truth.keys()) if (k.startsWith(prefix)) dayPaths.add(k.slice(prefix.length))
    }
    const kept = keptValues(dayPaths, MAX)
    const expected = new Map<string, number>()
    let folded = 0
    for (let h = from; h < to; h += HOUR) {
      for (const [page, v] of pageVisits(visitTruth, siteId, 'hour', h, 'entry_page')) {
        const k = kept.has(page) ? page : OTHER
        if (k === OTHER) folded += v.visits
        expected.set(k, (expected.get(k) ?? 0) + v.visits)
      }
    }
    expect(folded).toBeGreaterThan(0)
    const actual = await cappedBreakdown('entry_page', 'visits', from, to)
    expect(actual).toEqual(new Map([...expected].filter(([, n]) => n > 0)))
  }

  it('the query API folds a range by the rule and says so in meta.values_capped', async () => {
    const from = Math.floor(START / HOUR) * HOUR
    const to = from + 3 * HOUR
    // Truth: the range's path values (its hours), folded by the rule over all of them.
    const byValue = new Map<string, number>()
    for (const [k, c] of truth) {
      const [g, ws, d, value] = k.split('|')
      if (g === 'hour' && d === 'path' && Number(ws) >= from && Number(ws) < to)
        byValue.set(value!, (byValue.get(value!) ?? 0) + c.events)
    }
    const kept = keptValues(byValue.keys(), MAX)
    const expected = new Map<string, number>()
    for (const [v, n] of byValue) {
      const k = kept.has(v) ? v : OTHER
      expected.set(k, (expected.get(k) ?? 0) + n)
    }
    const actual = await cappedBreakdown('path', 'events', from, to)
    expect(actual).toEqual(new Map([...expected].filter(([, n]) => n > 0)))
  }, 60_000)
})
