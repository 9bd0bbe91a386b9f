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

function parseDay(raw: string, where: string): LocalDate {
  try {
    return parseLocalDate(raw.trim(), where)
  } catch {
    throw badParameter(where, `Failed to parse date argument \`${raw}\`: use YYYY-MM-DD`)
  }
}

const DAY_MS = 86_400_000

function dayNumber(d: LocalDate): number {
  return Date.UTC(d.year, d.month - 1, d.day) / DAY_MS
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
    throw badParameter(
      'period',
      `Error parsing \`period\` parameter: invalid period \`${periodRaw}\`; use ${PLAUSIBLE_PERIODS.join(', ')}`,
    )
  }
  let first: LocalDate
  let last: LocalDate
  if (period === 'custom') {
    const parts = (dateRaw ?? '').split(',')
    if (parts.length !== 2)
      throw badParameter(
        'date',
        'period=custom needs `date` as two dates joined with a comma: 2021-01-01,2021-01-31',
      )
    first = parseDay(parts[0]!, 'date')
    last = parseDay(parts[1]!, 'date')
    if (dayNumber(first) > dayNumber(last))
      throw badParameter('date', `the custom range ${dateRaw} ends before it starts`)
  } else {
    const ref = dateRaw === undefined ? localDateOf(nowMs, zone) : parseDay(dateRaw, 'date')
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

/** The previous period of the same length in local days, ending where `r` starts. */
export function previousPeriod(r: ResolvedPeriod, zone = UTC): TimeRange {
  return { fromMs: startOfLocalDay(addDays(r.first, -r.days), zone), toMs: r.fromMs }
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
