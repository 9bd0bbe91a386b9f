import type { Granularity } from '../core/aggregate/definition.js'
import { windowMs } from '../core/aggregate/definition.js'
import { ERR } from '../core/error-codes.js'
import { TallyError } from '../core/errors.js'
import { badParameter, floorTo, type PeriodRange, parsePeriod, type TimeRange, utcDate } from './range.js'

/**
 * Site time zones: local calendar dates in an IANA zone, the UTC instants their days start at, and
 * the named periods of the query API resolved in a zone. Offsets come from Intl (the ICU time-zone
 * data Node ships), so daylight-saving transitions are those of the tz database.
 *
 * A zone of `UTC` (a site without a zone) resolves exactly as query/range.ts parsePeriod does.
 */

export const UTC = 'UTC'

/** A calendar date; month 1–12. */
export interface LocalDate {
  year: number
  month: number
  day: number
}

const IANA_NAME = /^[A-Za-z][A-Za-z0-9_+-]*(\/[A-Za-z0-9_+-]+){0,2}$/

/**
 * The IANA name `raw` checked with Intl, in its usual case (`europe/berlin` → `Europe/Berlin`);
 * UTC's aliases are `UTC`;
 * TALLY_ERR_BAD_TIMEZONE otherwise. Offsets such as `+05:30` are refused: a site's zone has rules.
 */
export function canonicalZone(raw: string, where = 'timezone'): string {
  if (!IANA_NAME.test(raw) || raw.length > 64) {
    throw new TallyError(
      ERR.BAD_TIMEZONE,
      `${where}: ${JSON.stringify(raw)} is not an IANA time zone name (e.g. Europe/Berlin, America/New_York, UTC)`,
      { where, statusCode: 400 },
    )
  }
  try {
    const resolved = new Intl.DateTimeFormat('en-US', { timeZone: raw }).resolvedOptions().timeZone
    if (['UTC', 'Etc/UTC', 'Etc/GMT', 'GMT', 'Etc/Universal', 'Etc/Zulu'].includes(resolved)) return UTC
    // ICU answers some links by their old names (Asia/Kolkata → Asia/Calcutta): the name given is
    // kept, in ICU's spelling when only the case differs.
    return resolved.toLowerCase() === raw.toLowerCase() ? resolved : raw
  } catch (cause) {
    throw new TallyError(
      ERR.BAD_TIMEZONE,
      `${where}: ${raw} is not a time zone this runtime knows (IANA names such as Europe/Berlin, America/New_York, UTC)`,
      { where, statusCode: 400, cause },
    )
  }
}

const formatters = new Map<string, Intl.DateTimeFormat>()

function formatter(zone: string): Intl.DateTimeFormat {
  let f = formatters.get(zone)
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone: zone,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    })
    // Bounded by the zones in use (a few hundred names exist).
    if (formatters.size < 1000) formatters.set(zone, f)
  }
  return f
}

/** The zone's wall clock at `ms`, as the UTC instant with the same fields (seconds precision). */
function wallClock(ms: number, zone: string): number {
  const parts: Record<string, number> = {}
  for (const p of formatter(zone).formatToParts(new Date(ms))) {
    if (p.type !== 'literal') parts[p.type] = Number(p.value)
  }
  const d = new Date(0)
  d.setUTCFullYear(parts.year!, parts.month! - 1, parts.day!)
  d.setUTCHours(parts.hour!, parts.minute!, parts.second!, 0)
  return d.getTime()
}

/** The zone's offset from UTC at `ms`, in ms (local = UTC + offset). */
export function offsetMs(ms: number, zone: string): number {
  if (zone === UTC) return 0
  const whole = Math.floor(ms / 1000) * 1000
  return wallClock(whole, zone) - whole
}

/** The local calendar date at instant `ms`. */
export function localDateOf(ms: number, zone: string): LocalDate {
  const d = new Date(ms + offsetMs(ms, zone))
  return { year: d.getUTCFullYear(), month: d.getUTCMonth() + 1, day: d.getUTCDate() }
}

/** The date `n` days after `date` (negative: before). */
export function addDays(date: LocalDate, n: number): LocalDate {
  const d = new Date(utcDate(date.year, date.month - 1, date.day + n))
  return { year: d.getUTCFullYear(), month: d.getUTCMonth() + 1, day: d.getUTCDate() }
}

/** The first day of the month `n` months after the month of `date`. */
export function addMonths(date: LocalDate, n: number): LocalDate {
  const d = new Date(utcDate(date.year, date.month - 1 + n, 1))
  return { year: d.getUTCFullYear(), month: d.getUTCMonth() + 1, day: 1 }
}

function compareDates(a: LocalDate, b: LocalDate): number {
  return a.year - b.year || a.month - b.month || a.day - b.day
}

const MAX_OFFSET_MS = 18 * 3_600_000

/**
 * The UTC instant the local day `date` starts at in `zone`: local midnight, or, where midnight
 * falls in a daylight-saving gap, the first instant of that date. Where midnight happens twice,
 * the first.
 */
export function startOfLocalDay(date: LocalDate, zone: string): number {
  const wall = utcDate(date.year, date.month - 1, date.day)
  if (zone === UTC) return wall
  // Local midnight = wall − offset, for the offset in force then: try the offsets around it.
  const candidates = new Set([
    offsetMs(wall - MAX_OFFSET_MS, zone),
    offsetMs(wall, zone),
    offsetMs(wall + MAX_OFFSET_MS, zone),
  ])
  let best: number | undefined
  for (const o of candidates) {
    const t = wall - o
    if (offsetMs(t, zone) === o && (best === undefined || t < best)) best = t
  }
  if (best !== undefined) return best
  // Midnight does not exist: the day starts at the transition, the first instant of that date.
  let lo = wall - MAX_OFFSET_MS
  let hi = wall + MAX_OFFSET_MS
  while (hi - lo > 1000) {
    const mid = Math.floor((lo + hi) / 2000) * 1000
    if (compareDates(localDateOf(mid, zone), date) >= 0) hi = mid
    else lo = mid
  }
  return hi
}

/** Parses `YYYY-MM-DD` as a local date (`where` names the parameter in the error). */
export function parseLocalDate(raw: string, where: string): LocalDate {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(raw)
  const date = m ? { year: Number(m[1]), month: Number(m[2]), day: Number(m[3]) } : undefined
  if (
    !date ||
    date.month < 1 ||
    date.month > 12 ||
    date.day < 1 ||
    compareDates(addDays(date, 0), date) !== 0
  ) {
    throw badParameter(where, `${where}=${raw} is not a valid date (YYYY-MM-DD)`)
  }
  return date
}

/** `YYYY-MM-DD`. */
export function formatLocalDate(d: LocalDate): string {
  return `${String(d.year).padStart(4, '0')}-${String(d.month).padStart(2, '0')}-${String(d.day).padStart(2, '0')}`
}

/**
 * The instant `ms` as ISO 8601 in the zone's local time with its offset
 * (`2026-03-08T00:00:00.000-05:00`); in UTC exactly Date.toISOString (`…Z`).
 */
export function formatInZone(ms: number, zone: string): string {
  const o = offsetMs(ms, zone)
  if (o === 0 && zone === UTC) return new Date(ms).toISOString()
  const local = new Date(ms + o).toISOString().slice(0, -1)
  const abs = Math.abs(o) / 60_000
  const sign = o < 0 ? '-' : '+'
  return `${local}${sign}${String(Math.floor(abs / 60)).padStart(2, '0')}:${String(abs % 60).padStart(2, '0')}`
}

/** What a period resolves to in a zone: the range, its default interval and its local dates. */
export interface ZonedPeriod extends PeriodRange {
  /** First local day of the range; undefined for `Nh` periods (hours relative to now). */
  firstDay: LocalDate | undefined
  /** Local days in the range; 0 for `Nh`. */
  days: number
  /** `month`, `Nmo` and `year` are whole calendar months: their previous period is months too. */
  months: number
}

/**
 * Resolves a named period (query/range.ts parsePeriod's names: `day`, `Nd`, `Nh`, `month`, `Nmo`,
 * `year`) in `zone`, relative to the local date `ref` (default: today in the zone). Day edges are
 * the zone's local midnights, so a day holds 23 or 25 hours across a daylight-saving change. In
 * UTC the ranges are parsePeriod's.
 */
export function resolvePeriod(raw: string, zone: string, nowMs: number, ref?: LocalDate): ZonedPeriod {
  const today = ref ?? localDateOf(nowMs, zone)
  const day = (d: LocalDate) => startOfLocalDay(d, zone)
  const days = (first: LocalDate, n: number, interval: Granularity): ZonedPeriod => ({
    fromMs: day(first),
    toMs: day(addDays(first, n)),
    interval,
    firstDay: first,
    days: n,
    months: 0,
  })
  const months = (first: LocalDate, n: number): ZonedPeriod => {
    const end = addMonths(first, n)
    return {
      fromMs: day(first),
      toMs: day(end),
      interval: 'day',
      firstDay: first,
      days: Math.round(
        (utcDate(end.year, end.month - 1, 1) - utcDate(first.year, first.month - 1, 1)) / DAY_MS,
      ),
      months: n,
    }
  }
  if (raw === 'day' || raw === 'today') return days(today, 1, 'hour')
  if (raw === 'month') return months(addMonths(today, 0), 1)
  if (raw === 'year') return months({ year: today.year, month: 1, day: 1 }, 12)
  const m = /^([1-9]\d{0,3})(d|h|mo)$/.exec(raw)
  if (m) {
    const n = Number(m[1])
    if (m[2] === 'd' && n <= 3660) return days(addDays(today, -(n - 1)), n, n <= 2 ? 'hour' : 'day')
    if (m[2] === 'mo' && n <= 120) return months(addMonths(today, -(n - 1)), n)
  }
  // `Nh` (hours ending with the current one, the same in every zone), or parsePeriod's refusal.
  return { ...parsePeriod(raw, nowMs, nowMs), firstDay: undefined, days: 0, months: 0 }
}

const DAY_MS = 86_400_000

/** The local dates of a range's local days: [first day, day after the last), widened to whole days. */
export function localDays(range: TimeRange, zone: string): { first: LocalDate; count: number } {
  const first = localDateOf(range.fromMs, zone)
  let last = localDateOf(range.toMs - 1, zone)
  if (compareDates(last, first) < 0) last = first
  const count = Math.round(
    (utcDate(last.year, last.month - 1, last.day) - utcDate(first.year, first.month - 1, first.day)) / DAY_MS,
  )
  return { first, count: count + 1 }
}

/** The starts of the local days of a range widened to whole local days, plus the end: n + 1 edges. */
export function localDayEdges(range: TimeRange, zone: string): number[] {
  const { first, count } = localDays(range, zone)
  const edges: number[] = []
  for (let i = 0; i <= count; i++) edges.push(startOfLocalDay(addDays(first, i), zone))
  return edges
}

/** True when the zone's offset is a whole number of hours at every instant of the range's edges. */
export function wholeHourOffsets(edges: readonly number[]): boolean {
  return edges.every((e) => e % 3_600_000 === 0)
}

/**
 * An edge moved onto a window boundary that can still be read. Near a boundary the tiling
 * (query/range.ts tile) reads windows of the coarsest allowed granularity that divides it; when
 * those are no longer kept (`keptSince(g)`: the oldest window start still kept, −Infinity =
 * forever), the edge is floored to the next coarser granularity (hour, then day). `rounded` names
 * the granularity it was floored to; undefined when the edge is unchanged.
 */
export function roundEdge(
  edgeMs: number,
  allowed: readonly Granularity[],
  keptSince: (g: Granularity) => number,
): { edgeMs: number; rounded: Granularity | undefined } {
  const grains = (['minute', 'hour', 'day'] as const).filter((g) => allowed.includes(g))
  for (const [i, g] of grains.entries()) {
    const at = floorTo(edgeMs, g)
    const needs = [...grains].reverse().find((c) => at % windowMs(c) === 0) ?? g
    if (at >= keptSince(needs) || i === grains.length - 1)
      return { edgeMs: at, rounded: at === edgeMs ? undefined : g }
  }
  throw new RangeError('roundEdge: no granularity allowed')
}
