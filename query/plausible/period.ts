import { badParameter, type TimeRange, utcDate } from '../range.js'

/**
 * Plausible's periods as half-open ranges [fromMs, toMs): every one is whole days in `zone`
 * (default UTC). Relative to `date` (YYYY-MM-DD; default today in the zone):
 * `day` that day; `7d`, `30d` the 7 or 30 days ending with it; `month` its calendar month;
 * `6mo`, `12mo` the 6 or 12 calendar months ending with its month; `custom` with `date=A,B` the
 * days A through B inclusive.
 */
export const PLAUSIBLE_PERIODS = ['day', '7d', '30d', 'month', '6mo', '12mo', 'custom'] as const
export type PlausiblePeriod = (typeof PLAUSIBLE_PERIODS)[number]

export interface ResolvedPeriod extends TimeRange {
  period: PlausiblePeriod
  /** Calendar days of the range (in the zone). */
  days: number
}

interface Day {
  y: number
  m: number
  d: number
}

const DATE = /^(\d{4})-(\d{2})-(\d{2})$/

function parseDay(raw: string, where: string): Day {
  const m = DATE.exec(raw.trim())
  if (m) {
    const day = { y: Number(m[1]), m: Number(m[2]), d: Number(m[3]) }
    const check = new Date(utcDate(day.y, day.m - 1, day.d))
    if (check.getUTCMonth() === day.m - 1 && check.getUTCDate() === day.d) return day
  }
  throw badParameter(where, `Failed to parse date argument \`${raw}\`: use YYYY-MM-DD`)
}

/** The day `ms` falls on in `zone`. */
function dayIn(ms: number, zone: string): Day {
  const parts = new Intl.DateTimeFormat('en-CA', {
    timeZone: zone,
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
  }).formatToParts(new Date(ms))
  const get = (t: string) => Number(parts.find((p) => p.type === t)?.value)
  return { y: get('year'), m: get('month'), d: get('day') }
}

/** Offset of `zone` from UTC at `ms`, in ms. */
function offsetAt(ms: number, zone: string): number {
  if (zone === 'UTC') return 0
  const parts = new Intl.DateTimeFormat('en-US', {
    timeZone: zone,
    hourCycle: 'h23',
    year: 'numeric',
    month: 'numeric',
    day: 'numeric',
    hour: 'numeric',
    minute: 'numeric',
    second: 'numeric',
  }).formatToParts(new Date(ms))
  const get = (t: string) => Number(parts.find((p) => p.type === t)?.value)
  const local = Date.UTC(get('year'), get('month') - 1, get('day'), get('hour'), get('minute'), get('second'))
  return local - Math.floor(ms / 1000) * 1000
}

/** The instant midnight starts `day` (month and day roll over) in `zone`. */
function startOf(day: Day, zone: string): number {
  const naive = utcDate(day.y, day.m - 1, day.d)
  // Twice: the offset at the guess may differ from the offset at midnight across a DST change.
  const first = naive - offsetAt(naive, zone)
  return naive - offsetAt(first, zone)
}

function shift(day: Day, days: number, months = 0): Day {
  const t = new Date(utcDate(day.y, day.m - 1 + months, day.d + days))
  return { y: t.getUTCFullYear(), m: t.getUTCMonth() + 1, d: t.getUTCDate() }
}

const DAY_MS = 86_400_000

/**
 * The one place a Plausible period becomes a range. `zone` is the site's time zone (UTC until
 * sites have one).
 */
export function resolvePeriod(
  periodRaw: string | undefined,
  dateRaw: string | undefined,
  nowMs: number,
  zone = 'UTC',
): ResolvedPeriod {
  const period = (periodRaw ?? '30d') as PlausiblePeriod
  if (!PLAUSIBLE_PERIODS.includes(period)) {
    throw badParameter(
      'period',
      `Error parsing \`period\` parameter: invalid period \`${periodRaw}\`; use ${PLAUSIBLE_PERIODS.join(', ')}`,
    )
  }
  let first: Day
  let last: Day
  if (period === 'custom') {
    const parts = (dateRaw ?? '').split(',')
    if (parts.length !== 2)
      throw badParameter(
        'date',
        'period=custom needs `date` as two dates joined with a comma: 2021-01-01,2021-01-31',
      )
    first = parseDay(parts[0]!, 'date')
    last = parseDay(parts[1]!, 'date')
    if (utcDate(first.y, first.m - 1, first.d) > utcDate(last.y, last.m - 1, last.d))
      throw badParameter('date', `the custom range ${dateRaw} ends before it starts`)
  } else {
    const ref = dateRaw === undefined ? dayIn(nowMs, zone) : parseDay(dateRaw, 'date')
    last = ref
    if (period === 'day') first = ref
    else if (period === '7d') first = shift(ref, -6)
    else if (period === '30d') first = shift(ref, -29)
    else {
      const months = period === 'month' ? 0 : period === '6mo' ? 5 : 11
      first = shift({ ...ref, d: 1 }, 0, -months)
      last = shift({ ...ref, d: 1 }, -1, 1)
    }
  }
  const fromMs = startOf(first, zone)
  const toMs = startOf(shift(last, 1), zone)
  const days =
    Math.round((utcDate(last.y, last.m - 1, last.d) - utcDate(first.y, first.m - 1, first.d)) / DAY_MS) + 1
  return { period, fromMs, toMs, days }
}

/** The previous period of the same length in days, ending where `r` starts. */
export function previousPeriod(r: ResolvedPeriod, zone = 'UTC'): TimeRange {
  const firstDay = dayIn(r.fromMs, zone)
  return { fromMs: startOf(shift(firstDay, -r.days), zone), toMs: r.fromMs }
}

/** Months of a range, as [from, to) of each calendar month in `zone` (interval=month). */
export function monthsOf(r: TimeRange, zone = 'UTC'): Array<TimeRange & { date: string }> {
  const out: Array<TimeRange & { date: string }> = []
  let day = dayIn(r.fromMs, zone)
  day = { ...day, d: 1 }
  for (let start = startOf(day, zone); start < r.toMs; ) {
    const next = shift(day, 0, 1)
    const end = startOf(next, zone)
    out.push({
      date: `${day.y}-${String(day.m).padStart(2, '0')}-01`,
      fromMs: Math.max(start, r.fromMs),
      toMs: Math.min(end, r.toMs),
    })
    day = next
    start = end
  }
  return out
}
