import { type Granularity, windowMs } from '../core/aggregate/definition.js'
import { HLL_ERROR_BOUND_SIGMAS, hllErrorBound, hllRelativeError } from '../core/hll.js'
import type { Freshness } from './freshness.js'
import type { Filter, Metric } from './params.js'
import { iso, type Segment, type TimeRange } from './range.js'

/**
 * The `meta` object of every answer: the range really answered, how fresh the numbers are, what
 * the windows were made of, and how accurate each metric is.
 */

/**
 * - `final`: rebuilt from the raw log by a batch run (it changes again only if a later rebuild
 *   revises it); a window committed by a rebuild whose archive did not cover it (`tally rebuild
 *   --allow-incomplete`) is read from that rebuild but is `closed` or `open`, not final;
 * - `closed`: stream numbers, window ended at or before `complete_through`, so every on-time event
 *   is counted; a batch rebuild may still add late events;
 * - `open`: stream numbers, still counting.
 * `closed` and `open` are both provisional.
 */
export type WindowStatus = 'final' | 'closed' | 'open'

export function windowStatus(
  windowStart: number,
  g: Granularity,
  final: boolean,
  completeThroughMs: number | undefined,
): WindowStatus {
  if (final) return 'final'
  return completeThroughMs !== undefined && windowStart + windowMs(g) <= completeThroughMs ? 'closed' : 'open'
}

export interface WindowRange {
  from: string
  to: string
  status: WindowStatus
}

export interface WindowsMeta {
  /** Windows read (with or without data). */
  count: number
  final: number
  /** Stream windows (closed + open). */
  provisional: number
  /** Provisional windows still counting. */
  open: number
  /** Consecutive windows of one status, in time order. */
  ranges: WindowRange[]
}

/** Collects the status of every window of a range, in time order. */
export class WindowTally {
  private readonly ranges: Array<{ fromMs: number; toMs: number; status: WindowStatus }> = []
  private counts = { count: 0, final: 0, open: 0 }

  constructor(private readonly completeThroughMs: number | undefined) {}

  /** Adds every window of `segment`; `finals` holds the starts of windows a batch wrote. */
  addSegment(segment: Segment, finals: ReadonlySet<number>): void {
    const step = windowMs(segment.granularity)
    for (let t = segment.fromMs; t < segment.toMs; t += step) {
      this.add(t, segment.granularity, finals.has(t))
    }
  }

  add(windowStart: number, g: Granularity, final: boolean): WindowStatus {
    const status = windowStatus(windowStart, g, final, this.completeThroughMs)
    const end = windowStart + windowMs(g)
    this.counts.count++
    if (status === 'final') this.counts.final++
    if (status === 'open') this.counts.open++
    const last = this.ranges[this.ranges.length - 1]
    if (last && last.status === status && last.toMs === windowStart) last.toMs = end
    else this.ranges.push({ fromMs: windowStart, toMs: end, status })
    return status
  }

  meta(): WindowsMeta {
    return {
      count: this.counts.count,
      final: this.counts.final,
      provisional: this.counts.count - this.counts.final,
      open: this.counts.open,
      ranges: this.ranges.map((r) => ({ from: iso(r.fromMs), to: iso(r.toMs), status: r.status })),
    }
  }
}

/**
 * What `meta.visits` says when visit metrics are asked for: the windows read that hold rows
 * written without visit data (before visits existed), which count no visits until a rebuild writes
 * them again, as consecutive ranges in time order.
 */
export interface VisitsMeta {
  windows_without_data: number
  ranges_without_data: Array<{ from: string; to: string }>
  note: string
}

const VISITS_NOTE =
  "visits count in the window where they started; a window that is not final can still change while visits that began in it go on (until a gap of TALLY_VISIT_GAP_MS after their last event, at the latest midnight UTC; conversions by exit page are counted when a visit has ended, that gap plus TALLY_GRACE_MS on the stream's watermark). Windows without data were written before visits were counted: rebuild them (tally rebuild) to count their visits"

/** Collects the windows without visit data of a read. */
export class VisitGaps {
  private readonly windows = new Map<number, number>()

  add(windowStart: number, g: Granularity): void {
    this.windows.set(windowStart, windowStart + windowMs(g))
  }

  meta(): VisitsMeta {
    const ranges: Array<{ fromMs: number; toMs: number }> = []
    for (const [from, to] of [...this.windows].sort((a, b) => a[0] - b[0])) {
      const last = ranges[ranges.length - 1]
      if (last && last.toMs === from) last.toMs = to
      else ranges.push({ fromMs: from, toMs: to })
    }
    return {
      windows_without_data: this.windows.size,
      ranges_without_data: ranges.map((r) => ({ from: iso(r.fromMs), to: iso(r.toMs) })),
      note: VISITS_NOTE,
    }
  }
}

export type MetricAccuracy =
  | { approximate: false }
  | {
      approximate: true
      method: 'HyperLogLog'
      precision: number
      /** 1.04 / sqrt(2^precision). */
      relative_standard_error: number
      /** `sigmas` relative standard errors: |estimate − true| / true stays below it in ~99.7 % of answers. */
      error_bound: number
      sigmas: number
      note: string
    }

export function accuracyOf(metrics: readonly Metric[], precision: number): Record<string, MetricAccuracy> {
  const out: Record<string, MetricAccuracy> = {}
  for (const m of metrics) {
    out[m] =
      m === 'visitors' || m === 'conversions' || m === 'conversion_rate'
        ? {
            approximate: true,
            method: 'HyperLogLog',
            precision,
            relative_standard_error: round6(hllRelativeError(precision)),
            error_bound: round6(hllErrorBound(precision)),
            sigmas: HLL_ERROR_BOUND_SIGMAS,
            note: `${m === 'visitors' ? '' : m === 'conversions' ? 'visitors of the goal rows (converters): ' : 'converters over visitors, both estimated so: '}distinct visitors over the whole range: the registers of every window are merged, never summed. error_bound is the large-count bound; a small count is usually exact and is one lower per pair of visitors sharing a register (about n²/2^${precision + 1} pairs for n visitors)`,
          }
        : { approximate: false }
  }
  return out
}

function round6(x: number): number {
  return Math.round(x * 1e6) / 1e6
}

export interface FreshnessMeta {
  received_through: string | null
  grace_ms: number
  partitions_reporting: number
  partitions_expected: number
}

export interface Meta {
  site: string
  /** The range answered: the one asked for, widened to whole windows. */
  from: string
  to: string
  /** Present when the range asked for was widened to whole windows. */
  requested?: { from: string; to: string }
  interval?: Granularity
  property?: string
  filters: Filter[]
  /** Windows read, coarsest first in the middle of the range (see query/range.ts tile()). */
  segments: Array<{ granularity: Granularity; from: string; to: string }>
  complete_through: string | null
  freshness: FreshnessMeta
  windows: WindowsMeta
  metrics: Record<string, MetricAccuracy>
  /** Present when visit metrics are asked for. */
  visits?: VisitsMeta
  /** Present for a site whose time zone is not UTC. */
  time_zone?: TimeZoneMeta
}

/**
 * The site's time zone in an answer: its name, its offset at the start of the range, and whether
 * the range's day edges are its local midnights (`exact`) or were floored to a window boundary that
 * can be read (`rounded_to_hour`: a zone whose offset is not a whole hour, where minute windows
 * cannot answer; `rounded_to_day`: beyond the hour retention).
 */
export interface TimeZoneMeta {
  zone: string
  offset: string
  day_edges: 'exact' | 'rounded_to_hour' | 'rounded_to_day'
  note: string
}

export interface MetaInput {
  siteId: string
  range: TimeRange
  requested: TimeRange | undefined
  segments: readonly Segment[]
  freshness: Freshness
  windows: WindowTally
  metrics: readonly Metric[]
  precision: number
  filters: Filter[]
  interval?: Granularity
  property?: string
  /** Windows without visit data, when visit metrics are asked for. */
  visitGaps?: VisitGaps
  /** meta.time_zone (a site with a zone other than UTC). */
  timeZone?: TimeZoneMeta | undefined
}

export function buildMeta(input: MetaInput): Meta {
  const { range, requested, freshness } = input
  const widened = requested && (requested.fromMs !== range.fromMs || requested.toMs !== range.toMs)
  return {
    site: input.siteId,
    from: iso(range.fromMs),
    to: iso(range.toMs),
    ...(widened ? { requested: { from: iso(requested.fromMs), to: iso(requested.toMs) } } : {}),
    ...(input.interval ? { interval: input.interval } : {}),
    ...(input.property ? { property: input.property } : {}),
    filters: input.filters,
    segments: input.segments.map((s) => ({
      granularity: s.granularity,
      from: iso(s.fromMs),
      to: iso(s.toMs),
    })),
    complete_through: freshness.completeThroughMs === undefined ? null : iso(freshness.completeThroughMs),
    freshness: freshnessMeta(freshness),
    windows: input.windows.meta(),
    metrics: accuracyOf(input.metrics, input.precision),
    ...(input.visitGaps ? { visits: input.visitGaps.meta() } : {}),
    ...(input.timeZone ? { time_zone: input.timeZone } : {}),
  }
}

export function freshnessMeta(f: Freshness): FreshnessMeta {
  return {
    received_through: f.receivedThroughMs === undefined ? null : iso(f.receivedThroughMs),
    grace_ms: f.graceMs,
    partitions_reporting: f.partitionsReporting,
    partitions_expected: f.partitionsExpected,
  }
}
