import { HyperLogLog } from '../hll.js'
import type { BreakdownResult, MergedValues, MergedWindow, VisitCounts } from '../ports/aggregate-store.js'
import { addTo, zero } from './visits.js'

/**
 * How stored rows become answers, the same for every aggregate store: within a window the final
 * (batch) row of the committed generation (core/aggregate/final.ts) replaces the stream partials,
 * the partials of all source partitions add up (counts) and merge (HyperLogLog registers); final
 * rows of other generations are not read. Across windows or values, merged values add up and merge.
 * Visit counts add up like the other counts (rates are computed when read); a window has them only
 * when every row read for it has them (rows written before visits existed have none).
 */

/** One stored row of a window: a stream partial of one source partition, or a final row. */
export interface PartialValues {
  events: number
  pageviews: number
  botEvents: number
  visitors: Uint8Array | null
  /** 0 for a stream partial; the rebuild's generation for a final row. */
  generation: number
  /** Visit counts; null or absent when the row was written without them. */
  visits?: VisitCounts | null
}

/** The generation of a stored row from its source_partition (final rows: −generation). */
export function generationOfRow(sourcePartition: number): number {
  return sourcePartition < 0 ? -sourcePartition : 0
}

export type MergedFinal = MergedValues & { final: boolean }

const EMPTY = new Uint8Array(0)

/**
 * Merges the rows of one window (or of one value in a window), whose committed generation is
 * `committed` (0: none); undefined when none of them is read (only rows of uncommitted
 * generations). With `withVisitors` false the registers are not decoded and `visitors` comes back
 * empty. A `provisional` commit (a rebuild whose archive did not cover the window) is read like
 * any other but its result is not `final`.
 */
export function mergePartials(
  parts: readonly PartialValues[],
  precision: number,
  withVisitors: boolean,
  committed: number,
  provisional = false,
  /**
   * A committed window's value without a final row is not read (its stream partials are not). For
   * custom properties (core/aggregate/props.ts): a rebuild folds the values past the cap into
   * `(other)` and writes no row for them, while the stream may hold rows of some.
   */
  rebuiltOnly = false,
): MergedFinal | undefined {
  const final = committed > 0 ? parts.find((p) => p.generation === committed) : undefined
  if (rebuiltOnly && committed > 0 && final === undefined) return undefined
  // Read on every window of every query: one pass over the rows, no list of the ones used.
  const hll = withVisitors ? new HyperLogLog(precision) : undefined
  let used = 0
  let events = 0
  let pageviews = 0
  let botEvents = 0
  let visitsKnown = true
  const visits: VisitCounts = zero()
  for (const p of parts) {
    if (final ? p !== final : p.generation !== 0) continue
    used++
    events += p.events
    pageviews += p.pageviews
    botEvents += p.botEvents
    if (hll && p.visitors && p.visitors.length > 0) hll.merge(HyperLogLog.fromBytes(p.visitors))
    if (p.visits) addTo(visits, p.visits)
    else visitsKnown = false
  }
  if (used === 0) return undefined
  const merged: MergedFinal = {
    events,
    pageviews,
    botEvents,
    visitors: hll ? hll.toBytes() : EMPTY,
    final: final !== undefined && !provisional,
  }
  return visitsKnown ? Object.assign(merged, visits) : merged
}

/** The visit counts of merged values, or undefined when they have none. */
export function visitCountsOf(m: Partial<VisitCounts>): VisitCounts | undefined {
  if (m.visits === undefined) return undefined
  return {
    visits: m.visits,
    bounces: m.bounces ?? 0,
    visitDurationMs: m.visitDurationMs ?? 0,
    visitPageviews: m.visitPageviews ?? 0,
  }
}

/** Adds merged values (of several windows or values): counts sum, registers merge. */
export class ValuesAccumulator {
  events = 0
  pageviews = 0
  botEvents = 0
  allFinal = true
  /** Sums of the visit counts of the values added that had them. */
  readonly visits: VisitCounts = zero()
  /** Whether any value added had visit counts; whether all of them had. */
  anyVisits = false
  allVisits = true
  private readonly hll: HyperLogLog | undefined

  constructor(precision: number, withVisitors: boolean) {
    this.hll = withVisitors ? new HyperLogLog(precision) : undefined
  }

  add(m: MergedFinal): void {
    this.events += m.events
    this.pageviews += m.pageviews
    this.botEvents += m.botEvents
    if (!m.final) this.allFinal = false
    if (this.hll && m.visitors.length > 0) this.hll.merge(HyperLogLog.fromBytes(m.visitors))
    const v = visitCountsOf(m)
    if (v) {
      addTo(this.visits, v)
      this.anyVisits = true
    } else this.allVisits = false
  }

  values(): MergedFinal {
    const out: MergedFinal = {
      events: this.events,
      pageviews: this.pageviews,
      botEvents: this.botEvents,
      visitors: this.hll ? this.hll.toBytes() : EMPTY,
      final: this.allFinal,
    }
    return this.anyVisits ? Object.assign(out, this.visits) : out
  }
}

/**
 * A breakdown's answer built from merged (window, value) groups in any order, the same for every
 * aggregate store: per value the groups add up; a window is listed when a group of it was merged,
 * final when any of its groups is, and without visits when any of its groups has none.
 */
export class BreakdownCollector {
  private readonly values = new Map<string, ValuesAccumulator>()
  private readonly windows = new Map<number, { final: boolean }>()
  private readonly windowsWithoutVisits = new Set<number>()

  constructor(
    private readonly precision: number,
    private readonly withVisitors: boolean,
  ) {}

  add(windowStart: number, value: string, merged: MergedFinal): void {
    let acc = this.values.get(value)
    if (!acc) {
      acc = new ValuesAccumulator(this.precision, this.withVisitors)
      this.values.set(value, acc)
    }
    acc.add(merged)
    const w = this.windows.get(windowStart)
    if (!w) this.windows.set(windowStart, { final: merged.final })
    else if (merged.final) w.final = true
    if (merged.visits === undefined) this.windowsWithoutVisits.add(windowStart)
  }

  result(): BreakdownResult {
    return {
      values: new Map([...this.values].map(([value, acc]) => [value, acc.values()])),
      windows: this.windows,
      windowsWithoutVisits: this.windowsWithoutVisits,
    }
  }
}

/**
 * Per window, the merged groups of the values read added up (any order), listed by window start;
 * a window is final when any of its groups is.
 */
export class WindowsCollector {
  private readonly perWindow = new Map<number, { acc: ValuesAccumulator; final: boolean }>()

  constructor(
    private readonly precision: number,
    private readonly withVisitors: boolean,
  ) {}

  add(windowStart: number, merged: MergedFinal): void {
    let w = this.perWindow.get(windowStart)
    if (!w) {
      w = { acc: new ValuesAccumulator(this.precision, this.withVisitors), final: false }
      this.perWindow.set(windowStart, w)
    }
    w.acc.add(merged)
    if (merged.final) w.final = true
  }

  result(): MergedWindow[] {
    return [...this.perWindow]
      .sort((a, b) => a[0] - b[0])
      .map(([windowStart, w]) => ({ windowStart, ...w.acc.values(), final: w.final }))
  }
}
