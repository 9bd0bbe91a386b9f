import { describe, expect, it } from 'vitest'
import {
  CommittedGenerations,
  commitTtlSeconds,
  generationOf,
  spanRange,
  spanStartOf,
  spansOfDay,
} from '../../core/aggregate/final.js'
import { generationOfRow, mergePartials } from '../../core/aggregate/merge.js'

const HOUR = 3_600_000
const DAY = 86_400_000
const day = Date.parse('2026-11-20T00:00:00Z')

describe('final-row generations and commits', () => {
  it('derives a generation in 1 … 2³¹−1 from a fencing token, and refuses a bad token', () => {
    const token = Date.parse('2026-11-24T01:00:00Z') * 1000
    const g = generationOf(token)
    expect(g).toBeGreaterThanOrEqual(1)
    expect(g).toBeLessThanOrEqual(2 ** 31 - 1)
    expect(generationOf(token)).toBe(g)
    expect(generationOf(token + 1)).toBe(g + 1)
    expect(generationOf(0)).toBe(1)
    expect(generationOfRow(-g)).toBe(g)
    expect(generationOfRow(3)).toBe(0)
    expect(() => generationOf(-1)).toThrow(RangeError)
    expect(() => generationOf(1.5)).toThrow(/non-negative integer/)
  })

  it('covers minute and hour windows by their hour, day windows by their day', () => {
    const ws = day + 5 * HOUR + 17 * 60_000
    expect(spanStartOf('minute', ws)).toBe(day + 5 * HOUR)
    expect(spanStartOf('hour', day + 5 * HOUR)).toBe(day + 5 * HOUR)
    expect(spanStartOf('day', day)).toBe(day)
    // A read of minutes from 05:17 needs the commit of the hour starting 05:00.
    expect(spanRange('minute', ws, ws + HOUR)).toEqual({ fromMs: day + 5 * HOUR, toMs: ws + HOUR })
    const commits = new CommittedGenerations('hour', [[day + 5 * HOUR, 7]])
    expect(commits.of('minute', ws)).toBe(7)
    expect(commits.of('hour', day + 5 * HOUR)).toBe(7)
    expect(commits.of('minute', day + 6 * HOUR)).toBe(0)
    expect(CommittedGenerations.NONE.of('hour', day)).toBe(0)
  })

  it('commits each hour of a rebuilt day, and the day only when the whole day was rebuilt', () => {
    const whole = spansOfDay(day, day, day + DAY)
    expect(whole.filter((s) => s.scope === 'hour')).toHaveLength(24)
    expect(whole.filter((s) => s.scope === 'day')).toEqual([{ scope: 'day', startMs: day }])
    expect(spansOfDay(day, day + 10 * HOUR, day + 12 * HOUR)).toEqual([
      { scope: 'hour', startMs: day + 10 * HOUR },
      { scope: 'hour', startMs: day + 11 * HOUR },
    ])
  })

  it('keeps a commit as long as the longest-lived rows of its span', () => {
    const ttl = { minute: 7 * 86_400, hour: 90 * 86_400, day: 0 }
    expect(commitTtlSeconds({ scope: 'hour', startMs: day }, ttl)).toBe(90 * 86_400)
    expect(commitTtlSeconds({ scope: 'day', startMs: day }, ttl)).toBe(0)
    expect(commitTtlSeconds({ scope: 'hour', startMs: day }, { ...ttl, minute: 0 })).toBe(0)
  })

  it('merges a window: the committed generation replaces the partials; other generations are never read', () => {
    const row = (generation: number, events: number) => ({
      events,
      pageviews: 0,
      botEvents: 0,
      visitors: null,
      generation,
    })
    const parts = [row(0, 3), row(0, 4), row(5, 100), row(9, 20)]
    expect(mergePartials(parts, 10, false, 0)).toMatchObject({ events: 7, final: false })
    expect(mergePartials(parts, 10, false, 9)).toMatchObject({ events: 20, final: true })
    // Committed generation without a row in this window: the partials.
    expect(mergePartials(parts, 10, false, 4)).toMatchObject({ events: 7, final: false })
    // Only rows of uncommitted generations: nothing to read.
    expect(mergePartials([row(5, 100)], 10, false, 0)).toBeUndefined()
  })
})
