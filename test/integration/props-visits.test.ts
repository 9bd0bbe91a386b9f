import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type GeneratedEvent, generateWorkload } from '../../bench/workload.js'
import { DIMENSION_GRANULARITIES, type Granularity, windowStart } from '../../core/aggregate/definition.js'
import { capValues, keptValues, OTHER } from '../../core/aggregate/props.js'
import { createLogger } from '../../core/log.js'
import type { AggregateReader, MergedValues } from '../../core/ports/aggregate-store.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import { CheckpointFreshness } from '../../query/freshness.js'
import { createQueryMetrics } from '../../query/metrics.js'
import { PropKeyCache } from '../../stream/prop-keys.js'
import type { tempDataDir } from '../contract/backends.js'
import type { EventLogHarness } from '../contract/event-log.js'
import { archiveWholeLog, rebuildFromArchive } from '../helpers/archive-log.js'
import { testConfig } from '../helpers/context.js'
import { backends, closePipeline, type Harness, openPipeline } from '../helpers/pipeline-backends.js'
import { ingestAll, streamToEnd } from '../helpers/stream.js'

/**
 * Visits by custom property (issue 17 point 4), on both backends: a site declares `plan` (a few
 * values, absent on some events) and `item` (far more values than TALLY_PROP_VALUES_MAX); a
 * generated workload (duplicates, bots, identify calls) carrying them goes through ingest and the
 * stream with visits counted, then the archive and a rebuild. The truth is computed here by a
 * reference sessionizer written in this file (per visitor and UTC day, runs of counted events with
 * gaps under the visit gap; the visit's value of a key is its first event's). Read back under the
 * cap rule (as the query API reads), every hour and day breakdown by `prop:plan` and `prop:item`
 * carries exactly the truth's visits, bounces, durations and visit pageviews, from the stream's rows
 * and then from the rebuild's; the query API answers visit metrics on `property=prop:plan` and with
 * `filters=prop:plan==v`, Plausible's on `event:props:plan`.
 */

const DAY = 86_400_000
const HOUR = 3_600_000
const logger = createLogger('silent')
const MAX = 25
const START = Date.now() - 3 * HOUR
const GRACE_MS = 4 * HOUR
const RANGE_FROM = Math.floor(START / DAY) * DAY
const RANGE_TO = Math.floor(Date.now() / DAY) * DAY + DAY
const PLANS = ['free', 'pro', 'team']
const KEYS = ['plan', 'item']

function numberOf(s: string): number {
  let h = 7
  for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) >>> 0
  return h
}

/** The workload's events with properties: plan (or none), item (one of 300). */
function withProps(events: readonly GeneratedEvent[]): GeneratedEvent[] {
  return events.map((e) => {
    const n = numberOf(e.payload.messageId ?? '')
    const props: Record<string, unknown> = { item: `item-${n % 300}` }
    if (n % 5 !== 0) props.plan = PLANS[n % 3]
    const payload = {
      ...e.payload,
      properties: { ...(e.payload as { properties?: object }).properties, ...props },
    }
    return { ...e, payload } as GeneratedEvent
  })
}

interface Payload {
  type: string
  timestamp?: string
  anonymousId?: string
  userId?: string
  messageId?: string
  properties?: Record<string, unknown>
}

const propOf = (p: Payload, key: string) => {
  const raw = p.properties?.[key]
  return typeof raw === 'string' ? raw : '(none)'
}

interface Counts {
  visits: number
  bounces: number
  durationMs: number
  pageviews: number
}

interface RefVisit extends Counts {
  startMs: number
  first: Payload
}

/**
 * The reference sessionizer: counted events (track, page, screen; not bots, not duplicates) per
 * visitor (anonymousId, else userId) and UTC day, in time order, cut where the gap is `gapMs` or
 * more. Ties of the first event's time with another value of a key would need the product's
 * tie-break: counted in `ties` (the test expects none).
 */
function sessionize(events: readonly GeneratedEvent[], gapMs: number): { visits: RefVisit[]; ties: number } {
  const byVisitorDay = new Map<string, Array<{ ts: number; p: Payload }>>()
  for (const e of events) {
    const p = e.payload as Payload
    if (e.isDuplicate || e.isBot || !['track', 'page', 'screen'].includes(p.type)) continue
    const ts = Date.parse(p.timestamp!)
    const k = `${p.anonymousId ?? p.userId}|${Math.floor(ts / DAY)}`
    const list = byVisitorDay.get(k) ?? []
    list.push({ ts, p })
    byVisitorDay.set(k, list)
  }
  const visits: RefVisit[] = []
  let ties = 0
  for (const list of byVisitorDay.values()) {
    list.sort((a, b) => a.ts - b.ts)
    let run: typeof list = []
    const close = () => {
      const first = run[0]!
      if (
        run.some(
          (x, i) => i > 0 && x.ts === first.ts && KEYS.some((k) => propOf(x.p, k) !== propOf(first.p, k)),
        )
      )
        ties++
      const pageviews = run.filter((x) => x.p.type === 'page').length
      visits.push({
        startMs: first.ts,
        first: first.p,
        visits: 1,
        bounces: run.length === 1 && pageviews === 1 ? 1 : 0,
        durationMs: run[run.length - 1]!.ts - first.ts,
        pageviews,
      })
      run = []
    }
    for (const x of list) {
      if (run.length > 0 && x.ts - run[run.length - 1]!.ts >= gapMs) close()
      run.push(x)
    }
    close()
  }
  return { visits, ties }
}

/** Every value of a key in each window, bots' included (the cap rule's set), by `g|ws|key`. */
function windowValues(events: readonly GeneratedEvent[]): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>()
  for (const e of events) {
    const p = e.payload as Payload
    if (e.isDuplicate || !['track', 'page', 'screen'].includes(p.type)) continue
    const ts = Date.parse(p.timestamp!)
    for (const g of DIMENSION_GRANULARITIES)
      for (const key of KEYS) {
        const k = `${g}|${windowStart(ts, g)}|${key}`
        const set = out.get(k) ?? new Set<string>()
        set.add(propOf(p, key))
        out.set(k, set)
      }
  }
  return out
}

/** Truth of visit counts per `g|ws|key` and value, under the cap rule of the window's values. */
function visitTruth(
  visits: readonly RefVisit[],
  values: Map<string, Set<string>>,
): Map<string, Map<string, Counts>> {
  const out = new Map<string, Map<string, Counts>>()
  const kept = new Map<string, Set<string>>()
  for (const v of visits)
    for (const g of DIMENSION_GRANULARITIES)
      for (const key of KEYS) {
        const w = `${g}|${windowStart(v.startMs, g)}|${key}`
        let k = kept.get(w)
        if (!k) {
          k = keptValues(values.get(w)!, MAX)
          kept.set(w, k)
        }
        const raw = propOf(v.first, key)
        const value = k.has(raw) ? raw : OTHER
        const byValue = out.get(w) ?? new Map<string, Counts>()
        const c = byValue.get(value) ?? { visits: 0, bounces: 0, durationMs: 0, pageviews: 0 }
        c.visits += v.visits
        c.bounces += v.bounces
        c.durationMs += v.durationMs
        c.pageviews += v.pageviews
        byValue.set(value, c)
        out.set(w, byValue)
      }
  return out
}

async function compare(
  reader: AggregateReader,
  siteId: string,
  truth: Map<string, Map<string, Counts>>,
): Promise<string[]> {
  const out: string[] = []
  for (const [w, expected] of truth) {
    const [g, ws, key] = w.split('|') as [Granularity, string, string]
    const from = Number(ws)
    const read = await reader.breakdownDetailed(
      siteId,
      g,
      `prop:${key}`,
      from,
      from + (g === 'hour' ? HOUR : DAY),
    )
    const merge = (a: MergedValues | undefined, b: MergedValues): MergedValues =>
      a
        ? {
            ...a,
            events: a.events + b.events,
            visits: (a.visits ?? 0) + (b.visits ?? 0),
            bounces: (a.bounces ?? 0) + (b.bounces ?? 0),
            visitDurationMs: (a.visitDurationMs ?? 0) + (b.visitDurationMs ?? 0),
            visitPageviews: (a.visitPageviews ?? 0) + (b.visitPageviews ?? 0),
          }
        : b
    const { values: actual } = capValues(read.values, MAX, merge)
    for (const value of new Set([...expected.keys(), ...actual.keys()])) {
      const e = expected.get(value) ?? { visits: 0, bounces: 0, durationMs: 0, pageviews: 0 }
      const a = actual.get(value)
      const got = {
        visits: a?.visits ?? 0,
        bounces: a?.bounces ?? 0,
        durationMs: a?.visitDurationMs ?? 0,
        pageviews: a?.visitPageviews ?? 0,
      }
      if (JSON.stringify(got) !== JSON.stringify(e))
        out.push(
          `${g} ${new Date(from).toISOString()} prop:${key}=${value}: ${JSON.stringify(got)} ≠ ${JSON.stringify(e)}`,
        )
    }
  }
  return out
}

describe.each(backends)('visits by custom property, stream and rebuild (%s)', (_name, openStore, openLog) => {
  let store: Harness
  let log: EventLogHarness
  let topic: string
  let data: ReturnType<typeof tempDataDir>
  let config = testConfig()
  let site: Site
  let readToken: string
  let query: Awaited<ReturnType<typeof buildQueryApp>> | undefined
  const siteId = `propvisits-${Date.now()}.test`
  const group = () => `propvisits-${topic}`

  beforeAll(async () => {
    ;({ store, log, topic, config, data } = await openPipeline(openStore, openLog, {
      dataPrefix: 'tally-propvisits-',
      env: {
        TALLY_PROP_VALUES_MAX: String(MAX),
        TALLY_GRACE_MS: String(GRACE_MS),
        TALLY_FLUSH_INTERVAL_MS: '100',
      },
    }))
    const created = await store.sites.create({ siteId, domain: siteId, origins: [] })
    site = created.site
    readToken = created.readToken
    for (const key of KEYS) await store.sites.addPropKey(siteId, key)
  }, 60_000)

  afterAll(async () => {
    await query?.close()
    await closePipeline({ log, store, data })
  })

  const events = withProps(
    generateWorkload({
      seed: 23,
      sites: ['a'],
      events: 2000,
      start: new Date(START),
      spanMs: 2 * HOUR,
      lateShare: 0,
    }).events.map((e) => ({ ...e, siteId })),
  )
  const stamps = events.map((e) => Date.parse((e.payload as Payload).timestamp!))
  const FROM = Math.floor(Math.min(...stamps) / HOUR) * HOUR
  const TO = Math.floor(Math.max(...stamps) / HOUR) * HOUR + HOUR

  const get = async (path: string) => {
    query ??= await buildQueryApp({
      reader: store.reader,
      auth: new ReadAccessCache(store.sites),
      freshness: new CheckpointFreshness(store.reader, {
        group: group(),
        topic,
        partitions: 3,
        graceMs: GRACE_MS,
        cacheMs: 0,
      }),
      logger,
      hllPrecision: store.precision,
      retentionSeconds: { minute: 0, hour: 0, day: 0 },
      metrics: createQueryMetrics(),
      propValuesMax: MAX,
    })
    const res = await query.inject({
      method: 'GET',
      url: path,
      headers: { authorization: `Bearer ${readToken}` },
    })
    return { status: res.statusCode, body: res.json() }
  }
  const tally = (path: string) =>
    get(
      `${path}&site=${encodeURIComponent(siteId)}&from=${new Date(FROM).toISOString()}&to=${new Date(TO).toISOString()}`,
    )

  /** The query API's visit metrics by prop:plan over [FROM, TO) against the reference's visits. */
  async function checkQueries(visits: readonly RefVisit[]): Promise<void> {
    const byPlan = new Map<string, Counts>()
    for (const v of visits) {
      if (v.startMs < FROM || v.startMs >= TO) continue
      const plan = propOf(v.first, 'plan')
      const c = byPlan.get(plan) ?? { visits: 0, bounces: 0, durationMs: 0, pageviews: 0 }
      c.visits++
      c.bounces += v.bounces
      c.durationMs += v.durationMs
      c.pageviews += v.pageviews
      byPlan.set(plan, c)
    }
    const rates = (c: Counts) => ({
      visits: c.visits,
      bounce_rate: Math.round((100 * c.bounces) / c.visits),
      visit_duration: Math.round(c.durationMs / 1000 / c.visits),
      views_per_visit: Math.round((100 * c.pageviews) / c.visits) / 100,
    })
    expect(byPlan.size).toBe(PLANS.length + 1)
    const metrics = 'metrics=visits,bounce_rate,visit_duration,views_per_visit'
    const breakdown = await tally(`/v1/stats/breakdown?property=prop:plan&${metrics}`)
    expect(breakdown.status, JSON.stringify(breakdown.body)).toBe(200)
    const expectedRows = [...byPlan]
      .map(([plan, c]) => ({ 'prop:plan': plan, ...rates(c) }))
      .sort((a, b) => b.visits - a.visits || (a['prop:plan'] < b['prop:plan'] ? -1 : 1))
    expect(breakdown.body.results).toEqual(expectedRows)
    for (const [plan, c] of byPlan) {
      const agg = await tally(
        `/v1/stats/aggregate?${metrics}&filters=${encodeURIComponent(`prop:plan==${plan}`)}`,
      )
      expect(agg.status, JSON.stringify(agg.body)).toBe(200)
      const r = rates(c)
      expect(agg.body.results).toEqual({
        visits: { value: r.visits },
        bounce_rate: { value: r.bounce_rate },
        visit_duration: { value: r.visit_duration },
        views_per_visit: { value: r.views_per_visit },
      })
    }
    // Plausible's Stats API: visit metrics on event:props:plan over whole days.
    const day = (ms: number) => new Date(ms).toISOString().slice(0, 10)
    const dayFrom = Math.floor(FROM / DAY) * DAY
    const dayTo = Math.floor((TO - 1) / DAY) * DAY + DAY
    const byPlanDays = new Map<string, number>()
    for (const v of visits)
      if (v.startMs >= dayFrom && v.startMs < dayTo) {
        const plan = propOf(v.first, 'plan')
        byPlanDays.set(plan, (byPlanDays.get(plan) ?? 0) + 1)
      }
    const pl = await get(
      `/api/v1/stats/breakdown?property=event:props:plan&metrics=visits&site_id=${encodeURIComponent(siteId)}&period=custom&date=${day(dayFrom)},${day(dayTo - 1)}`,
    )
    expect(pl.status, JSON.stringify(pl.body)).toBe(200)
    const got = new Map(
      (pl.body.results as Array<{ plan: string; visits: number }>).map((r) => [r.plan, r.visits]),
    )
    expect(got).toEqual(byPlanDays)
  }

  it('the stream counts visits by the first event of each visit, values past the cap under (other)', async () => {
    expect(events.some((e) => e.isDuplicate)).toBe(true)
    expect(events.some((e) => e.isBot)).toBe(true)
    await ingestAll(log, config, [site], events, logger)
    await streamToEnd(log, store, {
      topic,
      group: group(),
      stream: { ...config.stream, countsVisits: true },
      logger,
      propKeys: new PropKeyCache(store.sites, 60_000, logger),
    })
    const { visits, ties } = sessionize(events, config.stream.visitGapMs)
    expect(ties).toBe(0)
    // Visits of several events, bounces, and visits whose first event lacks `plan`.
    expect(visits.some((v) => v.bounces === 1)).toBe(true)
    expect(visits.some((v) => v.durationMs > 0)).toBe(true)
    expect(visits.some((v) => propOf(v.first, 'plan') === '(none)')).toBe(true)
    const values = windowValues(events)
    // The cap is passed: some day window holds far more item values than it keeps.
    expect(
      [...values].some(([w, s]) => w.startsWith('day|') && w.endsWith('|item') && s.size > 4 * MAX),
    ).toBe(true)
    expect(await compare(store.reader, siteId, visitTruth(visits, values))).toEqual([])
    await checkQueries(visits)
  }, 240_000)

  it('a rebuild gives the same visits by property, final', async () => {
    await archiveWholeLog(log, store, {
      topic,
      archiveDir: join(data.dir, 'archive'),
      owner: 'propvisits-test',
      logger,
    })
    const result = await rebuildFromArchive(
      store,
      {
        topic,
        dataDir: data.dir,
        owner: 'propvisits-test',
        logger,
        visitGapMs: config.stream.visitGapMs,
        propKeys: true,
        settings: { propValuesMax: MAX },
      },
      { fromMs: RANGE_FROM, toMs: RANGE_TO, siteId },
    )
    expect(result.status).toBe('succeeded')
    const { visits } = sessionize(events, config.stream.visitGapMs)
    expect(await compare(store.reader, siteId, visitTruth(visits, windowValues(events)))).toEqual([])
    const [w] = [...windowValues(events).keys()].filter((k) => k.startsWith('day|'))
    const dayStart = Number(w!.split('|')[1])
    const item = await store.reader.breakdownDetailed(siteId, 'day', 'prop:item', dayStart, dayStart + DAY)
    expect([...item.windows.values()].every((x) => x.final)).toBe(true)
    await checkQueries(visits)
  }, 240_000)
})
