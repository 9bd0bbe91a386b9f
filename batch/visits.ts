import {
  DIMENSION_GRANULARITIES,
  DIMENSIONS,
  type Granularity,
  NONE,
  type PropDimension,
  SESSION_DIMENSIONS,
  windowStart,
} from '../core/aggregate/definition.js'
import {
  GOAL_BY_DIMENSIONS,
  GOAL_BY_EXIT_PAGE,
  GOAL_BY_PREFIX,
  type GoalByDimension,
  type GoalMatcher,
  goalByDimension,
  goalByValue,
} from '../core/aggregate/goals.js'
import {
  capValues,
  DEFAULT_DIMENSION_VALUES_MAX,
  DEFAULT_PROP_VALUES_MAX,
  foldValues,
  isCappedDimension,
  isDayPathCapped,
  isPropDimension,
  keptValues,
  OTHER,
  PROP_PREFIX,
} from '../core/aggregate/props.js'
import { addTo, propEntry, sessionize, type VisitEvent, visitRows } from '../core/aggregate/visits.js'
import { forEachSiteRun } from '../core/archive/dedup.js'
import { HI, LO, type SegmentColumns } from '../core/archive/segment-reader.js'
import type { RowKey, VisitCounts } from '../core/ports/aggregate-store.js'
import {
  type AggregateRow,
  CODE_EVENT,
  CODE_IGNORED,
  CODE_PAGEVIEW,
  kindCodes,
  type SitePropValues,
} from './aggregate.js'
import { RegisterSet, registerEntry } from './registers.js'

/**
 * The rebuild's visits of one UTC day (core/aggregate/visits.ts `sessionize` + `visitRows`, the
 * definition the stream uses): the day's counted, deduplicated events of every segment of the day
 * are kept compactly (per event: time, visitor hash, pageview flag, path and session indices, about
 * 30 bytes), then sessionized visitor by visitor in chunks, so the visit objects of a day never
 * exist all at once.
 *
 * The visitor is the segment's `visitor_hash` (XXH64 of anonymousId, else userId; the segment file
 * does not carry the id itself): two visitor ids of one site-day with the same 64-bit hash would be
 * one visitor, as two messageIds with the same hash are one event for the dedup (probability about
 * n² / 2⁶⁵ for n visitors of a site-day).
 */

/** Events sessionized per call (cut at visitor boundaries). */
const CHUNK_EVENTS = 65_536

// Where SESSION_DIMENSIONS and `path` are among the segment's dimension columns (DIMENSIONS order).
const SESSION_COLUMNS = SESSION_DIMENSIONS.map((d) => DIMENSIONS.indexOf(d))
const PATH_COLUMN = DIMENSIONS.indexOf('path')
const EVENT_COLUMN = DIMENSIONS.indexOf('event')
const SESSION_INDEX = new Map<string, number>(SESSION_DIMENSIONS.map((d, i) => [d, i]))

const NO_VALUES: readonly never[] = []

/** The counted events of one site-day, column by column. */
class SiteDayEvents {
  length = 0
  ts = new Float64Array(1024)
  hi = new Uint32Array(1024)
  lo = new Uint32Array(1024)
  pageview = new Uint8Array(1024)
  path = new Int32Array(1024)
  session = new Int32Array(1024)
  /**
   * Events that complete goals (few): index → the goals' names, the event's `event` value and its
   * own values of the site's declared property keys (`props[k]` of `goal|dims[k]`).
   */
  readonly goals = new Map<
    number,
    { names: readonly string[]; event: string; dims: readonly string[]; props: readonly string[] }
  >()

  push(ts: number, hi: number, lo: number, pageview: boolean, path: number, session: number): void {
    if (this.length === this.ts.length) this.grow()
    const i = this.length++
    this.ts[i] = ts
    this.hi[i] = hi
    this.lo[i] = lo
    this.pageview[i] = pageview ? 1 : 0
    this.path[i] = path
    this.session[i] = session
  }

  private grow(): void {
    const n = this.ts.length * 2
    const grown = <T extends Float64Array | Uint32Array | Uint8Array | Int32Array>(
      a: T,
      make: (n: number) => T,
    ): T => {
      const b = make(n)
      b.set(a)
      return b
    }
    this.ts = grown(this.ts, (k) => new Float64Array(k))
    this.hi = grown(this.hi, (k) => new Uint32Array(k))
    this.lo = grown(this.lo, (k) => new Uint32Array(k))
    this.pageview = grown(this.pageview, (k) => new Uint8Array(k))
    this.path = grown(this.path, (k) => new Int32Array(k))
    this.session = grown(this.session, (k) => new Int32Array(k))
  }
}

export class DayVisits {
  private readonly sites = new Map<string, SiteDayEvents>()
  /** Paths and session value tuples, interned across the day's segments. */
  private readonly paths: string[] = []
  private readonly pathIds = new Map<string, number>()
  private readonly sessions: string[][] = []
  private readonly sessionIds = new Map<string, number>()
  /**
   * Per site, the values of each declared key that the day's events (counted and bots', as the
   * rebuild's event rows see them) hold per hour, by `hourMs|prop:KEY`: the visit rows of a value
   * the events' cap does not keep are folded into `(other)` with it, so a rebuilt window holds the
   * events' kept values and `(other)` only (no visit-only rows).
   */
  private readonly propSeen = new Map<string, Map<string, Set<string>>>()
  /**
   * Per site, the day's `path` values of the events its day window counts (bots' too, as the cap
   * rule sees them): entry and exit pages are kept by them (core/aggregate/props.ts DAY_PATH_CAPPED).
   */
  private readonly dayPaths = new Map<string, Set<string>>()

  constructor(
    readonly dayStartMs: number,
    private readonly siteId: string | undefined,
    /** Distinct values kept per capped dimension and window (TALLY_DIMENSION_VALUES_MAX). */
    private readonly dimensionValuesMax = DEFAULT_DIMENSION_VALUES_MAX,
    /** Distinct values kept per custom property and window (TALLY_PROP_VALUES_MAX). */
    private readonly propValuesMax = DEFAULT_PROP_VALUES_MAX,
  ) {}

  /**
   * Adds a segment of the day: rows set in `losers` are duplicates and do not count. `props`: per
   * site that declares keys, its custom property values in this segment (batch/prop-columns.ts
   * propValuesOf), which follow each event's session values as `KEY=value` entries (a visit's
   * `prop:KEY` rows are its first event's values, as in the stream). `goals`: the goals of the
   * segment's sites that define any, for the conversions by dimension (goalRows).
   */
  add(
    cols: SegmentColumns,
    losers: Uint8Array | undefined,
    props?: ReadonlyMap<string, SitePropValues>,
    goals?: ReadonlyMap<string, GoalMatcher>,
  ): void {
    const codes = kindCodes(cols.type.dictionary)
    const typeIdx = cols.type.indices
    const botBits = cols.bot
    const ts = cols.timestamp
    const vh = cols.visitorHash
    const pathCol = cols.dims[PATH_COLUMN]!
    const sessionCols = SESSION_COLUMNS.map((c) => cols.dims[c]!)
    // Dictionary index → interned id, per segment (-1: not seen yet).
    const pathOf = new Int32Array(pathCol.dictionary.length).fill(-1)
    const sessionOf = new Map<string, number>()
    const eventCol = cols.dims[EVENT_COLUMN]!
    forEachSiteRun(cols, this.siteId, (from, to, site) => {
      let s = this.sites.get(site)
      if (!s) {
        s = new SiteDayEvents()
        this.sites.set(site, s)
      }
      // The site's declared keys (none for most sites: no cost) and their values, row by row.
      const pv = props?.get(site)
      const propKeys = pv?.dimensions.map((d) => d.slice(PROP_PREFIX.length)) ?? []
      let seen = this.propSeen.get(site)
      if (pv && !seen) {
        seen = new Map()
        this.propSeen.set(site, seen)
      }
      let dayPaths = this.dayPaths.get(site)
      if (!dayPaths) {
        dayPaths = new Set()
        this.dayPaths.set(site, dayPaths)
      }
      // Dictionary indices of the run's counted paths (bots' included).
      const pathSeen = new Uint8Array(pathCol.dictionary.length)
      const gm = goals?.get(site)
      for (let i = from; i < to; i++) {
        if (losers !== undefined && ((losers[i >>> 3]! >>> (i & 7)) & 1) === 1) continue
        const c = codes[(typeIdx[i]! << 1) | ((botBits[i >>> 3]! >>> (i & 7)) & 1)]!
        if (c === CODE_IGNORED) continue
        const pk = pathCol.indices[i]!
        pathSeen[pk] = 1
        if (pv) {
          const hour = windowStart(ts[2 * i + HI]! * 4294967296 + (ts[2 * i + LO]! >>> 0), 'hour')
          for (let k = 0; k < propKeys.length; k++) {
            const wk = `${hour}|${pv.dimensions[k]!}`
            let values = seen!.get(wk)
            if (!values) {
              values = new Set()
              seen!.set(wk, values)
            }
            values.add(pv.values[k]![i - from]!)
          }
        }
        if (c !== CODE_EVENT && c !== CODE_PAGEVIEW) continue
        const tsMs = ts[2 * i + HI]! * 4294967296 + (ts[2 * i + LO]! >>> 0)
        let path = pathOf[pk]!
        if (path < 0) {
          path = this.intern(pathCol.dictionary[pk]!)
          pathOf[pk] = path
        }
        let sk = ''
        for (const col of sessionCols) sk += `${col.indices[i]!},`
        for (let k = 0; k < propKeys.length; k++) sk += `\u0001${pv!.values[k]![i - from]!}`
        let session = sessionOf.get(sk)
        if (session === undefined) {
          const values = sessionCols.map((col) => col.dictionary[col.indices[i]!]!)
          for (let k = 0; k < propKeys.length; k++)
            values.push(propEntry(propKeys[k]!, pv!.values[k]![i - from]!))
          session = this.internSession(values)
          sessionOf.set(sk, session)
        }
        s.push(tsMs, vh[2 * i + HI]!, vh[2 * i + LO]!, c === CODE_PAGEVIEW, path, session)
        if (gm !== undefined) {
          const event = eventCol.dictionary[eventCol.indices[i]!]!
          const names = gm.reached(cols.type.dictionary[typeIdx[i]!]!, event, this.paths[path]!)
          if (names.length > 0)
            s.goals.set(s.length - 1, {
              names,
              event,
              dims: pv?.dimensions ?? NO_VALUES,
              props: pv ? pv.values.map((col) => col[i - from]!) : NO_VALUES,
            })
        }
      }
      for (let k = 0; k < pathSeen.length; k++) if (pathSeen[k] === 1) dayPaths.add(pathCol.dictionary[k]!)
    })
  }

  /**
   * The rows of conversions by dimension of the day's visits (core/aggregate/goals.ts `goal|DIM`,
   * the rule of the stream's stream/pipeline.ts countGoalsBy): per event that completes goals, in
   * its hour and day windows, one row per goal and dimension, valued by the visit's first event's
   * session values, its entry page among its events up to this one, or the event's own path and
   * event name. A capped dimension's values are capped per window and goal by the cap rule. Only
   * the visitors that converted are sessionized again. Sites in order.
   */
  *goalRows(gapMs: number, precision: number): Generator<AggregateRow> {
    for (const siteId of [...this.sites.keys()].sort()) {
      const s = this.sites.get(siteId)!
      if (s.goals.size === 0) continue
      const converters = new Set<string>()
      for (const i of s.goals.keys()) converters.add(`${s.hi[i]!}:${s.lo[i]!}`)
      const order: number[] = []
      for (let i = 0; i < s.length; i++) if (converters.has(`${s.hi[i]!}:${s.lo[i]!}`)) order.push(i)
      order.sort((a, b) => s.hi[a]! - s.hi[b]! || s.lo[a]! - s.lo[b]! || s.ts[a]! - s.ts[b]! || a - b)
      // `granularity start dimension goal` → value → the row.
      const groups = new Map<string, Map<string, AggregateRow>>()
      const rowOf = (
        granularity: Granularity,
        ws: number,
        dimension: ReturnType<typeof goalByDimension>,
        name: string,
        value: string,
      ): AggregateRow => {
        const g = `${granularity}\u0001${ws}\u0001${dimension}\u0001${name}`
        let byValue = groups.get(g)
        if (!byValue) {
          byValue = new Map()
          groups.set(g, byValue)
        }
        let row = byValue.get(value)
        if (!row) {
          row = {
            siteId,
            granularity,
            windowStart: ws,
            dimension,
            value,
            events: 0,
            pageviews: 0,
            botEvents: 0,
            visitors: new RegisterSet(precision),
          }
          byValue.set(value, row)
        }
        return row
      }
      let startMs = 0
      let session: readonly string[] = []
      let entryMs = 0
      let entry: string | undefined
      // The visit's exit page (its last pageview, the greatest path on a tie) and goals reached: its
      // conversions by exit page, in its start windows, once it ends (as the stream's eviction).
      let exitMs = 0
      let exit: string | undefined
      const reachedInVisit = new Set<string>()
      let visitorReg = 0
      const endVisit = () => {
        if (reachedInVisit.size === 0) return
        const dimension = goalByDimension(GOAL_BY_EXIT_PAGE)
        const value = exit ?? NONE
        for (const granularity of DIMENSION_GRANULARITIES) {
          const ws = windowStart(startMs, granularity)
          for (const name of reachedInVisit)
            rowOf(granularity, ws, dimension, name, value).visitors.add(visitorReg)
        }
        reachedInVisit.clear()
      }
      for (let k = 0; k < order.length; k++) {
        const i = order[k]!
        const prev = k > 0 ? order[k - 1]! : -1
        const ts = s.ts[i]!
        const values = this.sessions[s.session[i]!]!
        const sameVisitor = prev >= 0 && s.hi[prev] === s.hi[i] && s.lo[prev] === s.lo[i]
        if (!sameVisitor || ts - s.ts[prev]! >= gapMs) {
          endVisit()
          startMs = ts
          session = values
          entry = undefined
          exit = undefined
        } else if (ts === startMs && values.join('\u0001') < session.join('\u0001')) session = values
        if (s.pageview[i] === 1) {
          const path = this.paths[s.path[i]!]!
          if (entry === undefined || ts < entryMs || (ts === entryMs && path < entry)) {
            entryMs = ts
            entry = path
          }
          if (exit === undefined || ts > exitMs || (ts === exitMs && path > exit)) {
            exitMs = ts
            exit = path
          }
        }
        const goal = s.goals.get(i)
        if (goal === undefined) continue
        const reg = registerEntry(s.hi[i]!, s.lo[i]!, precision)
        for (const name of goal.names) reachedInVisit.add(name)
        visitorReg = reg
        // The built-in dimensions, then the site's declared properties (the event's own values).
        const dims: readonly GoalByDimension[] =
          goal.dims.length > 0
            ? [...GOAL_BY_DIMENSIONS, ...(goal.dims as PropDimension[])]
            : GOAL_BY_DIMENSIONS
        for (const granularity of DIMENSION_GRANULARITIES) {
          const ws = windowStart(ts, granularity)
          for (let d = 0; d < dims.length; d++) {
            const dim = dims[d]!
            const value =
              d >= GOAL_BY_DIMENSIONS.length
                ? goal.props[d - GOAL_BY_DIMENSIONS.length]!
                : dim === 'path'
                  ? this.paths[s.path[i]!]!
                  : dim === 'event'
                    ? goal.event
                    : dim === 'entry_page'
                      ? (entry ?? NONE)
                      : session[SESSION_INDEX.get(dim)!]!
            const dimension = goalByDimension(dim)
            for (const name of goal.names) {
              const row = rowOf(granularity, ws, dimension, name, value)
              row.events++
              if (s.pageview[i] === 1) row.pageviews++
              row.visitors.add(reg)
            }
          }
        }
      }
      endVisit()
      for (const [g, byValue] of groups) {
        const parts = g.split('\u0001')
        const dimension = parts[2]!
        const name = parts.slice(3).join('\u0001')
        const of = dimension.slice(GOAL_BY_PREFIX.length)
        const rows = isCappedDimension(of)
          ? capValues(
              byValue,
              isPropDimension(of) ? this.propValuesMax : this.dimensionValuesMax,
              (into, from) => {
                if (into === undefined) {
                  const visitors = new RegisterSet(precision)
                  visitors.merge(from.visitors)
                  return { ...from, value: OTHER, visitors }
                }
                into.events += from.events
                into.pageviews += from.pageviews
                into.visitors.merge(from.visitors)
                return into
              },
            ).values
          : byValue
        for (const [value, row] of rows) yield { ...row, value: goalByValue(name, value) }
      }
    }
  }

  private intern(path: string): number {
    let id = this.pathIds.get(path)
    if (id === undefined) {
      id = this.paths.length
      this.paths.push(path)
      this.pathIds.set(path, id)
    }
    return id
  }

  private internSession(values: string[]): number {
    const k = values.join('\u0001')
    let id = this.sessionIds.get(k)
    if (id === undefined) {
      id = this.sessions.length
      this.sessions.push(values)
      this.sessionIds.set(k, id)
    }
    return id
  }

  /**
   * The visit counts of every row the day's visits count in (visitRows: totals of every
   * granularity, hour and day breakdowns by the session dimensions, entry_page and exit_page), all
   * in windows of this day since a visit ends at midnight UTC. Sites in order.
   */
  *rows(gapMs: number): Generator<{ key: RowKey; counts: VisitCounts }> {
    for (const siteId of [...this.sites.keys()].sort()) {
      const s = this.sites.get(siteId)!
      const order = new Uint32Array(s.length)
      for (let i = 0; i < order.length; i++) order[i] = i
      order.sort((a, b) => s.hi[a]! - s.hi[b]! || s.lo[a]! - s.lo[b]!)
      const rows = new Map<string, { key: RowKey; counts: VisitCounts }>()
      let chunk: VisitEvent[] = []
      let visitor = ''
      const flush = () => {
        for (const [id, r] of visitRows(sessionize(chunk, gapMs), 0)) {
          const had = rows.get(id)
          if (!had) rows.set(id, r)
          else {
            had.counts.visits += r.counts.visits
            had.counts.bounces += r.counts.bounces
            had.counts.visitDurationMs += r.counts.visitDurationMs
            had.counts.visitPageviews += r.counts.visitPageviews
          }
        }
        chunk = []
      }
      for (let k = 0; k < order.length; k++) {
        const i = order[k]!
        const hi = s.hi[i]!
        const lo = s.lo[i]!
        const same = k > 0 && hi === s.hi[order[k - 1]!] && lo === s.lo[order[k - 1]!]
        if (!same) {
          if (chunk.length >= CHUNK_EVENTS) flush()
          visitor = `${hi.toString(16)}:${lo.toString(16)}`
        }
        const ts = s.ts[i]!
        if (windowStart(ts, 'day') !== this.dayStartMs)
          throw new RangeError(
            `an event at ${new Date(ts).toISOString()} is not of the day being sessionized`,
          )
        chunk.push({
          siteId,
          visitor,
          timestampMs: ts,
          pageview: s.pageview[i] === 1,
          path: this.paths[s.path[i]!]!,
          session: this.sessions[s.session[i]!]!,
        })
      }
      if (chunk.length > 0) flush()
      const seen = this.propSeen.get(siteId)
      const all = seen ? foldPropVisitRows(rows.values(), seen, this.propValuesMax) : rows.values()
      const keptPaths = keptValues(this.dayPaths.get(siteId) ?? [], this.dimensionValuesMax)
      yield* capVisitRows(all, this.dimensionValuesMax, keptPaths, this.propValuesMax)
    }
  }
}

type VisitRow = { key: RowKey; counts: VisitCounts }

/**
 * Folds the `prop:KEY` visit rows of a value the window's events do not keep (the cap rule over
 * the hour's values, or the union of the day's hours) into the window's `(other)` visit row; the
 * other rows as they are. A visit's value is its first event's, a value of its start window.
 */
function foldPropVisitRows(
  rows: Iterable<VisitRow>,
  seen: ReadonlyMap<string, ReadonlySet<string>>,
  max: number,
): VisitRow[] {
  const kept = new Map<string, Set<string>>()
  const keptOf = (g: string, ws: number, dimension: string): Set<string> => {
    const wk = `${g}|${ws}|${dimension}`
    let k = kept.get(wk)
    if (!k) {
      const values = new Set<string>()
      for (let h = ws; h < ws + (g === 'day' ? 24 : 1) * 3_600_000; h += 3_600_000)
        for (const v of seen.get(`${h}|${dimension}`) ?? []) values.add(v)
      k = keptValues(values, max)
      kept.set(wk, k)
    }
    return k
  }
  const out: VisitRow[] = []
  const other = new Map<string, VisitRow>()
  for (const r of rows) {
    const { dimension, granularity, windowStart: ws, value } = r.key
    if (
      dimension === undefined ||
      !isPropDimension(dimension) ||
      keptOf(granularity, ws, dimension).has(value)
    ) {
      out.push(r)
      continue
    }
    const ok = `${granularity}|${ws}|${dimension}`
    const had = other.get(ok)
    if (had) addTo(had.counts, r.counts)
    else {
      const row = { key: { ...r.key, value: OTHER }, counts: { ...r.counts } }
      other.set(ok, row)
      out.push(row)
    }
  }
  return out
}

/**
 * The visit rows of capped dimensions (the session ones: referrer, source, UTM; custom properties
 * under `propMax`) under the cap rule
 * of their own values in each window (core/aggregate/props.ts capValues), the others as they are. A
 * visit's values are its first event's, an event of the same window, so a value past the cap of the
 * visits' values is past the cap of the events' values too: this folds no value the events keep,
 * and a reader folding the merged values again answers as over the stream's rows.
 *
 * With `keptPaths` (the kept `path` values of the rows' day, site by site), entry and exit pages
 * not among them fold into `(other)` too (core/aggregate/props.ts DAY_PATH_CAPPED); without, they
 * are left as they are.
 */
export function* capVisitRows(
  rows: Iterable<VisitRow>,
  max: number,
  keptPaths?: ReadonlySet<string>,
  propMax = DEFAULT_PROP_VALUES_MAX,
): Generator<VisitRow> {
  const groups = new Map<string, Map<string, VisitRow>>()
  const pageGroups = new Map<string, Map<string, VisitRow>>()
  for (const r of rows) {
    const { dimension } = r.key
    if (dimension !== undefined && keptPaths !== undefined && isDayPathCapped(dimension)) {
      const g = `${r.key.granularity}\u0001${r.key.windowStart}\u0001${dimension}`
      let byValue = pageGroups.get(g)
      if (!byValue) {
        byValue = new Map()
        pageGroups.set(g, byValue)
      }
      byValue.set(r.key.value, r)
      continue
    }
    if (dimension === undefined || !isCappedDimension(dimension)) {
      yield r
      continue
    }
    const g = `${r.key.granularity}\u0001${r.key.windowStart}\u0001${dimension}`
    let byValue = groups.get(g)
    if (!byValue) {
      byValue = new Map()
      groups.set(g, byValue)
    }
    byValue.set(r.key.value, r)
  }
  for (const [g, byValue] of groups) {
    const dimension = g.slice(g.lastIndexOf('\u0001') + 1)
    yield* capValues(byValue, isPropDimension(dimension) ? propMax : max, foldRow).values.values()
  }
  for (const byValue of pageGroups.values()) yield* foldValues(byValue, keptPaths!, foldRow).values()
}

function foldRow(into: VisitRow | undefined, from: VisitRow): VisitRow {
  if (into === undefined) return { key: { ...from.key, value: OTHER }, counts: { ...from.counts } }
  addTo(into.counts, from.counts)
  return into
}
