import {
  DIMENSION_GRANULARITIES,
  GRANULARITIES,
  type Granularity,
  type RowDimension,
  windowMs,
} from '../core/aggregate/definition.js'
import {
  GOAL_BY_EXIT_PAGE,
  GOAL_BY_NAMES,
  type GoalByDimension,
  goalByDimension,
  goalByValue,
  isGoalByDimension,
  splitGoalByValue,
} from '../core/aggregate/goals.js'
import { visitCountsOf } from '../core/aggregate/merge.js'
import {
  capped as cappedValue,
  capRank,
  isCappedDimension,
  isDayPathCapped,
  keptValues,
  OTHER,
  valuesMaxOf,
} from '../core/aggregate/props.js'
import { ERR } from '../core/error-codes.js'
import type { TallyError } from '../core/errors.js'
import { HyperLogLog } from '../core/hll.js'
import type {
  AggregateReader,
  BreakdownResult,
  MergedValues,
  MergedWindow,
  ReadOptions,
  VisitCounts,
} from '../core/ports/aggregate-store.js'
import type { AnswerCache } from './cache.js'
import { type Freshness, type FreshnessSource, hasRecentSnapshots, isSnapshotSource } from './freshness.js'
import { buildMeta, type Meta, type TimeZoneMeta, VisitGaps, type WindowStatus, WindowTally } from './meta.js'
import {
  type CompareMode,
  type Filter,
  isVisitDimension,
  isVisitMetric,
  type Metric,
  needsVisitors,
  type ParsedQuery,
  type ParseLimits,
} from './params.js'
import {
  alignRange,
  badParameter,
  defaultInterval,
  floorTo,
  iso,
  type Segment,
  type TimeRange,
  tile,
  windowCount,
} from './range.js'
import { formatInZone, localDayEdges, offsetMs, roundEdge, UTC } from './zone.js'

/**
 * The four stats endpoints over an {@link AggregateReader}. What the store can answer exactly:
 *
 * - totals per minute, hour and day window; breakdowns by one dimension per hour and day window;
 * - so a filter is answerable only from that one dimension's rows: `aggregate` and `timeseries`
 *   (hour or day interval) take one filter; `breakdown` takes a filter on its own property only
 *   (it restricts the values); `realtime` (minute windows) takes none. Anything else is refused
 *   with 400 TALLY_ERR_FILTER_UNSUPPORTED rather than answered with wrong numbers.
 * - `visitors` over several windows merges their HyperLogLog registers; it is never a sum.
 */

export interface QueryLimits extends ParseLimits {
  /** Most windows (points) of a timeseries, per interval. Default minute 1440, hour 2232 (93 days), day 3660. */
  maxPoints: Readonly<Record<Granularity, number>>
  /** Most windows a breakdown or a filtered query reads (one partition read each). Default 1000. */
  maxReadWindows: number
  /** Most windows of a totals export. Default 100000. */
  maxExportWindows: number
  /** Most windows of a breakdown export (one partition read each). Default 10000. */
  maxExportDimensionWindows: number
}

export const DEFAULT_QUERY_LIMITS: QueryLimits = Object.freeze({
  maxPoints: Object.freeze({ minute: 1440, hour: 2232, day: 3660 }),
  maxReadWindows: 1000,
  maxExportWindows: 100_000,
  maxExportDimensionWindows: 10_000,
  maxLimit: 1000,
  defaultLimit: 100,
  maxFilterValues: 20,
  maxRealtimeMinutes: 60,
})

export interface StatsDeps {
  reader: AggregateReader
  freshness: FreshnessSource
  /** HyperLogLog precision of the stored sketches (TALLY_HLL_PRECISION). */
  precision: number
  /** Row TTL per granularity in seconds, 0 = kept forever (TALLY_TTL_*_DAYS). */
  retentionSeconds: Readonly<Record<Granularity, number>>
  limits: QueryLimits
  now: () => number
  /** Answers kept until the data under them changes (needs a freshness source with snapshots). */
  cache?: AnswerCache
  /**
   * Breakdown reads of settled windows (no stream write can change them any more), kept until a
   * rebuild writes final rows of the site. Needs a freshness source with snapshots.
   */
  settled?: AnswerCache
  /** Distinct values kept per custom property (TALLY_PROP_VALUES_MAX; core/aggregate/props.ts). Default 1000. */
  propValuesMax?: number
  /**
   * Distinct values kept per window of path, referrer, source and the UTM set
   * (TALLY_DIMENSION_VALUES_MAX; core/aggregate/props.ts). Default 10000.
   */
  dimensionValuesMax?: number
}

/** What decides which windows of a read are settled (see StatsService.settledSplit). */
interface ReadContext {
  /** complete_through of the snapshot: windows ending by it get no more stream writes. */
  settledThroughMs: number | undefined
  /** The site's final mark in the snapshot; undefined = no settled cache for this read. */
  finalMark: string | undefined
}

/** Unsettled days of a breakdown are read as hours (settled hours cached) up to this many hours. */
const MAX_SPLIT_HOURS = 72
const HOUR_MS = 3_600_000
const DAY_MS = 86_400_000

export type MetricValues = Partial<Record<Metric, number>>

/**
 * Sums counts and merges registers of windows. Visit counts are summed over the windows that have
 * them (windows without visit data add none; `meta.visits` names them). With `pageviewsOfVisits`
 * (entry_page and exit_page rows, which hold visits only) `pageviews` are the visits' pageviews.
 */
export class MetricAccumulator {
  events = 0
  pageviews = 0
  botEvents = 0
  readonly visits: VisitCounts = { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 }
  private readonly hll: HyperLogLog | undefined

  constructor(
    precision: number,
    withVisitors: boolean,
    private readonly pageviewsOfVisits = false,
  ) {
    this.hll = withVisitors ? new HyperLogLog(precision) : undefined
  }

  add(v: MergedValues): void {
    this.events += v.events
    this.pageviews += v.pageviews
    this.botEvents += v.botEvents
    if (this.hll && v.visitors.length > 0) this.hll.merge(HyperLogLog.fromBytes(v.visitors))
    const c = visitCountsOf(v)
    if (c) {
      this.visits.visits += c.visits
      this.visits.bounces += c.bounces
      this.visits.visitDurationMs += c.visitDurationMs
      this.visits.visitPageviews += c.visitPageviews
    }
  }

  values(metrics: readonly Metric[]): MetricValues {
    return metricValues(
      {
        events: this.events,
        pageviews: this.pageviewsOfVisits ? this.visits.visitPageviews : this.pageviews,
        botEvents: this.botEvents,
        ...this.visits,
      },
      this.hll,
      metrics,
    )
  }
}

/**
 * Goals (core/aggregate/goals.ts): the conversion rate, converters (the goal rows' visitors) over
 * the visitors of the same windows, in percent with one decimal; 0 without visitors.
 */
export function conversionRate(conversions: number, visitors: number): number {
  return visitors === 0 ? 0 : Math.round((1000 * conversions) / visitors) / 10
}

/** Distinct visitors of windows' totals (the denominator of a conversion rate). */
function visitorsOf(windows: Iterable<MergedValues>, precision: number): number {
  const acc = new MetricAccumulator(precision, true)
  for (const w of windows) acc.add(w)
  return acc.values(['visitors']).visitors ?? 0
}

/** Sets `conversion_rate` of values holding the goal rows' metrics, when asked for. */
function withConversionRate(
  values: MetricValues,
  metrics: readonly Metric[],
  conversions: number,
  visitors: number | undefined,
): MetricValues {
  if (metrics.includes('conversion_rate')) values.conversion_rate = conversionRate(conversions, visitors ?? 0)
  return values
}

export function visitorsEstimate(registers: Uint8Array): number {
  return registers.length === 0 ? 0 : Math.round(HyperLogLog.fromBytes(registers).estimate())
}

/**
 * Rates of visits, computed from stored sums (never averaged): bounce rate in whole percent, mean
 * duration in whole seconds, views per visit to two decimals (Plausible's roundings); 0 without
 * visits.
 */
export function visitRates(c: VisitCounts): {
  bounce_rate: number
  visit_duration: number
  views_per_visit: number
} {
  if (c.visits === 0) return { bounce_rate: 0, visit_duration: 0, views_per_visit: 0 }
  return {
    bounce_rate: Math.round((100 * c.bounces) / c.visits),
    visit_duration: Math.round(c.visitDurationMs / 1000 / c.visits),
    views_per_visit: Math.round((100 * c.visitPageviews) / c.visits) / 100,
  }
}

function metricValues(
  counts: Omit<MergedValues, 'visitors'>,
  hll: HyperLogLog | Uint8Array | undefined,
  metrics: readonly Metric[],
): MetricValues {
  const out: MetricValues = {}
  const visits = visitCountsOf(counts) ?? { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 }
  for (const m of metrics) {
    if (m === 'events') out.events = counts.events
    else if (m === 'pageviews') out.pageviews = counts.pageviews
    else if (m === 'bot_events') out.bot_events = counts.botEvents
    else if (m === 'visits') out.visits = visits.visits
    else if (m === 'bounce_rate' || m === 'visit_duration' || m === 'views_per_visit')
      out[m] = visitRates(visits)[m]
    // Needs the visitors of the range besides: set by the caller (withConversionRate).
    else if (m === 'conversion_rate') continue
    else
      out[m === 'conversions' ? 'conversions' : 'visitors'] =
        hll === undefined
          ? 0
          : hll instanceof HyperLogLog
            ? Math.round(hll.estimate())
            : visitorsEstimate(hll)
  }
  return out
}

export interface AggregateAnswer {
  results: Partial<Record<Metric, { value: number } | ComparedValue>>
  meta: Meta & { comparison?: ComparisonMeta }
}

export interface TimeseriesPoint extends MetricValues {
  /** The window's start: ISO 8601 in the site's zone with its offset (UTC: `…Z`). */
  date: string
  status: WindowStatus
  /** With `compare`: the point at the same position in the range compared with (null past its end). */
  comparison?: (MetricValues & { date: string; status: WindowStatus }) | null
  /** With `compare`: per metric, the change in percent from the comparison (see percentChange). */
  change?: Partial<Record<Metric, number | null>>
}

/** A metric with `compare`: the value, the value of the range compared with, the change in percent. */
export interface ComparedValue {
  value: number
  comparison_value: number
  change: number | null
}

/**
 * The change from `previous` to `current` in percent, rounded to an integer; null when `previous`
 * is 0 (no percentage of nothing). Every metric, rates included, is compared this way.
 */
export function percentChange(previous: number, current: number): number | null {
  return previous === 0 ? null : Math.round(((current - previous) / previous) * 100)
}

/** What `meta.comparison` says with `compare`: the mode, the range compared with and its windows. */
export interface ComparisonMeta {
  mode: CompareMode
  from: string
  to: string
  requested?: { from: string; to: string }
  windows: Meta['windows']
  time_zone?: TimeZoneMeta
}

export interface TimeseriesAnswer {
  results: TimeseriesPoint[]
  meta: Meta & { comparison?: ComparisonMeta }
}

export interface BreakdownAnswer {
  results: Array<Record<string, string | number>>
  meta: Meta & { total_values: number; page: number; limit: number }
}

export const STATS_ENDPOINTS = ['aggregate', 'timeseries', 'breakdown', 'realtime'] as const
export type StatsEndpoint = (typeof STATS_ENDPOINTS)[number]
export type StatsAnswer = AggregateAnswer | TimeseriesAnswer | BreakdownAnswer

/** An answer and its JSON, serialized once when computed and kept with it in the answer cache. */
export interface Rendered<T> {
  value: T
  body: string
}

function unsupported(message: string): TallyError {
  return badParameter('filters', message, ERR.FILTER_UNSUPPORTED)
}

function tooLarge(where: string, message: string): TallyError {
  return badParameter(where, message, ERR.RANGE_TOO_LARGE)
}

/** Breakdown order: by `key` descending, then by value (a stable order for pages). */
function order<T extends { value: string }>(key: (row: T) => number): (a: T, b: T) => number {
  return (a, b) => key(b) - key(a) || (a.value < b.value ? -1 : a.value > b.value ? 1 : 0)
}

export class StatsService {
  constructor(private readonly deps: StatsDeps) {}

  /** Refuses segments whose rows may already have expired (their numbers would be too low). */
  checkRetention(segments: readonly Segment[]): void {
    const now = this.deps.now()
    for (const s of segments) {
      const ttl = this.deps.retentionSeconds[s.granularity]
      if (ttl > 0 && s.fromMs < now - ttl * 1000) {
        throw badParameter(
          'from',
          `${s.granularity} windows are kept ${Math.round(ttl / 86_400)} days; ${iso(s.fromMs)} is older. ${
            s.granularity === 'day' ? '' : 'Align from and to to whole days, or use a coarser interval.'
          }`.trim(),
          ERR.BEYOND_RETENTION,
        )
      }
    }
  }

  private checkReads(segments: readonly Segment[], what: string): void {
    const n = windowCount(segments)
    if (n > this.deps.limits.maxReadWindows) {
      throw tooLarge(
        'from',
        `${what} over this range reads ${n} windows; at most ${this.deps.limits.maxReadWindows}: shorten the range`,
      )
    }
  }

  private checkDays(segments: readonly Segment[]): void {
    const days = segments
      .filter((s) => s.granularity === 'day')
      .reduce((n, s) => n + (s.toMs - s.fromMs) / windowMs('day'), 0)
    if (days > this.deps.limits.maxPoints.day) {
      throw tooLarge('from', `the range spans ${days} days; at most ${this.deps.limits.maxPoints.day}`)
    }
  }

  /**
   * The oldest window start of `g` still kept (−Infinity: forever), less a day: the finer windows
   * beside an edge start up to a day before it.
   */
  private keptSince(g: Granularity): number {
    const ttl = this.deps.retentionSeconds[g]
    return ttl > 0 ? this.deps.now() - ttl * 1000 + DAY_MS : Number.NEGATIVE_INFINITY
  }

  /**
   * A range whose edges are local midnights with its edges moved onto readable window boundaries
   * (query/zone.ts roundEdge): unchanged where the windows they need are kept (always in UTC and
   * in whole-hour zones within the hour retention); floored to the hour where a zone's midnight
   * is not a whole hour and minute windows cannot answer (breakdowns, filters, beyond the minute
   * retention); floored to the day beyond the hour retention. Ranges of instants are not moved.
   */
  private zonedEdges(
    q: ParsedQuery,
    range: TimeRange,
    allowed: readonly Granularity[],
  ): { range: TimeRange; rounded: Granularity | undefined } {
    if (!q.localDays) return { range, rounded: undefined }
    const kept = (g: Granularity) => this.keptSince(g)
    const from = roundEdge(range.fromMs, allowed, kept)
    const to = roundEdge(range.toMs, allowed, kept)
    return { range: { fromMs: from.edgeMs, toMs: to.edgeMs }, rounded: coarser(from.rounded, to.rounded) }
  }

  /** meta.time_zone: present for a site with a zone other than UTC. */
  private zoneMeta(
    q: ParsedQuery,
    rounded: Granularity | undefined,
    allowed: readonly Granularity[],
  ): TimeZoneMeta | undefined {
    if (q.zone === UTC) return undefined
    const offset = formatOffset(offsetMs(q.range?.fromMs ?? this.deps.now(), q.zone))
    if (rounded === undefined)
      return { zone: q.zone, offset, day_edges: 'exact', note: `days are local days in ${q.zone}` }
    const days = (g: Granularity) => Math.round(this.deps.retentionSeconds[g] / 86_400)
    const why =
      rounded === 'day'
        ? `hour windows are kept ${days('hour')} days`
        : allowed.includes('minute')
          ? `minute windows are kept ${days('minute')} days`
          : 'rows by property and filtered totals are kept per hour and day, not per minute'
    return {
      zone: q.zone,
      offset,
      day_edges: rounded === 'hour' ? 'rounded_to_hour' : 'rounded_to_day',
      note: `local midnight in ${q.zone} is not a readable window boundary here (${why}): day edges are floored to the ${rounded}, see meta.requested`,
    }
  }

  /**
   * Runs one endpoint's `body`, or gives the stored answer of the same query under the same data
   * version. Freshness is read before the data (a window it calls closed had its last stream write
   * before); with the cache it comes from the snapshot whose version keys the answer. The key holds
   * the current minute, so answers that depend on the clock (realtime, retention) are redone. The
   * answer is serialized once, when computed: a request served from the cache sends the stored body.
   */
  private answer<T>(
    kind: StatsEndpoint,
    q: ParsedQuery,
    body: (freshness: Freshness, finalMark: string | undefined) => Promise<T>,
  ): Promise<Rendered<T>> {
    const source = this.deps.freshness
    const cache = this.deps.cache
    const render = (freshness: Freshness, finalMark: string | undefined) =>
      body(freshness, finalMark).then((value): Rendered<T> => ({ value, body: JSON.stringify(value) }))
    if (!cache?.enabled || !isSnapshotSource(source))
      return source.current().then((f) => render(f, undefined))
    return source
      .snapshot(q.siteId)
      .then((snap) =>
        cache.answer(this.answerKey(kind, q), snap.version, () => render(snap.freshness, snap.finalMark)),
      )
  }

  /** Answer keys by query object: a query parsed once and asked again (query/app.ts) is not serialized again. */
  private readonly keys = new WeakMap<ParsedQuery, { kind: StatsEndpoint; minute: number; key: string }>()

  /** The cache key of an answer: the endpoint, the current minute and the parsed query. */
  private answerKey(kind: StatsEndpoint, q: ParsedQuery): string {
    const minute = Math.floor(this.deps.now() / 60_000)
    const known = this.keys.get(q)
    if (known && known.kind === kind && known.minute === minute) return known.key
    const key = `${kind}\n${minute}\n${JSON.stringify(q)}`
    this.keys.set(q, { kind, minute, key })
    return key
  }

  /**
   * The stored answer, when it can be given at once: a data version that may be reused without a
   * read (TALLY_QUERY_VERSION_MAX_AGE_MS) and an answer computed under it. Else undefined, and the
   * caller goes through `render`. Same answers as `render`, without its promises.
   */
  cachedRender(endpoint: StatsEndpoint, q: ParsedQuery): Rendered<StatsAnswer> | undefined {
    const source = this.deps.freshness
    const cache = this.deps.cache
    if (!cache?.enabled || !hasRecentSnapshots(source)) return undefined
    const snap = source.recentSnapshot(q.siteId)
    return snap && cache.peek<Rendered<StatsAnswer>>(this.answerKey(endpoint, q), snap.version)
  }

  /** The answer of a stats endpoint with its JSON body (what the HTTP route sends). */
  render(endpoint: StatsEndpoint, q: ParsedQuery): Promise<Rendered<StatsAnswer>> {
    switch (endpoint) {
      case 'aggregate':
        return this.answer('aggregate', q, (freshness, mark) => this.aggregateAt(q, freshness, mark))
      case 'timeseries':
        return this.answer('timeseries', q, (freshness, mark) => this.timeseriesAt(q, freshness, mark))
      case 'breakdown':
        return this.answer('breakdown', q, (freshness, mark) => this.breakdownAt(q, freshness, mark))
      case 'realtime':
        return this.answer('realtime', q, (freshness, mark) => this.realtimeAt(q, freshness, mark))
    }
  }

  /**
   * Reads one segment in up to two parts: the windows that ended by `at.settledThroughMs` (complete
   * in the stream: only a rebuild, which changes the site's final mark, can change them) through the
   * settled cache, the others from the store.
   */
  private settledSplit<T>(
    what: string,
    siteId: string,
    s: Segment,
    at: ReadContext,
    read: (fromMs: number, toMs: number) => Promise<T>,
  ): Promise<T[]> {
    const settled = this.deps.settled
    const w = windowMs(s.granularity)
    const { settledThroughMs, finalMark } = at
    const cut =
      finalMark === undefined || settledThroughMs === undefined || !settled?.enabled
        ? s.fromMs
        : Math.min(s.toMs, Math.max(s.fromMs, Math.floor(settledThroughMs / w) * w))
    const parts: Array<Promise<T>> = []
    if (cut > s.fromMs) {
      const key = `${what}\n${siteId}\n${s.granularity}\n${s.fromMs}\n${cut}`
      parts.push(settled!.answer(key, finalMark!, () => read(s.fromMs, cut)))
    }
    if (cut < s.toMs) parts.push(read(cut, s.toMs))
    return Promise.all(parts)
  }

  /** One segment of a breakdown, in parts (see settledSplit). */
  private breakdownParts(
    siteId: string,
    s: Segment,
    property: RowDimension,
    options: ReadOptions & { values?: readonly string[] },
    at: ReadContext,
  ): Promise<BreakdownResult[]> {
    return this.settledSplit(`breakdown ${property} ${JSON.stringify(options)}`, siteId, s, at, (from, to) =>
      this.deps.reader.breakdownDetailed(siteId, s.granularity, property, from, to, options),
    )
  }

  /** Windows of one segment in time order: totals, or the rows of the filter's values. */
  private async readSegment(
    siteId: string,
    s: Segment,
    filter: Filter | undefined,
    withVisitors: boolean,
    at: ReadContext,
  ): Promise<MergedWindow[]> {
    const options = { visitors: withVisitors }
    const reader = this.deps.reader
    const parts = filter
      ? await this.settledSplit(
          `windows ${filter.property} ${JSON.stringify([filter.values, options])}`,
          siteId,
          s,
          at,
          (from, to) =>
            reader.dimensionWindows(siteId, s.granularity, filter.property, filter.values, from, to, options),
        )
      : await this.settledSplit(`totals ${JSON.stringify(options)}`, siteId, s, at, (from, to) =>
          reader.totals(siteId, s.granularity, from, to, options),
        )
    return parts.length === 1 ? parts[0]! : parts.flat()
  }

  aggregate(q: ParsedQuery): Promise<AggregateAnswer> {
    return this.answer('aggregate', q, (freshness, mark) => this.aggregateAt(q, freshness, mark)).then(
      (r) => r.value,
    )
  }

  /** The aggregate, and with `compare` the aggregate of the range compared with beside it. */
  private async aggregateAt(
    q: ParsedQuery,
    freshness: Freshness,
    finalMark: string | undefined,
  ): Promise<AggregateAnswer> {
    const current = await this.aggregateOne(q, freshness, finalMark)
    if (!q.compare) return current
    const previous = await this.aggregateOne(
      { ...q, range: q.compare.range, compare: undefined },
      freshness,
      finalMark,
    )
    const results: AggregateAnswer['results'] = {}
    for (const m of q.metrics) {
      const value = current.results[m]?.value ?? 0
      const comparison = previous.results[m]?.value ?? 0
      results[m] = { value, comparison_value: comparison, change: percentChange(comparison, value) }
    }
    return { results, meta: { ...current.meta, comparison: comparisonMeta(q.compare.mode, previous.meta) } }
  }

  private async aggregateOne(
    q: ParsedQuery,
    freshness: Freshness,
    finalMark: string | undefined,
  ): Promise<AggregateAnswer> {
    const goalBy = goalByFilter(q.filters)
    const at = readContext(freshness, finalMark, q.metrics, goalBy?.own.property)
    if (q.filters.length > 1 && !goalBy) {
      throw unsupported(
        `aggregates are stored per single property, so only one filter can be answered exactly; filter on one property (or on goal and one of ${GOAL_BY_NAMES.join(', ')})`,
      )
    }
    const filter = goalBy ? goalBy.rows : q.filters[0]
    const requested = q.range!
    const allowed = filter ? DIMENSION_GRANULARITIES : GRANULARITIES
    const zoned = this.zonedEdges(q, requested, allowed)
    const range = alignRange(zoned.range, filter ? 'hour' : 'minute')
    const segments = tile(range, allowed)
    this.checkRetention(segments)
    if (filter) this.checkReads(segments, 'a filtered aggregate')
    else this.checkDays(segments)
    const withVisitors = needsVisitors(q.metrics)
    const read = await Promise.all(
      segments.map((s) => this.readSegment(q.siteId, s, filter, withVisitors, at)),
    )
    const acc = new MetricAccumulator(this.deps.precision, withVisitors, isVisitDimension(filter?.property))
    const tally = new WindowTally(freshness.completeThroughMs)
    const gaps = visitGapsFor(q.metrics, goalBy?.own.property)
    segments.forEach((s, i) => {
      const windows = read[i]!
      tally.addSegment(s, new Set(windows.filter((w) => w.final).map((w) => w.windowStart)))
      for (const w of windows) {
        acc.add(w)
        if (w.visits === undefined) gaps?.add(w.windowStart, s.granularity)
      }
    })
    const values = acc.values(q.metrics)
    if (q.metrics.includes('conversion_rate')) {
      // The visitors of the same windows: the totals of the goal rows' segments (with a filter on
      // another property besides the goal, that property's rows of the values).
      const totals = await Promise.all(
        segments.map((s) => this.readSegment(q.siteId, s, goalBy?.own, true, at)),
      )
      withConversionRate(
        values,
        q.metrics,
        acc.values(['conversions']).conversions ?? 0,
        visitorsOf(totals.flat(), this.deps.precision),
      )
    }
    const results: AggregateAnswer['results'] = {}
    for (const m of q.metrics) results[m] = { value: values[m] ?? 0 }
    return {
      results,
      meta: buildMeta({
        siteId: q.siteId,
        range,
        requested,
        segments,
        freshness,
        windows: tally,
        metrics: q.metrics,
        precision: this.deps.precision,
        filters: q.filters,
        ...(gaps ? { visitGaps: gaps } : {}),
        timeZone: this.zoneMeta(q, zoned.rounded, allowed),
      }),
    }
  }

  /** The interval and aligned range of a timeseries or export, checked against the limits. */
  seriesRange(
    q: ParsedQuery,
    maxWindowsOf: (interval: Granularity) => number,
    needsDimensions: boolean,
    fallbackInterval?: Granularity,
  ): { interval: Granularity; range: TimeRange; segment: Segment } {
    const requested = q.range!
    const interval = q.interval ?? fallbackInterval ?? defaultInterval(requested)
    const maxWindows = maxWindowsOf(interval)
    if (needsDimensions && !DIMENSION_GRANULARITIES.includes(interval)) {
      if (q.filters.length > 0) {
        throw unsupported(
          'minute windows keep totals only, so a filtered timeseries needs interval=hour or interval=day',
        )
      }
      throw badParameter(
        'interval',
        'minute windows keep totals only: breakdown rows exist for interval=hour and interval=day',
      )
    }
    const range = alignRange(requested, interval)
    const n = (range.toMs - range.fromMs) / windowMs(interval)
    if (n > maxWindows) {
      throw tooLarge(
        'interval',
        `the range holds ${n} ${interval} windows; at most ${maxWindows}: use a coarser interval or a shorter range`,
      )
    }
    const segment: Segment = { granularity: interval, ...range }
    this.checkRetention([segment])
    return { interval, range, segment }
  }

  timeseries(q: ParsedQuery): Promise<TimeseriesAnswer> {
    return this.answer('timeseries', q, (freshness, mark) => this.timeseriesAt(q, freshness, mark)).then(
      (r) => r.value,
    )
  }

  /**
   * The timeseries, and with `compare` each point beside the point at the same position of the
   * range compared with (the same interval), and the change per metric.
   */
  private async timeseriesAt(
    q: ParsedQuery,
    freshness: Freshness,
    finalMark: string | undefined,
  ): Promise<TimeseriesAnswer> {
    const current = await this.timeseriesOne(q, freshness, finalMark)
    if (!q.compare) return current
    const interval = current.meta.interval ?? q.interval
    const previous = await this.timeseriesOne(
      { ...q, range: q.compare.range, compare: undefined, interval, intervalGiven: true },
      freshness,
      finalMark,
    )
    const results = current.results.map((point, i): TimeseriesPoint => {
      const before = previous.results[i]
      const change: Partial<Record<Metric, number | null>> = {}
      for (const m of q.metrics) change[m] = before ? percentChange(before[m] ?? 0, point[m] ?? 0) : null
      return { ...point, comparison: before ?? null, change }
    })
    return { results, meta: { ...current.meta, comparison: comparisonMeta(q.compare.mode, previous.meta) } }
  }

  private async timeseriesOne(
    q: ParsedQuery,
    freshness: Freshness,
    finalMark: string | undefined,
  ): Promise<TimeseriesAnswer> {
    // goal==NAME with a filter on a property conversions are kept by: the `goal|DIM` rows, the rate
    // over the property's own rows of the values (as aggregate).
    const goalBy = goalByFilter(q.filters)
    const at = readContext(freshness, finalMark, q.metrics, goalBy?.own.property)
    if (q.filters.length > 1 && !goalBy) {
      throw unsupported(
        `aggregates are stored per single property, so only one filter can be answered exactly; filter on one property (or on goal and one of ${GOAL_BY_NAMES.join(', ')})`,
      )
    }
    const filter = goalBy ? goalBy.rows : q.filters[0]
    // Days in a zone other than UTC are local days, assembled from hour (and minute) windows.
    if (q.zone !== UTC && (q.interval ?? defaultInterval(q.range!)) === 'day')
      return this.localDaySeries(q, freshness, at, filter, goalBy?.own)
    const { interval, range, segment } = this.seriesRange(
      q,
      (g) => this.deps.limits.maxPoints[g],
      filter !== undefined,
    )
    if (filter) this.checkReads([segment], 'a filtered timeseries')
    const withVisitors = needsVisitors(q.metrics)
    const windows = await this.readSegment(q.siteId, segment, filter, withVisitors, at)
    const byStart = new Map(windows.map((w) => [w.windowStart, w]))
    // A conversion rate's visitors: the totals of the same windows (with a filter on another
    // property besides the goal, that property's rows of the values).
    const totalsByStart = q.metrics.includes('conversion_rate')
      ? new Map(
          (await this.readSegment(q.siteId, segment, goalBy?.own, true, at)).map((w) => [w.windowStart, w]),
        )
      : undefined
    const tally = new WindowTally(freshness.completeThroughMs)
    const gaps = visitGapsFor(q.metrics, goalBy?.own.property)
    const visitRows = isVisitDimension(filter?.property)
    const results: TimeseriesPoint[] = []
    const step = windowMs(interval)
    for (let t = range.fromMs; t < range.toMs; t += step) {
      const w = byStart.get(t)
      const status = tally.add(t, interval, w?.final ?? false)
      if (w && w.visits === undefined) gaps?.add(t, interval)
      const counts: MergedValues = w ?? { events: 0, pageviews: 0, botEvents: 0, visitors: new Uint8Array(0) }
      // entry_page / exit_page rows hold visits only: their pageviews are the visits' pageviews.
      const shown = visitRows ? { ...counts, pageviews: counts.visitPageviews ?? 0 } : counts
      const values = metricValues(shown, counts.visitors, q.metrics)
      if (totalsByStart) {
        const tw = totalsByStart.get(t)
        withConversionRate(
          values,
          q.metrics,
          metricValues(shown, counts.visitors, ['conversions']).conversions ?? 0,
          tw ? visitorsEstimate(tw.visitors) : 0,
        )
      }
      results.push({
        date: formatInZone(t, q.zone),
        ...values,
        status,
      })
    }
    return {
      results,
      meta: buildMeta({
        siteId: q.siteId,
        range,
        requested: q.range,
        segments: [segment],
        freshness,
        windows: tally,
        metrics: q.metrics,
        precision: this.deps.precision,
        filters: q.filters,
        interval,
        ...(gaps ? { visitGaps: gaps } : {}),
        timeZone: this.zoneMeta(q, undefined, [interval]),
      }),
    }
  }

  /**
   * A daily timeseries in the site's zone: one point per local day (23 or 25 hours across a
   * daylight-saving change), each assembled from the windows that tile it — hours, and minutes
   * where the zone's midnight is not a whole hour — with counts summed and visitors' registers
   * merged per day (never summed). Edges beyond the retention of the windows they need are
   * floored (zonedEdges); meta.time_zone says so.
   */
  private async localDaySeries(
    q: ParsedQuery,
    freshness: Freshness,
    at: ReadContext,
    filter: Filter | undefined,
    rateFilter: Filter | undefined,
  ): Promise<TimeseriesAnswer> {
    const allowed = filter ? DIMENSION_GRANULARITIES : GRANULARITIES
    const local = localDayEdges(q.range!, q.zone)
    const n = local.length - 1
    if (n > this.deps.limits.maxPoints.day) {
      throw tooLarge(
        'interval',
        `the range holds ${n} day windows; at most ${this.deps.limits.maxPoints.day}: use a shorter range`,
      )
    }
    let rounded: Granularity | undefined
    const kept = (g: Granularity) => this.keptSince(g)
    const edges = local.map((e) => {
      const r = roundEdge(e, allowed, kept)
      rounded = coarser(rounded, r.rounded)
      return r.edgeMs
    })
    const segments: Segment[] = []
    for (let i = 0; i < n; i++) {
      for (const s of tile({ fromMs: edges[i]!, toMs: edges[i + 1]! }, allowed)) {
        const last = segments[segments.length - 1]
        if (last && last.granularity === s.granularity && last.toMs === s.fromMs) last.toMs = s.toMs
        else segments.push({ ...s })
      }
    }
    const reads = windowCount(segments)
    if (reads > this.deps.limits.maxExportWindows) {
      throw tooLarge(
        'from',
        `local days over this range read ${reads} windows; at most ${this.deps.limits.maxExportWindows}: shorten the range`,
      )
    }
    this.checkRetention(segments)
    if (filter) this.checkReads(segments, 'a filtered timeseries')
    const withVisitors = needsVisitors(q.metrics)
    const read = await Promise.all(
      segments.map((s) => this.readSegment(q.siteId, s, filter, withVisitors, at)),
    )
    const visitRows = isVisitDimension(filter?.property)
    const accs = Array.from(
      { length: n },
      () => new MetricAccumulator(this.deps.precision, withVisitors, visitRows),
    )
    const statuses: WindowStatus[] = Array.from({ length: n }, () => 'final')
    const tally = new WindowTally(freshness.completeThroughMs)
    const gaps = visitGapsFor(q.metrics, rateFilter?.property)
    // Edges ascend: the day of a window is the last edge at or before its start.
    const dayOf = (t: number) => {
      let lo = 0
      let hi = n - 1
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1
        if (edges[mid]! <= t) lo = mid
        else hi = mid - 1
      }
      return lo
    }
    segments.forEach((s, i) => {
      const windows = read[i]!
      const finals = new Set(windows.filter((w) => w.final).map((w) => w.windowStart))
      const step = windowMs(s.granularity)
      for (let t = s.fromMs; t < s.toMs; t += step) {
        const d = dayOf(t)
        statuses[d] = worse(statuses[d]!, tally.add(t, s.granularity, finals.has(t)))
      }
      for (const w of windows) {
        accs[dayOf(w.windowStart)]!.add(w)
        if (w.visits === undefined) gaps?.add(w.windowStart, s.granularity)
      }
    })
    // A conversion rate's visitors: per local day, the totals of the same windows (or the rows of
    // `rateFilter`, the other property's values besides the goal).
    let dayVisitors: number[] | undefined
    if (q.metrics.includes('conversion_rate')) {
      const totals = await Promise.all(
        segments.map((s) => this.readSegment(q.siteId, s, rateFilter, true, at)),
      )
      const perDay = Array.from({ length: n }, () => new MetricAccumulator(this.deps.precision, true))
      for (const w of totals.flat()) perDay[dayOf(w.windowStart)]!.add(w)
      dayVisitors = perDay.map((a) => a.values(['visitors']).visitors ?? 0)
    }
    const results: TimeseriesPoint[] = accs.map((acc, i) => ({
      date: formatInZone(local[i]!, q.zone),
      ...withConversionRate(
        acc.values(q.metrics),
        q.metrics,
        acc.values(['conversions']).conversions ?? 0,
        dayVisitors?.[i],
      ),
      status: statuses[i]!,
    }))
    return {
      results,
      meta: buildMeta({
        siteId: q.siteId,
        range: { fromMs: edges[0]!, toMs: edges[n]! },
        requested: q.range,
        segments,
        freshness,
        windows: tally,
        metrics: q.metrics,
        precision: this.deps.precision,
        filters: q.filters,
        interval: 'day',
        ...(gaps ? { visitGaps: gaps } : {}),
        timeZone: this.zoneMeta(q, rounded, allowed),
      }),
    }
  }

  breakdown(q: ParsedQuery): Promise<BreakdownAnswer> {
    return this.answer('breakdown', q, (freshness, mark) => this.breakdownAt(q, freshness, mark)).then(
      (r) => r.value,
    )
  }

  private async breakdownAt(
    q: ParsedQuery,
    freshness: Freshness,
    finalMark: string | undefined,
  ): Promise<BreakdownAnswer> {
    const property = q.property as RowDimension
    if (property !== 'goal' && q.filters.some((f) => f.property === 'goal')) {
      if (isGoalByDimension(property)) return this.goalByBreakdown(q, freshness, finalMark, property)
      throw unsupported(
        `conversions are kept by goal and by ${GOAL_BY_NAMES.join(', ')}, not by ${property}: filters=goal==NAME is answered by aggregate, timeseries and a breakdown by one of those, and a breakdown by goal takes property=goal`,
      )
    }
    if (q.filters.some((f) => f.property !== property)) {
      throw unsupported(
        `breakdowns are stored per single property, so a breakdown by ${property} can only be filtered on ${property}`,
      )
    }
    const values = q.filters[0]?.values
    const requested = q.range!
    const zoned = this.zonedEdges(q, requested, DIMENSION_GRANULARITIES)
    const range = alignRange(zoned.range, 'hour')
    const tiled = tile(range, DIMENSION_GRANULARITIES)
    this.checkRetention(tiled)
    this.checkReads(tiled, 'a breakdown')
    const at = readContext(freshness, finalMark, q.metrics)
    const segments = this.deps.settled?.enabled ? unsettledDaysAsHours(tiled, at.settledThroughMs) : tiled
    const withVisitors = needsVisitors(q.metrics)
    const sortBy = q.metrics[0]!
    // Sorted by a count, visitors are needed only for the page shown: the first pass reads counts
    // (no sketches), the second reads the sketches of the page's values alone.
    // A capped dimension's (a custom property's, path's, referrer's, …) values beyond the cap fold
    // into (other), which needs every value's sketch.
    // Entry and exit pages are capped by the paths of their days (core/aggregate/props.ts DAY_PATH_CAPPED).
    const pageCapped = isDayPathCapped(property)
    const cappedDim = isCappedDimension(property) || pageCapped
    const valuesMax = valuesMaxOf(property, this.deps)
    // Goals are few (at most 20 a site): read with their sketches at once.
    const visitorsLater = withVisitors && sortBy !== 'visitors' && !cappedDim && property !== 'goal'
    const readAll = (visitors: boolean, only: readonly string[] | undefined) =>
      Promise.all(
        segments.map((s) =>
          this.breakdownParts(q.siteId, s, property, { visitors, ...(only ? { values: only } : {}) }, at),
        ),
      )
    // A capped dimension is read whole: whether a value is kept depends on all of them.
    const read = await readAll(withVisitors && !visitorsLater, cappedDim ? undefined : values)
    // The cap rule again over the merged values (core/aggregate/props.ts): the stream's partitions
    // and the rebuild's hours then answer the same.
    let under: ((value: string) => string | undefined) | undefined
    let capHit = false
    if (pageCapped) {
      // The rule over the paths of the range's UTC days, read from their day windows: a page kept
      // there is kept in each of those days, so its rows are whole; the others fold into (other).
      const days: Segment = {
        granularity: 'day',
        fromMs: floorTo(range.fromMs, 'day'),
        toMs: floorTo(range.toMs + DAY_MS - 1, 'day'),
      }
      // The pages read are paths of those days too (a set within the days' paths that holds their
      // kept ones answers the same), so a day without path rows folds nothing it cannot prove.
      const dayPaths = new Set<string>()
      for (const one of read.flat()) for (const value of one.values.keys()) dayPaths.add(value)
      for (const one of await this.breakdownParts(q.siteId, days, 'path', { visitors: false }, at))
        for (const value of one.values.keys()) dayPaths.add(value)
      const kept = keptValues(dayPaths, valuesMax)
      const fold = (value: string) => (kept.has(value) || !cappedValue(value) ? value : OTHER)
      // Capped: a visit of the range has a page folded (a row of no visit folds nothing).
      let folded = 0
      for (const one of read.flat())
        for (const [value, v] of one.values) if (fold(value) === OTHER) folded += v.visits ?? 0
      capHit = folded > 0
      const wanted = values ? new Set(values) : undefined
      under = (value) => {
        const v = fold(value)
        return wanted && !wanted.has(v) ? undefined : v
      }
    } else if (cappedDim) {
      const seen = new Set<string>()
      for (const one of read.flat()) for (const value of one.values.keys()) seen.add(value)
      const kept = keptValues(seen, valuesMax)
      capHit = kept.size < seen.size || seen.has(OTHER)
      const wanted = values ? new Set(values) : undefined
      under = (value) => {
        const v = kept.has(value) ? value : OTHER
        return wanted && !wanted.has(v) ? undefined : v
      }
    }
    const tally = new WindowTally(freshness.completeThroughMs)
    const gaps = visitGapsFor(q.metrics)
    const visitRows = isVisitDimension(property)
    const accs = new Map<string, MetricAccumulator>()
    const accumulate = (r: Awaited<ReturnType<typeof readAll>>, visitors: boolean) => {
      for (const one of r.flat()) {
        for (const [stored, v] of one.values) {
          const value = under ? under(stored) : stored
          if (value === undefined) continue
          let acc = accs.get(value)
          if (!acc) {
            acc = new MetricAccumulator(this.deps.precision, visitors, visitRows)
            accs.set(value, acc)
          }
          acc.add(v)
        }
      }
    }
    segments.forEach((s, i) => {
      const finals = new Set<number>()
      for (const part of read[i]!) {
        for (const [ws, w] of part.windows) if (w.final) finals.add(ws)
        for (const ws of part.windowsWithoutVisits ?? []) gaps?.add(ws, s.granularity)
      }
      tally.addSegment(s, finals)
    })
    accumulate(read, withVisitors && !visitorsLater)
    const wantsBots = q.metrics.includes('bot_events')
    // entry_page / exit_page rows count visits, not events.
    const counted = (acc: MetricAccumulator) =>
      acc.events > 0 || acc.visits.visits > 0 || (wantsBots && acc.botEvents > 0)
    // Goals: each goal's conversion rate is against the visitors of the whole range (its totals).
    const rangeVisitors = q.metrics.includes('conversion_rate')
      ? visitorsOf(
          (await Promise.all(segments.map((s) => this.readSegment(q.siteId, s, undefined, true, at)))).flat(),
          this.deps.precision,
        )
      : undefined
    const valuesOf = (acc: MetricAccumulator, metrics: readonly Metric[]) =>
      withConversionRate(
        acc.values(metrics),
        metrics,
        acc.values(['conversions']).conversions ?? 0,
        rangeVisitors,
      )
    const start = (q.page - 1) * q.limit
    let page: Array<{ value: string; values: MetricValues }>
    let total = 0
    if (visitorsLater) {
      // A value seen only in bot traffic has zero counted events: it is no row unless bots are asked for.
      const all = [...accs]
        .filter(([, acc]) => counted(acc))
        .map(([value, acc]) => ({ value, values: acc.values(q.metrics.filter((m) => m !== 'visitors')) }))
      total = all.length
      const counts = all.sort(order((r) => r.values[sortBy] ?? 0)).slice(start, start + q.limit)
      accs.clear()
      if (counts.length > 0)
        accumulate(
          await readAll(
            true,
            counts.map((r) => r.value),
          ),
          true,
        )
      page = counts.map((r) => ({ value: r.value, values: accs.get(r.value)!.values(q.metrics) }))
    } else {
      const all = [...accs]
        .filter(([, acc]) => counted(acc))
        .map(([value, acc]) => ({ value, values: valuesOf(acc, q.metrics) }))
      total = all.length
      page = all.sort(order((r) => r.values[sortBy] ?? 0)).slice(start, start + q.limit)
    }
    const results = page.map((r) => ({ [property]: r.value, ...r.values }))
    return {
      results,
      meta: {
        ...buildMeta({
          siteId: q.siteId,
          range,
          requested,
          segments,
          freshness,
          windows: tally,
          metrics: q.metrics,
          precision: this.deps.precision,
          filters: q.filters,
          property,
          ...(gaps ? { visitGaps: gaps } : {}),
          timeZone: this.zoneMeta(q, zoned.rounded, DIMENSION_GRANULARITIES),
        }),
        total_values: total,
        page: q.page,
        limit: q.limit,
        ...(cappedDim ? { values_capped: capHit, values_max: valuesMax } : {}),
      },
    }
  }

  /**
   * A breakdown by `property` of the conversions of the goals of `filters=goal==NAME`
   * (core/aggregate/goals.ts `goal|DIM` rows): per value, `visitors` and `conversions` are the
   * converters, `events` the completions, `conversion_rate` the converters over the visitors of the
   * property's own row of that value over the same windows. A capped property's values are folded
   * as its own rows are: by the cap rule over each goal's values, then into `(other)` where the
   * property's own rows fold the value. Besides the goal filter, a filter on the property itself
   * restricts the values.
   */
  private async goalByBreakdown(
    q: ParsedQuery,
    freshness: Freshness,
    finalMark: string | undefined,
    property: GoalByDimension,
  ): Promise<BreakdownAnswer> {
    const goalFilter = q.filters.find((f) => f.property === 'goal')!
    const others = q.filters.filter((f) => f.property !== 'goal')
    if (others.some((f) => f.property !== property))
      throw unsupported(
        `conversions by ${property} can be filtered on goal and on ${property} only (rows are kept per goal and one property)`,
      )
    const wanted = others[0] ? new Set(others[0].values) : undefined
    const goals = new Set(goalFilter.values)
    const requested = q.range!
    const zoned = this.zonedEdges(q, requested, DIMENSION_GRANULARITIES)
    const range = alignRange(zoned.range, 'hour')
    const tiled = tile(range, DIMENSION_GRANULARITIES)
    this.checkRetention(tiled)
    this.checkReads(tiled, 'a breakdown')
    const at = readContext(freshness, finalMark, q.metrics, property)
    const segments = this.deps.settled?.enabled ? unsettledDaysAsHours(tiled, at.settledThroughMs) : tiled
    const capped = isCappedDimension(property)
    const valuesMax = valuesMaxOf(property, this.deps)
    const withRate = q.metrics.includes('conversion_rate')
    const readDim = (dimension: RowDimension, visitors: boolean) =>
      Promise.all(segments.map((s) => this.breakdownParts(q.siteId, s, dimension, { visitors }, at)))
    const [goalRead, ownRead] = await Promise.all([
      readDim(goalByDimension(property), true),
      capped || withRate ? readDim(property, withRate) : Promise.resolve(undefined),
    ])
    // The property's own rows: which values they keep (the cap rule over the range's values).
    let own: (value: string) => string = (v) => v
    let capHit = false
    if (capped && ownRead) {
      const seen = new Set<string>()
      for (const one of ownRead.flat()) for (const v of one.values.keys()) seen.add(v)
      const kept = keptValues(seen, valuesMax)
      capHit = kept.size < seen.size || seen.has(OTHER)
      if (kept.size < seen.size) {
        // A value the own rows do not hold is kept when it ranks below the last kept one.
        let last: { r: number; v: string } | undefined
        for (const v of kept) {
          if (!cappedValue(v)) continue
          const r = capRank(v)
          if (!last || r > last.r || (r === last.r && v > last.v)) last = { r, v }
        }
        own = (v) => {
          if (kept.has(v) || !cappedValue(v)) return v
          if (seen.has(v) || !last) return OTHER
          const r = capRank(v)
          return r < last.r || (r === last.r && v < last.v) ? v : OTHER
        }
      }
    }
    // Each goal's values, folded by the cap rule over that goal's values of the range.
    const byGoal = new Map<string, Map<string, MergedValues[]>>()
    for (const one of goalRead.flat()) {
      for (const [stored, v] of one.values) {
        const split = splitGoalByValue(stored)
        if (!split || !goals.has(split.goal)) continue
        let m = byGoal.get(split.goal)
        if (!m) {
          m = new Map()
          byGoal.set(split.goal, m)
        }
        const list = m.get(split.value)
        if (list) list.push(v)
        else m.set(split.value, [v])
      }
    }
    const accs = new Map<string, MetricAccumulator>()
    for (const m of byGoal.values()) {
      const keptOfGoal = capped ? keptValues(m.keys(), valuesMax) : undefined
      if (keptOfGoal && keptOfGoal.size < m.size) capHit = true
      for (const [raw, list] of m) {
        const value = own(keptOfGoal && !keptOfGoal.has(raw) ? OTHER : raw)
        if (wanted && !wanted.has(value)) continue
        let acc = accs.get(value)
        if (!acc) {
          acc = new MetricAccumulator(this.deps.precision, true)
          accs.set(value, acc)
        }
        for (const v of list) acc.add(v)
      }
    }
    // The rate's visitors: the property's own rows of each value, same windows.
    const visitorsOfValue = new Map<string, MetricAccumulator>()
    if (withRate && ownRead) {
      for (const one of ownRead.flat()) {
        for (const [stored, v] of one.values) {
          const value = own(stored)
          if (!accs.has(value)) continue
          let acc = visitorsOfValue.get(value)
          if (!acc) {
            acc = new MetricAccumulator(this.deps.precision, true)
            visitorsOfValue.set(value, acc)
          }
          acc.add(v)
        }
      }
    }
    const tally = new WindowTally(freshness.completeThroughMs)
    segments.forEach((s, i) => {
      const finals = new Set<number>()
      for (const part of goalRead[i]!) for (const [ws, w] of part.windows) if (w.final) finals.add(ws)
      tally.addSegment(s, finals)
    })
    // Conversions by exit page hold converters only (no completions): a value is there when its
    // register is not empty.
    const byExit = property === GOAL_BY_EXIT_PAGE
    const all = [...accs]
      .filter(([, acc]) => acc.events > 0 || (byExit && (acc.values(['visitors']).visitors ?? 0) > 0))
      .map(([value, acc]) => ({
        value,
        values: withConversionRate(
          acc.values(q.metrics),
          q.metrics,
          acc.values(['conversions']).conversions ?? 0,
          visitorsOfValue.get(value)?.values(['visitors']).visitors ?? 0,
        ),
      }))
    const sortBy = q.metrics[0]!
    all.sort(order((r) => r.values[sortBy] ?? 0))
    const start = (q.page - 1) * q.limit
    const page = all.slice(start, start + q.limit)
    return {
      results: page.map((r) => ({ [property]: r.value, ...r.values })),
      meta: {
        ...buildMeta({
          siteId: q.siteId,
          range,
          requested,
          segments,
          freshness,
          windows: tally,
          metrics: q.metrics,
          precision: this.deps.precision,
          filters: q.filters,
          property,
          timeZone: this.zoneMeta(q, zoned.rounded, DIMENSION_GRANULARITIES),
          // A visit's conversions reach its exit page's row when the visit has ended: meta.visits
          // says that windows not final can still change while their visits go on.
          ...(byExit ? { visitGaps: new VisitGaps() } : {}),
        }),
        total_values: all.length,
        page: q.page,
        limit: q.limit,
        ...(capped ? { values_capped: capHit, values_max: valuesMax } : {}),
      },
    }
  }

  /** The last `minutes` minute windows, the current one included. */
  realtime(q: ParsedQuery): Promise<AggregateAnswer> {
    return this.answer('realtime', q, (freshness, mark) => this.realtimeAt(q, freshness, mark)).then(
      (r) => r.value,
    )
  }

  private async realtimeAt(
    q: ParsedQuery,
    freshness: Freshness,
    finalMark: string | undefined,
  ): Promise<AggregateAnswer> {
    const at = readContext(freshness, finalMark, q.metrics)
    const now = this.deps.now()
    const current = floorTo(now, 'minute')
    const range = { fromMs: current - (q.minutes - 1) * 60_000, toMs: current + 60_000 }
    const segment: Segment = { granularity: 'minute', ...range }
    const withVisitors = q.metrics.includes('visitors')
    const windows = await this.readSegment(q.siteId, segment, undefined, withVisitors, at)
    const acc = new MetricAccumulator(this.deps.precision, withVisitors)
    const tally = new WindowTally(freshness.completeThroughMs)
    const gaps = visitGapsFor(q.metrics)
    tally.addSegment(segment, new Set(windows.filter((w) => w.final).map((w) => w.windowStart)))
    for (const w of windows) {
      acc.add(w)
      if (w.visits === undefined) gaps?.add(w.windowStart, 'minute')
    }
    const values = acc.values(q.metrics)
    const results: AggregateAnswer['results'] = {}
    for (const m of q.metrics) results[m] = { value: values[m] ?? 0 }
    return {
      results,
      meta: buildMeta({
        siteId: q.siteId,
        range,
        requested: undefined,
        segments: [segment],
        freshness,
        windows: tally,
        metrics: q.metrics,
        precision: this.deps.precision,
        filters: [],
        interval: 'minute',
        ...(gaps ? { visitGaps: gaps } : {}),
      }),
    }
  }
}

/**
 * `goal==NAME` with a filter on a property conversions are kept by (core/aggregate/goals.ts): the
 * filter on the `goal|DIM` rows of those goals and values, and the property's own filter (the
 * conversion rate's visitors). Undefined for any other filters.
 */
function goalByFilter(filters: readonly Filter[]): { rows: Filter; own: Filter } | undefined {
  if (filters.length !== 2) return undefined
  const goal = filters.find((f) => f.property === 'goal')
  const own = filters.find((f) => f.property !== 'goal')
  if (!goal || !own || !isGoalByDimension(own.property)) return undefined
  const values = goal.values.flatMap((name) => own.values.map((v) => goalByValue(name, v)))
  return { rows: { property: goalByDimension(own.property), values }, own }
}

/** The coarser of two roundings (undefined: none). */
function coarser(a: Granularity | undefined, b: Granularity | undefined): Granularity | undefined {
  if (a === undefined) return b
  if (b === undefined) return a
  return windowMs(a) >= windowMs(b) ? a : b
}

const STATUS_ORDER: readonly WindowStatus[] = ['final', 'closed', 'open']

/** The less settled of two statuses: a day with an open hour is open. */
function worse(a: WindowStatus, b: WindowStatus): WindowStatus {
  return STATUS_ORDER.indexOf(a) >= STATUS_ORDER.indexOf(b) ? a : b
}

/** `+05:30`, `-04:00`, `+00:00`. */
function formatOffset(ms: number): string {
  const abs = Math.abs(ms) / 60_000
  return `${ms < 0 ? '-' : '+'}${String(Math.floor(abs / 60)).padStart(2, '0')}:${String(abs % 60).padStart(2, '0')}`
}

function comparisonMeta(mode: CompareMode, previous: Meta): ComparisonMeta {
  return {
    mode,
    from: previous.from,
    to: previous.to,
    ...(previous.requested ? { requested: previous.requested } : {}),
    windows: previous.windows,
    ...(previous.time_zone ? { time_zone: previous.time_zone } : {}),
  }
}

/**
 * What decides the settled windows of a read. A window's visit counts change after it closed,
 * while the visits that began in it go on, up to midnight UTC at the latest: with visit metrics,
 * only the windows of days that ended by complete_through are settled. So for conversions by exit
 * page (`goalBy`, the property besides goal==NAME): a visit's converters reach its start windows
 * when it ends (by midnight UTC, in the flush of the checkpoint that passes it).
 */
function readContext(
  freshness: Freshness,
  finalMark: string | undefined,
  metrics: readonly Metric[],
  goalBy?: string,
): ReadContext {
  const through = freshness.completeThroughMs
  const untilVisitsEnd = metrics.some(isVisitMetric) || goalBy === GOAL_BY_EXIT_PAGE
  return {
    settledThroughMs: through !== undefined && untilVisitsEnd ? floorTo(through, 'day') : through,
    finalMark,
  }
}

/**
 * A collector of windows without visit data when visit metrics are asked for (meta.visits), or for
 * conversions by exit page (`goalBy`: the property besides goal==NAME), whose windows gain the
 * converters of visits that go on once they end: meta.visits says so.
 */
function visitGapsFor(metrics: readonly Metric[], goalBy?: string): VisitGaps | undefined {
  return metrics.some(isVisitMetric) || goalBy === GOAL_BY_EXIT_PAGE ? new VisitGaps() : undefined
}

/**
 * Day segments past the last settled day (complete_through) become hour segments, up to
 * MAX_SPLIT_HOURS: the hours that already ended are settled and cached, so a new stream flush
 * re-reads the current hours only, not the whole day. Adjacent hour segments join.
 */
export function unsettledDaysAsHours(
  segments: readonly Segment[],
  completeThroughMs: number | undefined,
): Segment[] {
  if (completeThroughMs === undefined) return [...segments]
  const settledDays = floorTo(completeThroughMs, 'day')
  const out: Segment[] = []
  const push = (s: Segment) => {
    const last = out[out.length - 1]
    if (last && last.granularity === s.granularity && last.toMs === s.fromMs) last.toMs = s.toMs
    else out.push({ ...s })
  }
  for (const s of segments) {
    const cut = Math.max(s.fromMs, settledDays)
    if (s.granularity !== 'day' || s.toMs <= cut || (s.toMs - cut) / HOUR_MS > MAX_SPLIT_HOURS) {
      push(s)
      continue
    }
    if (cut > s.fromMs) push({ granularity: 'day', fromMs: s.fromMs, toMs: cut })
    push({ granularity: 'hour', fromMs: cut, toMs: s.toMs })
  }
  return out
}
