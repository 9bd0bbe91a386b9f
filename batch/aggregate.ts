import { KeptBreakdowns } from '../core/aggregate/breakdowns.js'
import {
  DIMENSIONS,
  type Dimension,
  type GoalDimension,
  type Granularity,
  isPageview,
  kindOf,
  type PropDimension,
} from '../core/aggregate/definition.js'
import { GOAL_DIMENSION, type GoalMatcher } from '../core/aggregate/goals.js'
import {
  DEFAULT_DIMENSION_VALUES_MAX,
  isCappedDimension,
  keptValues,
  OTHER,
} from '../core/aggregate/props.js'
import { forEachSiteRun } from '../core/archive/dedup.js'
import { HI, LO, type SegmentColumns } from '../core/archive/segment-reader.js'
import { DIMENSION_COLUMNS } from '../schemas/arrow.js'
import type { EventType } from '../schemas/events.js'
import { RegisterSet, registerEntry } from './registers.js'

/**
 * The rebuild's aggregation, column by column: the same rows and values as the stream's
 * `rowKeysFor` + `RowAccumulator` (core/aggregate/rows.ts) with the same shared definitions —
 * which events count (`kindOf`), which are pageviews (`isPageview`), the dimension values
 * (`dimensionsOf`, applied when the event was archived), the visitor id hash, and UTC windows — but
 * over typed arrays and dictionary indices instead of event objects.
 *
 * A segment holds one event hour, so an event's hour and day windows are the segment's and only its
 * minute is computed. Per site and hour: 60 minute totals, then the hour's totals and breakdowns.
 * Hour totals are the merge of the minutes and day rows the merge of the hours: counts add and
 * HyperLogLog registers take the maximum, which gives exactly the registers of adding every visitor
 * to the bigger window directly.
 */

/** One aggregate row as computed (registers still open). */
export interface AggregateRow {
  siteId: string
  granularity: Granularity
  windowStart: number
  /** undefined: the window's totals. */
  dimension: Dimension | PropDimension | GoalDimension | undefined
  value: string
  events: number
  pageviews: number
  botEvents: number
  visitors: RegisterSet
}

export interface AggregateStats {
  /** Rows of the selected site(s) read. */
  rowsRead: number
  /** Counted (non-bot track/page/screen, not duplicates). */
  counted: number
  bots: number
  duplicates: number
  /** identify/group/alias: not activity. */
  ignored: number
}

export function emptyStats(): AggregateStats {
  return { rowsRead: 0, counted: 0, bots: 0, duplicates: 0, ignored: 0 }
}

const MINUTE_MS = 60_000

// Segments keep the dimension columns in the dimensions' order; the code below relies on it.
if (DIMENSION_COLUMNS.length !== DIMENSIONS.length || DIMENSION_COLUMNS.some((d, i) => DIMENSIONS[i] !== d)) {
  throw new Error('schemas/arrow.ts DIMENSION_COLUMNS must list the DIMENSIONS in their order')
}
/** Kind codes of a row (see {@link kindCodes}). */
export const CODE_IGNORED = 0
export const CODE_EVENT = 1
export const CODE_PAGEVIEW = 2
export const CODE_BOT = 3

/** DIMENSIONS index of each dimension (custom properties and goals are not among them). */
const DIMENSION_INDEX: ReadonlyMap<string, number> = new Map(DIMENSIONS.map((d, i) => [d, i]))

/** Per DIMENSIONS index: whether its values per window are capped (TALLY_DIMENSION_VALUES_MAX). */
const CAPPED_INDEX: readonly boolean[] = DIMENSIONS.map((d) => isCappedDimension(d))

/** Values of one dimension in one window: counts and registers per value slot. */
class ValueTable {
  private readonly slots = new Map<string, number>()
  readonly values: string[] = []
  readonly events: number[] = []
  readonly pageviews: number[] = []
  readonly bots: number[] = []
  readonly registers: RegisterSet[] = []

  constructor(private readonly precision: number) {}

  slot(value: string): number {
    let s = this.slots.get(value)
    if (s === undefined) {
      s = this.values.length
      this.slots.set(value, s)
      this.values.push(value)
      this.events.push(0)
      this.pageviews.push(0)
      this.bots.push(0)
      this.registers.push(new RegisterSet(this.precision))
    }
    return s
  }

  /** Adds a finished row of the same value from a smaller window. */
  addRow(value: string, row: AggregateRow): void {
    const s = this.slot(value)
    this.events[s]! += row.events
    this.pageviews[s]! += row.pageviews
    this.bots[s]! += row.botEvents
    this.registers[s]!.merge(row.visitors)
  }

  get size(): number {
    return this.values.length
  }

  /**
   * The table under the cap rule of custom properties and capped dimensions
   * (core/aggregate/props.ts): the kept values as they are, the others folded into `(other)`.
   */
  capped(max: number): ValueTable {
    // At most `max` values: all are kept (keptValues would say so after copying them into a set).
    if (this.size <= max) return this
    const kept = keptValues(this.values, max)
    if (kept.size === this.size) return this
    const out = new ValueTable(this.precision)
    for (let k = 0; k < this.size; k++) {
      const v = this.values[k]!
      const s = out.slot(kept.has(v) ? v : OTHER)
      out.events[s]! += this.events[k]!
      out.pageviews[s]! += this.pageviews[k]!
      out.bots[s]! += this.bots[k]!
      out.registers[s]!.merge(this.registers[k]!)
    }
    return out
  }
}

/**
 * The values of a site's custom properties in a segment's rows (read from its raw sidecar,
 * batch/prop-columns.ts): per declared key, the value of each row of the site's run (indexed from
 * the run's first row).
 */
export interface SitePropValues {
  readonly dimensions: readonly PropDimension[]
  /** Per dimension, per row of the run. */
  readonly values: ReadonlyArray<readonly string[]>
}

/** One custom property's pass over a site's run of rows (as addDimension, by value). */
function addPropValues(
  table: ValueTable,
  values: readonly string[],
  code: Uint8Array,
  entry: Uint32Array,
  from: number,
  to: number,
): void {
  for (let i = from; i < to; i++) {
    const c = code[i]!
    if (c === CODE_IGNORED) continue
    const slot = table.slot(values[i - from]!)
    if (c === CODE_BOT) {
      table.bots[slot]!++
      continue
    }
    table.events[slot]!++
    if (c === CODE_PAGEVIEW) table.pageviews[slot]!++
    table.registers[slot]!.add(entry[i]!)
  }
}

/**
 * The goals' pass over a site's run of rows: each counted event (bots complete none) counts in the
 * row of every goal it completes, matched on its type, event name and path as the stream does.
 */
function addGoals(
  table: ValueTable,
  goals: GoalMatcher,
  cols: SegmentColumns,
  code: Uint8Array,
  entry: Uint32Array,
  from: number,
  to: number,
): void {
  const types = cols.type
  const event = cols.dims[EVENT_COLUMN]!
  const path = cols.dims[PATH_COLUMN]!
  for (let i = from; i < to; i++) {
    const c = code[i]!
    if (c !== CODE_EVENT && c !== CODE_PAGEVIEW) continue
    const reached = goals.reached(
      types.dictionary[types.indices[i]!]!,
      event.dictionary[event.indices[i]!]!,
      path.dictionary[path.indices[i]!]!,
    )
    for (const name of reached) {
      const slot = table.slot(name)
      table.events[slot]!++
      if (c === CODE_PAGEVIEW) table.pageviews[slot]!++
      table.registers[slot]!.add(entry[i]!)
    }
  }
}

const EVENT_COLUMN = DIMENSION_COLUMNS.indexOf('event')
const PATH_COLUMN = DIMENSION_COLUMNS.indexOf('path')

function propTable(
  props: Map<PropDimension | GoalDimension, ValueTable>,
  d: PropDimension | GoalDimension,
  precision: number,
): ValueTable {
  let t = props.get(d)
  if (!t) {
    t = new ValueTable(precision)
    props.set(d, t)
  }
  return t
}

class SiteHour {
  readonly minuteEvents = new Float64Array(60)
  readonly minutePageviews = new Float64Array(60)
  readonly minuteBots = new Float64Array(60)
  readonly minuteTouched = new Uint8Array(60)
  readonly minuteRegisters: Array<RegisterSet | undefined> = new Array(60).fill(undefined)
  readonly dims: ValueTable[]
  readonly props = new Map<PropDimension | GoalDimension, ValueTable>()

  constructor(precision: number) {
    this.dims = DIMENSIONS.map(() => new ValueTable(precision))
  }
}

/** Event kind code of every (type dictionary entry, bot flag), from the shared definitions. */
export function kindCodes(types: readonly string[]): Uint8Array {
  const codes = new Uint8Array(types.length * 2)
  for (let t = 0; t < types.length; t++) {
    const type = types[t] as EventType
    for (const bot of [false, true]) {
      const kind = kindOf({ type, bot })
      codes[t * 2 + (bot ? 1 : 0)] =
        kind === 'ignored'
          ? CODE_IGNORED
          : kind === 'bot'
            ? CODE_BOT
            : isPageview({ type })
              ? CODE_PAGEVIEW
              : CODE_EVENT
    }
  }
  return codes
}

/** One dimension's pass over a site's run of rows (see HourAggregator.add). */
function addDimension(
  table: ValueTable,
  idx: Int32Array,
  dict: readonly string[],
  code: Uint8Array,
  entry: Uint32Array,
  from: number,
  to: number,
  slotOf: Int32Array,
  stampOf: Int32Array,
  stamp: number,
): void {
  const { events, pageviews, bots, registers } = table
  for (let i = from; i < to; i++) {
    const c = code[i]!
    if (c === CODE_IGNORED) continue
    const k = idx[i]!
    let slot: number
    if (stampOf[k] === stamp) slot = slotOf[k]!
    else {
      slot = table.slot(dict[k]!)
      slotOf[k] = slot
      stampOf[k] = stamp
    }
    if (c === CODE_BOT) {
      bots[slot]!++
      continue
    }
    events[slot]!++
    if (c === CODE_PAGEVIEW) pageviews[slot]!++
    registers[slot]!.add(entry[i]!)
  }
}

/** Aggregates the segments of one event hour. */
export class HourAggregator {
  private readonly sites = new Map<string, SiteHour>()
  /** Generation of the dictionary → slot caches (one per site run). */
  private stamp = 0

  constructor(
    readonly hourStartMs: number,
    private readonly precision: number,
    private readonly siteId: string | undefined,
    /** Distinct values kept per custom property (TALLY_PROP_VALUES_MAX). */
    private readonly propValuesMax = 1000,
    /** Distinct values kept per capped dimension (TALLY_DIMENSION_VALUES_MAX). */
    private readonly dimensionValuesMax = DEFAULT_DIMENSION_VALUES_MAX,
    /** The breakdown dimensions aggregated (TALLY_BREAKDOWNS, the stream's); the others get no pass and no rows. */
    private readonly kept = new KeptBreakdowns(),
  ) {}

  private siteHour(siteId: string): SiteHour {
    let s = this.sites.get(siteId)
    if (!s) {
      s = new SiteHour(this.precision)
      this.sites.set(siteId, s)
    }
    return s
  }

  /**
   * Adds a segment's rows; rows set in `losers` are duplicates and do not count. Column at a time:
   * one pass classifies the rows (kind, minute, register entry) and fills the minute totals, then one
   * pass per dimension adds each row to its value's counts and registers.
   */
  add(
    cols: SegmentColumns,
    losers: Uint8Array | undefined,
    stats: AggregateStats,
    /** Per site with declared keys, its custom property values in this segment, by its run's first row. */
    props?: ReadonlyMap<string, SitePropValues>,
    /** Per site with goals, its goals (core/aggregate/goals.ts), as the run read them. */
    goals?: ReadonlyMap<string, GoalMatcher>,
  ): void {
    const codes = kindCodes(cols.type.dictionary)
    const typeIdx = cols.type.indices
    const botBits = cols.bot
    const ts = cols.timestamp
    const vh = cols.visitorHash
    const p = this.precision
    const hourStart = this.hourStartMs
    const n = cols.rows
    // Per row: CODE_* (0 for duplicates and rows not counted) and the visitor's register entry.
    const code = new Uint8Array(n)
    const entry = new Uint32Array(n)
    // Per dimension: dictionary index → value slot of the current site, valid when its stamp matches.
    const slotOf = cols.dims.map((d) => new Int32Array(d.dictionary.length))
    const stampOf = cols.dims.map((d) => new Int32Array(d.dictionary.length))

    forEachSiteRun(cols, this.siteId, (from, to, site) => {
      const s = this.siteHour(site)
      stats.rowsRead += to - from
      for (let i = from; i < to; i++) {
        if (losers !== undefined && ((losers[i >>> 3]! >>> (i & 7)) & 1) === 1) {
          stats.duplicates++
          continue
        }
        const c = codes[(typeIdx[i]! << 1) | ((botBits[i >>> 3]! >>> (i & 7)) & 1)]!
        if (c === CODE_IGNORED) {
          stats.ignored++
          continue
        }
        code[i] = c
        const tsMs = ts[2 * i + HI]! * 4294967296 + (ts[2 * i + LO]! >>> 0)
        const minute = Math.floor((tsMs - hourStart) / MINUTE_MS)
        s.minuteTouched[minute] = 1
        if (c === CODE_BOT) {
          stats.bots++
          s.minuteBots[minute]!++
          continue
        }
        stats.counted++
        const e = registerEntry(vh[2 * i + HI]!, vh[2 * i + LO]!, p)
        entry[i] = e
        s.minuteEvents[minute]!++
        if (c === CODE_PAGEVIEW) s.minutePageviews[minute]!++
        let mr = s.minuteRegisters[minute]
        if (mr === undefined) {
          mr = new RegisterSet(p)
          s.minuteRegisters[minute] = mr
        }
        mr.add(e)
      }
      // Column d is DIMENSIONS[d] (checked above); only the kept ones are aggregated.
      for (const d of this.kept.event) {
        const dim = cols.dims[d]!
        addDimension(
          s.dims[d]!,
          dim.indices,
          dim.dictionary,
          code,
          entry,
          from,
          to,
          slotOf[d]!,
          stampOf[d]!,
          ++this.stamp,
        )
      }
      const pv = props?.get(site)
      if (pv) {
        pv.dimensions.forEach((d, k) => {
          addPropValues(propTable(s.props, d, p), pv.values[k]!, code, entry, from, to)
        })
      }
      const gm = goals?.get(site)
      if (gm && !gm.empty) addGoals(propTable(s.props, GOAL_DIMENSION, p), gm, cols, code, entry, from, to)
    })
  }

  /** Sites with rows in this hour. */
  siteIds(): string[] {
    return [...this.sites.keys()].sort()
  }

  /** The minute totals, hour totals and hour breakdowns of one site (rows exist where events were). */
  *rows(siteId: string): Generator<AggregateRow> {
    const s = this.sites.get(siteId)
    if (!s) return
    const p = this.precision
    const hour: AggregateRow = {
      siteId,
      granularity: 'hour',
      windowStart: this.hourStartMs,
      dimension: undefined,
      value: '',
      events: 0,
      pageviews: 0,
      botEvents: 0,
      visitors: new RegisterSet(p),
    }
    let touched = false
    for (let m = 0; m < 60; m++) {
      if (s.minuteTouched[m] === 0) continue
      touched = true
      const row: AggregateRow = {
        siteId,
        granularity: 'minute',
        windowStart: this.hourStartMs + m * MINUTE_MS,
        dimension: undefined,
        value: '',
        events: s.minuteEvents[m]!,
        pageviews: s.minutePageviews[m]!,
        botEvents: s.minuteBots[m]!,
        visitors: s.minuteRegisters[m] ?? new RegisterSet(p),
      }
      hour.events += row.events
      hour.pageviews += row.pageviews
      hour.botEvents += row.botEvents
      hour.visitors.merge(row.visitors)
      yield row
    }
    if (!touched) return
    yield hour
    for (let d = 0; d < DIMENSIONS.length; d++) {
      const table = CAPPED_INDEX[d] ? s.dims[d]!.capped(this.dimensionValuesMax) : s.dims[d]!
      for (let k = 0; k < table.size; k++) {
        yield {
          siteId,
          granularity: 'hour',
          windowStart: this.hourStartMs,
          dimension: DIMENSIONS[d]!,
          value: table.values[k]!,
          events: table.events[k]!,
          pageviews: table.pageviews[k]!,
          botEvents: table.bots[k]!,
          visitors: table.registers[k]!,
        }
      }
    }
    yield* propRows(s.props, this.propValuesMax, siteId, 'hour', this.hourStartMs)
  }
}

/** The rows of a window's custom properties, each under the cap rule. */
function* propRows(
  props: ReadonlyMap<PropDimension | GoalDimension, ValueTable>,
  max: number,
  siteId: string,
  granularity: Granularity,
  windowStart: number,
): Generator<AggregateRow> {
  for (const [dimension, full] of props) {
    // Goals are at most 20 a site: no cap.
    const table = dimension === GOAL_DIMENSION ? full : full.capped(max)
    for (let k = 0; k < table.size; k++) {
      yield {
        siteId,
        granularity,
        windowStart,
        dimension,
        value: table.values[k]!,
        events: table.events[k]!,
        pageviews: table.pageviews[k]!,
        botEvents: table.bots[k]!,
        visitors: table.registers[k]!,
      }
    }
  }
}

class SiteDay {
  readonly totals: AggregateRow
  readonly dims: ValueTable[]

  constructor(siteId: string, dayStartMs: number, precision: number) {
    this.totals = {
      siteId,
      granularity: 'day',
      windowStart: dayStartMs,
      dimension: undefined,
      value: '',
      events: 0,
      pageviews: 0,
      botEvents: 0,
      visitors: new RegisterSet(precision),
    }
    this.dims = DIMENSIONS.map(() => new ValueTable(precision))
  }

  readonly props = new Map<PropDimension | GoalDimension, ValueTable>()
}

/** Rolls hour rows up into the day's rows (counts add, registers merge). */
export class DayAggregator {
  private readonly sites = new Map<string, SiteDay>()

  constructor(
    readonly dayStartMs: number,
    private readonly precision: number,
    /** Distinct values kept per custom property (TALLY_PROP_VALUES_MAX). */
    private readonly propValuesMax = 1000,
    /** Distinct values kept per capped dimension (TALLY_DIMENSION_VALUES_MAX). */
    private readonly dimensionValuesMax = DEFAULT_DIMENSION_VALUES_MAX,
  ) {}

  /** Takes an hour row (totals or breakdown) of this day; minute rows are ignored. */
  add(row: AggregateRow): void {
    if (row.granularity !== 'hour') return
    let s = this.sites.get(row.siteId)
    if (!s) {
      s = new SiteDay(row.siteId, this.dayStartMs, this.precision)
      this.sites.set(row.siteId, s)
    }
    if (row.dimension === undefined) {
      s.totals.events += row.events
      s.totals.pageviews += row.pageviews
      s.totals.botEvents += row.botEvents
      s.totals.visitors.merge(row.visitors)
    } else {
      const d = DIMENSION_INDEX.get(row.dimension)
      if (d !== undefined) s.dims[d]!.addRow(row.value, row)
      else {
        // A custom property or goal: the hour rows are capped already; the day's cap keeps every
        // value an hour kept that is among the day's kept ones (core/aggregate/props.ts). Goal rows
        // are never capped.
        propTable(s.props, row.dimension as PropDimension | GoalDimension, this.precision).addRow(
          row.value,
          row,
        )
      }
    }
  }

  *rows(): Generator<AggregateRow> {
    for (const siteId of [...this.sites.keys()].sort()) {
      const s = this.sites.get(siteId)!
      yield s.totals
      for (let d = 0; d < DIMENSIONS.length; d++) {
        // A capped dimension's hour rows are capped already: the day's cap keeps each kept value
        // whole (as for custom properties, below).
        const table = CAPPED_INDEX[d] ? s.dims[d]!.capped(this.dimensionValuesMax) : s.dims[d]!
        for (let k = 0; k < table.size; k++) {
          yield {
            siteId,
            granularity: 'day',
            windowStart: this.dayStartMs,
            dimension: DIMENSIONS[d]!,
            value: table.values[k]!,
            events: table.events[k]!,
            pageviews: table.pageviews[k]!,
            botEvents: table.bots[k]!,
            visitors: table.registers[k]!,
          }
        }
      }
      yield* propRows(s.props, this.propValuesMax, siteId, 'day', this.dayStartMs)
    }
  }
}
