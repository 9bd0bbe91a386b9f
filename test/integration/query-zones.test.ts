import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type GeneratedEvent, generateWorkload } from '../../bench/workload.js'
import type { Granularity } from '../../core/aggregate/definition.js'
import { HyperLogLog, hllErrorBound } from '../../core/hll.js'
import { createLogger } from '../../core/log.js'
import type { AggregateReader } from '../../core/ports/aggregate-store.js'
import type { FinalRowStore } from '../../core/ports/batch-store.js'
import type { SiteStore } from '../../core/ports/site-store.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import { CheckpointFreshness } from '../../query/freshness.js'
import { cassandraHarness, embeddedHarness } from '../contract/backends.js'
import { uniqueName } from '../helpers/context.js'
import { addDays, dayStart, local, tsOf, writeFinalRowsOf } from '../helpers/zone-rows.js'

/**
 * Site time zones and period comparison through the query API on both backends: a generated
 * workload's window rows (minute, hour and day totals, path rows by hour and day) are written as
 * committed final rows, and the answers for sites in America/New_York (across the March 2026
 * change to daylight time), Europe/Berlin (across the October change back), Asia/Kolkata (+5:30)
 * and Asia/Kathmandu (+5:45) are compared with the truth computed here per event: its local date
 * from Intl.DateTimeFormat, its local day's bounds by walking the clock.
 */

const HOUR = 3_600_000
const DAY = 86_400_000
const PRECISION = 14
const bound = hllErrorBound(PRECISION)
const COUNTED = new Set(['track', 'page', 'screen'])

interface Truth {
  events: number
  pageviews: number
  visitors: number
  /** The HyperLogLog estimate of the true set of visitors: the registers depend only on the set. */
  sketched: number
}

interface Backend {
  name: string
  make: () => Promise<{
    sites: SiteStore
    finalRowsWithTtl(ttl: Record<Granularity, number>): Promise<{
      rows: FinalRowStore
      reader: AggregateReader
      close(): Promise<void>
    }>
    close(): Promise<void>
  }>
}

const BACKENDS: Backend[] = [
  { name: 'cassandra', make: cassandraHarness },
  { name: 'embedded', make: embeddedHarness },
]

/** Sites, their zones and the span of their traffic (UTC days, wide enough for both compared ranges). */
const SPANS = [
  { key: 'ny', zone: 'America/New_York', start: '2026-02-24', days: 17, now: '2026-03-12T20:00:00Z' },
  { key: 'kol', zone: 'Asia/Kolkata', start: '2026-02-24', days: 17, now: '2026-03-12T20:00:00Z' },
  { key: 'ktm', zone: 'Asia/Kathmandu', start: '2026-02-24', days: 17, now: '2026-03-12T20:00:00Z' },
  { key: 'ber', zone: 'Europe/Berlin', start: '2026-10-14', days: 16, now: '2026-10-29T12:00:00Z' },
] as const

describe.each(BACKENDS)('site time zones and compare through the query API: $name', ({ make }) => {
  let h: Awaited<ReturnType<Backend['make']>>
  let store: Awaited<ReturnType<Awaited<ReturnType<Backend['make']>>['finalRowsWithTtl']>>
  let app: FastifyInstance
  let clock = 0
  const site = new Map<string, { id: string; token: string; zone: string; events: GeneratedEvent[] }>()

  function truth(key: string, fromMs: number, toMs: number): Truth {
    const s = site.get(key)!
    const seen = new Set<string>()
    const ids = new Set<string>()
    let events = 0
    let pageviews = 0
    for (const e of s.events) {
      const t = tsOf(e)
      if (t < fromMs || t >= toMs || e.isBot || !COUNTED.has(e.payload.type) || seen.has(e.payload.messageId))
        continue
      seen.add(e.payload.messageId)
      events++
      if (e.payload.type === 'page') pageviews++
      ids.add(e.payload.anonymousId)
    }
    const sketch = new HyperLogLog(PRECISION)
    for (const id of ids) sketch.add(id)
    return { events, pageviews, visitors: ids.size, sketched: Math.round(sketch.estimate()) }
  }

  /** Truth of one local date, chosen per event by its local date (not by computed bounds). */
  function truthOfDate(key: string, date: string): Truth {
    const s = site.get(key)!
    const of = s.events.filter((e) => local(tsOf(e), s.zone).date === date)
    const saved = s.events
    s.events = of
    try {
      return truth(key, Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY)
    } finally {
      s.events = saved
    }
  }

  function expectTruth(actual: Record<string, number | undefined>, t: Truth, what: string): void {
    expect({ what, events: actual.events, pageviews: actual.pageviews, visitors: actual.visitors }).toEqual({
      what,
      events: t.events,
      pageviews: t.pageviews,
      visitors: t.sketched,
    })
    expect(Math.abs(t.sketched - t.visitors), what).toBeLessThanOrEqual(
      Math.max(1, Math.ceil(t.visitors * bound)),
    )
  }

  async function ok<T>(path: string, params: Record<string, string>): Promise<T> {
    const s = site.get(params.site!)!
    clock = Date.parse(SPANS.find((x) => x.key === params.site)!.now)
    const res = await app.inject({
      method: 'GET',
      url: `${path}?${new URLSearchParams({ ...params, site: s.id })}`,
      headers: { authorization: `Bearer ${s.token}` },
    })
    expect(res.statusCode, res.body).toBe(200)
    return res.json() as T
  }

  beforeAll(async () => {
    h = await make()
    // Rows kept forever: the workload lies in the past of the real clock; the API's clock is set.
    store = await h.finalRowsWithTtl({ minute: 0, hour: 0, day: 0 })
    let seed = 11
    for (const span of SPANS) {
      const id = uniqueName(`tz_${span.key}`)
      const created = await h.sites.create({
        siteId: id,
        domain: `${id.replace(/_/g, '-')}.test`,
        origins: [],
        timezone: span.zone,
      })
      const { events } = generateWorkload({
        seed: seed++,
        sites: [id],
        events: 2500,
        start: new Date(`${span.start}T00:00:00Z`),
        spanMs: span.days * DAY,
        visitors: 400,
      })
      site.set(span.key, { id, token: created.readToken, zone: span.zone, events })
      await writeFinalRowsOf(
        store.rows,
        id,
        events,
        PRECISION,
        'path',
        (e) => e.payload.context.page?.path ?? '(none)',
      )
    }
    app = await buildQueryApp({
      reader: store.reader,
      auth: new ReadAccessCache(h.sites),
      freshness: new CheckpointFreshness(store.reader, {
        group: uniqueName('group'),
        topic: uniqueName('topic'),
        partitions: 1,
        graceMs: 0,
      }),
      logger: createLogger('silent'),
      hllPrecision: PRECISION,
      now: () => clock,
      answerCache: { maxBytes: 0, maxAgeMs: 0 },
    })
  }, 240_000)

  afterAll(async () => {
    await app?.close()
    await store?.close()
    await h?.close()
  })

  type Point = Record<string, number> & { date: string; status: string }
  type Series = { results: Point[]; meta: Record<string, unknown> & { time_zone?: Record<string, string> } }

  it.each([
    ['ny', '2026-03-10', ['2026-03-04', '2026-03-10']],
    ['ber', '2026-10-28', ['2026-10-22', '2026-10-28']],
  ])(
    '%s: a daily timeseries has one point per local day, 23 and 25 hours across the change, equal to the truth',
    async (key, date) => {
      const s = site.get(key)!
      const answer = await ok<Series>('/v1/stats/timeseries', {
        site: key,
        period: '7d',
        date,
        interval: 'day',
        metrics: 'visitors,pageviews,events',
      })
      const days = Array.from({ length: 7 }, (_, i) => addDays(date, i - 6))
      expect(answer.results.map((p) => p.date.slice(0, 10))).toEqual(days)
      expect(answer.meta.time_zone).toMatchObject({ zone: s.zone, day_edges: 'exact' })
      for (const [i, day] of days.entries()) {
        const point = answer.results[i]!
        // Labelled at local midnight with the day's offset.
        expect(Date.parse(point.date)).toBe(dayStart(day, s.zone))
        expectTruth(point, truthOfDate(key, day), `${key} ${day}`)
      }
      const hours = days.map((d) => (dayStart(addDays(d, 1), s.zone) - dayStart(d, s.zone)) / HOUR)
      expect(hours).toContain(key === 'ny' ? 23 : 25)
    },
  )

  it.each(['kol', 'ktm'])(
    '%s: a day whose midnight is not a whole hour is exact from minute windows; breakdowns round to the hour and say so',
    async (key) => {
      const s = site.get(key)!
      const day = '2026-03-11'
      const agg = await ok<{ results: Record<string, { value: number }>; meta: Series['meta'] }>(
        '/v1/stats/aggregate',
        {
          site: key,
          period: 'day',
          date: day,
          metrics: 'visitors,pageviews,events',
        },
      )
      expect(agg.meta.time_zone).toMatchObject({ zone: s.zone, day_edges: 'exact' })
      expectTruth(
        Object.fromEntries(Object.entries(agg.results).map(([k, v]) => [k, v.value])),
        truthOfDate(key, day),
        `${key} ${day}`,
      )
      const series = await ok<Series>('/v1/stats/timeseries', {
        site: key,
        period: '7d',
        date: day,
        interval: 'day',
      })
      for (const p of series.results.filter((x) => Date.parse(x.date) >= clock - 6 * DAY)) {
        expectTruth(p, truthOfDate(key, p.date.slice(0, 10)), `${key} ${p.date}`)
      }
      const breakdown = await ok<{ results: Array<Record<string, number | string>>; meta: Series['meta'] }>(
        '/v1/stats/breakdown',
        { site: key, period: 'day', date: day, property: 'path', metrics: 'events', limit: '1000' },
      )
      expect(breakdown.meta.time_zone).toMatchObject({ zone: s.zone, day_edges: 'rounded_to_hour' })
      // The day edges floored to the hour: the events of that range.
      const from = Math.floor(dayStart(day, s.zone) / HOUR) * HOUR
      const to = Math.floor(dayStart(addDays(day, 1), s.zone) / HOUR) * HOUR
      expect(breakdown.results.reduce((n, r) => n + Number(r.events), 0)).toBe(truth(key, from, to).events)
    },
  )

  it('kol: a day beyond the minute retention has its edges floored to the hour, said in meta', async () => {
    const day = '2026-03-02'
    const agg = await ok<{ results: Record<string, { value: number }>; meta: Series['meta'] }>(
      '/v1/stats/aggregate',
      {
        site: 'kol',
        period: 'day',
        date: day,
        metrics: 'events',
      },
    )
    expect(agg.meta.time_zone).toMatchObject({ day_edges: 'rounded_to_hour' })
    const from = Math.floor(dayStart(day, 'Asia/Kolkata') / HOUR) * HOUR
    const to = Math.floor(dayStart(addDays(day, 1), 'Asia/Kolkata') / HOUR) * HOUR
    expect(agg.results.events!.value).toBe(truth('kol', from, to).events)
  })

  it('ny: compare=previous_period and year_over_year give both values and the change, equal to the truth of both ranges', async () => {
    const zone = 'America/New_York'
    const answer = await ok<{
      results: Record<string, { value: number; comparison_value: number; change: number | null }>
      meta: Record<string, unknown> & {
        comparison: { mode: string; from: string; to: string; time_zone?: unknown }
      }
    }>('/v1/stats/aggregate', {
      site: 'ny',
      period: '7d',
      date: '2026-03-10',
      metrics: 'visitors,pageviews,events',
      compare: 'previous_period',
    })
    const current = truth('ny', dayStart('2026-03-04', zone), dayStart('2026-03-11', zone))
    const previous = truth('ny', dayStart('2026-02-25', zone), dayStart('2026-03-04', zone))
    expect(Date.parse(answer.meta.comparison.from)).toBe(dayStart('2026-02-25', zone))
    expect(answer.meta.comparison.mode).toBe('previous_period')
    for (const m of ['visitors', 'pageviews', 'events'] as const) {
      const now = m === 'visitors' ? current.sketched : current[m]
      const before = m === 'visitors' ? previous.sketched : previous[m]
      expect([m, answer.results[m]]).toEqual([
        m,
        { value: now, comparison_value: before, change: Math.round(((now - before) / before) * 100) },
      ])
    }
    const yoy = await ok<typeof answer>('/v1/stats/aggregate', {
      site: 'ny',
      period: '7d',
      date: '2026-03-10',
      metrics: 'events',
      compare: 'year_over_year',
    })
    // Nothing happened a year before: the change of nothing is no percentage.
    expect(yoy.results.events).toEqual({ value: current.events, comparison_value: 0, change: null })
    // A year back is beyond the hour retention (90 days): the edges are floored to the UTC day, and said so.
    expect(Date.parse(yoy.meta.comparison.from)).toBe(Math.floor(dayStart('2025-03-04', zone) / DAY) * DAY)
    expect(yoy.meta.comparison).toMatchObject({
      mode: 'year_over_year',
      time_zone: { day_edges: 'rounded_to_day' },
    })

    const series = await ok<{
      results: Array<Point & { comparison: Point; change: Record<string, number | null> }>
    }>('/v1/stats/timeseries', {
      site: 'ny',
      period: '7d',
      date: '2026-03-10',
      interval: 'day',
      metrics: 'events',
      compare: 'previous_period',
    })
    for (const [i, p] of series.results.entries()) {
      const before = truthOfDate('ny', addDays('2026-02-25', i))
      expect(p.comparison.date.slice(0, 10)).toBe(addDays('2026-02-25', i))
      expect(p.comparison.events).toBe(before.events)
      expect(p.change.events).toBe(
        before.events === 0 ? null : Math.round((((p.events ?? 0) - before.events) / before.events) * 100),
      )
    }
  })
})
