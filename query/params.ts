import {
  DIMENSIONS,
  GRANULARITIES,
  type Granularity,
  type RowDimension,
  SESSION_DIMENSIONS,
  VISIT_DIMENSIONS,
} from '../core/aggregate/definition.js'
import { isPropDimension } from '../core/aggregate/props.js'
import { ERR } from '../core/error-codes.js'
import { badParameter, parseInstant, parsePeriod, type TimeRange } from './range.js'

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
] as const
export type Metric = (typeof METRICS)[number]
export const DEFAULT_METRICS: readonly Metric[] = ['visitors', 'pageviews', 'events']

/**
 * Metrics of visits (core/aggregate/visits.ts): `visits`; `bounce_rate`, percent of the visits
 * that bounced; `visit_duration`, mean seconds; `views_per_visit`, pageviews of the visits per
 * visit. Computed when read from stored counts and sums.
 */
export const VISIT_METRICS = ['visits', 'bounce_rate', 'visit_duration', 'views_per_visit'] as const
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

const RANGE_PARAMS = ['period', 'date', 'from', 'to'] as const

/** The parameters each endpoint takes; anything else is refused (it is usually a typo). */
export const ENDPOINT_PARAMS: Readonly<Record<Endpoint, readonly string[]>> = {
  aggregate: ['site', ...RANGE_PARAMS, 'metrics', 'filters'],
  timeseries: ['site', ...RANGE_PARAMS, 'interval', 'metrics', 'filters'],
  breakdown: ['site', ...RANGE_PARAMS, 'property', 'metrics', 'filters', 'limit', 'page'],
  realtime: ['site', 'metrics', 'minutes'],
  export: ['site', ...RANGE_PARAMS, 'interval', 'property', 'format', 'sketches', 'visits'],
  /** Raw-event export (/v1/export/events). */
  events: ['site', ...RANGE_PARAMS, 'format'],
}

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
  format: ExportFormat
  sketches: boolean
  /** Export: rows carry the visit columns (`visits=true`). */
  visits: boolean
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
  if (!(PROPERTIES as readonly string[]).includes(raw)) {
    throw badParameter(
      where,
      `unknown property ${raw}: use ${PROPERTIES.join(', ')} or prop:KEY (a declared custom property)`,
    )
  }
  return raw as RowDimension
}

/**
 * Refuses metrics the rows of the properties asked for do not hold, naming what they do: visit
 * metrics exist by the session dimensions and entry/exit pages (not by event or path, whose rows
 * count events), and entry_page/exit_page rows hold visit metrics only.
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
    } else if (!VISIT_PROPERTIES.includes(p)) {
      const bad = metrics.filter(isVisitMetric)
      if (bad.length > 0)
        throw badParameter(
          'metrics',
          `visit metrics (${bad.join(', ')}) are counted by ${VISIT_PROPERTIES.join(', ')}, not by ${p}`,
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

function parseRange(q: Raw, nowMs: number): { range: TimeRange; periodInterval: Granularity | undefined } {
  const from = single(q, 'from')
  const to = single(q, 'to')
  const period = single(q, 'period')
  const date = single(q, 'date')
  if (from !== undefined || to !== undefined) {
    if (period !== undefined) throw badParameter('period', 'give either period or from and to, not both')
    if (date !== undefined) throw badParameter('date', 'date goes with period, not with from and to')
    if (from === undefined) throw badParameter('from', 'from is required with to', ERR.MISSING_PARAMETER)
    if (to === undefined) throw badParameter('to', 'to is required with from', ERR.MISSING_PARAMETER)
    const fromMs = parseInstant(from, 'from')
    const toMs = parseInstant(to, 'to', true)
    if (fromMs >= toMs) throw badParameter('from', `from (${from}) is not before to (${to})`)
    return { range: { fromMs, toMs }, periodInterval: undefined }
  }
  const refMs = date === undefined ? nowMs : parseInstant(date, 'date')
  const p = parsePeriod(period ?? '30d', refMs, nowMs)
  return { range: { fromMs: p.fromMs, toMs: p.toMs }, periodInterval: p.interval }
}

/** The `site` parameter (checked before the others: authorization needs it). */
export function siteParam(q: Raw): string {
  return required(q, 'site')
}

/** Parses the query string of `endpoint`. */
export function parseQuery(endpoint: Endpoint, q: Raw, nowMs: number, limits: ParseLimits): ParsedQuery {
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
  const byVisits = isVisitDimension(property) || filters.some((f) => isVisitDimension(f.property))
  const metrics =
    metricsRaw === undefined && byVisits ? [...ENTRY_EXIT_DEFAULT_METRICS] : parseMetrics(metricsRaw)
  // The export writes every column its rows hold: only its property matters.
  if (endpoint !== 'export')
    checkMetricsFor(metrics, [...(property ? [property] : []), ...filters.map((f) => f.property)])
  const intervalRaw = single(q, 'interval')
  const interval = intervalRaw === undefined ? undefined : oneOf('interval', intervalRaw, GRANULARITIES)
  const limit = integer('limit', single(q, 'limit'), limits.defaultLimit, 1, limits.maxLimit)
  const page = integer('page', single(q, 'page'), 1, 1, 100_000)
  const minutes = integer('minutes', single(q, 'minutes'), 5, 1, limits.maxRealtimeMinutes)
  const formatRaw = single(q, 'format')
  const format = formatRaw === undefined ? 'ndjson' : oneOf('format', formatRaw, EXPORT_FORMATS)
  const sketches = parseBoolean('sketches', single(q, 'sketches'))
  const visits = parseBoolean('visits', single(q, 'visits'))
  const resolved = endpoint === 'realtime' ? undefined : parseRange(q, nowMs)
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
  }
}
