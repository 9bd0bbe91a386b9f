import { badParameter, type TimeRange } from '../range.js'
import {
  addDays,
  addMonths,
  type LocalDate,
  localDateOf,
  parseLocalDate,
  startOfLocalDay,
  UTC,
} from '../zone.js'
import { PLAUSIBLE_DOCS, plausibleError } from './properties.js'

/**
 * Plausible's periods as half-open ranges [fromMs, toMs): every one is whole local days of the
 * site's zone (query/zone.ts: days start at local midnight, 23 or 25 hours across a daylight-saving
 * change). Relative to `date` (YYYY-MM-DD; default today in the zone):
 * `day` that day; `7d`, `30d` the 7 or 30 days ending with it; `month` its calendar month;
 * `6mo`, `12mo` the 6 or 12 calendar months ending with its month; `custom` with `date=A,B` the
 * days A through B inclusive.
 */
export const PLAUSIBLE_PERIODS = ['day', '7d', '30d', 'month', '6mo', '12mo', 'custom'] as const
export type PlausiblePeriod = (typeof PLAUSIBLE_PERIODS)[number]

/** A range of whole local days: its first and last day (inclusive) and their instants. */
export interface LocalSpan extends TimeRange {
  first: LocalDate
  last: LocalDate
}

export interface ResolvedPeriod extends LocalSpan {
  period: PlausiblePeriod
  /** Calendar days of the range (in the zone). */
  days: number
}

/**
 * A `date` as Plausible reads it (Elixir's Date.from_iso8601), with its message: `invalid_format`
 * for what is no YYYY-MM-DD, `invalid_date` for a day the month does not have.
 */
function parseDay(raw: string): LocalDate {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(raw.trim()))
    throw plausibleError(
      'date',
      'Error parsing `date` parameter: invalid_format. Please specify a valid date in ISO-8601 format.',
    )
  try {
    return parseLocalDate(raw.trim(), 'date')
  } catch {
    throw plausibleError(
      'date',
      'Error parsing `date` parameter: invalid_date. Please specify a valid date in ISO-8601 format.',
    )
  }
}

const DAY_MS = 86_400_000

function dayNumber(d: LocalDate): number {
  return Date.UTC(d.year, d.month - 1, d.day) / DAY_MS
}

function parseCustomDay(raw: string): LocalDate | undefined {
  try {
    return parseLocalDate(raw.trim(), 'date')
  } catch {
    return undefined
  }
}

/** The span of local days `first` through `last` in `zone`. */
export function spanOf(first: LocalDate, last: LocalDate, zone: string): LocalSpan {
  return { first, last, fromMs: startOfLocalDay(first, zone), toMs: startOfLocalDay(addDays(last, 1), zone) }
}

/** The one place a Plausible period becomes a range; `zone` is the site's time zone. */
export function resolvePeriod(
  periodRaw: string | undefined,
  dateRaw: string | undefined,
  nowMs: number,
  zone = UTC,
): ResolvedPeriod {
  const period = (periodRaw ?? '30d') as PlausiblePeriod
  if (!PLAUSIBLE_PERIODS.includes(period)) {
    throw plausibleError(
      'period',
      `Error parsing \`period\` parameter: invalid period \`${periodRaw}\`. Please find accepted values in our docs: ${PLAUSIBLE_DOCS}#time-periods`,
    )
  }
  let first: LocalDate
  let last: LocalDate
  if (period === 'custom') {
    if (dateRaw === undefined)
      throw plausibleError(
        'date',
        `The \`date\` parameter is required when using a custom period. See ${PLAUSIBLE_DOCS}#time-periods`,
      )
    const parts = dateRaw.split(',')
    const days = parts.length === 2 ? parts.map((p) => parseCustomDay(p)) : []
    if (days.length !== 2 || days.includes(undefined))
      throw plausibleError(
        'date',
        `Invalid format for \`date\` parameter. When using a custom period, please include two ISO-8601 formatted dates joined by a comma. See ${PLAUSIBLE_DOCS}#time-periods`,
      )
    first = days[0]!
    last = days[1]!
    if (dayNumber(first) > dayNumber(last))
      throw badParameter('date', `the custom range ${dateRaw} ends before it starts`)
  } else {
    const ref = dateRaw === undefined ? localDateOf(nowMs, zone) : parseDay(dateRaw)
    last = ref
    if (period === 'day') first = ref
    else if (period === '7d') first = addDays(ref, -6)
    else if (period === '30d') first = addDays(ref, -29)
    else {
      const months = period === 'month' ? 0 : period === '6mo' ? 5 : 11
      first = addMonths(ref, -months)
      last = addDays(addMonths(ref, 1), -1)
    }
  }
  return { period, ...spanOf(first, last, zone), days: dayNumber(last) - dayNumber(first) + 1 }
}

/**
 * The previous period, as Plausible's `previous_period` (its `Stats.Comparisons`): as many local
 * days as `r` has up to today (`nowMs` in `zone`; all of them for a period in the past), ending
 * where `r` starts. So `month` on the 20th is compared with the 20 days before the 1st, not with a
 * whole month of days.
 */
export function previousPeriod(r: ResolvedPeriod, zone = UTC, nowMs = Number.POSITIVE_INFINITY): TimeRange {
  const today = Number.isFinite(nowMs) ? localDateOf(nowMs, zone) : r.last
  const last = dayNumber(today) < dayNumber(r.last) ? today : r.last
  // A period that starts after today: one day, as Plausible's range of last − first + 1 days is then 1 or less.
  const days = Math.max(1, dayNumber(last) - dayNumber(r.first) + 1)
  return { fromMs: startOfLocalDay(addDays(r.first, -days), zone), toMs: r.fromMs }
}

/** Months of a range, as the local days of each calendar month in `zone` within it (interval=month). */
export function monthsOf(r: LocalSpan, zone = UTC): Array<LocalSpan & { date: string }> {
  const out: Array<LocalSpan & { date: string }> = []
  for (
    let month = addMonths(r.first, 0);
    dayNumber(month) <= dayNumber(r.last);
    month = addMonths(month, 1)
  ) {
    const first = dayNumber(month) < dayNumber(r.first) ? r.first : month
    const end = addDays(addMonths(month, 1), -1)
    const last = dayNumber(end) > dayNumber(r.last) ? r.last : end
    out.push({
      date: `${month.year}-${String(month.month).padStart(2, '0')}-01`,
      ...spanOf(first, last, zone),
    })
  }
  return out
}
