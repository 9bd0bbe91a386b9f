import { BREAKDOWN_DIMENSIONS, type BreakdownDimension } from '../core/aggregate/breakdowns.js'
import {
  DIMENSIONS,
  GRANULARITIES,
  type Granularity,
  type RowDimension,
  SESSION_DIMENSIONS,
  VISIT_DIMENSIONS,
} from '../core/aggregate/definition.js'
import {
  GOAL_BY_EXIT_PAGE,
  GOAL_BY_EXIT_PAGE_METRICS,
  GOAL_BY_NAMES,
  isGoalByDimension,
} from '../core/aggregate/goals.js'
import { isPropDimension } from '../core/aggregate/props.js'
import { ERR } from '../core/error-codes.js'
import type { TallyError } from '../core/errors.js'
import { badParameter, parseInstant, type TimeRange } from './range.js'
import {
  addDays,
  type LocalDate,
  localDateOf,
  offsetMs,
  parseLocalDate,
  resolvePeriod,
  startOfLocalDay,
  UTC,
} from './zone.js'

/**
 * Parameters of the query API, parsed and checked once per request. Every problem is a 400 whose
 * `where` names the parameter.
 */

export const METRICS = [
  'events',
  'pageviews',
  'visitors',
  'bot_events',
  'visits',
  'bounce_rate',
  'visit_duration',
  'views_per_visit',
  'conversions',
  'conversion_rate',
] as const
export type Metric = (typeof METRICS)[number]
export const DEFAULT_METRICS: readonly Metric[] = ['visitors', 'pageviews', 'events']

/**
 * Metrics of visits (core/aggregate/visits.ts): `visits`; `bounce_rate`, percent of the visits
 * that bounced; `visit_duration`, mean seconds; `views_per_visit`, pageviews of the visits per
 * visit. Computed when read from stored counts and sums.
 */
export const VISIT_METRICS = ['visits', 'bounce_rate', 'visit_duration', 'views_per_visit'] as const
/**
 * Metrics of goals (core/aggregate/goals.ts): `conversions`, the visitors of the goal rows (unique
 * converters, HyperLogLog); `conversion_rate`, conversions over the visitors of the same range
 * and windows, in percent with one decimal. Answered with `filters=goal==NAME` (aggregate,
 * timeseries; a breakdown by a GOAL_BY_NAMES property, against that value's visitors) or
 * `property=goal` (breakdown).
 */
export const GOAL_METRICS = ['conversions', 'conversion_rate'] as const
export function isGoalMetric(m: Metric): boolean {
  return (GOAL_METRICS as readonly string[]).includes(m)
}

/** Metrics read from the visitors' registers. */
export function needsVisitors(metrics: readonly Metric[]): boolean {
  return metrics.some((m) => m === 'visitors' || isGoalMetric(m))
}

export function isVisitMetric(m: Metric): boolean {
  return (VISIT_METRICS as readonly string[]).includes(m)
}

/** Properties whose rows hold visit counts: the session dimensions and the entry and exit pages. */
export const VISIT_PROPERTIES: readonly RowDimension[] = [...SESSION_DIMENSIONS, ...VISIT_DIMENSIONS]
/** Every property of a breakdown or filter. */
export const PROPERTIES: readonly RowDimension[] = [...DIMENSIONS, ...VISIT_DIMENSIONS]

/**
 * Metrics of entry_page and exit_page, whose rows hold visits only: `pageviews` there are the
 * pageviews of the visits that entered (or left) on the page.
 */
export const ENTRY_EXIT_METRICS: readonly Metric[] = [
  'visits',
  'pageviews',
  'bounce_rate',
  'visit_duration',
  'views_per_visit',
]
/** Metrics of an entry_page or exit_page breakdown when none are given. */
export const ENTRY_EXIT_DEFAULT_METRICS: readonly Metric[] = [
  'visits',
  'pageviews',
  'bounce_rate',
  'visit_duration',
]

export function isVisitDimension(d: RowDimension | undefined): boolean {
  return d !== undefined && (VISIT_DIMENSIONS as readonly string[]).includes(d)
}

export const ENDPOINTS = ['aggregate', 'timeseries', 'breakdown', 'realtime', 'export', 'events'] as const
export type Endpoint = (typeof ENDPOINTS)[number]

export const EXPORT_FORMATS = ['ndjson', 'arrow'] as const
export type ExportFormat = (typeof EXPORT_FORMATS)[number]
/** Formats of the aggregates export: the raw-event export's and CSV (query/csv.ts). */
export const AGGREGATE_EXPORT_FORMATS = [...EXPORT_FORMATS, 'csv'] as const
export type AggregateExportFormat = (typeof AGGREGATE_EXPORT_FORMATS)[number]
/** Formats of a timeseries or breakdown: the JSON answer, or its results as CSV (query/csv.ts). */
export const STATS_FORMATS = ['json', 'csv'] as const
export type StatsFormat = (typeof STATS_FORMATS)[number]

const RANGE_PARAMS = ['period', 'date', 'from', 'to'] as const

/** The parameters each endpoint takes; anything else is refused (it is usually a typo). */
export const ENDPOINT_PARAMS: Readonly<Record<Endpoint, readonly string[]>> = {
  aggregate: ['site', ...RANGE_PARAMS, 'metrics', 'filters', 'compare'],
  timeseries: ['site', ...RANGE_PARAMS, 'interval', 'metrics', 'filters', 'compare', 'format'],
  breakdown: ['site', ...RANGE_PARAMS, 'property', 'metrics', 'filters', 'limit', 'page', 'format'],
  realtime: ['site', 'metrics', 'minutes'],
  export: ['site', ...RANGE_PARAMS, 'interval', 'property', 'format', 'sketches', 'visits'],
  /** Raw-event export (/v1/export/events). */
  events: ['site', ...RANGE_PARAMS, 'format'],
}

/**
 * Period comparison (`compare=`): `previous_period`, the range of the same length just before (the
 * same number of local days, or of calendar months for month periods); `year_over_year`, the same
 * local dates a year before (29 February → 28 February).
 */
export const COMPARE_MODES = ['previous_period', 'year_over_year'] as const
export type CompareMode = (typeof COMPARE_MODES)[number]

/** Equality on one property: the event's value is one of `values`. */
export interface Filter {
  property: RowDimension
  values: string[]
}

export interface ParseLimits {
  /** Largest `limit` of a breakdown. */
  maxLimit: number
  /** `limit` when none is given. */
  defaultLimit: number
  /** Most values in one filter (`a|b|…`). */
  maxFilterValues: number
  /** Longest `minutes` of realtime. */
  maxRealtimeMinutes: number
  /**
   * The breakdown dimensions the deployment aggregates (TALLY_BREAKDOWNS): a breakdown or filter on
   * another is refused, as no row holds it. Default all.
   */
  breakdowns?: readonly BreakdownDimension[]
}

export interface ParsedQuery {
  siteId: string
  /** The range as asked for (before alignment to windows); undefined for realtime. */
  range: TimeRange | undefined
  /** The interval given, or the period's default, or undefined (custom range without interval). */
  interval: Granularity | undefined
  intervalGiven: boolean
  metrics: Metric[]
  filters: Filter[]
  property: RowDimension | undefined
  limit: number
  page: number
  minutes: number
  /**
   * Aggregates export: ndjson (default), arrow or csv; raw-event export: ndjson or arrow;
   * timeseries and breakdown: json (default) or csv.
   */
  format: AggregateExportFormat | StatsFormat
  sketches: boolean
  /** Export: rows carry the visit columns (`visits=true`). */
  visits: boolean
  /** The site's IANA time zone (query/zone.ts); `UTC` for a site without one. */
  zone: string
  /**
   * True when the range's edges are local midnights (a period of days or months, or from/to given
   * as dates): they may be moved to readable window boundaries (query/zone.ts roundEdge).
   */
  localDays: boolean
  /** `compare=`, with the range it compares with. */
  compare: { mode: CompareMode; range: TimeRange } | undefined
}

type Raw = Record<string, unknown>

function single(q: Raw, name: string): string | undefined {
  const v = q[name]
  if (v === undefined) return undefined
  if (Array.isArray(v)) throw badParameter(name, `${name} is given more than once`)
  return String(v)
}

function required(q: Raw, name: string): string {
  const v = single(q, name)
  if (v === undefined || v === '') throw badParameter(name, `${name} is required`, ERR.MISSING_PARAMETER)
  return v
}

function oneOf<T extends string>(name: string, raw: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(raw)) {
    throw badParameter(name, `${name}=${raw} is not one of ${allowed.join(', ')}`)
  }
  return raw as T
}

function integer(name: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined) return fallback
  if (!/^\d{1,9}$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    throw badParameter(name, `${name}=${raw} is not an integer from ${min} to ${max}`)
  }
  return Number(raw)
}

export function parseMetrics(raw: string | undefined): Metric[] {
  if (raw === undefined) return [...DEFAULT_METRICS]
  const names = raw.split(',').map((s) => s.trim())
  if (names.some((n) => n === '')) throw badParameter('metrics', 'metrics has an empty name')
  for (const n of names) {
    if (!(METRICS as readonly string[]).includes(n)) {
      throw badParameter('metrics', `unknown metric ${n}: use ${METRICS.join(', ')}`)
    }
  }
  return [...new Set(names)] as Metric[]
}

export function parseProperty(raw: string, where: string): RowDimension {
  // A site's custom property (core/aggregate/props.ts): any valid key; an undeclared one has no rows.
  if (isPropDimension(raw)) return raw
  // Goal completions, valued by the goal's name (core/aggregate/goals.ts).
  if (raw === 'goal') return raw
  if (!(PROPERTIES as readonly string[]).includes(raw)) {
    throw badParameter(
      where,
      `unknown property ${raw}: use ${PROPERTIES.join(', ')}, goal or prop:KEY (a declared custom property)`,
    )
  }
  return raw as RowDimension
}

/**
 * Refuses a breakdown or a filter on a dimension the deployment does not aggregate (TALLY_BREAKDOWNS):
 * no row holds it, so an answer would be empty, not the truth. Names the ones kept.
 */
function checkKept(
  kept: readonly BreakdownDimension[] | undefined,
  property: RowDimension | undefined,
  filters: readonly Filter[],
): void {
  if (kept === undefined || kept.length === BREAKDOWN_DIMENSIONS.length) return
  const notKept = (d: RowDimension | undefined): boolean =>
    d !== undefined &&
    (BREAKDOWN_DIMENSIONS as readonly string[]).includes(d) &&
    !(kept as readonly string[]).includes(d)
  const refuse = (where: string, d: RowDimension): TallyError =>
    badParameter(
      where,
      `${where}: ${d} is not aggregated by this deployment (TALLY_BREAKDOWNS); the breakdowns kept are ${kept.join(', ')}, goal and prop:KEY`,
      ERR.BREAKDOWN_NOT_KEPT,
    )
  if (notKept(property)) throw refuse('property', property!)
  const f = filters.find((x) => notKept(x.property))
  if (f) throw refuse('filters', f.property)
}

/**
 * Refuses metrics the rows of the properties asked for do not hold, naming what they do: visit
 * metrics exist by the session dimensions, custom properties (`prop:KEY`, the visit's first event's
 * value) and entry/exit pages (not by event or path, whose rows count events), and
 * entry_page/exit_page rows hold visit metrics only.
 */
function checkMetricsFor(metrics: readonly Metric[], properties: readonly RowDimension[]): void {
  for (const p of properties) {
    if (isVisitDimension(p)) {
      const bad = metrics.filter((m) => !ENTRY_EXIT_METRICS.includes(m))
      if (bad.length > 0)
        throw badParameter(
          'metrics',
          `${p} holds visit metrics only (${bad.join(', ')} not available): use ${ENTRY_EXIT_METRICS.join(', ')}`,
        )
    } else if (!VISIT_PROPERTIES.includes(p) && !isPropDimension(p)) {
      const bad = metrics.filter(isVisitMetric)
      if (bad.length > 0)
        throw badParameter(
          'metrics',
          `visit metrics (${bad.join(', ')}) are counted by prop:KEY, ${VISIT_PROPERTIES.join(', ')}, not by ${p}`,
        )
    }
  }
}

/** Splits on an unescaped separator; `\` escapes the next character. */
function splitEscaped(raw: string, sep: string, where: string): string[] {
  const out: string[] = []
  let cur = ''
  for (let i = 0; i < raw.length; i++) {
    const ch = raw[i]!
    if (ch === '\\') {
      const next = raw[i + 1]
      if (next === undefined) throw badParameter(where, `${where} ends with a lone \\`)
      cur += `\\${next}`
      i++
    } else if (ch === sep) {
      out.push(cur)
      cur = ''
    } else cur += ch
  }
  out.push(cur)
  return out
}

function unescapeValue(s: string): string {
  return s.replace(/\\(.)/g, '$1')
}

/**
 * `filters=property==value`, several values as `property==a|b` (any of them), several filters
 * separated by `;`. A backslash escapes `;`, `|` and `\` inside values.
 */
export function parseFilters(raw: string | undefined, maxValues: number): Filter[] {
  if (raw === undefined || raw === '') return []
  const out: Filter[] = []
  for (const part of splitEscaped(raw, ';', 'filters')) {
    const at = part.indexOf('==')
    if (at <= 0) {
      throw badParameter(
        'filters',
        `filter "${part}" is not property==value (equality is the only operator; values a|b mean either)`,
      )
    }
    const property = parseProperty(part.slice(0, at).trim(), 'filters')
    const values = splitEscaped(part.slice(at + 2), '|', 'filters').map(unescapeValue)
    if (values.some((v) => v === ''))
      throw badParameter('filters', `filter on ${property} has an empty value`)
    if (values.length > maxValues) {
      throw badParameter('filters', `filter on ${property} has ${values.length} values; at most ${maxValues}`)
    }
    if (out.some((f) => f.property === property)) {
      throw badParameter('filters', `${property} is filtered twice; give its values once as ${property}==a|b`)
    }
    out.push({ property, values: [...new Set(values)] })
  }
  return out
}

function parseBoolean(name: string, raw: string | undefined): boolean {
  if (raw === undefined) return false
  if (raw === 'true' || raw === '1') return true
  if (raw === 'false' || raw === '0') return false
  throw badParameter(name, `${name}=${raw} is not true or false`)
}

/** What a range parameter set resolves to in a zone. */
export interface ResolvedRange {
  range: TimeRange
  /** The period's default interval; undefined for from/to. */
  periodInterval: Granularity | undefined
  /** Edges are local midnights (see ParsedQuery.localDays). */
  localDays: boolean
  /** The local days (first, count) when the range is whole local days; for compare. */
  days: { first: LocalDate; count: number } | undefined
  /** Whole calendar months (month, Nmo, year periods): their previous period is months too. */
  months: number
}

const DATE_ONLY = /^\d{4}-\d{2}-\d{2}$/

/**
 * Resolves `period`/`date` or `from`/`to` in the site's zone: dates are local dates whose days start
 * at the zone's midnight; instants with an offset are taken as they are. In UTC this is the range
 * Tally always answered. The Plausible Stats API resolves its periods with this too.
 */
export function resolveRange(
  q: { period?: string; date?: string; from?: string; to?: string },
  nowMs: number,
  zone: string,
): ResolvedRange {
  const { from, to, period, date } = q
  if (from !== undefined || to !== undefined) {
    if (period !== undefined) throw badParameter('period', 'give either period or from and to, not both')
    if (date !== undefined) throw badParameter('date', 'date goes with period, not with from and to')
    if (from === undefined) throw badParameter('from', 'from is required with to', ERR.MISSING_PARAMETER)
    if (to === undefined) throw badParameter('to', 'to is required with from', ERR.MISSING_PARAMETER)
    const fromDay = DATE_ONLY.test(from) ? parseLocalDate(from, 'from') : undefined
    const toDay = DATE_ONLY.test(to) ? parseLocalDate(to, 'to') : undefined
    const fromMs = fromDay ? startOfLocalDay(fromDay, zone) : parseInstant(from, 'from')
    const toMs = toDay ? startOfLocalDay(addDays(toDay, 1), zone) : parseInstant(to, 'to', true)
    if (fromMs >= toMs) throw badParameter('from', `from (${from}) is not before to (${to})`)
    const whole = fromDay !== undefined && toDay !== undefined
    return {
      range: { fromMs, toMs },
      periodInterval: undefined,
      localDays: whole,
      days: whole ? { first: fromDay, count: dayCount(fromDay, addDays(toDay, 1)) } : undefined,
      months: 0,
    }
  }
  let ref: LocalDate | undefined
  if (date !== undefined)
    ref = DATE_ONLY.test(date) ? parseLocalDate(date, 'date') : localDateOf(parseInstant(date, 'date'), zone)
  const p = resolvePeriod(period ?? '30d', zone, nowMs, ref)
  return {
    range: { fromMs: p.fromMs, toMs: p.toMs },
    periodInterval: p.interval,
    localDays: p.firstDay !== undefined,
    days: p.firstDay ? { first: p.firstDay, count: p.days } : undefined,
    months: p.months,
  }
}

function dayCount(first: LocalDate, end: LocalDate): number {
  return Math.round(
    (Date.UTC(end.year, end.month - 1, end.day) - Date.UTC(first.year, first.month - 1, first.day)) /
      86_400_000,
  )
}

/** The same local date a year before; 29 February becomes 28 February. */
function yearBefore(d: LocalDate): LocalDate {
  const day = d.month === 2 && d.day === 29 ? 28 : d.day
  return { year: d.year - 1, month: d.month, day }
}

/** The same wall-clock time a year before, in the zone. */
function instantYearBefore(ms: number, zone: string): number {
  const wall = new Date(ms + offsetMs(ms, zone))
  const date = yearBefore({
    year: wall.getUTCFullYear(),
    month: wall.getUTCMonth() + 1,
    day: wall.getUTCDate(),
  })
  const start = startOfLocalDay(date, zone)
  return start + (ms - startOfLocalDay(localDateOf(ms, zone), zone))
}

/**
 * The range `compare` compares with: previous_period is the range of the same length just before
 * (local days, or calendar months for month periods, or the same duration for instants);
 * year_over_year is the same local dates (or wall-clock instants) a year before.
 */
export function comparisonRange(r: ResolvedRange, mode: CompareMode, zone: string): TimeRange {
  const { fromMs, toMs } = r.range
  if (mode === 'previous_period') {
    if (r.days && r.months > 0) {
      const first = r.days.first
      const back = new Date(Date.UTC(first.year, first.month - 1 - r.months, 1))
      return {
        fromMs: startOfLocalDay({ year: back.getUTCFullYear(), month: back.getUTCMonth() + 1, day: 1 }, zone),
        toMs: fromMs,
      }
    }
    if (r.days) return { fromMs: startOfLocalDay(addDays(r.days.first, -r.days.count), zone), toMs: fromMs }
    return { fromMs: fromMs - (toMs - fromMs), toMs: fromMs }
  }
  if (r.days) {
    return {
      fromMs: startOfLocalDay(yearBefore(r.days.first), zone),
      toMs: startOfLocalDay(yearBefore(addDays(r.days.first, r.days.count)), zone),
    }
  }
  return { fromMs: instantYearBefore(fromMs, zone), toMs: instantYearBefore(toMs, zone) }
}

/** The `site` parameter (checked before the others: authorization needs it). */
export function siteParam(q: Raw): string {
  return required(q, 'site')
}

/** Parses the query string of `endpoint`; periods and dates are resolved in `zone` (the site's). */
export function parseQuery(
  endpoint: Endpoint,
  q: Raw,
  nowMs: number,
  limits: ParseLimits,
  zone: string = UTC,
): ParsedQuery {
  const allowed = ENDPOINT_PARAMS[endpoint]
  for (const name of Object.keys(q)) {
    if (!allowed.includes(name)) {
      throw badParameter(
        name,
        `${name} is not a parameter of ${endpoint}; it takes ${allowed.join(', ')}`,
        ERR.UNKNOWN_PARAMETER,
      )
    }
  }
  const siteId = required(q, 'site')
  const metricsRaw = single(q, 'metrics')
  const filters = parseFilters(single(q, 'filters'), limits.maxFilterValues)
  const propertyRaw = single(q, 'property')
  if (endpoint === 'breakdown' && (propertyRaw === undefined || propertyRaw === '')) {
    throw badParameter('property', 'property is required', ERR.MISSING_PARAMETER)
  }
  const property = propertyRaw === undefined ? undefined : parseProperty(propertyRaw, 'property')
  checkKept(limits.breakdowns, property, filters)
  const byVisits = isVisitDimension(property) || filters.some((f) => isVisitDimension(f.property))
  const underGoal = filters.some((f) => f.property === 'goal')
  // Without metrics: by entry or exit page, visits; under a goal filter, the goal rows' (exit page:
  // converters only; entry page: as any other dimension conversions are kept by).
  const exitPageAsked =
    property === GOAL_BY_EXIT_PAGE || filters.some((f) => f.property === GOAL_BY_EXIT_PAGE)
  const metrics =
    metricsRaw === undefined && byVisits
      ? underGoal
        ? exitPageAsked
          ? [...GOAL_BY_EXIT_PAGE_METRICS]
          : [...DEFAULT_METRICS]
        : [...ENTRY_EXIT_DEFAULT_METRICS]
      : parseMetrics(metricsRaw)
  // The export writes every column its rows hold: only its property matters.
  // Conversions by another dimension (core/aggregate/goals.ts `goal|DIM`): the goal rows' metrics.
  const goalBy =
    endpoint === 'breakdown' &&
    property !== undefined &&
    isGoalByDimension(property) &&
    filters.some((f) => f.property === 'goal')
  // Aggregate and timeseries of conversions by another dimension: goal==NAME and one filter on a
  // dimension conversions are kept by (query/stats.ts goalByFilter), the goal rows' metrics too.
  const goalByFiltered =
    (endpoint === 'aggregate' || endpoint === 'timeseries') &&
    filters.length === 2 &&
    filters.some((f) => f.property === 'goal') &&
    filters.some((f) => f.property !== 'goal' && isGoalByDimension(f.property))
  if (endpoint !== 'export')
    checkMetricsFor(
      metrics,
      goalBy || goalByFiltered
        ? ['goal']
        : [...(property ? [property] : []), ...filters.map((f) => f.property)],
    )
  if (
    ((goalBy && property === 'entry_page') ||
      (goalByFiltered && filters.some((f) => f.property === 'entry_page'))) &&
    metrics.includes('conversion_rate')
  )
    throw badParameter(
      'metrics',
      'conversion_rate by entry_page is not answered: entry_page rows count visits, not visitors (conversions and events by entry_page are)',
    )
  // Conversions by exit page (core/aggregate/goals.ts GOAL_BY_EXIT_PAGE): converters' registers only.
  const byExitPage =
    endpoint !== 'export' &&
    filters.some((f) => f.property === 'goal') &&
    (goalBy ? property === GOAL_BY_EXIT_PAGE : filters.some((f) => f.property === GOAL_BY_EXIT_PAGE))
  const exitPageOnly: readonly string[] = GOAL_BY_EXIT_PAGE_METRICS
  if (byExitPage && metrics.some((m) => !exitPageOnly.includes(m)))
    throw badParameter(
      'metrics',
      `conversions by exit_page answer ${GOAL_BY_EXIT_PAGE_METRICS.join(' and ')} only: they are counted once a visit has ended, as converters (HyperLogLog registers, which a replayed count cannot double), without completions (events) or pageviews, and exit_page rows count visits, not visitors (no conversion_rate)`,
    )
  if (endpoint !== 'export' && metrics.some(isGoalMetric)) {
    const byGoal =
      endpoint === 'breakdown' ? property === 'goal' || goalBy : filters.some((f) => f.property === 'goal')
    if (!byGoal)
      throw badParameter(
        'metrics',
        endpoint === 'breakdown'
          ? `${GOAL_METRICS.join(' and ')} are counted by goal: break down by property=goal, or filter on one with filters=goal==NAME and break down by ${GOAL_BY_NAMES.join(', ')}`
          : `${GOAL_METRICS.join(' and ')} are counted by goal: filter on one with filters=goal==NAME`,
        filters.some((f) => f.property === 'goal') ? ERR.FILTER_UNSUPPORTED : undefined,
      )
  }
  const intervalRaw = single(q, 'interval')
  const interval = intervalRaw === undefined ? undefined : oneOf('interval', intervalRaw, GRANULARITIES)
  const limit = integer('limit', single(q, 'limit'), limits.defaultLimit, 1, limits.maxLimit)
  const page = integer('page', single(q, 'page'), 1, 1, 100_000)
  const minutes = integer('minutes', single(q, 'minutes'), 5, 1, limits.maxRealtimeMinutes)
  const formatRaw = single(q, 'format')
  const format =
    endpoint === 'timeseries' || endpoint === 'breakdown'
      ? formatRaw === undefined
        ? 'json'
        : oneOf('format', formatRaw, STATS_FORMATS)
      : formatRaw === undefined
        ? 'ndjson'
        : oneOf('format', formatRaw, endpoint === 'export' ? AGGREGATE_EXPORT_FORMATS : EXPORT_FORMATS)
  const sketches = parseBoolean('sketches', single(q, 'sketches'))
  const visits = parseBoolean('visits', single(q, 'visits'))
  const resolved =
    endpoint === 'realtime'
      ? undefined
      : resolveRange(
          {
            period: single(q, 'period'),
            date: single(q, 'date'),
            from: single(q, 'from'),
            to: single(q, 'to'),
          },
          nowMs,
          zone,
        )
  const compareRaw = single(q, 'compare')
  const mode = compareRaw === undefined ? undefined : oneOf('compare', compareRaw, COMPARE_MODES)
  return {
    siteId,
    range: resolved?.range,
    interval: interval ?? resolved?.periodInterval,
    intervalGiven: interval !== undefined,
    metrics,
    filters,
    property,
    limit,
    page,
    minutes,
    format,
    sketches,
    visits,
    zone,
    localDays: resolved?.localDays ?? false,
    compare: mode && resolved ? { mode, range: comparisonRange(resolved, mode, zone) } : undefined,
  }
}
