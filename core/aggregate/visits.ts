import type { RawEventV1 } from '../../schemas/events.js'
import { type RowKey, rowId, type VisitCounts } from '../ports/aggregate-store.js'
import {
  DIMENSION_GRANULARITIES,
  type Dimension,
  dimensionsOf,
  GRANULARITIES,
  type Granularity,
  isPageview,
  kindOf,
  type PropDimension,
  SESSION_DIMENSIONS,
  visitorId,
  windowStart,
} from './definition.js'
import { PROP_PREFIX, propValueOf } from './props.js'

/**
 * Visits (sessions), the one definition for the stream and the rebuild (stream = batch). Pure: no
 * I/O, no clock.
 *
 * - Per site and visitor (`visitorId`), a visit is a run of counted events (`kindOf` = 'event':
 *   page, track, screen, bots excluded) in event time where no gap between consecutive events is
 *   `gapMs` (TALLY_VISIT_GAP_MS) or more. A visit also ends at midnight UTC: visits are computed per
 *   visitor-day, so a day's visits depend on that day's events only.
 * - A visit belongs to the window in which it started. Its session dimensions (SESSION_DIMENSIONS)
 *   are those of its first event; its entry page is the path of its first pageview, its exit page
 *   the path of its last (a visit without pageview has neither and is absent from the entry_page and
 *   exit_page breakdowns, as in Plausible).
 * - Bounce: exactly one pageview and no other counted event. Duration: last − first event time.
 *
 * Ties in event time are broken by content, never by arrival: the first event is the least by
 * (time, session values), the entry page the least pageview by (time, path), the exit page the
 * greatest by (time, path). So any order of the same events gives the same visits.
 *
 * Two users:
 * - the rebuild calls {@link sessionize} on the deduplicated events of a site-day (any order) and
 *   {@link visitRows} on the result;
 * - the stream keeps a {@link VisitState} per source partition: {@link VisitState.add} takes one
 *   counted event (any order) and returns the change of the visits it touched (an event can only
 *   extend a visit or join two: adding an event never widens a gap, so it never splits one);
 *   {@link visitDeltas} turns that change into the per-row differences to apply to rows held as
 *   absolute values. The state is serialized with the checkpoint ({@link VisitState.serialize}) and
 *   forgets visits no event it may still accept can touch ({@link VisitState.evict}).
 */

const DAY_MS = 86_400_000

/** What a visit needs of one counted event. */
export interface VisitEvent {
  siteId: string
  /** anonymousId, else userId (`visitorId`). */
  visitor: string
  /** Skew-corrected event time (ms), the time the windows use. */
  timestampMs: number
  pageview: boolean
  /** The event's `path` dimension (only a pageview's path is used). */
  path: string
  /**
   * The event's values of SESSION_DIMENSIONS, in that order, then one entry `KEY=value` per custom
   * property the site declares ({@link propEntry}, keys in the site's order): a visit's values of
   * the declared keys travel with its session values, so its `prop:KEY` rows are those of its first
   * event.
   */
  session: readonly string[]
}

/**
 * A visit's value of a declared custom property, as it travels among its session values:
 * `KEY=value` (a key has no `=`: core/aggregate/props.ts checkPropKey).
 */
export function propEntry(key: string, value: string): string {
  return `${key}=${value}`
}

/** The dimension (`prop:KEY`) and value of a {@link propEntry}. */
export function splitPropEntry(entry: string): { dimension: PropDimension; value: string } {
  const at = entry.indexOf('=')
  return { dimension: `prop:${entry.slice(0, at)}`, value: entry.slice(at + 1) }
}

/** One visit. */
export interface Visit {
  siteId: string
  visitor: string
  /** Time of the first event (ms): the visit belongs to the windows that contain it. */
  startMs: number
  /** Time of the last event (ms). */
  endMs: number
  /** Counted events of the visit. */
  events: number
  pageviews: number
  /** Values of SESSION_DIMENSIONS (in that order), then its {@link propEntry}s, of the first event. */
  session: readonly string[]
  /** Path of the first pageview; undefined when the visit has none. */
  entryPage: string | undefined
  /** Path of the last pageview; undefined when the visit has none. */
  exitPage: string | undefined
}

/**
 * The visit event of a raw event; undefined when it does not count (bot, identify, group, alias).
 * `propKeys`: the site's declared custom property keys (none: no `prop:KEY` visit rows).
 */
export function visitEventOf(
  e: RawEventV1,
  timestampMs: number,
  dims: Readonly<Record<Dimension, string>> = dimensionsOf(e),
  propKeys: readonly string[] = [],
): VisitEvent | undefined {
  if (kindOf(e) !== 'event') return undefined
  const session: string[] = SESSION_DIMENSIONS.map((d) => dims[d])
  for (const key of propKeys) session.push(propEntry(key, propValueOf(e, key)))
  return {
    siteId: e.siteId,
    visitor: visitorId(e),
    timestampMs,
    pageview: isPageview(e),
    path: dims.path,
    session,
  }
}

export function isBounce(v: Pick<Visit, 'events' | 'pageviews'>): boolean {
  return v.events === 1 && v.pageviews === 1
}

/** What one visit adds to each row it counts in. */
export function visitCounts(v: Visit): VisitCounts {
  return {
    visits: 1,
    bounces: isBounce(v) ? 1 : 0,
    visitDurationMs: v.endMs - v.startMs,
    visitPageviews: v.pageviews,
  }
}

/**
 * The rows a visit counts in, all in the windows of its start: totals of every granularity;
 * breakdowns (hour, day) by each session dimension and each declared custom property (`prop:KEY`)
 * with its first event's value, and by entry_page and exit_page when it has a pageview.
 */
export function visitRowKeys(v: Visit, sourcePartition: number): RowKey[] {
  const keys: RowKey[] = []
  for (const g of GRANULARITIES)
    keys.push({
      siteId: v.siteId,
      granularity: g,
      windowStart: windowStart(v.startMs, g),
      dimension: undefined,
      value: '',
      sourcePartition,
    })
  for (const g of DIMENSION_GRANULARITIES) {
    const ws = windowStart(v.startMs, g)
    const key = (dimension: RowKey['dimension'], value: string): RowKey => ({
      siteId: v.siteId,
      granularity: g,
      windowStart: ws,
      dimension,
      value,
      sourcePartition,
    })
    SESSION_DIMENSIONS.forEach((d, i) => {
      keys.push(key(d, v.session[i]!))
    })
    for (let i = SESSION_DIMENSIONS.length; i < v.session.length; i++) {
      const { dimension, value } = splitPropEntry(v.session[i]!)
      keys.push(key(dimension, value))
    }
    if (v.entryPage !== undefined) keys.push(key('entry_page', v.entryPage))
    if (v.exitPage !== undefined) keys.push(key('exit_page', v.exitPage))
  }
  return keys
}

/** A row whose visit counts change by `delta` (negative when visits left it). */
export interface VisitRowDelta {
  key: RowKey
  delta: VisitCounts
}

/**
 * The visit counts of every row the visits count in (the rebuild's rows), keyed by rowId. Same rows
 * and sums as adding up {@link visitRowKeys} and {@link visitCounts} of each visit, without building
 * the keys of every visit: visits are summed per hour first.
 */
export function visitRows(
  visits: Iterable<Visit>,
  sourcePartition: number,
): Map<string, { key: RowKey; counts: VisitCounts }> {
  interface HourSums {
    siteId: string
    hourMs: number
    total: VisitCounts
    minutes: Map<number, VisitCounts>
    /**
     * By dimension index (SESSION_DIMENSIONS, then entry_page, exit_page) + SEP + value; a custom
     * property by its dimension name (`prop:KEY`) + SEP + value.
     */
    dims: Map<string, VisitCounts>
  }
  const hours = new Map<string, HourSums>()
  for (const v of visits) {
    const c = visitCounts(v)
    const hourMs = windowStart(v.startMs, 'hour')
    const hk = `${v.siteId}${SEP}${hourMs}`
    let h = hours.get(hk)
    if (!h) {
      h = { siteId: v.siteId, hourMs, total: zero(), minutes: new Map(), dims: new Map() }
      hours.set(hk, h)
    }
    addTo(h.total, c)
    const minute = windowStart(v.startMs, 'minute')
    let m = h.minutes.get(minute)
    if (!m) {
      m = zero()
      h.minutes.set(minute, m)
    }
    addTo(m, c)
    const dim = (i: number, value: string) => {
      const k = `${i}${SEP}${value}`
      let d = h.dims.get(k)
      if (!d) {
        d = zero()
        h.dims.set(k, d)
      }
      addTo(d, c)
    }
    for (let i = 0; i < SESSION_DIMENSIONS.length; i++) dim(i, v.session[i]!)
    for (let i = SESSION_DIMENSIONS.length; i < v.session.length; i++) {
      const { dimension, value } = splitPropEntry(v.session[i]!)
      const k = `${dimension}${SEP}${value}`
      let d = h.dims.get(k)
      if (!d) {
        d = zero()
        h.dims.set(k, d)
      }
      addTo(d, c)
    }
    if (v.entryPage !== undefined) dim(SESSION_DIMENSIONS.length, v.entryPage)
    if (v.exitPage !== undefined) dim(SESSION_DIMENSIONS.length + 1, v.exitPage)
  }
  const dimensions: RowKey['dimension'][] = [...SESSION_DIMENSIONS, 'entry_page', 'exit_page']
  const out = new Map<string, { key: RowKey; counts: VisitCounts }>()
  const emit = (
    siteId: string,
    g: Granularity,
    ws: number,
    dimKey: string | undefined,
    counts: VisitCounts,
  ) => {
    let dimension: RowKey['dimension']
    let value = ''
    if (dimKey !== undefined) {
      const at = dimKey.indexOf(SEP)
      const head = dimKey.slice(0, at)
      dimension = head.startsWith(PROP_PREFIX) ? (head as PropDimension) : dimensions[Number(head)]
      value = dimKey.slice(at + 1)
    }
    const key: RowKey = { siteId, granularity: g, windowStart: ws, dimension, value, sourcePartition }
    const id = rowId(key)
    const row = out.get(id)
    if (row) addTo(row.counts, counts)
    else out.set(id, { key, counts: { ...counts } })
  }
  for (const h of hours.values()) {
    const day = windowStart(h.hourMs, 'day')
    for (const [minute, c] of h.minutes) emit(h.siteId, 'minute', minute, undefined, c)
    emit(h.siteId, 'hour', h.hourMs, undefined, h.total)
    emit(h.siteId, 'day', day, undefined, h.total)
    for (const [k, c] of h.dims) {
      emit(h.siteId, 'hour', h.hourMs, k, c)
      emit(h.siteId, 'day', day, k, c)
    }
  }
  return out
}

/** Visit counts of nothing. */
export function zero(): VisitCounts {
  return { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 }
}

/** Adds `c` (subtracts it with sign −1) into `to`. */
export function addTo(to: VisitCounts, c: VisitCounts, sign: 1 | -1 = 1): void {
  to.visits += sign * c.visits
  to.bounces += sign * c.bounces
  to.visitDurationMs += sign * c.visitDurationMs
  to.visitPageviews += sign * c.visitPageviews
}

function accumulate(
  out: Map<string, { key: RowKey; counts: VisitCounts }>,
  v: Visit,
  sourcePartition: number,
  sign: 1 | -1,
): void {
  const c = visitCounts(v)
  for (const key of visitRowKeys(v, sourcePartition)) {
    const id = rowId(key)
    let row = out.get(id)
    if (!row) {
      row = { key, counts: zero() }
      out.set(id, row)
    }
    addTo(row.counts, c, sign)
  }
}

/** How one event changed the visits of its visitor-day: `removed` are replaced by `added`. */
export interface VisitChange {
  removed: readonly Visit[]
  added: Visit
}

/**
 * The per-row differences of a change: the removed visits' counts subtracted, the added visit's
 * added, netted per row; rows whose counts do not change are left out.
 */
export function visitDeltas(change: VisitChange, sourcePartition: number): VisitRowDelta[] {
  const { removed, added } = change
  if (removed.length === 1) {
    const old = removed[0]!
    // The common case, an event that extends a visit: same start, same first event.
    if (old.startMs === added.startMs && old.session === added.session)
      return extended(old, added, sourcePartition)
  }
  const net = new Map<string, { key: RowKey; counts: VisitCounts }>()
  for (const v of change.removed) accumulate(net, v, sourcePartition, -1)
  accumulate(net, change.added, sourcePartition, 1)
  const out: VisitRowDelta[] = []
  for (const { key, counts } of net.values()) {
    if (
      counts.visits === 0 &&
      counts.bounces === 0 &&
      counts.visitDurationMs === 0 &&
      counts.visitPageviews === 0
    )
      continue
    out.push({ key, delta: counts })
  }
  return out
}

/** Deltas of a visit that kept its start and first event: its rows are the same but entry and exit. */
function extended(old: Visit, now: Visit, sourcePartition: number): VisitRowDelta[] {
  const a = visitCounts(old)
  const b = visitCounts(now)
  const diff: VisitCounts = {
    visits: 0,
    bounces: b.bounces - a.bounces,
    visitDurationMs: b.visitDurationMs - a.visitDurationMs,
    visitPageviews: b.visitPageviews - a.visitPageviews,
  }
  const same = diff.bounces === 0 && diff.visitDurationMs === 0 && diff.visitPageviews === 0
  const entryMoved = old.entryPage !== now.entryPage
  const exitMoved = old.exitPage !== now.exitPage
  const out: VisitRowDelta[] = []
  if (!same)
    for (const key of visitRowKeys(now, sourcePartition)) {
      if ((key.dimension === 'entry_page' && entryMoved) || (key.dimension === 'exit_page' && exitMoved))
        continue
      out.push({ key, delta: diff })
    }
  const negated: VisitCounts = {
    visits: -a.visits,
    bounces: -a.bounces,
    visitDurationMs: -a.visitDurationMs,
    visitPageviews: -a.visitPageviews,
  }
  const moved = (dimension: 'entry_page' | 'exit_page', from: string | undefined, to: string | undefined) => {
    for (const g of DIMENSION_GRANULARITIES) {
      const key = (value: string): RowKey => ({
        siteId: now.siteId,
        granularity: g,
        windowStart: windowStart(now.startMs, g),
        dimension,
        value,
        sourcePartition,
      })
      // The deltas are read once by the caller: the rows of a change share one object.
      if (from !== undefined) out.push({ key: key(from), delta: negated })
      if (to !== undefined) out.push({ key: key(to), delta: b })
    }
  }
  if (entryMoved) moved('entry_page', old.entryPage, now.entryPage)
  if (exitMoved) moved('exit_page', old.exitPage, now.exitPage)
  return out
}

/** The mutable summary of one visit: everything its rows need, whatever the order of its events. */
interface Summary {
  startMs: number
  endMs: number
  events: number
  pageviews: number
  /** Session values of the first event (joined by SEP, its tie-break key on equal times). */
  session: readonly string[]
  /** Time and path of the first pageview (entryPath undefined when no pageview). */
  entryMs: number
  entryPath: string | undefined
  /** Time and path of the last pageview. */
  exitMs: number
  exitPath: string | undefined
  /**
   * Names of the goals the visit's events completed (the stream's conversions by exit page, written
   * when the visit ends: VisitState.reachGoals, evict); absent when none.
   */
  goals?: string[]
}

const SEP = '\u0001'

function summaryOf(e: VisitEvent): Summary {
  const path = e.pageview ? e.path : undefined
  return {
    startMs: e.timestampMs,
    endMs: e.timestampMs,
    events: 1,
    pageviews: e.pageview ? 1 : 0,
    session: e.session,
    entryMs: e.timestampMs,
    entryPath: path,
    exitMs: e.timestampMs,
    exitPath: path,
  }
}

/** Folds `b` into `a` (two runs of events that now form one visit). */
function absorb(a: Summary, b: Summary): void {
  if (
    b.startMs < a.startMs ||
    (b.startMs === a.startMs && b.session !== a.session && b.session.join(SEP) < a.session.join(SEP))
  ) {
    a.startMs = b.startMs
    a.session = b.session
  }
  if (b.endMs > a.endMs) a.endMs = b.endMs
  if (b.goals !== undefined) for (const g of b.goals) addGoal(a, g)
  a.events += b.events
  a.pageviews += b.pageviews
  if (b.entryPath !== undefined) {
    if (
      a.entryPath === undefined ||
      b.entryMs < a.entryMs ||
      (b.entryMs === a.entryMs && b.entryPath < a.entryPath)
    ) {
      a.entryMs = b.entryMs
      a.entryPath = b.entryPath
    }
    if (
      a.exitPath === undefined ||
      b.exitMs > a.exitMs ||
      (b.exitMs === a.exitMs && b.exitPath !== undefined && b.exitPath > a.exitPath)
    ) {
      a.exitMs = b.exitMs
      a.exitPath = b.exitPath
    }
  }
}

/** Adds a goal's name to a visit's goals reached (once). */
function addGoal(s: Summary, name: string): boolean {
  if (s.goals === undefined) s.goals = [name]
  else if (s.goals.includes(name)) return false
  else s.goals.push(name)
  return true
}

/**
 * A visit the stream's state dropped as ended ({@link VisitState.evict}) whose events completed
 * goals: what its conversions by exit page need (its start windows, its final exit page).
 */
export interface EndedVisit {
  siteId: string
  visitor: string
  startMs: number
  /** The path of its last pageview; undefined when it had none. */
  exitPage: string | undefined
  goals: readonly string[]
}

function visitOf(siteId: string, visitor: string, s: Summary): Visit {
  return {
    siteId,
    visitor,
    startMs: s.startMs,
    endMs: s.endMs,
    events: s.events,
    pageviews: s.pageviews,
    session: s.session,
    entryPage: s.entryPath,
    exitPage: s.exitPath,
  }
}

function dayOf(tsMs: number): number {
  return Math.floor(tsMs / DAY_MS)
}

function keyOf(siteId: string, visitor: string, day: number): string {
  return `${siteId}${SEP}${visitor}${SEP}${day}`
}

function checkGap(gapMs: number): void {
  if (!Number.isSafeInteger(gapMs) || gapMs <= 0)
    throw new RangeError(`a visit gap must be a positive integer (ms), got ${gapMs}`)
}

/**
 * The visits of a set of counted, deduplicated events (the rebuild: a site-day's events, in any
 * order). Visits come sorted by site, visitor and start.
 */
export function sessionize(events: Iterable<VisitEvent>, gapMs: number): Visit[] {
  checkGap(gapMs)
  const byVisitorDay = new Map<string, VisitEvent[]>()
  for (const e of events) {
    const k = keyOf(e.siteId, e.visitor, dayOf(e.timestampMs))
    const list = byVisitorDay.get(k)
    if (list) list.push(e)
    else byVisitorDay.set(k, [e])
  }
  const out: Visit[] = []
  for (const list of byVisitorDay.values()) {
    list.sort((a, b) => a.timestampMs - b.timestampMs)
    const first = list[0]!
    let current = summaryOf(first)
    let lastMs = first.timestampMs
    for (let i = 1; i < list.length; i++) {
      const e = list[i]!
      if (e.timestampMs - lastMs >= gapMs) {
        out.push(visitOf(first.siteId, first.visitor, current))
        current = summaryOf(e)
      } else absorb(current, summaryOf(e))
      lastMs = e.timestampMs
    }
    out.push(visitOf(first.siteId, first.visitor, current))
  }
  return out.sort(
    (a, b) =>
      (a.siteId < b.siteId ? -1 : a.siteId > b.siteId ? 1 : 0) ||
      (a.visitor < b.visitor ? -1 : a.visitor > b.visitor ? 1 : 0) ||
      a.startMs - b.startMs,
  )
}

/**
 * The least event time the stream still accepts with watermark `watermarkMs` and grace `graceMs`:
 * an event is late when its minute window ended at or before watermark − grace (stream/pipeline.ts
 * `classify`), so the first accepted minute starts at floor((watermark − grace) / 1 min). The value
 * to pass to {@link VisitState.evict}.
 */
export function oldestAcceptableMs(watermarkMs: number, graceMs: number): number {
  return Math.floor((watermarkMs - graceMs) / 60_000) * 60_000
}

/** The open visits of one visitor on one UTC day, sorted by start, each at least a gap apart. */
interface VisitorDay {
  siteId: string
  visitor: string
  day: number
  visits: Summary[]
}

/** The format serialize writes (2: session values interned one by one); deserialize reads 1 too. */
const FORMAT_VERSION = 2
/**
 * Format 2 and a trailer: the number of visits that reached goals, then per such visit its position
 * among the body's visits, its goals' count and their string indices. Written only when a visit
 * reached a goal.
 */
const FORMAT_GOALS = 3
const SESSION_POOL_MIN = 1024

/**
 * What {@link VisitState.extend} changed of the one visit it extended in place (start and first
 * event unchanged): its counts before and after, and its entry and exit pages before and after. The
 * caller's scratch, filled anew by each call (the stream's hot path allocates nothing per event).
 */
export interface Extension {
  siteId: string
  /** Unchanged start and session values: the visit's rows are those of its start windows. */
  startMs: number
  session: readonly string[]
  before: VisitCounts
  after: VisitCounts
  entryBefore: string | undefined
  entryAfter: string | undefined
  exitBefore: string | undefined
  exitAfter: string | undefined
}

/** A scratch {@link Extension} to pass to {@link VisitState.extend}. */
export function newExtension(): Extension {
  return {
    siteId: '',
    startMs: 0,
    session: [],
    before: zero(),
    after: zero(),
    entryBefore: undefined,
    entryAfter: undefined,
    exitBefore: undefined,
    exitAfter: undefined,
  }
}

function countsInto(to: VisitCounts, s: Summary): void {
  to.visits = 1
  to.bounces = s.events === 1 && s.pageviews === 1 ? 1 : 0
  to.visitDurationMs = s.endMs - s.startMs
  to.visitPageviews = s.pageviews
}

/**
 * The stream's visits of one source partition: per visitor-day, a summary of each visit that an
 * event the worker may still accept could change. Events may come in any order; the visits after
 * any set of events equal {@link sessionize} of those events.
 *
 * Memory: one summary per open visit (nine fields) plus one entry per open visitor-day; serialized
 * (see {@link serialize}), about 60 bytes per open visit with a 36-character visitor id (measured by
 * test/unit/aggregate-visits.test.ts).
 */
export class VisitState {
  private readonly days = new Map<string, VisitorDay>()
  /** Visits held (kept as they change, so reading it does not walk the state). */
  private open = 0
  /**
   * One array per distinct session values (joined by SEP), shared by the visits that have them: a
   * visit's values are joined once when it starts, and serialize writes each array once instead of
   * joining the values of every visit at every flush. Rebuilt from the held visits when it holds
   * more than twice as many arrays as there are visits (and more than SESSION_POOL_MIN).
   */
  private sessionPool = new Map<string, readonly string[]>()

  private shared(session: readonly string[]): readonly string[] {
    const k = session.join(SEP)
    const held = this.sessionPool.get(k)
    if (held !== undefined) return held
    this.sessionPool.set(k, session)
    return session
  }

  constructor(readonly gapMs: number) {
    checkGap(gapMs)
  }

  /** Visitor-days held. */
  get visitorDays(): number {
    return this.days.size
  }

  /** Visits held. */
  get openVisits(): number {
    return this.open
  }

  /**
   * The common case of {@link add} without its allocations: when the event falls in exactly one
   * held visit after its start (so the visit keeps its start and first event), that visit is
   * extended in place, `out` says what changed, and it returns true. Otherwise (a new visit, a new
   * start, a tie on the start, a join of two) it changes nothing and returns false: call
   * {@link add}. Either way the state ends as {@link add} alone would leave it.
   */
  extend(
    siteId: string,
    visitor: string,
    timestampMs: number,
    pageview: boolean,
    path: string,
    out: Extension,
  ): boolean {
    const vd = this.days.get(keyOf(siteId, visitor, dayOf(timestampMs)))
    if (vd === undefined) return false
    const t = timestampMs
    let hit: Summary | undefined
    for (const v of vd.visits) {
      if (t - v.endMs < this.gapMs && v.startMs - t < this.gapMs) {
        if (hit !== undefined) return false
        hit = v
      }
    }
    if (hit === undefined || t <= hit.startMs) return false
    countsInto(out.before, hit)
    out.entryBefore = hit.entryPath
    out.exitBefore = hit.exitPath
    // absorb() of the event's summary, with the visit's start and session kept.
    if (t > hit.endMs) hit.endMs = t
    hit.events++
    if (pageview) {
      hit.pageviews++
      if (hit.entryPath === undefined || t < hit.entryMs || (t === hit.entryMs && path < hit.entryPath)) {
        hit.entryMs = t
        hit.entryPath = path
      }
      if (hit.exitPath === undefined || t > hit.exitMs || (t === hit.exitMs && path > hit.exitPath)) {
        hit.exitMs = t
        hit.exitPath = path
      }
    }
    countsInto(out.after, hit)
    out.siteId = siteId
    out.startMs = hit.startMs
    out.session = hit.session
    out.entryAfter = hit.entryPath
    out.exitAfter = hit.exitPath
    return true
  }

  /**
   * Adds one counted event (the caller decides that it counts, is not a duplicate, and is not later
   * than the grace). Returns the visits it replaced (0, 1 or 2: it joined them) and the visit it is
   * now part of.
   */
  add(e: VisitEvent): VisitChange {
    const day = dayOf(e.timestampMs)
    const k = keyOf(e.siteId, e.visitor, day)
    let vd = this.days.get(k)
    if (!vd) {
      vd = { siteId: e.siteId, visitor: e.visitor, day, visits: [] }
      this.days.set(k, vd)
    }
    const t = e.timestampMs
    const merged = summaryOf(e)
    merged.session = this.shared(e.session)
    const removed: Visit[] = []
    const kept: Summary[] = []
    for (const v of vd.visits) {
      // The event is less than a gap from the visit (or inside it): they are one visit.
      if (t - v.endMs < this.gapMs && v.startMs - t < this.gapMs) {
        removed.push(visitOf(vd.siteId, vd.visitor, v))
        absorb(merged, v)
      } else kept.push(v)
    }
    const at = kept.findIndex((v) => v.startMs > merged.startMs)
    kept.splice(at < 0 ? kept.length : at, 0, merged)
    vd.visits = kept
    this.open += 1 - removed.length
    return { removed, added: visitOf(vd.siteId, vd.visitor, merged) }
  }

  /**
   * The held visit of a visitor that contains the time `timestampMs` (its first event's session
   * values and its entry page), undefined when none does: what conversions by another dimension
   * read of an event the state holds already (a replay after a restart).
   */
  visitAt(
    siteId: string,
    visitor: string,
    timestampMs: number,
  ): { session: readonly string[]; entryPage: string | undefined } | undefined {
    const vd = this.days.get(keyOf(siteId, visitor, dayOf(timestampMs)))
    const v = vd?.visits.find((x) => x.startMs <= timestampMs && timestampMs <= x.endMs)
    return v && { session: v.session, entryPage: v.entryPath }
  }

  /**
   * Marks goals `names` as reached by the held visit of a visitor that contains `timestampMs` (the
   * event just added): when the visit ends, {@link evict} hands them over for its conversions by
   * exit page. Idempotent. Returns whether the visit gained a goal.
   */
  reachGoals(siteId: string, visitor: string, timestampMs: number, names: readonly string[]): boolean {
    const vd = this.days.get(keyOf(siteId, visitor, dayOf(timestampMs)))
    const v = vd?.visits.find((x) => x.startMs <= timestampMs && timestampMs <= x.endMs)
    if (v === undefined) return false
    let gained = false
    for (const name of names) if (addGoal(v, name)) gained = true
    return gained
  }

  /**
   * Forgets the visits no acceptable event can change. `oldestAcceptableMs`: the least event time
   * the worker may still accept (with the stream's rule, the start of the minute that closed a
   * grace before the partition's watermark). A visit whose last event is a gap or more before it
   * is over (any later event starts a new one), and so is every visit of a day that ended by then.
   * Returns the number of visits dropped; `ended` (when given) receives those whose events
   * completed goals, their exit page now final (the stream's conversions by exit page).
   */
  evict(oldestAcceptableMs: number, ended?: EndedVisit[]): number {
    let dropped = 0
    const hand = (vd: VisitorDay, v: Summary) => {
      if (ended !== undefined && v.goals !== undefined)
        ended.push({
          siteId: vd.siteId,
          visitor: vd.visitor,
          startMs: v.startMs,
          exitPage: v.exitPath,
          goals: v.goals,
        })
    }
    for (const [k, vd] of this.days) {
      if ((vd.day + 1) * DAY_MS <= oldestAcceptableMs) {
        dropped += vd.visits.length
        for (const v of vd.visits) hand(vd, v)
        this.days.delete(k)
        continue
      }
      // Most visitor-days keep every visit: a new array only when one goes.
      let over = 0
      for (const v of vd.visits) if (v.endMs + this.gapMs <= oldestAcceptableMs) over++
      if (over === 0) continue
      dropped += over
      for (const v of vd.visits) if (v.endMs + this.gapMs <= oldestAcceptableMs) hand(vd, v)
      if (over === vd.visits.length) this.days.delete(k)
      else vd.visits = vd.visits.filter((v) => v.endMs + this.gapMs > oldestAcceptableMs)
    }
    this.open -= dropped
    if (this.sessionPool.size > SESSION_POOL_MIN && this.sessionPool.size > 2 * this.open) {
      const pool = new Map<string, readonly string[]>()
      for (const vd of this.days.values()) for (const v of vd.visits) pool.set(v.session.join(SEP), v.session)
      this.sessionPool = pool
    }
    return dropped
  }

  /**
   * Ends early the least recently active visits (by their last event) when more than `keep` are
   * open, as {@link evict} ends visits (those that reached goals go to `ended`): at least the
   * `open − keep` oldest by last event, and any other visit of a UTC day that would end by then.
   * Returns how many ended. Their rows keep what they counted; a visitor who comes back within
   * the gap then starts a new visit (the worker's memory bound, TALLY_STREAM_OPEN_VISITS_MAX).
   */
  evictLeastRecent(keep: number, ended?: EndedVisit[]): number {
    if (this.open <= keep) return 0
    const ends = new Float64Array(this.open)
    let n = 0
    for (const vd of this.days.values()) for (const v of vd.visits) ends[n++] = v.endMs
    ends.sort()
    // Every visit whose last event is at or before the cut: endMs + gap ≤ cut + gap.
    const cut = ends[this.open - keep - 1]!
    return this.evict(cut + this.gapMs, ended)
  }

  /** Every visit held, sorted by site, visitor and start. */
  visits(): Visit[] {
    const out: Visit[] = []
    for (const vd of this.days.values())
      for (const v of vd.visits) out.push(visitOf(vd.siteId, vd.visitor, v))
    return out.sort(
      (a, b) =>
        (a.siteId < b.siteId ? -1 : a.siteId > b.siteId ? 1 : 0) ||
        (a.visitor < b.visitor ? -1 : a.visitor > b.visitor ? 1 : 0) ||
        a.startMs - b.startMs,
    )
  }

  /**
   * The state as bytes, to persist with the checkpoint (same epoch, same write). Format 2: a
   * version byte; a table of the distinct site ids, session values and paths (varint length +
   * UTF-8 each); a table of the distinct session value lists (count, then a string index per
   * value; the declared keys' `KEY=value` entries last, so a state written before custom
   * properties counted visits has none and reads as visits without `prop:KEY` rows); then per visitor-day: site index, visitor id (length + UTF-8), UTC day number and
   * visit count; per visit: start (ms into the day), duration, events, pageviews, session index,
   * and with a pageview the entry and exit (ms after start, path index). Integers are unsigned
   * LEB128 varints. Format 1 (read, no longer written) had no session table: a visit's session
   * index named one string, its values joined by SEP, so each distinct list repeated its values
   * (about 85 of the 143 bytes per open visit of the stream bench). Format 3 (written only when a
   * visit holds goals reached, `reachGoals`): format 2, then a trailer of those visits (count; per
   * visit its position among the body's visits, its goals' count and their string indices).
   */
  serialize(): Uint8Array {
    const strings = new Map<string, number>()
    const intern = (s: string): number => {
      let i = strings.get(s)
      if (i === undefined) {
        i = strings.size
        strings.set(s, i)
      }
      return i
    }
    // Visits of one page load share one session array: one entry per array, its values interned.
    const sessions = new Map<readonly string[], number>()
    const table = new ByteWriter()
    const session = (values: readonly string[]): number => {
      let i = sessions.get(values)
      if (i === undefined) {
        i = sessions.size
        sessions.set(values, i)
        table.uint(values.length)
        for (const v of values) table.uint(intern(v))
      }
      return i
    }
    const body = new ByteWriter()
    // Format 3's trailer: the visits that reached goals (few), by their position in the body.
    const trailer = new ByteWriter()
    let ordinal = 0
    let withGoals = 0
    body.uint(this.days.size)
    for (const vd of this.days.values()) {
      body.uint(intern(vd.siteId))
      body.string(vd.visitor)
      body.uint(vd.day)
      body.uint(vd.visits.length)
      const dayStart = vd.day * DAY_MS
      for (const v of vd.visits) {
        body.uint(v.startMs - dayStart)
        body.uint(v.endMs - v.startMs)
        body.uint(v.events)
        body.uint(v.pageviews)
        body.uint(session(v.session))
        if (v.pageviews > 0) {
          body.uint(v.entryMs - v.startMs)
          body.uint(intern(v.entryPath!))
          body.uint(v.exitMs - v.startMs)
          body.uint(intern(v.exitPath!))
        }
        if (v.goals !== undefined) {
          withGoals++
          trailer.uint(ordinal)
          trailer.uint(v.goals.length)
          for (const g of v.goals) trailer.uint(intern(g))
        }
        ordinal++
      }
    }
    if (withGoals > 0) {
      body.uint(withGoals)
      body.append(trailer.bytes())
    }
    const head = new ByteWriter()
    // Format 2 while no visit reached a goal (a reader of format 2 takes such a state).
    head.byte(withGoals > 0 ? FORMAT_GOALS : FORMAT_VERSION)
    head.uint(strings.size)
    for (const s of strings.keys()) head.string(s)
    head.uint(sessions.size)
    return concat(concat(head.bytes(), table.bytes()), body.bytes())
  }

  /** A state from {@link serialize}'s bytes (empty bytes: an empty state). */
  static deserialize(bytes: Uint8Array, gapMs: number): VisitState {
    const state = new VisitState(gapMs)
    if (bytes.length === 0) return state
    const r = new ByteReader(bytes)
    const version = r.byte()
    if (version !== FORMAT_VERSION && version !== FORMAT_GOALS && version !== 1)
      throw new RangeError(`unknown visit state format ${version}`)
    const strings: string[] = []
    for (let n = r.uint(); n > 0; n--) strings.push(r.string())
    const str = (i: number): string => {
      const s = strings[i]
      if (s === undefined) throw new RangeError(`visit state: string ${i} out of range`)
      return s
    }
    // Format 2's session lists, each a shared array in the pool.
    const lists: Array<readonly string[]> = []
    const interned = version !== 1
    if (interned)
      for (let n = r.uint(); n > 0; n--) {
        const values: string[] = []
        for (let k = r.uint(); k > 0; k--) values.push(str(r.uint()))
        lists.push(state.shared(values))
      }
    // Visits of the same session values share one array, as events of one page load do.
    const sessions = new Map<number, readonly string[]>()
    const all: Summary[] = []
    for (let days = r.uint(); days > 0; days--) {
      const siteId = str(r.uint())
      const visitor = r.string()
      const day = r.uint()
      const dayStart = day * DAY_MS
      const visits: Summary[] = []
      for (let n = r.uint(); n > 0; n--) {
        const startMs = dayStart + r.uint()
        const endMs = startMs + r.uint()
        const events = r.uint()
        const pageviews = r.uint()
        const si = r.uint()
        let session = interned ? lists[si] : sessions.get(si)
        if (interned && !session) throw new RangeError(`visit state: session ${si} out of range`)
        if (!session) {
          session = str(si).split(SEP)
          sessions.set(si, session)
          state.sessionPool.set(str(si), session)
        }
        const s: Summary = {
          startMs,
          endMs,
          events,
          pageviews,
          session,
          entryMs: startMs,
          entryPath: undefined,
          exitMs: startMs,
          exitPath: undefined,
        }
        if (pageviews > 0) {
          s.entryMs = startMs + r.uint()
          s.entryPath = str(r.uint())
          s.exitMs = startMs + r.uint()
          s.exitPath = str(r.uint())
        }
        visits.push(s)
        all.push(s)
      }
      state.days.set(keyOf(siteId, visitor, day), { siteId, visitor, day, visits })
      state.open += visits.length
    }
    if (version === FORMAT_GOALS)
      for (let n = r.uint(); n > 0; n--) {
        const v = all[r.uint()]
        if (v === undefined) throw new RangeError('visit state: goal visit out of range')
        for (let k = r.uint(); k > 0; k--) addGoal(v, str(r.uint()))
      }
    if (!r.done()) throw new RangeError('visit state: trailing bytes')
    return state
  }
}

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length)
  out.set(a, 0)
  out.set(b, a.length)
  return out
}

class ByteWriter {
  private buf = new Uint8Array(256)
  private len = 0

  private room(n: number): void {
    if (this.len + n <= this.buf.length) return
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.len + n))
    next.set(this.buf.subarray(0, this.len))
    this.buf = next
  }

  byte(b: number): void {
    this.room(1)
    this.buf[this.len++] = b
  }

  /** Unsigned LEB128 of a safe non-negative integer. */
  uint(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0)
      throw new RangeError(`visit state: not a non-negative integer: ${n}`)
    this.room(8)
    while (n >= 0x80) {
      this.buf[this.len++] = (n % 0x80) | 0x80
      n = Math.floor(n / 0x80)
    }
    this.buf[this.len++] = n
  }

  /** Length (varint) + UTF-8, encoded straight into the buffer. */
  string(s: string): void {
    // At most 3 bytes per UTF-16 unit, after at most 5 bytes of length (< 2^35); room for the
    // length's own check (8) too, so writing it cannot move the buffer under the encoded bytes.
    const max = s.length * 3
    this.room(max + 8)
    const lenBytes = max < 0x80 ? 1 : max < 0x4000 ? 2 : max < 0x200000 ? 3 : 5
    const at = this.len
    const { written } = encoder.encodeInto(s, this.buf.subarray(at + lenBytes))
    this.uint(written)
    const used = this.len - at
    if (used !== lenBytes) this.buf.copyWithin(this.len, at + lenBytes, at + lenBytes + written)
    this.len += written
  }

  bytes(): Uint8Array {
    return this.buf.slice(0, this.len)
  }

  append(bytes: Uint8Array): void {
    this.room(bytes.length)
    this.buf.set(bytes, this.len)
    this.len += bytes.length
  }
}

class ByteReader {
  private at = 0

  constructor(private readonly buf: Uint8Array) {}

  byte(): number {
    const b = this.buf[this.at++]
    if (b === undefined) throw new RangeError('visit state: truncated')
    return b
  }

  uint(): number {
    let n = 0
    let scale = 1
    for (;;) {
      const b = this.byte()
      n += (b & 0x7f) * scale
      if (b < 0x80) return n
      scale *= 0x80
      if (scale > 2 ** 56) throw new RangeError('visit state: varint too long')
    }
  }

  string(): string {
    const n = this.uint()
    if (this.at + n > this.buf.length) throw new RangeError('visit state: truncated')
    const s = decoder.decode(this.buf.subarray(this.at, this.at + n))
    this.at += n
    return s
  }

  done(): boolean {
    return this.at === this.buf.length
  }
}
