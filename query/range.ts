import { type Granularity, windowMs } from '../core/aggregate/definition.js'
import { ERR } from '../core/error-codes.js'
import { TallyError } from '../core/errors.js'

/**
 * Time ranges of the query API: ISO 8601 instants, named periods, alignment to whole windows and
 * the split of a range into the coarsest windows that cover it exactly.
 *
 * Every range is half-open, [fromMs, toMs), in UTC.
 */

const DAY_MS = 86_400_000
const HOUR_MS = 3_600_000

export interface TimeRange {
  fromMs: number
  toMs: number
}

/** A 400 whose `where` is the parameter; the message names it too. */
export function badParameter(where: string, message: string, code: string = ERR.BAD_PARAMETER): TallyError {
  const named = message.includes(where) ? message : `${where}: ${message}`
  return new TallyError(code, named, { statusCode: 400, where })
}

const DATE_ONLY = /^(\d{4})-(\d{2})-(\d{2})$/
const DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})$/

/**
 * Date.UTC of a year, month index (rolls over like Date.UTC's) and day. Date.UTC reads years 0–99
 * as 1900–1999 (`0026-12-07` would be answered for 1926); setUTCFullYear takes the year as given.
 */
export function utcDate(year: number, monthIndex: number, day: number): number {
  const d = new Date(0)
  d.setUTCFullYear(year, monthIndex, day)
  return d.getTime()
}

function validDate(y: number, m: number, d: number): boolean {
  if (m < 1 || m > 12 || d < 1) return false
  return d <= new Date(utcDate(y, m, 0)).getUTCDate()
}

/**
 * Parses an ISO 8601 date (`2024-05-01`, a UTC day) or date-time with a zone (`2024-05-01T10:00Z`,
 * `…T10:00:00.000+02:00`). As an end (`to`), a date alone means the end of that day, so
 * `from=2024-05-01&to=2024-05-07` is seven whole days.
 */
export function parseInstant(raw: string, where: string, asEnd = false): number {
  const dateOnly = DATE_ONLY.exec(raw)
  if (dateOnly) {
    const [y, m, d] = [Number(dateOnly[1]), Number(dateOnly[2]), Number(dateOnly[3])]
    if (!validDate(y, m, d)) throw badParameter(where, `${where}=${raw} is not a valid date`)
    const start = utcDate(y, m - 1, d)
    return asEnd ? start + DAY_MS : start
  }
  const dt = DATE_TIME.exec(raw)
  if (!dt) {
    throw badParameter(
      where,
      `${where}=${raw} is not an ISO 8601 date (2024-05-01) or date-time with a zone (2024-05-01T10:00:00Z)`,
    )
  }
  const [y, mo, d, h, mi, s] = [1, 2, 3, 4, 5, 6].map((i) => Number(dt[i] ?? 0)) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ]
  if (!validDate(y, mo, d) || h > 23 || mi > 59 || s > 59) {
    throw badParameter(where, `${where}=${raw} is not a valid date-time`)
  }
  const ms = Date.parse(raw)
  if (!Number.isFinite(ms)) throw badParameter(where, `${where}=${raw} is not a valid date-time`)
  return ms
}

export function floorTo(ms: number, g: Granularity): number {
  const w = windowMs(g)
  return Math.floor(ms / w) * w
}

export function ceilTo(ms: number, g: Granularity): number {
  const w = windowMs(g)
  return Math.ceil(ms / w) * w
}

/** The range widened to whole windows of `g`. */
export function alignRange(range: TimeRange, g: Granularity): TimeRange {
  return { fromMs: floorTo(range.fromMs, g), toMs: ceilTo(range.toMs, g) }
}

function startOfMonth(ms: number, monthsBack = 0): number {
  const d = new Date(ms)
  return utcDate(d.getUTCFullYear(), d.getUTCMonth() - monthsBack, 1)
}

export interface PeriodRange extends TimeRange {
  /** The interval a timeseries of this period uses unless one is given. */
  interval: Granularity
}

/**
 * Periods, relative to the UTC day `refMs` (today unless `date` is given):
 * - `day`: that day; `Nd` (1–3660): the N days ending with that day;
 * - `Nh` (1–72): the N hours ending with the current hour (always relative to now);
 * - `month`: that calendar month; `Nmo` (1–120): the N calendar months ending with it;
 * - `year`: that calendar year.
 */
export function parsePeriod(raw: string, refMs: number, nowMs: number): PeriodRange {
  const day = floorTo(refMs, 'day')
  if (raw === 'day' || raw === 'today') return { fromMs: day, toMs: day + DAY_MS, interval: 'hour' }
  if (raw === 'month') return { fromMs: startOfMonth(day), toMs: startOfMonth(day, -1), interval: 'day' }
  if (raw === 'year') {
    const y = new Date(day).getUTCFullYear()
    return { fromMs: utcDate(y, 0, 1), toMs: utcDate(y + 1, 0, 1), interval: 'day' }
  }
  const m = /^([1-9]\d{0,3})(d|h|mo)$/.exec(raw)
  if (m) {
    const n = Number(m[1])
    if (m[2] === 'd' && n <= 3660) {
      return { fromMs: day - (n - 1) * DAY_MS, toMs: day + DAY_MS, interval: n <= 2 ? 'hour' : 'day' }
    }
    if (m[2] === 'h' && n <= 72) {
      const hour = floorTo(nowMs, 'hour')
      return { fromMs: hour - (n - 1) * HOUR_MS, toMs: hour + HOUR_MS, interval: n <= 3 ? 'minute' : 'hour' }
    }
    if (m[2] === 'mo' && n <= 120) {
      return { fromMs: startOfMonth(day, n - 1), toMs: startOfMonth(day, -1), interval: 'day' }
    }
  }
  throw badParameter(
    'period',
    `period=${raw} is not one of day, Nd (e.g. 7d, 30d), Nh (e.g. 24h), month, Nmo (e.g. 6mo, 12mo), year`,
  )
}

/** The interval a timeseries over a custom range uses unless one is given. */
export function defaultInterval(range: TimeRange): Granularity {
  return range.toMs - range.fromMs <= 2 * DAY_MS ? 'hour' : 'day'
}

/** A piece of a range read at one granularity: whole windows of it. */
export interface Segment extends TimeRange {
  granularity: Granularity
}

const FINE_TO_COARSE: readonly Granularity[] = ['minute', 'hour', 'day']

/**
 * Splits a range aligned to the finest of `allowed` into the fewest windows: whole days in the
 * middle, whole hours at the edges, minutes at the outer edges. Segments are in time order and
 * cover the range exactly, so summing counts and merging registers over them is exact.
 */
export function tile(range: TimeRange, allowed: readonly Granularity[]): Segment[] {
  const grains = FINE_TO_COARSE.filter((g) => allowed.includes(g))
  const finest = grains[0]
  if (finest === undefined) throw new RangeError('tile: no granularity allowed')
  if (range.fromMs % windowMs(finest) !== 0 || range.toMs % windowMs(finest) !== 0) {
    throw new RangeError(`tile: range is not aligned to ${finest} windows`)
  }
  const split = (from: number, to: number, level: number): Segment[] => {
    if (from >= to) return []
    const g = grains[level]!
    if (level === 0) return [{ granularity: g, fromMs: from, toMs: to }]
    const innerFrom = ceilTo(from, g)
    const innerTo = floorTo(to, g)
    if (innerFrom >= innerTo) return split(from, to, level - 1)
    return [
      ...split(from, innerFrom, level - 1),
      { granularity: g, fromMs: innerFrom, toMs: innerTo },
      ...split(innerTo, to, level - 1),
    ]
  }
  return split(range.fromMs, range.toMs, grains.length - 1)
}

/** Windows a segment list reads. */
export function windowCount(segments: readonly Segment[]): number {
  return segments.reduce((n, s) => n + (s.toMs - s.fromMs) / windowMs(s.granularity), 0)
}

export function iso(ms: number): string {
  return new Date(ms).toISOString()
}
