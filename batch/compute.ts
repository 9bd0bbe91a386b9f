import { type BreakdownDimension, KeptBreakdowns } from '../core/aggregate/breakdowns.js'
import { type Granularity, windowMs, windowStart } from '../core/aggregate/definition.js'
import type { DedupOutcome } from '../core/archive/dedup.js'
import type { SegmentColumns } from '../core/archive/segment-reader.js'
import type { RowKey, VisitCounts } from '../core/ports/aggregate-store.js'
import type { FinalRow } from '../core/ports/batch-store.js'
import {
  type AggregateRow,
  type AggregateStats,
  DayAggregator,
  emptyStats,
  HourAggregator,
} from './aggregate.js'
import { goalsOfSegment, propValuesOf, type RunPropKeys } from './prop-columns.js'
import { RegisterSet } from './registers.js'
import { DayVisits } from './visits.js'

/**
 * The rebuild's compute, pass 2 (batch/rebuild.ts, step 4): the segments of a range's whole days,
 * without their duplicates (pass 1, core/archive/dedup.ts), down to the final rows with their
 * registers serialized — no I/O of its own. `runRebuild` stages the rows it emits; the batch
 * benchmark (bench/peers/tally-compute.ts) runs this same function over segments in memory, so the
 * bench measures the product's code.
 */

const HOUR_MS = 3_600_000
const DAY_MS = 86_400_000

export interface ComputeSettings {
  /** HyperLogLog precision of `visitors` (the stream's). */
  precision: number
  /** A gap of at least this much event time ends a visit. */
  visitGapMs: number
  /** Count visits (RebuildSettings.countsVisits). */
  countsVisits: boolean
  /** Distinct values kept per custom property and window. Default 1000. */
  propValuesMax?: number | undefined
  /** Distinct values kept per capped dimension and window. Default 10000. */
  dimensionValuesMax?: number | undefined
  /** The breakdown dimensions aggregated. Default all. */
  breakdowns?: readonly BreakdownDimension[] | undefined
  /** Row TTLs per granularity in seconds (0: forever): windows expired at `nowMs` are not emitted. */
  ttlSeconds?: Readonly<Record<Granularity, number>> | undefined
  /** The time TTLs are measured from (the job's start). */
  nowMs: number
}

/** What a final row emitted is: the window's counts (and goal conversions), or its visit counts. */
export type EmittedKind = 'counts' | 'visits'

export interface ComputeInput {
  /** The range, hour-aligned (alignRange). */
  readonly range: { readonly fromMs: number; readonly toMs: number }
  /** One site; undefined: every site. */
  readonly siteId: string | undefined
  /** The hour (ms) of each segment of the range's whole days, in hour order. */
  readonly hours: ArrayLike<number>
  /** Segment i's columns; undefined for a segment skipped (corrupt, skipCorrupt). */
  next(i: number): Promise<SegmentColumns | undefined> | SegmentColumns | undefined
  /** Pass 1's duplicates: per segment, a bit per row that does not count. */
  readonly duplicates: Pick<DedupOutcome, 'losers'>
  /** The sites' declared property keys and goals; without it no property or goal is counted. */
  readonly propKeys?: RunPropKeys | undefined
  /** After each segment (`read`: it had columns): progress, throttle, cancellation. */
  afterSegment?(done: number, stats: AggregateStats, read: boolean): Promise<void> | void
  /** Each final row, with the UTC day it belongs to; in day order. */
  emit(dayStartMs: number, row: FinalRow, kind: EmittedKind): Promise<void> | void
}

/** The row a computed aggregate row is written as (its registers serialized). */
export function finalRowOf(r: AggregateRow): FinalRow {
  return {
    siteId: r.siteId,
    granularity: r.granularity,
    windowStart: r.windowStart,
    dimension: r.dimension,
    value: r.value,
    values: {
      events: r.events,
      pageviews: r.pageviews,
      botEvents: r.botEvents,
      visitors: r.visitors.toBytes(),
    },
  }
}

/** The staged row of a window's visit counts (merged with the window's other counts when written). */
function visitRowOf(key: RowKey, counts: VisitCounts, emptyVisitors: Uint8Array): FinalRow {
  return {
    siteId: key.siteId,
    granularity: key.granularity,
    windowStart: key.windowStart,
    dimension: key.dimension,
    value: key.value,
    values: { events: 0, pageviews: 0, botEvents: 0, visitors: emptyVisitors, ...counts },
  }
}

/**
 * Aggregates the range hour by hour without the duplicates; day rows once a whole day is done (day
 * windows only when the whole day is in the range). Every hour of the range's days, in the range or
 * not, feeds the day's visits, emitted when the day is done for the windows of the range.
 */
export async function computeRange(input: ComputeInput, settings: ComputeSettings): Promise<AggregateStats> {
  const { fromMs, toMs } = input.range
  const fromDay = windowStart(fromMs, 'day')
  const toDay = Math.ceil(toMs / DAY_MS) * DAY_MS
  const hours = input.hours
  const n = hours.length
  const siteId = input.siteId
  const stats: AggregateStats = emptyStats()
  let day: DayAggregator | undefined
  let visits: DayVisits | undefined
  const dayInRange = (d: number) => d >= fromMs && d + DAY_MS <= toMs
  const ttl = settings.ttlSeconds
  const live = (r: { granularity: Granularity; windowStart: number }) =>
    !ttl ||
    ttl[r.granularity] === 0 ||
    r.windowStart + windowMs(r.granularity) + ttl[r.granularity] * 1000 > settings.nowMs
  const emit = input.emit
  const flushDay = async () => {
    if (!day) return
    const d = day.dayStartMs
    for (const row of day.rows()) if (live(row)) await emit(d, finalRowOf(row), 'counts')
    day = undefined
  }
  const gapMs = settings.visitGapMs
  const kept = new KeptBreakdowns(settings.breakdowns)
  const emptyVisitors = new RegisterSet(settings.precision).toBytes()
  const runKeys = input.propKeys
  // The visit counts of the windows of the range (day windows when the whole day is in it).
  const flushVisits = async () => {
    if (!visits) return
    const d = visits.dayStartMs
    for (const { key, counts } of visits.rows(gapMs)) {
      const inRange =
        key.granularity === 'day' ? dayInRange(d) : key.windowStart >= fromMs && key.windowStart < toMs
      if (inRange && live(key) && kept.keeps(key.dimension))
        await emit(d, visitRowOf(key, counts, emptyVisitors), 'visits')
    }
    // Conversions by dimension (goal|DIM): they need the day's visits, as the visit rows do.
    for (const row of visits.goalRows(gapMs, settings.precision)) {
      const inRange =
        row.granularity === 'day' ? dayInRange(d) : row.windowStart >= fromMs && row.windowStart < toMs
      if (inRange && live(row)) await emit(d, finalRowOf(row), 'counts')
    }
    visits = undefined
  }
  let done = 0
  for (let hour = fromDay; hour < toDay; hour += HOUR_MS) {
    const dayStart = windowStart(hour, 'day')
    if (day && day.dayStartMs !== dayStart) await flushDay()
    if (visits && visits.dayStartMs !== dayStart) await flushVisits()
    if (!visits && settings.countsVisits)
      visits = new DayVisits(dayStart, siteId, settings.dimensionValuesMax, settings.propValuesMax)
    const inRange = hour >= fromMs && hour < toMs
    if (inRange && !day && dayInRange(dayStart))
      day = new DayAggregator(
        dayStart,
        settings.precision,
        settings.propValuesMax,
        settings.dimensionValuesMax,
      )
    const agg = inRange
      ? new HourAggregator(
          hour,
          settings.precision,
          siteId,
          settings.propValuesMax,
          settings.dimensionValuesMax,
          kept,
        )
      : undefined
    while (done < n && hours[done] === hour) {
      const i = done++
      const cols = await input.next(i)
      if (cols) {
        const losers = input.duplicates.losers.get(i)
        // Visits read them for every hour of the day (a visit's values are its first event's).
        const props = (agg || visits) && runKeys ? await propValuesOf(cols, siteId, runKeys) : undefined
        const goals = (agg || visits) && runKeys ? await goalsOfSegment(cols, siteId, runKeys) : undefined
        agg?.add(cols, losers, stats, props, goals)
        visits?.add(cols, losers, props, goals)
      }
      await input.afterSegment?.(done, stats, cols !== undefined)
    }
    if (!agg) continue
    for (const site of agg.siteIds()) {
      for (const row of agg.rows(site)) {
        day?.add(row)
        if (live(row)) await emit(dayStart, finalRowOf(row), 'counts')
      }
    }
  }
  await flushDay()
  await flushVisits()
  return stats
}
