import { describe, expect, it } from 'vitest'
import { comparisonRange, parseQuery, resolveRange } from '../../query/params.js'
import { parsePeriod, utcDate } from '../../query/range.js'
import { DEFAULT_QUERY_LIMITS } from '../../query/stats.js'
import {
  canonicalZone,
  formatInZone,
  localDayEdges,
  resolvePeriod,
  roundEdge,
  startOfLocalDay,
} from '../../query/zone.js'

/**
 * Truth computed apart from query/zone.ts: the local date of an instant read from
 * Intl.DateTimeFormat's en-CA rendering (YYYY-MM-DD), and the start of a local day found by
 * walking minute by minute over the 48 hours around it.
 */
function localDateTruth(ms: number, zone: string): string {
  return new Intl.DateTimeFormat('en-CA', {
    timeZone: zone,
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
  }).format(new Date(ms))
}

function dayStartTruth(date: string, zone: string): number {
  const noon = Date.parse(`${date}T12:00:00Z`)
  let t = noon - 36 * 3_600_000
  // Every offset and transition of these zones is on a quarter hour.
  while (localDateTruth(t, zone) < date) t += 15 * 60_000
  return t
}

const HOUR = 3_600_000
const d = (s: string) => ({
  year: Number(s.slice(0, 4)),
  month: Number(s.slice(5, 7)),
  day: Number(s.slice(8, 10)),
})

const CASES: Array<[zone: string, date: string, hours: number]> = [
  ['America/New_York', '2026-03-07', 24],
  ['America/New_York', '2026-03-08', 23], // spring forward: 02:00 → 03:00
  ['America/New_York', '2026-03-09', 24],
  ['Europe/Berlin', '2026-10-24', 24],
  ['Europe/Berlin', '2026-10-25', 25], // fall back: 03:00 → 02:00
  ['Europe/Berlin', '2026-10-26', 24],
  ['Asia/Kolkata', '2026-03-08', 24],
  ['Asia/Kathmandu', '2026-10-25', 24],
  ['UTC', '2026-03-08', 24],
  ['America/Santiago', '2026-09-06', 23], // midnight itself does not exist (00:00 → 01:00)
]

describe('site time zones (query/zone.ts)', () => {
  it.each(CASES)('%s: the day %s starts at local midnight and lasts %i hours', (zone, date, hours) => {
    const start = startOfLocalDay(d(date), zone)
    expect(start).toBe(dayStartTruth(date, zone))
    const next = new Date(Date.parse(`${date}T00:00:00Z`) + 86_400_000).toISOString().slice(0, 10)
    const end = startOfLocalDay(d(next), zone)
    expect(end).toBe(dayStartTruth(next, zone))
    expect((end - start) / HOUR).toBe(hours)
    expect(localDateTruth(start, zone)).toBe(date)
    expect(localDateTruth(start - 1, zone)).not.toBe(date)
  })

  it('resolves periods to local days across daylight-saving changes (each edge a local midnight)', () => {
    const now = Date.parse('2026-03-10T15:00:00Z')
    const ny = resolvePeriod('7d', 'America/New_York', now)
    expect(ny.fromMs).toBe(dayStartTruth('2026-03-04', 'America/New_York'))
    expect(ny.toMs).toBe(dayStartTruth('2026-03-11', 'America/New_York'))
    expect((ny.toMs - ny.fromMs) / HOUR).toBe(7 * 24 - 1)
    const berlin = resolvePeriod('month', 'Europe/Berlin', now, d('2026-10-15'))
    expect([berlin.fromMs, berlin.toMs]).toEqual([
      dayStartTruth('2026-10-01', 'Europe/Berlin'),
      dayStartTruth('2026-11-01', 'Europe/Berlin'),
    ])
    expect((berlin.toMs - berlin.fromMs) / HOUR).toBe(31 * 24 + 1)
    const kolkata = resolvePeriod('day', 'Asia/Kolkata', now)
    expect(kolkata.fromMs).toBe(dayStartTruth(localDateTruth(now, 'Asia/Kolkata'), 'Asia/Kolkata'))
    expect(new Date(kolkata.fromMs).toISOString()).toMatch(/T18:30:00.000Z$/)
    const kathmandu = resolvePeriod('day', 'Asia/Kathmandu', now)
    expect(new Date(kathmandu.fromMs).toISOString()).toMatch(/T18:15:00.000Z$/)
  })

  it('gives in UTC exactly the ranges periods always had', () => {
    const now = Date.parse('2026-12-07T10:56:00Z')
    for (const period of [
      'day',
      'today',
      '1d',
      '2d',
      '7d',
      '30d',
      '3660d',
      'month',
      '6mo',
      '12mo',
      'year',
      '24h',
      '3h',
    ]) {
      for (const ref of ['2026-12-07', '2024-02-29', '2026-01-01', '2025-03-31']) {
        const r = resolvePeriod(period, 'UTC', now, d(ref))
        const p = parsePeriod(period, /^\d+h$/.test(period) ? now : Date.parse(`${ref}T00:00:00Z`), now)
        expect([period, ref, r.fromMs, r.toMs, r.interval]).toEqual([
          period,
          ref,
          p.fromMs,
          p.toMs,
          p.interval,
        ])
      }
    }
    const q = parseQuery(
      'aggregate',
      { site: 's', from: '2026-03-01', to: '2026-03-07' },
      now,
      DEFAULT_QUERY_LIMITS,
    )
    expect(q.range).toEqual({ fromMs: utcDate(2026, 2, 1), toMs: utcDate(2026, 2, 8) })
  })

  it('reads from/to dates as local days, instants as given', () => {
    const now = Date.parse('2026-12-07T10:56:00Z')
    const local = resolveRange({ from: '2026-03-08', to: '2026-03-08' }, now, 'America/New_York')
    expect(local.range).toEqual({
      fromMs: dayStartTruth('2026-03-08', 'America/New_York'),
      toMs: dayStartTruth('2026-03-09', 'America/New_York'),
    })
    const instants = resolveRange(
      { from: '2026-03-08T10:00:00Z', to: '2026-03-08T12:00:00Z' },
      now,
      'Asia/Kolkata',
    )
    expect(instants.range).toEqual({
      fromMs: Date.parse('2026-03-08T10:00:00Z'),
      toMs: Date.parse('2026-03-08T12:00:00Z'),
    })
    expect(instants.localDays).toBe(false)
  })

  it('compares with the previous local days, the previous months, or the same dates a year before', () => {
    const now = Date.parse('2026-03-10T15:00:00Z')
    const zone = 'America/New_York'
    const week = resolveRange({ period: '7d', date: '2026-03-10' }, now, zone)
    expect(comparisonRange(week, 'previous_period', zone)).toEqual({
      fromMs: dayStartTruth('2026-02-25', zone),
      toMs: dayStartTruth('2026-03-04', zone),
    })
    const month = resolveRange({ period: 'month', date: '2026-03-10' }, now, zone)
    expect(comparisonRange(month, 'previous_period', zone)).toEqual({
      fromMs: dayStartTruth('2026-02-01', zone),
      toMs: dayStartTruth('2026-03-01', zone),
    })
    expect(comparisonRange(week, 'year_over_year', zone)).toEqual({
      fromMs: dayStartTruth('2025-03-04', zone),
      toMs: dayStartTruth('2025-03-11', zone),
    })
    const leap = resolveRange({ period: 'day', date: '2028-02-29' }, now, 'Asia/Kolkata')
    expect(comparisonRange(leap, 'year_over_year', 'Asia/Kolkata')).toEqual({
      fromMs: dayStartTruth('2027-02-28', 'Asia/Kolkata'),
      toMs: dayStartTruth('2027-03-01', 'Asia/Kolkata'),
    })
    const instants = resolveRange({ from: '2026-03-08T10:00:00Z', to: '2026-03-08T13:00:00Z' }, now, 'UTC')
    expect(comparisonRange(instants, 'previous_period', 'UTC')).toEqual({
      fromMs: Date.parse('2026-03-08T07:00:00Z'),
      toMs: Date.parse('2026-03-08T10:00:00Z'),
    })
  })

  it('labels instants in the local time with the offset (UTC as before)', () => {
    const t = Date.parse('2026-03-08T05:00:00Z')
    expect(formatInZone(t, 'America/New_York')).toBe('2026-03-08T00:00:00.000-05:00')
    expect(formatInZone(Date.parse('2026-03-08T18:30:00Z'), 'Asia/Kolkata')).toBe(
      '2026-03-09T00:00:00.000+05:30',
    )
    expect(formatInZone(Date.parse('2026-03-08T18:15:00Z'), 'Asia/Kathmandu')).toBe(
      '2026-03-09T00:00:00.000+05:45',
    )
    expect(formatInZone(t, 'UTC')).toBe(new Date(t).toISOString())
  })

  it('lists the local day edges of a range, widened to whole days', () => {
    const zone = 'Europe/Berlin'
    const edges = localDayEdges(
      { fromMs: Date.parse('2026-10-24T10:00:00Z'), toMs: Date.parse('2026-10-26T10:00:00Z') },
      zone,
    )
    expect(edges).toEqual(
      ['2026-10-24', '2026-10-25', '2026-10-26', '2026-10-27'].map((x) => dayStartTruth(x, zone)),
    )
  })

  it('floors an edge to a readable window boundary only where its windows are gone', () => {
    const kolkata = dayStartTruth('2026-03-09', 'Asia/Kolkata')
    const forever = () => Number.NEGATIVE_INFINITY
    expect(roundEdge(kolkata, ['minute', 'hour', 'day'], forever)).toEqual({
      edgeMs: kolkata,
      rounded: undefined,
    })
    expect(roundEdge(kolkata, ['hour', 'day'], forever)).toEqual({
      edgeMs: kolkata - 30 * 60_000,
      rounded: 'hour',
    })
    // Minute windows expired: the hour; hour windows expired too: the UTC day.
    const minutesGone = (g: string) => (g === 'minute' ? kolkata + 1 : Number.NEGATIVE_INFINITY)
    expect(roundEdge(kolkata, ['minute', 'hour', 'day'], minutesGone).rounded).toBe('hour')
    const hoursGone = (g: string) => (g === 'day' ? Number.NEGATIVE_INFINITY : kolkata + 1)
    expect(roundEdge(kolkata, ['minute', 'hour', 'day'], hoursGone)).toEqual({
      edgeMs: Date.parse('2026-03-08T00:00:00Z'),
      rounded: 'day',
    })
    const berlin = dayStartTruth('2026-10-25', 'Europe/Berlin')
    expect(roundEdge(berlin, ['hour', 'day'], forever)).toEqual({ edgeMs: berlin, rounded: undefined })
  })

  it('takes IANA names (canonical), refuses anything else with TALLY_ERR_BAD_TIMEZONE', () => {
    expect(canonicalZone('europe/berlin')).toBe('Europe/Berlin')
    expect(canonicalZone('Asia/Kathmandu')).toBe('Asia/Kathmandu')
    expect(canonicalZone('Asia/Kolkata')).toBe('Asia/Kolkata')
    expect(canonicalZone('Etc/UTC')).toBe('UTC')
    for (const bad of ['Mars/Olympus', '+05:30', '', 'Europe/Berlin; drop', 'x'.repeat(80)]) {
      expect(() => canonicalZone(bad)).toThrow(expect.objectContaining({ code: 'TALLY_ERR_BAD_TIMEZONE' }))
    }
  })
})
