import { KeptBreakdowns } from '../core/aggregate/breakdowns.js'
import {
  DIMENSION_GRANULARITIES,
  GRANULARITIES,
  type Granularity,
  ROW_DIMENSIONS,
  type RowDimension,
  SESSION_DIMENSIONS,
  windowMs,
  windowStart,
} from '../core/aggregate/definition.js'
import {
  DEFAULT_DIMENSION_VALUES_MAX,
  DEFAULT_PROP_VALUES_MAX,
  isCappedDimension,
  isDayPathCapped,
  isPropDimension,
  ValueAdmission,
} from '../core/aggregate/props.js'
import { RowAccumulator } from '../core/aggregate/rows.js'
import { splitPropEntry } from '../core/aggregate/visits.js'
import { type RowKey, rowId, type StoredRow, type VisitCounts } from '../core/ports/aggregate-store.js'

/**
 * The rows a stream worker holds for one partition: the open windows' totals and breakdowns, each
 * with the offset it counts through. The pipeline's aggregate step counts events into them
 * (stream/pipeline.ts); the worker loads their stored values and flushes them (stream/worker.ts).
 */

export interface Row {
  key: RowKey
  /** rowId(key): how the store's loadRows answers name it. */
  id: string
  /** Undefined while the row's stored value is being loaded (first touched by the current batch). */
  acc: RowAccumulator | undefined
  /** Last source offset counted in this row (−1: none), written with it as its through_offset. */
  throughOffset: number
  /**
   * The throughOffset the row was loaded with (−1: none): events at or below it are in the stored
   * value (a replay) and skipped, counts and visit changes alike. Compared with this, not with the
   * live throughOffset, because the events of one packed record (format 2) share an offset: every
   * one of them counts, and the worker writes rows and checkpoints only between records.
   */
  storedThrough: number
  dirty: boolean
  /**
   * While the row is being loaded: what the batch's events do to it, in offset order. An event
   * counted: four numbers (offset, flags, visitor hash high and low halves); a visit change: six
   * (offset, VISIT, then the visits, bounces, duration and pageviews of the change).
   */
  pending: number[] | undefined
}

/** Bits of the flags of a pending event. */
export const BOT = 1
export const PAGEVIEW = 2
/** A pending visit change (not an event count). */
export const VISIT = 4
/** A pending converter of an ended visit (conversions by exit page: the register only). */
export const CONVERTER = 8

/**
 * The dimensions a window's rows are kept by, in order: an event's (DIMENSIONS), then a visit's own
 * (entry and exit page), which only visit changes touch.
 */
const ROW_DIMENSION_INDEX = new Map<RowDimension, number>(ROW_DIMENSIONS.map((d, i) => [d, i]))
const GRANULARITY_INDEX = new Map<Granularity, number>(GRANULARITIES.map((g, i) => [g, i]))
/** Per ROW_DIMENSIONS index: whether its values per window are capped (core/aggregate/props.ts). */
const CAPPED_INDEX: readonly boolean[] = ROW_DIMENSIONS.map((d) => isCappedDimension(d))
/** Per ROW_DIMENSIONS index: whether it is capped by its day's `path` values (entry and exit page). */
const DAY_PATH_INDEX: readonly boolean[] = ROW_DIMENSIONS.map((d) => isDayPathCapped(d))
const PATH_INDEX = ROW_DIMENSION_INDEX.get('path')!
const DAY_INDEX = GRANULARITY_INDEX.get('day')!

/** The rows of one window of one site: its totals and, for hour and day, one row per dimension value. */
export class WindowRows {
  totals: Row | undefined
  /** Per dimension (ROW_DIMENSIONS order), the rows by value; empty for minute windows. */
  readonly dims: Array<Map<string, Row>>
  /** Per custom property dimension (`prop:KEY`) of the site: its rows by value, and which values get one. */
  readonly props = new Map<string, PropRows>()
  /** Per capped dimension (ROW_DIMENSIONS index; core/aggregate/props.ts): which values get a row. */
  private readonly admissions: Array<ValueAdmission | undefined> = []
  size = 0

  constructor(
    readonly windowEnd: number,
    withDimensions: boolean,
    /** Values kept per capped dimension (TALLY_DIMENSION_VALUES_MAX). */
    private readonly valuesMax = DEFAULT_DIMENSION_VALUES_MAX,
  ) {
    this.dims = withDimensions ? ROW_DIMENSIONS.map(() => new Map<string, Row>()) : []
  }

  /**
   * The row value an event's (or a visit's) value of dimension `di` counts under: itself, or
   * `(other)` when the dimension is capped and the cap rule can no longer keep it in this window
   * (ValueAdmission). A value once admitted stays admitted and one refused stays refused, so a
   * visit's later changes (visitDeltas) reach the row its first event counted in.
   */
  valueOf(di: number, value: string): string {
    if (!CAPPED_INDEX[di]) return value
    let a = this.admissions[di]
    if (a === undefined) {
      a = new ValueAdmission(this.valuesMax)
      this.admissions[di] = a
    }
    return a.admit(value)
  }

  /** The rows of a custom property dimension (hour and day windows only). */
  propRows(dimension: string, maxValues: number): PropRows {
    let p = this.props.get(dimension)
    if (!p) {
      p = { rows: new Map(), admission: new ValueAdmission(maxValues) }
      this.props.set(dimension, p)
    }
    return p
  }
}

/**
 * A custom property's rows in one window: a value gets its own row while the cap rule may keep it
 * (core/aggregate/props.ts ValueAdmission), else the event counts in the `(other)` row.
 */
export interface PropRows {
  readonly rows: Map<string, Row>
  readonly admission: ValueAdmission
}

/**
 * The rows of open windows of one partition, reached without building a string key per row:
 * granularity → site → window start → rows. Dirty rows are listed as they become dirty, so a flush
 * does not scan the rest.
 */
export class RowTable {
  private readonly byGranularity: Array<Map<string, Map<number, WindowRows>>> = GRANULARITIES.map(
    () => new Map(),
  )
  dirty: Row[] = []
  size = 0
  /** Open windows, all granularities and sites. */
  windows = 0

  constructor(
    /** Values kept per capped dimension and window (TALLY_DIMENSION_VALUES_MAX). */
    readonly dimensionValuesMax = DEFAULT_DIMENSION_VALUES_MAX,
    /** The breakdown dimensions whose rows are written (TALLY_BREAKDOWNS); the others get none. */
    readonly kept = new KeptBreakdowns(),
    /**
     * Values kept per custom property and window (TALLY_PROP_VALUES_MAX), for the `prop:KEY` rows a
     * visit change reaches; the aggregate step's PipelineProps.maxValues is the same setting.
     */
    readonly propValuesMax = DEFAULT_PROP_VALUES_MAX,
  ) {}

  window(gi: number, siteId: string, windowStart: number): WindowRows {
    const bySite = this.byGranularity[gi]!
    let byStart = bySite.get(siteId)
    if (!byStart) {
      byStart = new Map()
      bySite.set(siteId, byStart)
    }
    let w = byStart.get(windowStart)
    if (!w) {
      const g = GRANULARITIES[gi]!
      w = new WindowRows(
        windowStart + windowMs(g),
        DIMENSION_GRANULARITIES.includes(g),
        this.dimensionValuesMax,
      )
      byStart.set(windowStart, w)
      this.windows++
    }
    return w
  }

  /**
   * Drops the oldest windows (by end) until at most `keep` are left (only clean rows: call right
   * after a flush). Their rows are in the store with the offset they count through, so an event
   * that touches one again loads it back and counts once. Returns how many were dropped.
   */
  evictOldest(keep: number): number {
    const all: Array<{ end: number; byStart: Map<number, WindowRows>; start: number; w: WindowRows }> = []
    for (const bySite of this.byGranularity) {
      for (const byStart of bySite.values()) {
        for (const [start, w] of byStart) all.push({ end: w.windowEnd, byStart, start, w })
      }
    }
    all.sort((a, b) => a.end - b.end)
    const drop = Math.max(0, all.length - keep)
    for (let i = 0; i < drop; i++) {
      const { byStart, start, w } = all[i]!
      byStart.delete(start)
      this.size -= w.size
      this.windows--
    }
    for (const bySite of this.byGranularity) {
      for (const [site, byStart] of bySite) if (byStart.size === 0) bySite.delete(site)
    }
    return drop
  }

  /** Drops the windows that ended at or before `line` (only clean rows: call right after a flush). */
  evict(line: number): void {
    for (const bySite of this.byGranularity) {
      for (const [site, byStart] of bySite) {
        for (const [ws, w] of byStart) {
          if (w.windowEnd <= line) {
            this.size -= w.size
            this.windows--
            byStart.delete(ws)
          }
        }
        if (byStart.size === 0) bySite.delete(site)
      }
    }
  }
}

/** A row waiting for its stored value, and where it goes in the table once loaded. */
export interface Loading {
  row: Row
  window: WindowRows
  /** Index in ROW_DIMENSIONS, −1 for the window's totals, −2 for a custom property's row (`prop`). */
  dim: number
  prop?: PropRows
}

/** Loading.dim of a custom property's row. */
export const PROP_DIM = -2

/**
 * Counts one event in one row, unless the row already counts it (its stored value was written
 * through this offset before a restart); a row still loading keeps the event for later.
 */
export function apply(
  table: RowTable,
  row: Row,
  offset: number,
  flags: number,
  hi: number,
  lo: number,
): void {
  const acc = row.acc
  if (acc === undefined) {
    row.pending!.push(offset, flags, hi, lo)
    return
  }
  if (offset <= row.storedThrough) return
  acc.addCounted((flags & BOT) !== 0, (flags & PAGEVIEW) !== 0, hi, lo)
  row.throughOffset = offset
  if (!row.dirty) {
    row.dirty = true
    table.dirty.push(row)
  }
}

/**
 * Changes one row's visit counts by a visit change of the event at `offset` (visitDeltas), unless
 * the row already has it (its stored value was written through this offset before a restart). The
 * row then counts through `offset`, so a replay skips the change. A row still loading keeps it.
 */
export function applyVisits(table: RowTable, row: Row, offset: number, delta: VisitCounts): void {
  const acc = row.acc
  if (acc === undefined) {
    row.pending!.push(offset, VISIT, delta.visits, delta.bounces, delta.visitDurationMs, delta.visitPageviews)
    return
  }
  if (offset <= row.storedThrough) return
  acc.addVisits(delta)
  if (offset > row.throughOffset) row.throughOffset = offset
  if (!row.dirty) {
    row.dirty = true
    table.dirty.push(row)
  }
}

/**
 * Adds a converter of an ended visit to a `goal|exit_page` row (stream/worker.ts, at the eviction):
 * its visitor register only, whatever offset the row counts through. A register add is idempotent,
 * so a replay that evicts the same visit again changes nothing, and no count is kept that it could
 * double. A row still loading keeps it.
 */
export function applyConverter(table: RowTable, row: Row, hi: number, lo: number): void {
  const acc = row.acc
  if (acc === undefined) {
    row.pending!.push(-1, CONVERTER, hi, lo)
    return
  }
  acc.visitors.addHalves(hi, lo)
  if (!row.dirty) {
    row.dirty = true
    table.dirty.push(row)
  }
}

/**
 * The row of `key` in the table: held, or added to load (a visit change may touch a window already
 * written and dropped: its start window). A capped dimension's value goes through the window's
 * admission (WindowRows.valueOf), as the event's own count did; an entry or exit page through its
 * day's `path` admission.
 */
export function rowOf(table: RowTable, loading: Loading[], key: RowKey): Row {
  const gi = GRANULARITY_INDEX.get(key.granularity)!
  const w = table.window(gi, key.siteId, key.windowStart)
  if (key.dimension === undefined) return w.totals ?? rowToLoad(table, loading, w, -1, key)
  if (isPropDimension(key.dimension)) return propRowAt(table, loading, w, key.dimension, key)
  const di = ROW_DIMENSION_INDEX.get(key.dimension)!
  const value = admitted(table, w, gi, key.siteId, key.windowStart, di, key.value)
  return (
    w.dims[di]!.get(value) ?? rowToLoad(table, loading, w, di, value === key.value ? key : { ...key, value })
  )
}

/**
 * The row value of dimension `di` = `value` in window `w` (starting at `ws`): a capped dimension's
 * through the window's admission (WindowRows.valueOf), an entry or exit page's through the
 * admission of `path` in the window's day (core/aggregate/props.ts DAY_PATH_CAPPED). The page is
 * a path of that day, so admitting it there adds no value the day does not have: a refusal still
 * proves it is not among the day's kept paths, and a page once admitted or refused stays so, so a
 * visit's later changes reach the row it counted in.
 */
function admitted(
  table: RowTable,
  w: WindowRows,
  gi: number,
  siteId: string,
  ws: number,
  di: number,
  value: string,
): string {
  if (!DAY_PATH_INDEX[di]) return w.valueOf(di, value)
  const day = gi === DAY_INDEX ? w : table.window(DAY_INDEX, siteId, windowStart(ws, 'day'))
  return day.valueOf(PATH_INDEX, value)
}

/** ROW_DIMENSIONS index of each session dimension, and of entry and exit page. */
const SESSION_ROW_INDEX = SESSION_DIMENSIONS.map((d) => ROW_DIMENSION_INDEX.get(d)!)
const ENTRY_PAGE = ROW_DIMENSION_INDEX.get('entry_page')!
const EXIT_PAGE = ROW_DIMENSION_INDEX.get('exit_page')!
const KEEPS_DIMENSIONS = GRANULARITIES.map((g) => DIMENSION_GRANULARITIES.includes(g))

/**
 * The row of one window's totals (`di` −1) or of its dimension `di` = `value`: held, or added to
 * load. Like {@link rowOf} without a RowKey unless the row is new to the table.
 */
function rowAt(
  table: RowTable,
  loading: Loading[],
  sourcePartition: number,
  siteId: string,
  gi: number,
  ws: number,
  di: number,
  value: string,
): Row {
  return rowIn(table, loading, sourcePartition, siteId, gi, ws, table.window(gi, siteId, ws), di, value)
}

/** {@link rowAt} in a window already found (`w`: the table's window `gi`, `siteId`, `ws`). */
function rowIn(
  table: RowTable,
  loading: Loading[],
  sourcePartition: number,
  siteId: string,
  gi: number,
  ws: number,
  w: WindowRows,
  di: number,
  value: string,
): Row {
  if (di < 0)
    return (
      w.totals ??
      rowToLoad(table, loading, w, di, {
        siteId,
        granularity: GRANULARITIES[gi]!,
        windowStart: ws,
        dimension: undefined,
        value: '',
        sourcePartition,
      })
    )
  // A capped dimension's value as the event's own count took it: itself or `(other)`.
  const v = admitted(table, w, gi, siteId, ws, di, value)
  return (
    w.dims[di]!.get(v) ??
    rowToLoad(table, loading, w, di, {
      siteId,
      granularity: GRANULARITIES[gi]!,
      windowStart: ws,
      dimension: ROW_DIMENSIONS[di],
      value: v,
      sourcePartition,
    })
  )
}

/**
 * The row of a custom property's value in window `w` (a visit's first event's value, `key.value`),
 * through the window's admission of that key's values, as the event's own count went (the
 * aggregate step): the value's row, or `(other)` when the cap rule refused it.
 */
function propRowAt(table: RowTable, loading: Loading[], w: WindowRows, dimension: string, key: RowKey): Row {
  const pr = w.propRows(dimension, table.propValuesMax)
  const value = pr.admission.admit(key.value)
  return propRowOf(table, loading, w, pr, value === key.value ? key : { ...key, value })
}

/**
 * Changes by `delta` the visit counts of every row a visit counts in (core/aggregate/visits.ts
 * `visitRowKeys`, same rows): the totals of its start windows, and for hour and day its session
 * values' rows, its declared custom properties' rows (the `KEY=value` entries after the session
 * values) and its `entry` / `exit` page rows (undefined: that row is left out). Walks the table
 * without building a key per row unless the row is new; `delta` is read at once, so the caller may
 * reuse it.
 */
export function applyVisitRows(
  table: RowTable,
  loading: Loading[],
  sourcePartition: number,
  siteId: string,
  startMs: number,
  session: readonly string[],
  entry: string | undefined,
  exit: string | undefined,
  offset: number,
  delta: VisitCounts,
): void {
  for (let gi = 0; gi < GRANULARITIES.length; gi++) {
    const ws = windowStart(startMs, GRANULARITIES[gi]!)
    // The window once for its rows (not once per row: two map reads each).
    const w = table.window(gi, siteId, ws)
    applyVisits(table, rowIn(table, loading, sourcePartition, siteId, gi, ws, w, -1, ''), offset, delta)
    if (!KEEPS_DIMENSIONS[gi]) continue
    const kept = table.kept.session
    for (let k = 0; k < kept.length; k++) {
      const i = kept[k]!
      applyVisits(
        table,
        rowIn(table, loading, sourcePartition, siteId, gi, ws, w, SESSION_ROW_INDEX[i]!, session[i]!),
        offset,
        delta,
      )
    }
    for (let i = SESSION_ROW_INDEX.length; i < session.length; i++) {
      const { dimension, value } = splitPropEntry(session[i]!)
      const key: RowKey = {
        siteId,
        granularity: GRANULARITIES[gi]!,
        windowStart: ws,
        dimension,
        value,
        sourcePartition,
      }
      applyVisits(table, propRowAt(table, loading, w, dimension, key), offset, delta)
    }
    if (entry !== undefined && table.kept.entryPage)
      applyVisits(
        table,
        rowIn(table, loading, sourcePartition, siteId, gi, ws, w, ENTRY_PAGE, entry),
        offset,
        delta,
      )
    if (exit !== undefined && table.kept.exitPage)
      applyVisits(
        table,
        rowIn(table, loading, sourcePartition, siteId, gi, ws, w, EXIT_PAGE, exit),
        offset,
        delta,
      )
  }
}

/**
 * Changes by `delta` the visit counts of one entry page (`exit` false) or exit page row of each
 * start window with dimensions (hour, day) of a visit started at `startMs`.
 */
export function applyVisitPageRows(
  table: RowTable,
  loading: Loading[],
  sourcePartition: number,
  siteId: string,
  startMs: number,
  exit: boolean,
  page: string,
  offset: number,
  delta: VisitCounts,
): void {
  const di = exit ? EXIT_PAGE : ENTRY_PAGE
  if (!(exit ? table.kept.exitPage : table.kept.entryPage)) return
  for (let gi = 0; gi < GRANULARITIES.length; gi++) {
    if (!KEEPS_DIMENSIONS[gi]) continue
    const ws = windowStart(startMs, GRANULARITIES[gi]!)
    applyVisits(table, rowAt(table, loading, sourcePartition, siteId, gi, ws, di, page), offset, delta)
  }
}

/** Takes a row that never got its stored value back out of the table. */
export function unlink(table: RowTable, { row, window, dim, prop }: Loading): void {
  if (dim === PROP_DIM) {
    if (prop!.rows.get(row.key.value) === row) prop!.rows.delete(row.key.value)
    else return
  } else if (dim < 0) {
    if (window.totals === row) window.totals = undefined
  } else if (window.dims[dim]!.get(row.key.value) === row) window.dims[dim]!.delete(row.key.value)
  else return
  window.size--
  table.size--
}

/**
 * Adds a row first touched in this batch to the table, without a value yet: the events that touch
 * it wait in it until the batch's rows are loaded.
 */
export function rowToLoad(
  table: RowTable,
  loading: Loading[],
  window: WindowRows,
  dim: number,
  key: RowKey,
  prop?: PropRows,
): Row {
  const row: Row = {
    key,
    id: rowId(key),
    acc: undefined,
    throughOffset: -1,
    storedThrough: -1,
    dirty: false,
    pending: [],
  }
  if (dim === PROP_DIM) prop!.rows.set(key.value, row)
  else if (dim < 0) window.totals = row
  else window.dims[dim]!.set(key.value, row)
  window.size++
  table.size++
  loading.push(prop ? { row, window, dim, prop } : { row, window, dim })
  return row
}

/**
 * The row of `key.value` among a window's rows of one custom property, goal or goal-by dimension
 * (`pr`), set to load (rowToLoad) when the window does not hold it.
 */
export function propRowOf(
  table: RowTable,
  loading: Loading[],
  window: WindowRows,
  pr: PropRows,
  key: RowKey,
): Row {
  return pr.rows.get(key.value) ?? rowToLoad(table, loading, window, PROP_DIM, key, pr)
}

/**
 * Gives the loading rows their stored values (by row id; none: a new row, which carries visit
 * counts when `countsVisits`) and applies what waited for them.
 */
export function fillLoaded(
  table: RowTable,
  loading: readonly Loading[],
  loaded: ReadonlyMap<string, StoredRow>,
  precision: number,
  countsVisits = false,
): void {
  for (const { row } of loading) {
    const stored = loaded.get(row.id)
    row.acc = new RowAccumulator(precision, stored, { countsVisits })
    row.throughOffset = stored?.throughOffset ?? -1
    row.storedThrough = row.throughOffset
    const waiting = row.pending!
    row.pending = undefined
    for (let i = 0; i < waiting.length; ) {
      if (waiting[i + 1] === VISIT) {
        applyVisits(table, row, waiting[i]!, {
          visits: waiting[i + 2]!,
          bounces: waiting[i + 3]!,
          visitDurationMs: waiting[i + 4]!,
          visitPageviews: waiting[i + 5]!,
        })
        i += 6
      } else if (waiting[i + 1] === CONVERTER) {
        applyConverter(table, row, waiting[i + 2]!, waiting[i + 3]!)
        i += 4
      } else {
        apply(table, row, waiting[i]!, waiting[i + 1]!, waiting[i + 2]!, waiting[i + 3]!)
        i += 4
      }
    }
  }
}
