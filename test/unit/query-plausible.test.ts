import { parse } from 'csv-parse/sync'
import { describe, expect, it } from 'vitest'
import { createLogger } from '../../core/log.js'
import type { AggregateReader } from '../../core/ports/aggregate-store.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import { breakdownCsv } from '../../query/csv.js'
import type { FreshnessSource } from '../../query/freshness.js'
import { change } from '../../query/plausible/api.js'
import { matcherOf, parsePlausibleFilters } from '../../query/plausible/filters.js'
import { monthsOf, previousPeriod, resolvePeriod } from '../../query/plausible/period.js'
import { plausibleMetrics, plausibleProperty, plausibleWording } from '../../query/plausible/properties.js'

const DAY = 86_400_000
const at = (s: string) => Date.parse(`${s}T00:00:00Z`)

describe("Plausible's Stats API v1 parameters", () => {
  it('resolves periods to whole UTC days relative to date', () => {
    const now = Date.parse('2026-03-15T10:00:00Z')
    const r = (p: string, d?: string) => {
      const x = resolvePeriod(p, d, now)
      return [
        new Date(x.fromMs).toISOString().slice(0, 10),
        new Date(x.toMs).toISOString().slice(0, 10),
        x.days,
      ]
    }
    expect(r('day')).toEqual(['2026-03-15', '2026-03-16', 1])
    expect(r('7d', '2026-03-02')).toEqual(['2026-02-24', '2026-03-03', 7])
    expect(r('30d')).toEqual(['2026-02-14', '2026-03-16', 30])
    expect(r('month', '2024-02-10')).toEqual(['2024-02-01', '2024-03-01', 29])
    expect(r('6mo')).toEqual(['2025-10-01', '2026-04-01', 182])
    expect(r('12mo', '2026-01-31')).toEqual(['2025-02-01', '2026-02-01', 365])
    expect(r('custom', '2026-01-30,2026-02-02')).toEqual(['2026-01-30', '2026-02-03', 4])
    const p = resolvePeriod('7d', '2026-03-02', now)
    expect(previousPeriod(p)).toEqual({ fromMs: p.fromMs - 7 * DAY, toMs: p.fromMs })
    expect(monthsOf(resolvePeriod('custom', '2026-01-30,2026-03-02', now)).map((m) => m.date)).toEqual([
      '2026-01-01',
      '2026-02-01',
      '2026-03-01',
    ])
    for (const [period, date] of [
      ['week', undefined],
      ['custom', '2026-01-01'],
      ['custom', '2026-02-01,2026-01-01'],
      ['day', '2026-02-30'],
    ] as const)
      expect(() => resolvePeriod(period, date, now)).toThrow()
  })

  it('takes a time zone: the day starts at local midnight, across a DST change', () => {
    const r = resolvePeriod('day', '2026-03-08', 0, 'America/New_York')
    expect([r.fromMs, r.toMs]).toEqual([at('2026-03-08') + 5 * 3_600_000, at('2026-03-09') + 4 * 3_600_000])
    const k = resolvePeriod('day', '2026-03-08', 0, 'Asia/Kolkata')
    expect(k.fromMs).toBe(at('2026-03-07') + 18.5 * 3_600_000)
  })

  it('parses v1 filters: ==, !=, a|b, escaped bars, wildcards; maps properties and metrics', () => {
    const [page, country] = parsePlausibleFilters('event:page==/blog/**|/a\\|b;visit:country!=DE', 20)
    expect(page).toMatchObject({ negated: false, wildcard: true, values: ['/blog/**', '/a|b'] })
    expect(page!.property).toEqual({ name: 'event:page', tally: 'path', rowKey: 'page' })
    expect(country).toMatchObject({ negated: true, values: ['DE'], property: { tally: 'country' } })
    const m = matcherOf(page!)
    expect(['/blog/x/y', '/a|b', '/blog', '/a'].map(m)).toEqual([true, true, false, false])
    expect(matcherOf(parsePlausibleFilters('event:page==/p*s', 20)[0]!)('/p.x/s')).toBe(true)
    expect(() => parsePlausibleFilters('event:page==/a;event:page==/b', 20)).toThrow(/twice/)
    expect(() => parsePlausibleFilters('visit:city==1', 20)).toThrow(/supported/)
    expect(plausibleProperty('event:props:plan', 'property')).toEqual({
      name: 'event:props:plan',
      tally: 'prop:plan',
      rowKey: 'plan',
    })
    expect(parsePlausibleFilters('event:props:plan_2==pro|team', 20)[0]!.property.tally).toBe('prop:plan_2')
    expect(() => plausibleProperty('event:props:a b', 'property')).toThrow(/not a property key/)
    expect(plausibleProperty('event:goal', 'property')).toEqual({
      name: 'event:goal',
      tally: 'goal',
      rowKey: 'goal',
    })
    expect(plausibleMetrics(undefined)).toEqual(['visitors'])
    expect(plausibleMetrics('pageviews,visitors,pageviews')).toEqual(['pageviews', 'visitors'])
    expect(plausibleMetrics('visitors,conversion_rate')).toEqual(['visitors', 'conversion_rate'])
    expect(() => plausibleMetrics('time_on_page')).toThrow(/not counted/)
  })

  it("computes compare's change as Plausible does", () => {
    expect(change('visitors', 100, 150)).toBe(50)
    expect(change('visitors', 0, 3)).toBe(100)
    expect(change('visitors', 0, 0)).toBe(0)
    expect(change('pageviews', 3, 1)).toBe(-67)
    expect(change('bounce_rate', 40, 55)).toBe(15)
  })
})

describe('CSV', () => {
  it('quotes commas, quotes and line breaks, and reads back equal', () => {
    const results = [
      { path: '/a,b', visitors: 3, pageviews: 5 },
      { path: '/say "hi"', visitors: 2, pageviews: 2 },
      { path: '/line\nbreak\r\nx', visitors: 1, pageviews: 1 },
      { path: ' padded ', visitors: 0, pageviews: 1 },
    ]
    const csv = breakdownCsv(results, 'path', ['visitors', 'pageviews'])
    expect(csv.split('\n')[0]).toBe('path,visitors,pageviews')
    expect(csv).toContain('"/say ""hi"""')
    expect(parse(csv, { columns: true, cast: true })).toEqual(results)
  })
})

describe("Plausible's Stats API routes before any read", () => {
  it("answers Plausible's 401s and remembers an unknown site_id for a moment", async () => {
    const calls = { get: 0, byDomain: 0 }
    const sites = {
      get: async () => {
        calls.get++
        return undefined
      },
      byDomain: async () => {
        calls.byDomain++
        return undefined
      },
      list: async () => [],
    }
    const app = await buildQueryApp({
      reader: {} as AggregateReader,
      auth: new ReadAccessCache(sites),
      sites,
      freshness: { current: async () => ({}) } as unknown as FreshnessSource,
      logger: createLogger('silent'),
    })
    try {
      const ask = (headers: Record<string, string>) =>
        app.inject({ method: 'GET', url: '/api/v1/stats/aggregate?site_id=nowhere.test', headers })
      const missing = await ask({})
      expect([missing.statusCode, missing.json()]).toEqual([
        401,
        { error: 'Missing API key. Please use a valid Plausible API key as a Bearer Token.' },
      ])
      for (let i = 0; i < 3; i++) {
        const res = await ask({ authorization: 'Bearer rt_x' })
        expect(res.statusCode).toBe(401)
        expect(Object.keys(res.json())).toEqual(['error'])
      }
      expect(calls).toEqual({ get: 1, byDomain: 1 })
      const noSite = await app.inject({
        method: 'GET',
        url: '/api/v1/stats/breakdown',
        headers: { authorization: 'Bearer rt_x' },
      })
      expect([noSite.statusCode, Object.keys(noSite.json())]).toEqual([400, ['error']])
    } finally {
      await app.close()
    }
  })
})

describe('messages in Plausible names', () => {
  it("rewords Tally's property names, leaving Plausible's and metric names alone", () => {
    expect(
      plausibleWording(
        'metrics: visit metrics (bounce_rate) are counted by referrer, utm_source, source, not by path; events by event:page',
      ),
    ).toBe(
      'metrics: visit metrics (bounce_rate) are counted by visit:referrer, visit:utm_source, visit:source, not by event:page; events by event:page',
    )
    expect(plausibleWording('visit metrics (visits) are counted by source, not by prop:plan')).toBe(
      'visit metrics (visits) are counted by visit:source, not by event:props:plan',
    )
  })
})
