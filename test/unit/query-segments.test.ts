import { describe, expect, it } from 'vitest'
import { tile } from '../../query/range.js'
import { unsettledDaysAsHours } from '../../query/stats.js'

const HOUR = 3_600_000
const DAY = 86_400_000
const D = Date.UTC(2026, 10, 10)

describe('unsettledDaysAsHours', () => {
  const tiled = tile({ fromMs: D - 5 * HOUR, toMs: D + 4 * DAY + 3 * HOUR }, ['hour', 'day'])

  it('keeps settled days as days and reads the days after complete_through as hours', () => {
    expect(tiled.map((s) => s.granularity)).toEqual(['hour', 'day', 'hour'])
    // Complete through 2 days and 7 hours in: days 0 and 1 settled; days 2-3 and the tail as hours.
    const out = unsettledDaysAsHours(tiled, D + 2 * DAY + 7 * HOUR)
    expect(out).toEqual([
      { granularity: 'hour', fromMs: D - 5 * HOUR, toMs: D },
      { granularity: 'day', fromMs: D, toMs: D + 2 * DAY },
      { granularity: 'hour', fromMs: D + 2 * DAY, toMs: D + 4 * DAY + 3 * HOUR },
    ])
  })

  it('changes nothing when every day is settled, or before any checkpoint', () => {
    expect(unsettledDaysAsHours(tiled, D + 10 * DAY)).toEqual(tiled)
    expect(unsettledDaysAsHours(tiled, undefined)).toEqual(tiled)
  })

  it('keeps days when too many hours would be read (a stream far behind)', () => {
    const long = tile({ fromMs: D, toMs: D + 30 * DAY }, ['hour', 'day'])
    expect(unsettledDaysAsHours(long, D + 5 * DAY)).toEqual(long)
    // Three unsettled days (72 hours) are still split.
    expect(unsettledDaysAsHours(long, D + 27 * DAY)).toEqual([
      { granularity: 'day', fromMs: D, toMs: D + 27 * DAY },
      { granularity: 'hour', fromMs: D + 27 * DAY, toMs: D + 30 * DAY },
    ])
  })
})
