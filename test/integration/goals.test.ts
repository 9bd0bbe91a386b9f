import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { dimensionValues, type GeneratedEvent, generateWorkload } from '../../bench/workload.js'
import { eventGoal, pageGoal } from '../../core/aggregate/goals.js'
import { capValues, keptValues, OTHER } from '../../core/aggregate/props.js'
import { HyperLogLog } from '../../core/hll.js'
import { createLogger } from '../../core/log.js'
import type { AggregateReader, MergedValues } from '../../core/ports/aggregate-store.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache, type ReadAuthorizer } from '../../query/auth.js'
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
 * Goals end to end, on both backends: a site defines an event goal (`Added to Cart`) and two page
 * goals (`/blog/*` within a segment, `/docs/**` across segments); a generated workload (duplicates,
 * bots, identify calls) goes through ingest and the stream, then the archive and a rebuild. Every
 * hour and day `goal` row (completions, converters' registers) equals the truth computed here from
 * the events with the pattern rule written out apart, first from the stream's rows, then from the
 * rebuild's; the query API's conversions and conversion rates (aggregate, timeseries, breakdown by
 * goal) equal the truth's estimates. A goal defined after the stream counted (`Searched`) has no
 * rows until a rebuild counts it ("define, then rebuild").
 *
 * Conversions by custom property: the site declares `quantity` (1–3 on `Added to Cart`, absent
 * elsewhere) and `product_id` (24 values, more than TALLY_PROP_VALUES_MAX here); each `goal|prop:KEY`
 * row equals the truth of the completing events' own values (per goal, under the cap rule), from
 * the stream and from the rebuild, and the query API's breakdown, aggregate and timeseries (UTC
 * hours and a site zone's local days) with goal==NAME and a property's value answer its estimates.
 */

const DAY = 86_400_000
const HOUR = 3_600_000
const logger = createLogger('silent')
const START = Date.now() - 3 * HOUR
const GRACE_MS = 4 * HOUR
const RANGE_FROM = Math.floor(START / DAY) * DAY
const RANGE_TO = Math.floor(Date.now() / DAY) * DAY + DAY
/** TALLY_PROP_VALUES_MAX here: `product_id` has more values, `quantity` fewer. */
const PROP_MAX = 10
const PROP_KEYS = ['quantity', 'product_id'] as const
/** A zone whose midnights are whole UTC hours (America/New_York: UTC−5 or −4). */
const ZONE = 'America/New_York'

interface Payload {
  type: string
  event?: string
  timestamp?: string
  anonymousId?: string
  userId?: string
  messageId?: string
  properties?: Record<string, unknown>
  context?: { page?: { path?: string } }
}

/** The goals a payload completes, by the rule as the README states it (not the module's code). */
function goalsOf(p: Payload, defined: readonly string[]): string[] {
  const out: string[] = []
  const path =
    (typeof p.properties?.path === 'string' ? p.properties.path : undefined) ?? p.context?.page?.path
  for (const name of defined) {
    if (!name.startsWith('Visit ')) {
      if (p.type === 'track' && p.event === name) out.push(name)
      continue
    }
    if (p.type !== 'page' || path === undefined) continue
    const pattern = name.slice('Visit '.length)
    if (pattern.endsWith('/**') && path.startsWith(pattern.slice(0, -2))) out.push(name)
    else if (
      pattern.endsWith('/*') &&
      path.startsWith(pattern.slice(0, -1)) &&
      !path.slice(pattern.length - 1).includes('/')
    )
      out.push(name)
  }
  return out
}

interface Cell {
  events: number
  pageviews: number
  visitors: Set<string>
}

function counted(e: GeneratedEvent): Payload | undefined {
  const p = e.payload as Payload
  return e.isDuplicate || e.isBot || !['track', 'page', 'screen'].includes(p.type) ? undefined : p
}

function visitorOf(p: Payload): string {
  return p.anonymousId ?? p.userId ?? p.messageId!
}

/** Truth per `granularity|windowStart|goal`, from the counted events (not bots, duplicates, identify). */
function truthOf(events: readonly GeneratedEvent[], goals: readonly string[]): Map<string, Cell> {
  const out = new Map<string, Cell>()
  for (const e of events) {
    const p = counted(e)
    if (!p) continue
    const ts = Date.parse(p.timestamp!)
    for (const g of ['hour', 'day'] as const) {
      const ws = Math.floor(ts / (g === 'hour' ? HOUR : DAY)) * (g === 'hour' ? HOUR : DAY)
      for (const goal of goalsOf(p, goals)) {
        const k = `${g}|${ws}|${goal}`
        const cell = out.get(k) ?? { events: 0, pageviews: 0, visitors: new Set<string>() }
        cell.events++
        if (p.type === 'page') cell.pageviews++
        cell.visitors.add(visitorOf(p))
        out.set(k, cell)
      }
    }
  }
  return out
}

function estimate(ids: Iterable<string>, precision: number): number {
  const h = new HyperLogLog(precision)
  for (const id of ids) h.add(id)
  return h.estimate()
}

/**
 * Differences between one stored value and its truth cell: events and pageviews exactly (then no
 * more), no bot events, and the converters' registers those of the true visitor set.
 */
function cellDiffs(
  where: string,
  e: Cell | undefined,
  a: MergedValues | undefined,
  precision: number,
): string[] {
  if ((a?.events ?? 0) !== (e?.events ?? 0) || (a?.pageviews ?? 0) !== (e?.pageviews ?? 0))
    return [`${where}: events ${a?.events} ≠ ${e?.events}, pageviews ${a?.pageviews} ≠ ${e?.pageviews}`]
  const out: string[] = []
  if ((a?.botEvents ?? 0) !== 0) out.push(`${where}: ${a?.botEvents} bot events`)
  if (!e) return out
  const stored = a && a.visitors.length > 0 ? HyperLogLog.fromBytes(a.visitors).estimate() : 0
  if (stored !== estimate(e.visitors, precision))
    out.push(`${where}: visitors ${stored} ≠ ${estimate(e.visitors, precision)}`)
  return out
}

/** Differences between the `goal` rows `reader` holds and the truth, per window. */
async function compare(
  reader: AggregateReader,
  precision: number,
  siteId: string,
  truth: Map<string, Cell>,
): Promise<string[]> {
  const out: string[] = []
  const windows = new Set<string>()
  for (const k of truth.keys()) windows.add(k.split('|').slice(0, 2).join('|'))
  for (const w of windows) {
    const [g, ws] = w.split('|') as ['hour' | 'day', string]
    const from = Number(ws)
    const to = from + (g === 'hour' ? HOUR : DAY)
    const expected = new Map<string, Cell>()
    for (const [k, c] of truth) {
      const [gg, wws, goal] = k.split('|')
      if (gg === g && wws === ws) expected.set(goal!, c)
    }
    const read = await reader.breakdownDetailed(siteId, g, 'goal', from, to, { visitors: true })
    for (const goal of new Set([...expected.keys(), ...read.values.keys()])) {
      const e = expected.get(goal)
      const a = read.values.get(goal)
      const where = `${g} ${new Date(from).toISOString()} goal=${goal}`
      out.push(...cellDiffs(where, e, a, precision))
    }
  }
  return out
}

/** The dimensions conversions are broken down by here (the `goal|DIM` rows read). */
const BY = ['source', 'channel', 'path', 'country', 'entry_page'] as const
type By = (typeof BY)[number]

interface Known {
  ts: number
  index: number
  pageview: boolean
  dims: Record<string, string>
}

/**
 * The reference sessionizer, written apart from the product: the visit of `e` among `known` (the
 * visitor's counted events of that UTC day) is the run of events around it whose gaps (by time) are
 * under `gapMs`. Its values: the first event's session values, the path of its first pageview
 * (`(none)` without one). `upToEvent`: the run ends at `e` (the rebuild's "entry page so far"), else
 * the whole run of what is known (the stream's visit of the events arrived so far).
 */
function visitOfEvent(known: readonly Known[], e: Known, gapMs: number, upToEvent: boolean) {
  const sorted = [...known].sort((a, b) => a.ts - b.ts || a.index - b.index)
  const at = sorted.indexOf(e)
  let start = at
  while (start > 0 && sorted[start]!.ts - sorted[start - 1]!.ts < gapMs) start--
  let end = at
  if (!upToEvent) while (end + 1 < sorted.length && sorted[end + 1]!.ts - sorted[end]!.ts < gapMs) end++
  let entry: Known | undefined
  for (let k = start; k <= end; k++) {
    const x = sorted[k]!
    if (x.pageview && (!entry || x.ts < entry.ts || (x.ts === entry.ts && x.dims.path! < entry.dims.path!)))
      entry = x
  }
  return { first: sorted[start]!, entry: entry?.dims.path ?? '(none)' }
}

/**
 * Truth of conversions by dimension, per JSON [granularity, window start, dimension, stored value]
 * (the documented key: `NAME` U+001F value): session dimensions by the visit's first event, the
 * entry page by the visit, `path` by the completing event. Mode `stream`: each conversion valued
 * by the visit of the events arrived before it, in the order sent (what the stream knows then);
 * `rebuild`: by every event of the day, the entry page among the visit's events up to it.
 */
function goalByTruthOf(
  events: readonly GeneratedEvent[],
  goals: readonly string[],
  gapMs: number,
  mode: 'stream' | 'rebuild',
): Map<string, Cell> {
  const out = new Map<string, Cell>()
  const byVisitorDay = new Map<string, Known[]>()
  const all: Array<{ k: Known; p: Payload; key: string }> = []
  events.forEach((e, index) => {
    const p = counted(e)
    if (!p) return
    const ts = Date.parse(p.timestamp!)
    const k: Known = { ts, index, pageview: p.type === 'page', dims: dimensionValues(e) }
    all.push({ k, p, key: `${visitorOf(p)}|${Math.floor(ts / DAY)}` })
  })
  const count = (k: Known, p: Payload, known: Known[]) => {
    const reached = goalsOf(p, goals)
    if (reached.length === 0) return
    const v = visitOfEvent(known, k, gapMs, mode === 'rebuild')
    const values: Record<By, string> = {
      source: v.first.dims.source!,
      channel: v.first.dims.channel!,
      country: v.first.dims.country!,
      entry_page: v.entry,
      path: k.dims.path!,
    }
    for (const g of ['hour', 'day'] as const) {
      const ws = Math.floor(k.ts / (g === 'hour' ? HOUR : DAY)) * (g === 'hour' ? HOUR : DAY)
      for (const goal of reached)
        for (const dim of BY) {
          const key = JSON.stringify([g, ws, dim, `${goal}\u001f${values[dim]}`])
          const cell = out.get(key) ?? { events: 0, pageviews: 0, visitors: new Set<string>() }
          cell.events++
          if (k.pageview) cell.pageviews++
          cell.visitors.add(visitorOf(p))
          out.set(key, cell)
        }
    }
  }
  for (const { k, key } of all) {
    const list = byVisitorDay.get(key) ?? []
    list.push(k)
    byVisitorDay.set(key, list)
    if (mode === 'stream') count(k, all.find((x) => x.k === k)!.p, [...list])
  }
  if (mode === 'rebuild') for (const { k, p, key } of all) count(k, p, byVisitorDay.get(key)!)
  return out
}

/** Differences between the `goal|DIM` rows `reader` holds and the truth, per window and dimension. */
async function compareBy(
  reader: AggregateReader,
  precision: number,
  siteId: string,
  truth: Map<string, Cell>,
): Promise<string[]> {
  const out: string[] = []
  const groups = new Map<string, Map<string, Cell>>()
  for (const [k, c] of truth) {
    const [g, ws, dim, value] = JSON.parse(k) as [string, number, string, string]
    const gk = JSON.stringify([g, ws, dim])
    const m = groups.get(gk) ?? new Map<string, Cell>()
    m.set(value, c)
    groups.set(gk, m)
  }
  for (const [gk, expected] of groups) {
    const [g, from, dim] = JSON.parse(gk) as ['hour' | 'day', number, string]
    const to = from + (g === 'hour' ? HOUR : DAY)
    const read = await reader.breakdownDetailed(siteId, g, `goal|${dim}`, from, to, { visitors: true })
    for (const value of new Set([...expected.keys(), ...read.values.keys()])) {
      const e = expected.get(value)
      const a = read.values.get(value)
      const where = `${g} ${new Date(from).toISOString()} goal|${dim}=${JSON.stringify(value)}`
      out.push(...cellDiffs(where, e, a, precision))
    }
  }
  return out
}

/**
 * Truth of conversions by exit page, per JSON [granularity, window start, 'exit_page', stored value]:
 * the visits of the counted events (per visitor and UTC day, runs with gaps under `gapMs`, by the
 * reference rule written here), each visit whose events completed goals counted once per goal in its
 * start hour and day under its exit page (its last pageview's path, the greatest on a tie; `(none)`
 * without one): converters only (no completions or pageviews). The same for stream and rebuild once
 * every visit has ended.
 */
function exitTruthOf(
  events: readonly GeneratedEvent[],
  goals: readonly string[],
  gapMs: number,
): Map<string, Cell> {
  const byVisitorDay = new Map<string, Array<{ ts: number; index: number; p: Payload; path: string }>>()
  events.forEach((e, index) => {
    const p = counted(e)
    if (!p) return
    const ts = Date.parse(p.timestamp!)
    const key = `${visitorOf(p)}|${Math.floor(ts / DAY)}`
    const list = byVisitorDay.get(key) ?? []
    list.push({ ts, index, p, path: dimensionValues(e).path! })
    byVisitorDay.set(key, list)
  })
  const out = new Map<string, Cell>()
  for (const list of byVisitorDay.values()) {
    list.sort((a, b) => a.ts - b.ts || a.index - b.index)
    let start = 0
    while (start < list.length) {
      let end = start
      while (end + 1 < list.length && list[end + 1]!.ts - list[end]!.ts < gapMs) end++
      const visit = list.slice(start, end + 1)
      let exit: { ts: number; path: string } | undefined
      for (const x of visit)
        if (x.p.type === 'page' && (!exit || x.ts > exit.ts || (x.ts === exit.ts && x.path > exit.path)))
          exit = { ts: x.ts, path: x.path }
      const reached = new Set(visit.flatMap((x) => goalsOf(x.p, goals)))
      for (const g of ['hour', 'day'] as const) {
        const size = g === 'hour' ? HOUR : DAY
        const ws = Math.floor(visit[0]!.ts / size) * size
        for (const goal of reached) {
          const key = JSON.stringify([g, ws, 'exit_page', `${goal}\u001f${exit?.path ?? '(none)'}`])
          const cell = out.get(key) ?? { events: 0, pageviews: 0, visitors: new Set<string>() }
          cell.visitors.add(visitorOf(visit[0]!.p))
          out.set(key, cell)
        }
      }
      start = end + 1
    }
  }
  return out
}

const rate = (conversions: number, visitors: number) =>
  visitors === 0 ? 0 : Math.round((1000 * conversions) / visitors) / 10

/**
 * A declared key's value in an event, by the rule the README states (not the module's code): a
 * string as it is (its first 256 characters), a number or boolean as JSON writes it, `(none)` when
 * absent, empty, null, an object or an array.
 */
function propOf(p: Payload, key: string): string {
  const v = p.properties?.[key]
  if (typeof v === 'string') return v === '' ? '(none)' : v.slice(0, 256)
  if (typeof v === 'number' || typeof v === 'boolean') return JSON.stringify(v)
  return '(none)'
}

/**
 * Truth of conversions by custom property, per JSON [granularity, window start, key, goal] → the
 * completing events' own values of the key → cell (the same for stream and rebuild: the event's
 * own value does not depend on the visit).
 */
function goalPropTruthOf(
  events: readonly GeneratedEvent[],
  goals: readonly string[],
): Map<string, Map<string, Cell>> {
  const out = new Map<string, Map<string, Cell>>()
  for (const e of events) {
    const p = counted(e)
    if (!p) continue
    const ts = Date.parse(p.timestamp!)
    for (const goal of goalsOf(p, goals))
      for (const g of ['hour', 'day'] as const) {
        const ws = Math.floor(ts / (g === 'hour' ? HOUR : DAY)) * (g === 'hour' ? HOUR : DAY)
        for (const key of PROP_KEYS) {
          const gk = JSON.stringify([g, ws, key, goal])
          const m = out.get(gk) ?? new Map<string, Cell>()
          const value = propOf(p, key)
          const cell = m.get(value) ?? { events: 0, pageviews: 0, visitors: new Set<string>() }
          cell.events++
          if (p.type === 'page') cell.pageviews++
          cell.visitors.add(visitorOf(p))
          m.set(value, cell)
          out.set(gk, m)
        }
      }
  }
  return out
}

/** Folds cells into `(other)` beyond the cap rule's kept values (per goal and window). */
function capCells(cells: ReadonlyMap<string, Cell>, max: number): Map<string, Cell> {
  const kept = keptValues(cells.keys(), max)
  const out = new Map<string, Cell>()
  for (const [value, c] of cells) {
    const v = kept.has(value) ? value : OTHER
    const e = out.get(v) ?? { events: 0, pageviews: 0, visitors: new Set<string>() }
    e.events += c.events
    e.pageviews += c.pageviews
    for (const id of c.visitors) e.visitors.add(id)
    out.set(v, e)
  }
  return out
}

const mergeValues = (a: MergedValues | undefined, b: MergedValues): MergedValues => {
  if (!a) return b
  const h = HyperLogLog.fromBytes(a.visitors)
  if (b.visitors.length > 0) h.merge(HyperLogLog.fromBytes(b.visitors))
  return { ...a, events: a.events + b.events, pageviews: a.pageviews + b.pageviews, visitors: h.toBytes() }
}

/**
 * Differences between the `goal|prop:KEY` rows `reader` holds and the truth, per window, key and
 * goal: both under the cap rule per goal (the stream's partitions each keep their share's values;
 * the reader applies the rule again to the merged values, as the query does). `maxRows`: the most
 * rows stored per window, key and goal (the bound the cap keeps: PROP_MAX + 1 per writer).
 */
async function compareProps(
  reader: AggregateReader,
  precision: number,
  siteId: string,
  truth: Map<string, Map<string, Cell>>,
  maxRows: number,
): Promise<string[]> {
  const out: string[] = []
  const reads = new Map<string, Awaited<ReturnType<AggregateReader['breakdownDetailed']>>>()
  for (const [gk, cells] of truth) {
    const [g, from, key, goal] = JSON.parse(gk) as ['hour' | 'day', number, string, string]
    const to = from + (g === 'hour' ? HOUR : DAY)
    const rk = JSON.stringify([g, from, key])
    let read = reads.get(rk)
    if (!read) {
      read = await reader.breakdownDetailed(siteId, g, `goal|prop:${key}`, from, to, { visitors: true })
      reads.set(rk, read)
    }
    const ofGoal = new Map<string, MergedValues>()
    for (const [stored, v] of read.values)
      if (stored.startsWith(`${goal}\u001f`)) ofGoal.set(stored.slice(goal.length + 1), v)
    if (ofGoal.size > maxRows)
      out.push(
        `${g} ${new Date(from).toISOString()} goal|prop:${key} ${goal}: ${ofGoal.size} rows > ${maxRows}`,
      )
    const actual = capValues(ofGoal, PROP_MAX, mergeValues).values
    const expected = capCells(cells, PROP_MAX)
    for (const value of new Set([...expected.keys(), ...actual.keys()])) {
      const e = expected.get(value)
      const a = actual.get(value)
      const where = `${g} ${new Date(from).toISOString()} goal|prop:${key} ${goal}=${JSON.stringify(value)}`
      out.push(...cellDiffs(where, e, a, precision))
    }
  }
  return out
}

/** The local date (YYYY-MM-DD) of an instant in a zone, by the platform's Intl (not query/zone.ts). */
function localDate(ms: number, zone: string): string {
  return new Intl.DateTimeFormat('en-CA', {
    timeZone: zone,
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
  }).format(new Date(ms))
}

describe.each(backends)('goals, stream and rebuild (%s)', (_name, openStore, openLog) => {
  let store: Harness
  let log: EventLogHarness
  let topic: string
  let data: ReturnType<typeof tempDataDir>
  let config = testConfig()
  let site: Site
  let readToken: string
  let query: Awaited<ReturnType<typeof buildQueryApp>> | undefined
  const siteId = `goals-${Date.now()}.test`
  const group = () => `goals-${topic}`
  const GOALS = [eventGoal('Added to Cart'), pageGoal('/blog/*'), pageGoal('/docs/**')]
  const names = GOALS.map((g) => g.name)

  beforeAll(async () => {
    ;({ store, log, topic, config, data } = await openPipeline(openStore, openLog, {
      dataPrefix: 'tally-goals-',
      env: {
        TALLY_GRACE_MS: String(GRACE_MS),
        TALLY_FLUSH_INTERVAL_MS: '100',
        TALLY_PROP_VALUES_MAX: String(PROP_MAX),
      },
    }))
    const created = await store.sites.create({ siteId, domain: siteId, origins: [] })
    site = created.site
    readToken = created.readToken
    for (const g of GOALS) await store.sites.addGoal(siteId, g)
    for (const key of PROP_KEYS) await store.sites.addPropKey(siteId, key)
  }, 60_000)

  afterAll(async () => {
    await query?.close()
    await zoned?.close()
    await closePipeline({ log, store, data })
  })

  const events = generateWorkload({
    seed: 23,
    sites: ['a'],
    events: 2000,
    start: new Date(START),
    spanMs: 2 * HOUR,
    lateShare: 0,
  }).events.map((e) => ({ ...e, siteId }))
  const stamps = events.map((e) => Date.parse((e.payload as Payload).timestamp!))
  const FROM = Math.floor(Math.min(...stamps) / HOUR) * HOUR
  const TO = Math.floor(Math.max(...stamps) / HOUR) * HOUR + HOUR

  const appWith = (auth: ReadAuthorizer) =>
    buildQueryApp({
      reader: store.reader,
      auth,
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
      propValuesMax: PROP_MAX,
    })
  // The same store read for a site in ZONE (its periods and daily points are local days there).
  let zoned: Awaited<ReturnType<typeof buildQueryApp>> | undefined
  const getZoned = async (path: string) => {
    const auth = new ReadAccessCache(store.sites)
    zoned ??= await appWith({ authorize: (s, a) => auth.authorize(s, a), zoneOf: () => ZONE })
    const res = await zoned.inject({
      method: 'GET',
      url: `${path}&site=${encodeURIComponent(siteId)}&from=${localDate(FROM, ZONE)}&to=${localDate(TO - 1, ZONE)}`,
      headers: { authorization: `Bearer ${readToken}` },
    })
    return { status: res.statusCode, body: res.json() }
  }

  const get = async (path: string) => {
    query ??= await appWith(new ReadAccessCache(store.sites))
    const res = await query.inject({
      method: 'GET',
      url: `${path}&site=${encodeURIComponent(siteId)}&from=${new Date(FROM).toISOString()}&to=${new Date(TO).toISOString()}`,
      headers: { authorization: `Bearer ${readToken}` },
    })
    return { status: res.statusCode, body: res.json() }
  }

  /** The query API's conversions and rates against the truth's estimates, over [FROM, TO). */
  async function checkQueries(goals: readonly string[], mode: 'stream' | 'rebuild'): Promise<void> {
    const visitorsIn = (from: number, to: number) => {
      const ids = new Set<string>()
      events.forEach((e, i) => {
        const p = counted(e)
        if (p && stamps[i]! >= from && stamps[i]! < to) ids.add(visitorOf(p))
      })
      return Math.round(estimate(ids, store.precision))
    }
    const convertersIn = (goal: string, from: number, to: number) => {
      const ids = new Set<string>()
      let completions = 0
      events.forEach((e, i) => {
        const p = counted(e)
        if (p && stamps[i]! >= from && stamps[i]! < to && goalsOf(p, [goal]).length > 0) {
          ids.add(visitorOf(p))
          completions++
        }
      })
      return { conversions: Math.round(estimate(ids, store.precision)), completions }
    }
    const all = visitorsIn(FROM, TO)
    const breakdown = await get(
      '/v1/stats/breakdown?property=goal&metrics=conversions,events,conversion_rate',
    )
    expect(breakdown.status, JSON.stringify(breakdown.body)).toBe(200)
    const expectedRows = goals
      .map((goal) => {
        const t = convertersIn(goal, FROM, TO)
        return {
          goal,
          conversions: t.conversions,
          events: t.completions,
          conversion_rate: rate(t.conversions, all),
        }
      })
      .filter((r) => r.events > 0)
      .sort((a, b) => b.conversions - a.conversions || (a.goal < b.goal ? -1 : 1))
    expect(expectedRows.length).toBe(goals.length)
    expect(breakdown.body.results).toEqual(expectedRows)
    expect(breakdown.body.meta.metrics.conversions.approximate).toBe(true)
    for (const goal of goals) {
      const t = convertersIn(goal, FROM, TO)
      const agg = await get(
        `/v1/stats/aggregate?metrics=conversions,conversion_rate,events&filters=${encodeURIComponent(`goal==${goal}`)}`,
      )
      expect(agg.status, JSON.stringify(agg.body)).toBe(200)
      expect(agg.body.results).toEqual({
        conversions: { value: t.conversions },
        conversion_rate: { value: rate(t.conversions, all) },
        events: { value: t.completions },
      })
      expect(agg.body.meta.metrics.conversions).toMatchObject({ approximate: true, method: 'HyperLogLog' })
    }
    const goal = goals[1]!
    const series = await get(
      `/v1/stats/timeseries?interval=hour&metrics=conversions,conversion_rate&filters=${encodeURIComponent(`goal==${goal}`)}`,
    )
    expect(series.status, JSON.stringify(series.body)).toBe(200)
    const points = (series.body.results as Array<{ conversions: number; conversion_rate: number }>).map(
      (p) => [p.conversions, p.conversion_rate],
    )
    const expectedPoints: number[][] = []
    for (let h = FROM; h < TO; h += HOUR) {
      const c = convertersIn(goal, h, h + HOUR).conversions
      expectedPoints.push([c, rate(c, visitorsIn(h, h + HOUR))])
    }
    expect(points).toEqual(expectedPoints)
    // Plausible's Stats API over the same days: event:goal reads the goal rows, its visitors are
    // the converters (as Plausible counts them), conversion_rate over the days' visitors.
    const day = (ms: number) => new Date(ms).toISOString().slice(0, 10)
    const plausible = async (path: string) => {
      const res = await query!.inject({
        method: 'GET',
        url: `${path}&site_id=${encodeURIComponent(siteId)}&period=custom&date=${day(FROM)},${day(TO - 1)}`,
        headers: { authorization: `Bearer ${readToken}` },
      })
      return { status: res.statusCode, body: res.json() }
    }
    const byGoal = await plausible(
      '/api/v1/stats/breakdown?property=event:goal&metrics=visitors,events,conversion_rate',
    )
    expect(byGoal.status, JSON.stringify(byGoal.body)).toBe(200)
    const sortByGoal = (rows: Array<{ goal: string }>) => [...rows].sort((a, b) => (a.goal < b.goal ? -1 : 1))
    expect(sortByGoal(byGoal.body.results)).toEqual(
      sortByGoal(
        expectedRows.map((r) => ({
          goal: r.goal,
          visitors: r.conversions,
          events: r.events,
          conversion_rate: r.conversion_rate,
        })),
      ),
    )
    for (const goal of goals) {
      const t = convertersIn(goal, FROM, TO)
      const agg = await plausible(
        `/api/v1/stats/aggregate?metrics=visitors,events,conversion_rate&filters=${encodeURIComponent(`event:goal==${goal}`)}`,
      )
      expect(agg.status, JSON.stringify(agg.body)).toBe(200)
      expect(agg.body).toEqual({
        results: {
          visitors: { value: t.conversions },
          events: { value: t.completions },
          conversion_rate: { value: rate(t.conversions, all) },
        },
      })
    }
    const noGoal = await plausible('/api/v1/stats/aggregate?metrics=conversion_rate')
    expect(noGoal.status).toBe(400)
    expect(noGoal.body.error).toContain('goal')
    // Completions by exit page are not kept (converters of ended visits only): the answer names
    // what is.
    const byExit = await get(
      `/v1/stats/breakdown?property=exit_page&metrics=conversions,events&filters=${encodeURIComponent(`goal==${goal}`)}`,
    )
    expect(byExit.status, JSON.stringify(byExit.body)).toBe(400)
    expect(JSON.stringify(byExit.body)).toContain('exit_page')
    // Conversions by source, channel, path and country: converters and completions of the visit's
    // (or the event's) value, the rate over that value's own visitors in the range.
    const byTruth = goalByTruthOf(events, goals, config.stream.visitGapMs, mode)
    const visitorsOfValue = (dim: By, value: string) => {
      const ids = new Set<string>()
      events.forEach((e, i) => {
        const p = counted(e)
        if (p && stamps[i]! >= FROM && stamps[i]! < TO && dimensionValues(e)[dim as 'path'] === value)
          ids.add(visitorOf(p))
      })
      return Math.round(estimate(ids, store.precision))
    }
    for (const g of [goals[0]!, goals[1]!])
      for (const dim of ['source', 'channel', 'path', 'country'] as const) {
        // The range's truth: the hour cells of the range, merged per value.
        const cells = new Map<string, Cell>()
        for (const [k, c] of byTruth) {
          const [gg, ws, d, stored] = JSON.parse(k) as [string, number, string, string]
          if (gg !== 'hour' || d !== dim || ws < FROM || ws >= TO || !stored.startsWith(`${g}\u001f`))
            continue
          const value = stored.slice(g.length + 1)
          const cell = cells.get(value) ?? { events: 0, pageviews: 0, visitors: new Set<string>() }
          cell.events += c.events
          for (const v of c.visitors) cell.visitors.add(v)
          cells.set(value, cell)
        }
        expect(cells.size, `${g} by ${dim}`).toBeGreaterThan(0)
        const expected = [...cells]
          .map(([value, c]) => {
            const conversions = Math.round(estimate(c.visitors, store.precision))
            return {
              [dim]: value,
              visitors: conversions,
              conversions,
              events: c.events,
              conversion_rate: rate(conversions, visitorsOfValue(dim, value)),
            }
          })
          .sort((a, b) => b.visitors - a.visitors || (a[dim]! < b[dim]! ? -1 : 1))
        const answer = await get(
          `/v1/stats/breakdown?property=${dim}&limit=1000&metrics=visitors,conversions,events,conversion_rate&filters=${encodeURIComponent(`goal==${g}`)}`,
        )
        expect(answer.status, JSON.stringify(answer.body)).toBe(200)
        expect(answer.body.results, `${g} by ${dim}`).toEqual(expected)
        expect(answer.body.meta.metrics.conversions.approximate).toBe(true)
        // The aggregate with the goal and that property's value: the same numbers as its row.
        const top = expected[0]!
        const one = await get(
          `/v1/stats/aggregate?metrics=conversions,events,conversion_rate&filters=${encodeURIComponent(`goal==${g};${dim}==${String(top[dim]).replace(/[\\;|]/g, '\\$&')}`)}`,
        )
        expect(one.status, JSON.stringify(one.body)).toBe(200)
        expect(one.body.results, `${g} and ${dim}==${top[dim]}`).toEqual({
          conversions: { value: top.conversions },
          events: { value: top.events },
          conversion_rate: { value: top.conversion_rate },
        })
        // Plausible's Stats API: event:goal with a breakdown by visit:* or event:page.
        const name = dim === 'path' ? 'event:page' : `visit:${dim}`
        const rowKey = dim === 'path' ? 'page' : dim
        const pl = await plausible(
          `/api/v1/stats/breakdown?property=${name}&limit=1000&metrics=visitors,events,conversion_rate&filters=${encodeURIComponent(`event:goal==${g}`)}`,
        )
        expect(pl.status, JSON.stringify(pl.body)).toBe(200)
        expect(pl.body.results, `Plausible ${g} by ${name}`).toEqual(
          expected.map((r) => ({
            [rowKey]: r[dim],
            visitors: r.visitors,
            events: r.events,
            conversion_rate: r.conversion_rate,
          })),
        )
      }
    await checkByPropQueries()
    await checkSeriesBy(byTruth)
  }

  /** Visitors (not bots) of the counted events in [from, to) whose `pick` is `value`. */
  const visitorsWith = (
    pick: (e: GeneratedEvent, p: Payload) => string,
    value: string,
    from: number,
    to: number,
  ) => {
    const ids = new Set<string>()
    events.forEach((e, i) => {
      const p = counted(e)
      if (p && stamps[i]! >= from && stamps[i]! < to && pick(e, p) === value) ids.add(visitorOf(p))
    })
    return ids
  }
  const byProp = (key: string) => (_e: GeneratedEvent, p: Payload) => propOf(p, key)
  const bySource = (e: GeneratedEvent) => dimensionValues(e).source!
  /** The completions of `goal` in [from, to) per the completing event's value of `key`. */
  const completionsBy = (goal: string, key: string, from: number, to: number) => {
    const out = new Map<string, Cell>()
    events.forEach((e, i) => {
      const p = counted(e)
      if (!p || stamps[i]! < from || stamps[i]! >= to || goalsOf(p, [goal]).length === 0) return
      const v = propOf(p, key)
      const c = out.get(v) ?? { events: 0, pageviews: 0, visitors: new Set<string>() }
      c.events++
      if (p.type === 'page') c.pageviews++
      c.visitors.add(visitorOf(p))
      out.set(v, c)
    })
    return out
  }
  const n = (ids: Iterable<string>) => Math.round(estimate(ids, store.precision))

  /**
   * Conversions by custom property over [FROM, TO): the breakdown (Tally's and Plausible's), the
   * aggregate of one value; `product_id` folds beyond the cap as its own rows fold.
   */
  /**
   * Conversions by exit page: the `goal|exit_page` rows equal the truth of the ended visits, and the
   * query API (breakdown, aggregate with goal==NAME;exit_page==P, Plausible's event:goal with
   * visit:exit_page) answers its estimates over [FROM, TO).
   */
  async function checkExitPages(goals: readonly string[]): Promise<void> {
    const truth = exitTruthOf(events, goals, config.stream.visitGapMs)
    // Conversions under several exit pages, and some under (none) or not: the rows are exercised.
    expect(truth.size).toBeGreaterThan(goals.length * 2)
    expect(await compareBy(store.reader, store.precision, siteId, truth)).toEqual([])
    for (const goal of goals) {
      const byPage = new Map<string, Set<string>>()
      for (const [k, c] of truth) {
        const [g, ws, , value] = JSON.parse(k) as [string, number, string, string]
        if (g !== 'hour' || ws < FROM || ws >= TO || !value.startsWith(`${goal}\u001f`)) continue
        const page = value.slice(goal.length + 1)
        const ids = byPage.get(page) ?? new Set<string>()
        for (const id of c.visitors) ids.add(id)
        byPage.set(page, ids)
      }
      const expected = [...byPage]
        .map(([page, ids]) => ({ exit_page: page, conversions: Math.round(estimate(ids, store.precision)) }))
        .sort((a, b) => b.conversions - a.conversions || (a.exit_page < b.exit_page ? -1 : 1))
      const res = await get(
        `/v1/stats/breakdown?property=exit_page&metrics=conversions&limit=1000&filters=${encodeURIComponent(`goal==${goal}`)}`,
      )
      expect(res.status, JSON.stringify(res.body)).toBe(200)
      expect(res.body.results, goal).toEqual(expected)
      // meta says visits still going on can add to windows that are not final.
      expect(res.body.meta.visits.note).toContain('TALLY_VISIT_GAP_MS')
      const [top] = expected
      if (!top) continue
      const agg = await get(
        `/v1/stats/aggregate?metrics=conversions,visitors&filters=${encodeURIComponent(`goal==${goal};exit_page==${top.exit_page}`)}`,
      )
      expect(agg.status, JSON.stringify(agg.body)).toBe(200)
      expect(agg.body.results).toEqual({
        conversions: { value: top.conversions },
        visitors: { value: top.conversions },
      })
      expect(agg.body.meta.visits.note).toContain('TALLY_VISIT_GAP_MS')
      // Per hour: the converters of the visits that started in it and ended on that page.
      const series = await get(
        `/v1/stats/timeseries?interval=hour&metrics=conversions&filters=${encodeURIComponent(`goal==${goal};exit_page==${top.exit_page}`)}`,
      )
      expect(series.status, JSON.stringify(series.body)).toBe(200)
      const perHour = (ws: number) => {
        const c = truth.get(JSON.stringify(['hour', ws, 'exit_page', `${goal}\u001f${top.exit_page}`]))
        return c ? Math.round(estimate(c.visitors, store.precision)) : 0
      }
      const points = (series.body.results as Array<{ conversions: number }>).map((p) => p.conversions)
      const expectedPoints: number[] = []
      for (let h = FROM; h < TO; h += HOUR) expectedPoints.push(perHour(h))
      expect(points).toEqual(expectedPoints)
      expect(expectedPoints.some((c) => c > 0)).toBe(true)
      const pl = await query!.inject({
        method: 'GET',
        url: `/api/v1/stats/breakdown?site_id=${encodeURIComponent(siteId)}&period=custom&date=${new Date(FROM).toISOString().slice(0, 10)},${new Date(TO - 1).toISOString().slice(0, 10)}&property=visit:exit_page&metrics=visitors&limit=1000&filters=${encodeURIComponent(`event:goal==${goal}`)}`,
        headers: { authorization: `Bearer ${readToken}` },
      })
      expect(pl.statusCode, pl.body).toBe(200)
      const plRows = (pl.json() as { results: Array<{ exit_page: string; visitors: number }> }).results
      expect(new Set(plRows.map((r) => r.exit_page))).toEqual(new Set(expected.map((r) => r.exit_page)))
      // Plausible's range is whole UTC days: per exit page, the estimate of the converters of the
      // visits that started on those days.
      const dayFrom = Math.floor(FROM / DAY) * DAY
      const dayTo = Math.floor((TO - 1) / DAY) * DAY + DAY
      const byDayPage = new Map<string, Set<string>>()
      for (const [k, c] of truth) {
        const [g, ws, , value] = JSON.parse(k) as [string, number, string, string]
        if (g !== 'day' || ws < dayFrom || ws >= dayTo || !value.startsWith(`${goal}\u001f`)) continue
        const page = value.slice(goal.length + 1)
        const ids = byDayPage.get(page) ?? new Set<string>()
        for (const id of c.visitors) ids.add(id)
        byDayPage.set(page, ids)
      }
      expect(new Map(plRows.map((r) => [r.exit_page, r.visitors])), `Plausible ${goal}`).toEqual(
        new Map([...byDayPage].map(([page, ids]) => [page, Math.round(estimate(ids, store.precision))])),
      )
    }
  }

  async function checkByPropQueries(): Promise<void> {
    const cart = 'Added to Cart'
    for (const goal of [cart, 'Visit /blog/*'])
      for (const key of PROP_KEYS) {
        const cells = completionsBy(goal, key, FROM, TO)
        expect(cells.size, `${goal} by ${key}`).toBeGreaterThan(0)
        // The property's own values over the range (every counted event, bots' too: its rows'),
        // and which of them the cap rule keeps: a goal's value beyond them reads as (other).
        const own = new Set<string>()
        events.forEach((e, i) => {
          const p = e.payload as Payload
          if (
            !e.isDuplicate &&
            ['track', 'page', 'screen'].includes(p.type) &&
            stamps[i]! >= FROM &&
            stamps[i]! < TO
          )
            own.add(propOf(p, key))
        })
        const ownKept = keptValues(own, PROP_MAX)
        const shown = (v: string) => (ownKept.has(v) ? v : OTHER)
        const folded = new Map<string, Cell>()
        for (const [v, c] of cells) {
          const f = folded.get(shown(v)) ?? { events: 0, pageviews: 0, visitors: new Set<string>() }
          f.events += c.events
          for (const id of c.visitors) f.visitors.add(id)
          folded.set(shown(v), f)
        }
        const property = `prop:${key}`
        const expected = [...folded]
          .map(([value, c]) => {
            const conversions = n(c.visitors)
            const of = visitorsWith((_e, p) => shown(propOf(p, key)), value, FROM, TO)
            return {
              [property]: value,
              visitors: conversions,
              conversions,
              events: c.events,
              conversion_rate: rate(conversions, n(of)),
            }
          })
          .sort((a, b) => b.visitors - a.visitors || (a[property]! < b[property]! ? -1 : 1))
        const answer = await get(
          `/v1/stats/breakdown?property=${property}&limit=1000&metrics=visitors,conversions,events,conversion_rate&filters=${encodeURIComponent(`goal==${goal}`)}`,
        )
        expect(answer.status, JSON.stringify(answer.body)).toBe(200)
        expect(answer.body.results, `${goal} by ${property}`).toEqual(expected)
        // product_id passes the cap (the workload's 24 products), quantity does not (1–3, (none)).
        expect(own.size > PROP_MAX + 1, key).toBe(key === 'product_id')
        if (key === 'product_id' && goal === cart) expect(folded.has(OTHER)).toBe(true)
        if (goal !== cart) expect([...cells.keys()]).toEqual(['(none)'])
        // The aggregate of the goal and one value: the numbers of its row.
        const top = expected[0]!
        const one = await get(
          `/v1/stats/aggregate?metrics=conversions,events,conversion_rate&filters=${encodeURIComponent(`goal==${goal};${property}==${String(top[property])}`)}`,
        )
        expect(one.status, JSON.stringify(one.body)).toBe(200)
        if (top[property] !== OTHER)
          expect(one.body.results, `${goal} and ${property}==${top[property]}`).toEqual({
            conversions: { value: top.conversions },
            events: { value: top.events },
            conversion_rate: { value: top.conversion_rate },
          })
        // Plausible's Stats API: event:goal with a breakdown by event:props:KEY (rows keyed KEY).
        const day = (ms: number) => new Date(ms).toISOString().slice(0, 10)
        const res = await query!.inject({
          method: 'GET',
          url: `/api/v1/stats/breakdown?property=event:props:${key}&limit=1000&metrics=visitors,events,conversion_rate&filters=${encodeURIComponent(`event:goal==${goal}`)}&site_id=${encodeURIComponent(siteId)}&period=custom&date=${day(FROM)},${day(TO - 1)}`,
          headers: { authorization: `Bearer ${readToken}` },
        })
        expect(res.statusCode, res.body).toBe(200)
        // Plausible's range is whole UTC days: the same events (all within [FROM, TO)).
        expect(res.json().results, `Plausible ${goal} by event:props:${key}`).toEqual(
          expected.map((r) => ({
            [key]: r[property],
            visitors: r.visitors,
            events: r.events,
            conversion_rate: r.conversion_rate,
          })),
        )
      }
  }

  /**
   * Timeseries with goal==NAME and a property's value: per UTC hour and per local day of ZONE, the
   * converters with that value and the rate over the value's own visitors of the same point.
   * `quantity`: the completing event's value; `source`: the converting visit's (`byTruth`).
   */
  async function checkSeriesBy(byTruth: Map<string, Cell>): Promise<void> {
    const cart = 'Added to Cart'
    const quantities = completionsBy(cart, 'quantity', FROM, TO)
    const q = [...quantities].sort(
      (a, b) => b[1].visitors.size - a[1].visitors.size || (a[0] < b[0] ? -1 : 1),
    )[0]![0]
    const sources = new Map<string, number>()
    for (const [k, c] of byTruth) {
      const [g, , d, stored] = JSON.parse(k) as [string, number, string, string]
      if (g === 'day' && d === 'source' && stored.startsWith(`${cart}\u001f`))
        sources.set(
          stored.slice(cart.length + 1),
          (sources.get(stored.slice(cart.length + 1)) ?? 0) + c.events,
        )
    }
    const source = [...sources].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))[0]![0]
    // Converters per hour: quantity from the events, source from the visit truth's hour cells.
    const convertersOf = (which: 'quantity' | 'source', h: number): Set<string> => {
      if (which === 'quantity')
        return completionsBy(cart, 'quantity', h, h + HOUR).get(q)?.visitors ?? new Set()
      return (
        byTruth.get(JSON.stringify(['hour', h, 'source', `${cart}\u001f${source}`]))?.visitors ?? new Set()
      )
    }
    const filterOf = (which: 'quantity' | 'source') =>
      which === 'quantity'
        ? `goal==${cart};prop:quantity==${q}`
        : `goal==${cart};source==${source.replace(/[\\;|]/g, '\\$&')}`
    const ownOf = (which: 'quantity' | 'source', from: number, to: number) =>
      which === 'quantity'
        ? visitorsWith(byProp('quantity'), q, from, to)
        : visitorsWith(bySource, source, from, to)
    for (const which of ['quantity', 'source'] as const) {
      const filters = encodeURIComponent(filterOf(which))
      const hourly = await get(
        `/v1/stats/timeseries?interval=hour&metrics=conversions,conversion_rate&filters=${filters}`,
      )
      expect(hourly.status, JSON.stringify(hourly.body)).toBe(200)
      const expectedHours: number[][] = []
      for (let h = FROM; h < TO; h += HOUR) {
        const c = n(convertersOf(which, h))
        expectedHours.push([c, rate(c, n(ownOf(which, h, h + HOUR)))])
      }
      expect(expectedHours.some(([c]) => c! > 0)).toBe(true)
      expect(
        (hourly.body.results as Array<{ conversions: number; conversion_rate: number }>).map((p) => [
          p.conversions,
          p.conversion_rate,
        ]),
        `hourly ${which}`,
      ).toEqual(expectedHours)
      // Local days of ZONE: each day's hours merged (registers, not sums), its own visitors apart.
      const days = new Map<string, { converters: Set<string>; own: Set<string> }>()
      const fromDay = localDate(FROM, ZONE)
      const toDay = localDate(TO - 1, ZONE)
      for (let h = FROM - 30 * HOUR; h < TO + 30 * HOUR; h += HOUR) {
        const d = localDate(h, ZONE)
        if (d < fromDay || d > toDay) continue
        const day = days.get(d) ?? { converters: new Set<string>(), own: new Set<string>() }
        for (const id of convertersOf(which, h)) day.converters.add(id)
        for (const id of ownOf(which, h, h + HOUR)) day.own.add(id)
        days.set(d, day)
      }
      const expectedDays = [...days]
        .sort((a, b) => (a[0] < b[0] ? -1 : 1))
        .map(([, d]) => [n(d.converters), rate(n(d.converters), n(d.own))])
      const daily = await getZoned(
        `/v1/stats/timeseries?interval=day&metrics=conversions,conversion_rate&filters=${filters}`,
      )
      expect(daily.status, JSON.stringify(daily.body)).toBe(200)
      expect(
        (daily.body.results as Array<{ conversions: number; conversion_rate: number }>).map((p) => [
          p.conversions,
          p.conversion_rate,
        ]),
        `local days (${ZONE}) ${which}`,
      ).toEqual(expectedDays)
      expect(daily.body.meta.time_zone).toMatchObject({ zone: ZONE })
    }
    // Plausible's timeseries with event:goal and event:props:quantity: per UTC day, `visitors`
    // the converters with that value, the rate over the value's visitors of the day.
    const day = (ms: number) => new Date(ms).toISOString().slice(0, 10)
    const res = await query!.inject({
      method: 'GET',
      url: `/api/v1/stats/timeseries?interval=date&metrics=visitors,conversion_rate&filters=${encodeURIComponent(`event:goal==${cart};event:props:quantity==${q}`)}&site_id=${encodeURIComponent(siteId)}&period=custom&date=${day(FROM)},${day(TO - 1)}`,
      headers: { authorization: `Bearer ${readToken}` },
    })
    expect(res.statusCode, res.body).toBe(200)
    const expectedDays: Array<{ date: string; visitors: number; conversion_rate: number }> = []
    for (let d = Math.floor(FROM / DAY) * DAY; d < TO; d += DAY) {
      const c = n(completionsBy(cart, 'quantity', d, d + DAY).get(q)?.visitors ?? [])
      expectedDays.push({
        date: day(d),
        visitors: c,
        conversion_rate: rate(c, n(visitorsWith(byProp('quantity'), q, d, d + DAY))),
      })
    }
    expect(res.json().results, 'Plausible timeseries by goal and event:props:quantity').toEqual(expectedDays)
  }

  it('the stream counts completions and converters per goal, hour and day; the query answers conversions and rates', async () => {
    expect(events.some((e) => e.isDuplicate)).toBe(true)
    expect(events.some((e) => e.isBot)).toBe(true)
    await ingestAll(log, config, [site], events, logger)
    await streamToEnd(log, store, {
      topic,
      group: group(),
      stream: config.stream,
      logger,
      propKeys: new PropKeyCache(store.sites, 60_000, logger),
    })
    const truth = truthOf(events, names)
    // Every goal is reached, and a bot or a duplicate completed some (they must not count).
    for (const n of names)
      expect(
        [...truth.keys()].some((k) => k.endsWith(`|${n}`)),
        n,
      ).toBe(true)
    expect(
      events.some((e) => (e.isBot || e.isDuplicate) && goalsOf(e.payload as Payload, names).length > 0),
    ).toBe(true)
    expect(await compare(store.reader, store.precision, siteId, truth)).toEqual([])
    expect(
      await compareBy(
        store.reader,
        store.precision,
        siteId,
        goalByTruthOf(events, names, config.stream.visitGapMs, 'stream'),
      ),
    ).toEqual([])
    // Some window's product_id values of a goal pass the cap (the bound below is exercised).
    const propTruth = goalPropTruthOf(events, names)
    expect([...propTruth.values()].some((m) => m.size > PROP_MAX + 1)).toBe(true)
    // The stream: PROP_MAX + 1 rows per source partition (3) at most.
    expect(await compareProps(store.reader, store.precision, siteId, propTruth, 3 * (PROP_MAX + 1))).toEqual(
      [],
    )
    // The visit's values matter: some conversions' own source (a later page's referrer is the
    // site itself: Direct / None) is not their visit's, so rows by the event's own would differ.
    const streamBy = goalByTruthOf(events, names, config.stream.visitGapMs, 'stream')
    const ownSources = new Set<string>()
    events.forEach((e) => {
      const p = counted(e)
      if (!p) return
      const ts = Date.parse(p.timestamp!)
      for (const goal of goalsOf(p, names))
        ownSources.add(
          JSON.stringify([
            'day',
            Math.floor(ts / DAY) * DAY,
            'source',
            `${goal}\u001f${dimensionValues(e).source}`,
          ]),
        )
    })
    const visitSources = [...streamBy.keys()].filter((k) => k.startsWith('["day"') && k.includes('"source"'))
    expect(
      visitSources.some((k) => !ownSources.has(k)) || [...ownSources].some((k) => !streamBy.has(k)),
    ).toBe(true)
    await checkQueries(names, 'stream')
    // Not defined yet: no rows, though the events that would complete it were counted.
    expect([...truthOf(events, ['Searched']).keys()].length).toBeGreaterThan(0)
    const read = await store.reader.breakdownDetailed(siteId, 'day', 'goal', RANGE_FROM, RANGE_TO)
    expect([...read.values.keys()].sort()).toEqual([...names].sort())
  }, 180_000)

  it('the stream writes conversions by exit page once the visits have ended, not before', async () => {
    // Before: the watermark (receive time) is within the grace of every visit, so none has ended
    // and no conversion is in an exit-page row yet.
    const before = await store.reader.breakdownDetailed(siteId, 'day', 'goal|exit_page', RANGE_FROM, RANGE_TO)
    expect(before.values.size).toBe(0)
    // An operator lowers the grace and the stream restarts; identify calls (counted nowhere) of
    // many visitors move every partition's watermark past the visits' last events plus the gap.
    const identify: GeneratedEvent[] = Array.from({ length: 40 }, (_, i) => ({
      ...events[0]!,
      isBot: false,
      isDuplicate: false,
      isLate: false,
      isOutOfOrder: false,
      payload: {
        type: 'identify',
        anonymousId: `exit-watermark-${i}`,
        messageId: `exit-watermark-${siteId}-${i}`,
        timestamp: new Date().toISOString(),
        traits: {},
        context: {},
      } as unknown as GeneratedEvent['payload'],
    }))
    await ingestAll(log, config, [site], identify, logger)
    await streamToEnd(log, store, {
      topic,
      group: group(),
      stream: { ...config.stream, graceMs: 5 * 60_000 },
      logger,
      propKeys: new PropKeyCache(store.sites, 60_000, logger),
    })
    await checkExitPages(names)
  }, 180_000)

  it('a rebuild gives the same numbers, final, and counts a goal defined after the stream ("define, then rebuild")', async () => {
    await store.sites.addGoal(siteId, eventGoal('Searched'))
    await archiveWholeLog(log, store, {
      topic,
      archiveDir: join(data.dir, 'archive'),
      owner: 'goals-test',
      logger,
    })
    const result = await rebuildFromArchive(
      store,
      {
        topic,
        dataDir: data.dir,
        owner: 'goals-test',
        logger,
        visitGapMs: config.stream.visitGapMs,
        propKeys: true,
        settings: { propValuesMax: PROP_MAX },
      },
      { fromMs: RANGE_FROM, toMs: RANGE_TO, siteId },
    )
    expect(result.status).toBe('succeeded')
    const all = [...names, 'Searched']
    const truth = truthOf(events, all)
    expect(await compare(store.reader, store.precision, siteId, truth)).toEqual([])
    expect(
      await compareBy(
        store.reader,
        store.precision,
        siteId,
        goalByTruthOf(events, all, config.stream.visitGapMs, 'rebuild'),
      ),
    ).toEqual([])
    // The rebuild: one writer, PROP_MAX + 1 rows per window, key and goal at most.
    expect(
      await compareProps(store.reader, store.precision, siteId, goalPropTruthOf(events, all), PROP_MAX + 1),
    ).toEqual([])
    const [w] = [...truth.keys()].filter((k) => k.startsWith('day|'))
    const dayStart = Number(w!.split('|')[1])
    const read = await store.reader.breakdownDetailed(siteId, 'day', 'goal', dayStart, dayStart + DAY)
    expect([...read.windows.values()].every((x) => x.final)).toBe(true)
    await checkQueries(all, 'rebuild')
    await checkExitPages(all)
  }, 180_000)
})
