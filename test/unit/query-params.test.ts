import { describe, expect, it } from 'vitest'
import { windowMs } from '../../core/aggregate/definition.js'
import { TallyError } from '../../core/errors.js'
import { parseFilters, parseMetrics, parseQuery } from '../../query/params.js'
import { alignRange, parseInstant, parsePeriod, tile, windowCount } from '../../query/range.js'
import { DEFAULT_QUERY_LIMITS } from '../../query/stats.js'

const NOW = Date.parse('2024-05-15T13:47:12.345Z')
const D = 86_400_000

function errorOf(fn: () => unknown): TallyError {
  try {
    fn()
  } catch (err) {
    if (err instanceof TallyError) return err
    throw err
  }
  throw new Error('expected a TallyError')
}

describe('query parameters', () => {
  it('parses ISO dates and date-times, a date as `to` meaning the end of that day', () => {
    expect(parseInstant('2024-05-01', 'from')).toBe(Date.UTC(2024, 4, 1))
    expect(parseInstant('2024-05-01', 'to', true)).toBe(Date.UTC(2024, 4, 2))
    expect(parseInstant('2024-05-01T10:30Z', 'from')).toBe(Date.UTC(2024, 4, 1, 10, 30))
    expect(parseInstant('2024-05-01T10:30:00.250+02:00', 'from')).toBe(Date.UTC(2024, 4, 1, 8, 30, 0, 250))
    for (const bad of [
      '2024-13-01',
      '2024-02-30',
      'yesterday',
      '2024-05-01T10:30',
      '2024-05-01T25:00Z',
      '',
    ]) {
      const err = errorOf(() => parseInstant(bad, 'from'))
      expect(err.code).toBe('TALLY_ERR_BAD_PARAMETER')
      expect(err.where).toBe('from')
      expect(err.statusCode).toBe(400)
    }
  })

  it('answers a four-digit year below 100 for that year, never for 19xx', () => {
    // ISO date-time parsing keeps the year as written: it is the independent truth here.
    const day26 = Date.parse('0026-12-07T00:00:00.000Z')
    expect(new Date(day26).getUTCFullYear()).toBe(26)
    expect(parseInstant('0026-12-07', 'from')).toBe(day26)
    expect(parseInstant('0026-12-07', 'to', true)).toBe(day26 + D)
    expect(parseInstant('0026-12-07T10:00Z', 'from')).toBe(day26 + 10 * 3_600_000)
    // Leap years by the year itself: 0 and 24 are, 26 and 100 are not (1900 is not either).
    expect(parseInstant('0000-02-29', 'from')).toBe(Date.parse('0000-02-29T00:00:00.000Z'))
    expect(parseInstant('0024-02-29', 'from')).toBe(Date.parse('0024-02-29T00:00:00.000Z'))
    for (const bad of ['0026-02-29', '0100-02-29'])
      expect(errorOf(() => parseInstant(bad, 'from')).statusCode).toBe(400)
    const q = parseQuery(
      'aggregate',
      { site: 's', from: '0026-12-07', to: '0026-12-08' },
      NOW,
      DEFAULT_QUERY_LIMITS,
    )
    expect(q.range).toEqual({ fromMs: day26, toMs: day26 + 2 * D })
    const year = parseQuery(
      'aggregate',
      { site: 's', period: 'year', date: '0026-12-07' },
      NOW,
      DEFAULT_QUERY_LIMITS,
    )
    expect(year.range).toEqual({
      fromMs: Date.parse('0026-01-01T00:00:00.000Z'),
      toMs: Date.parse('0027-01-01T00:00:00.000Z'),
    })
    const month = parseQuery(
      'aggregate',
      { site: 's', period: '2mo', date: '0026-01-15' },
      NOW,
      DEFAULT_QUERY_LIMITS,
    )
    expect(month.range).toEqual({
      fromMs: Date.parse('0025-12-01T00:00:00.000Z'),
      toMs: Date.parse('0026-02-01T00:00:00.000Z'),
    })
  })

  it('resolves periods relative to the reference day in UTC', () => {
    const today = Date.UTC(2024, 4, 15)
    expect(parsePeriod('day', NOW, NOW)).toEqual({ fromMs: today, toMs: today + D, interval: 'hour' })
    expect(parsePeriod('7d', NOW, NOW)).toEqual({ fromMs: today - 6 * D, toMs: today + D, interval: 'day' })
    expect(parsePeriod('month', NOW, NOW)).toEqual({
      fromMs: Date.UTC(2024, 4, 1),
      toMs: Date.UTC(2024, 5, 1),
      interval: 'day',
    })
    expect(parsePeriod('6mo', NOW, NOW)).toEqual({
      fromMs: Date.UTC(2023, 11, 1),
      toMs: Date.UTC(2024, 5, 1),
      interval: 'day',
    })
    expect(parsePeriod('12mo', NOW, NOW).fromMs).toBe(Date.UTC(2023, 5, 1))
    expect(parsePeriod('24h', NOW, NOW)).toEqual({
      fromMs: Date.UTC(2024, 4, 14, 14),
      toMs: Date.UTC(2024, 4, 15, 14),
      interval: 'hour',
    })
    expect(parsePeriod('year', NOW, NOW).fromMs).toBe(Date.UTC(2024, 0, 1))
    for (const bad of ['week', '0d', '7days', '99999d', '100h']) {
      expect(errorOf(() => parsePeriod(bad, NOW, NOW)).where).toBe('period')
    }
  })

  it('splits a range into the coarsest windows that cover it exactly', () => {
    const from = Date.UTC(2024, 4, 1, 22, 30)
    const to = Date.UTC(2024, 4, 4, 1, 15)
    const segments = tile({ fromMs: from, toMs: to }, ['minute', 'hour', 'day'])
    expect(segments.map((s) => [s.granularity, new Date(s.fromMs).toISOString()])).toEqual([
      ['minute', '2024-05-01T22:30:00.000Z'],
      ['hour', '2024-05-01T23:00:00.000Z'],
      ['day', '2024-05-02T00:00:00.000Z'],
      ['hour', '2024-05-04T00:00:00.000Z'],
      ['minute', '2024-05-04T01:00:00.000Z'],
    ])
    // Contiguous and complete.
    for (let i = 1; i < segments.length; i++) expect(segments[i]!.fromMs).toBe(segments[i - 1]!.toMs)
    expect(segments[0]!.fromMs).toBe(from)
    expect(segments[segments.length - 1]!.toMs).toBe(to)
    expect(windowCount(segments)).toBe(30 + 1 + 2 + 1 + 15)
    const hourly = tile(alignRange({ fromMs: from, toMs: to }, 'hour'), ['hour', 'day'])
    expect(hourly.map((s) => s.granularity)).toEqual(['hour', 'day', 'hour'])
    expect(hourly.every((s) => s.fromMs % windowMs(s.granularity) === 0)).toBe(true)
    expect(() => tile({ fromMs: from, toMs: to }, ['hour', 'day'])).toThrow(RangeError)
  })

  it('parses metrics and filters', () => {
    expect(parseMetrics(undefined)).toEqual(['visitors', 'pageviews', 'events'])
    expect(parseMetrics('events,bot_events,events')).toEqual(['events', 'bot_events'])
    expect(errorOf(() => parseMetrics('events,sessions')).where).toBe('metrics')
    expect(parseFilters('path==/a|/b\\|c;browser==Chrome', 20)).toEqual([
      { property: 'path', values: ['/a', '/b|c'] },
      { property: 'browser', values: ['Chrome'] },
    ])
    expect(parseFilters('referrer==a\\;b', 20)).toEqual([{ property: 'referrer', values: ['a;b'] }])
    for (const bad of ['path=/a', 'planet==Mars', 'path==', 'path==/a;path==/b', 'path==a\\']) {
      const err = errorOf(() => parseFilters(bad, 20))
      expect(err.where).toBe('filters')
      expect(err.statusCode).toBe(400)
    }
    expect(errorOf(() => parseFilters('path==a|b|c', 2)).message).toMatch(/at most 2/)
  })

  it('checks each endpoint’s parameters and names the bad one', () => {
    const p = (endpoint: Parameters<typeof parseQuery>[0], q: Record<string, unknown>) =>
      parseQuery(endpoint, q, NOW, DEFAULT_QUERY_LIMITS)
    const ok = p('breakdown', {
      site: 's',
      property: 'path',
      limit: '10',
      from: '2024-05-01',
      to: '2024-05-02',
    })
    expect(ok.range).toEqual({ fromMs: Date.UTC(2024, 4, 1), toMs: Date.UTC(2024, 4, 3) })
    expect(ok.limit).toBe(10)
    expect(p('timeseries', { site: 's', period: 'day' }).interval).toBe('hour')
    expect(p('timeseries', { site: 's', from: '2024-05-01', to: '2024-05-01' }).interval).toBeUndefined()
    const cases: Array<[Parameters<typeof parseQuery>[0], Record<string, unknown>, string, string]> = [
      ['aggregate', {}, 'site', 'TALLY_ERR_MISSING_PARAMETER'],
      ['aggregate', { site: 's', metric: 'events' }, 'metric', 'TALLY_ERR_UNKNOWN_PARAMETER'],
      ['aggregate', { site: 's', interval: 'hour' }, 'interval', 'TALLY_ERR_UNKNOWN_PARAMETER'],
      ['aggregate', { site: ['a', 'b'] }, 'site', 'TALLY_ERR_BAD_PARAMETER'],
      ['aggregate', { site: 's', from: '2024-05-02', to: '2024-05-01' }, 'from', 'TALLY_ERR_BAD_PARAMETER'],
      ['aggregate', { site: 's', from: '2024-05-02' }, 'to', 'TALLY_ERR_MISSING_PARAMETER'],
      [
        'aggregate',
        { site: 's', from: '2024-05-02', to: 'x', period: '7d' },
        'period',
        'TALLY_ERR_BAD_PARAMETER',
      ],
      ['timeseries', { site: 's', interval: 'week' }, 'interval', 'TALLY_ERR_BAD_PARAMETER'],
      ['breakdown', { site: 's' }, 'property', 'TALLY_ERR_MISSING_PARAMETER'],
      ['breakdown', { site: 's', property: 'planet' }, 'property', 'TALLY_ERR_BAD_PARAMETER'],
      ['breakdown', { site: 's', property: 'path', limit: '0' }, 'limit', 'TALLY_ERR_BAD_PARAMETER'],
      ['breakdown', { site: 's', property: 'path', limit: '1001' }, 'limit', 'TALLY_ERR_BAD_PARAMETER'],
      ['breakdown', { site: 's', property: 'path', limit: 'ten' }, 'limit', 'TALLY_ERR_BAD_PARAMETER'],
      ['realtime', { site: 's', minutes: '61' }, 'minutes', 'TALLY_ERR_BAD_PARAMETER'],
      ['realtime', { site: 's', period: 'day' }, 'period', 'TALLY_ERR_UNKNOWN_PARAMETER'],
      ['export', { site: 's', format: 'xml' }, 'format', 'TALLY_ERR_BAD_PARAMETER'],
      ['events', { site: 's', format: 'csv' }, 'format', 'TALLY_ERR_BAD_PARAMETER'],
      ['timeseries', { site: 's', format: 'ndjson' }, 'format', 'TALLY_ERR_BAD_PARAMETER'],
      ['aggregate', { site: 's', format: 'csv' }, 'format', 'TALLY_ERR_UNKNOWN_PARAMETER'],
      ['export', { site: 's', sketches: 'yes' }, 'sketches', 'TALLY_ERR_BAD_PARAMETER'],
    ]
    for (const [endpoint, q, where, code] of cases) {
      const err = errorOf(() => p(endpoint, q))
      expect({ q, where: err.where, code: err.code }).toEqual({ q, where, code })
    }
  })
})
