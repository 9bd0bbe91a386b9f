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
 * Plausible's Stats API v1 in a site's time zone, and `event:props:KEY`, on both backends: a
 * generated workload's window rows (minute, hour and day totals; a declared custom property `plan`
 * by hour and day) are written as committed final rows, and a table of Plausible requests for a
 * site in America/New_York (across the March 2026 change to daylight time: 8 March has 23 hours)
 * and one in Asia/Kolkata (+5:30: days start at 18:30 UTC) is compared with the truth computed here
 * per event, its local date and hour taken from Intl.DateTimeFormat.
 */

const HOUR = 3_600_000
const DAY = 86_400_000
const PRECISION = 14
const bound = hllErrorBound(PRECISION)
const COUNTED = new Set(['track', 'page', 'screen'])
const PLANS = ['free', 'pro', 'team']

/** The event's `plan` (none for one in four), a function of its messageId. */
function planOf(e: GeneratedEvent): string {
  let h = 7
  for (const c of e.payload.messageId) h = (h * 31 + c.charCodeAt(0)) >>> 0
  return h % 4 === 0 ? '(none)' : PLANS[h % 3]!
}

interface Truth {
  events: number
  pageviews: number
  /** The HyperLogLog estimate of the true set of visitors (the registers depend only on the set). */
  visitors: number
  exactVisitors: number
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
  { name: 'Kafka + Cassandra', make: cassandraHarness },
  { name: 'embedded', make: embeddedHarness },
]

const SITES = [
  { key: 'ny', zone: 'America/New_York' },
  { key: 'kol', zone: 'Asia/Kolkata' },
] as const
const START = '2026-02-24'
const SPAN_DAYS = 17
const NOW = Date.parse('2026-03-12T20:00:00Z')

describe.each(BACKENDS)("Plausible's Stats API in a site's time zone: $name", ({ make }) => {
  let h: Awaited<ReturnType<Backend['make']>>
  let store: Awaited<ReturnType<Awaited<ReturnType<Backend['make']>>['finalRowsWithTtl']>>
  let app: FastifyInstance
  const site = new Map<string, { id: string; token: string; zone: string; events: GeneratedEvent[] }>()

  /** Truth of the counted events for which `keep` holds. */
  function truth(key: string, keep: (e: GeneratedEvent, zone: string) => boolean): Truth {
    const s = site.get(key)!
    const seen = new Set<string>()
    const ids = new Set<string>()
    let events = 0
    let pageviews = 0
    for (const e of s.events) {
      if (e.isBot || !COUNTED.has(e.payload.type) || seen.has(e.payload.messageId) || !keep(e, s.zone))
        continue
      seen.add(e.payload.messageId)
      events++
      if (e.payload.type === 'page') pageviews++
      ids.add(e.payload.anonymousId)
    }
    const sketch = new HyperLogLog(PRECISION)
    for (const id of ids) sketch.add(id)
    return { events, pageviews, visitors: Math.round(sketch.estimate()), exactVisitors: ids.size }
  }
  const onDates = (dates: readonly string[]) => (e: GeneratedEvent, zone: string) =>
    dates.includes(local(tsOf(e), zone).date)

  function expectTruth(actual: Record<string, unknown>, t: Truth, what: string): void {
    expect({ what, ...actual }).toEqual({
      what,
      events: t.events,
      pageviews: t.pageviews,
      visitors: t.visitors,
    })
    expect(Math.abs(t.visitors - t.exactVisitors), what).toBeLessThanOrEqual(
      Math.max(1, Math.ceil(t.exactVisitors * bound)),
    )
  }

  async function ask<T>(path: string, key: string, params: Record<string, string>): Promise<T> {
    const s = site.get(key)!
    const res = await app.inject({
      method: 'GET',
      url: `/api/v1/stats/${path}?${new URLSearchParams({ site_id: s.id, ...params })}`,
      headers: { authorization: `Bearer ${s.token}` },
    })
    expect(res.statusCode, res.body).toBe(200)
    return res.json() as T
  }

  type Aggregate = { results: Record<string, { value: number; change?: number }> }
  type Series = { results: Array<Record<string, number> & { date: string }> }
  const values = (a: Aggregate) => Object.fromEntries(Object.entries(a.results).map(([k, v]) => [k, v.value]))
  const METRICS = { metrics: 'visitors,pageviews,events' }

  beforeAll(async () => {
    h = await make()
    // Rows kept forever: the workload lies in the past of the real clock; the API's clock is set.
    store = await h.finalRowsWithTtl({ minute: 0, hour: 0, day: 0 })
    let seed = 31
    for (const { key, zone } of SITES) {
      const id = uniqueName(`pz_${key}`)
      const created = await h.sites.create({
        siteId: id,
        domain: `${id.replace(/_/g, '-')}.test`,
        origins: [],
        timezone: zone,
      })
      await h.sites.addPropKey(id, 'plan')
      const { events } = generateWorkload({
        seed: seed++,
        sites: [id],
        events: 2500,
        start: new Date(`${START}T00:00:00Z`),
        spanMs: SPAN_DAYS * DAY,
        visitors: 400,
      })
      site.set(key, { id, token: created.readToken, zone, events })
      await writeFinalRowsOf(store.rows, id, events, PRECISION, 'prop:plan', planOf)
    }
    app = await buildQueryApp({
      reader: store.reader,
      auth: new ReadAccessCache(h.sites),
      sites: h.sites,
      freshness: new CheckpointFreshness(store.reader, {
        group: uniqueName('group'),
        topic: uniqueName('topic'),
        partitions: 1,
        graceMs: 0,
      }),
      logger: createLogger('silent'),
      hllPrecision: PRECISION,
      now: () => NOW,
      answerCache: { maxBytes: 0, maxAgeMs: 0 },
    })
  }, 240_000)

  afterAll(async () => {
    await app?.close()
    await store?.close()
    await h?.close()
  })

  // The table: a request, and the first and last local date whose events it counts.
  it.each([
    [
      'ny',
      'the 23-hour day of the change',
      { period: 'day', date: '2026-03-08' },
      '2026-03-08',
      '2026-03-08',
    ],
    ['ny', '7d across the change', { period: '7d', date: '2026-03-10' }, '2026-03-04', '2026-03-10'],
    ['ny', 'custom days', { period: 'custom', date: '2026-03-07,2026-03-09' }, '2026-03-07', '2026-03-09'],
    [
      'ny',
      'February (the workload starts on the 24th)',
      { period: 'month', date: '2026-02-15' },
      '2026-02-01',
      '2026-02-28',
    ],
    ['kol', 'a day from 18:30 UTC', { period: 'day', date: '2026-03-11' }, '2026-03-11', '2026-03-11'],
    ['kol', 'custom days', { period: 'custom', date: '2026-03-09,2026-03-11' }, '2026-03-09', '2026-03-11'],
  ] as const)(
    '%s aggregate, %s: equal to the events of those local days',
    async (key, _what, params, first, last) => {
      const dates: string[] = []
      for (let d: string = first; d <= last; d = addDays(d, 1)) dates.push(d)
      const answer = await ask<Aggregate>('aggregate', key, { ...params, ...METRICS })
      expectTruth(values(answer), truth(key, onDates(dates)), `${key} ${first}..${last}`)
    },
  )

  it('ny: the 23-hour day: its edges are local midnights 5 and 4 hours after UTC midnight', () => {
    const zone = 'America/New_York'
    expect(dayStart('2026-03-08', zone)).toBe(Date.parse('2026-03-08T05:00:00Z'))
    expect(dayStart('2026-03-09', zone) - dayStart('2026-03-08', zone)).toBe(23 * HOUR)
  })

  it.each([
    ['ny', '2026-03-10'],
    ['kol', '2026-03-11'],
  ])(
    '%s: a daily timeseries (ny 7d, kol 3 custom days) has one point per local date, each equal to its truth',
    async (key, date) => {
      // Kolkata's days start at :30: exact from minute windows, which are kept 6 days before now.
      const params =
        key === 'kol' ? { period: 'custom', date: `${addDays(date, -2)},${date}` } : { period: '7d', date }
      const n = key === 'kol' ? 3 : 7
      const answer = await ask<Series>('timeseries', key, { ...params, ...METRICS })
      const dates = Array.from({ length: n }, (_, i) => addDays(date, i - n + 1))
      expect(answer.results.map((p) => p.date)).toEqual(dates)
      for (const p of answer.results) {
        const { date: d, ...rest } = p
        expectTruth(rest, truth(key, onDates([d])), `${key} ${d}`)
      }
    },
  )

  it('ny: period=day by hour has the local hours of the 23-hour day (no 02:00), each equal to its truth', async () => {
    const zone = 'America/New_York'
    const answer = await ask<Series>('timeseries', 'ny', {
      period: 'day',
      date: '2026-03-08',
      metrics: 'events',
    })
    const from = dayStart('2026-03-08', zone)
    const hours = Array.from({ length: 23 }, (_, i) => from + i * HOUR)
    expect(answer.results.map((p) => p.date)).toEqual(
      hours.map((t) => `2026-03-08 ${local(t, zone).hour}:00:00`),
    )
    expect(answer.results.some((p) => p.date.endsWith(' 02:00:00'))).toBe(false)
    for (const [i, t] of hours.entries()) {
      expect([answer.results[i]!.date, answer.results[i]!.events]).toEqual([
        answer.results[i]!.date,
        truth('ny', (e) => tsOf(e) >= t && tsOf(e) < t + HOUR).events,
      ])
    }
  })

  it.each([
    ['ny', '2026-03-10', 7],
    ['kol', '2026-03-11', 1],
  ])('%s: compare=previous_period compares with the local days just before', async (key, date, n) => {
    const period = n === 7 ? '7d' : 'day'
    const answer = await ask<Aggregate>('aggregate', key, {
      period,
      date,
      ...METRICS,
      compare: 'previous_period',
    })
    const now = truth(key, onDates(Array.from({ length: n }, (_, i) => addDays(date, i - n + 1))))
    const before = truth(key, onDates(Array.from({ length: n }, (_, i) => addDays(date, i - 2 * n + 1))))
    for (const m of ['visitors', 'pageviews', 'events'] as const) {
      expect([m, answer.results[m]]).toEqual([
        m,
        {
          value: now[m],
          change:
            before[m] === 0 ? (now[m] > 0 ? 100 : 0) : Math.round(((now[m] - before[m]) / before[m]) * 100),
        },
      ])
    }
  })

  it('ny: event:props:plan as a breakdown and as a filter, equal to the truth of the declared key', async () => {
    const params = { period: '7d', date: '2026-03-10' }
    const dates = Array.from({ length: 7 }, (_, i) => addDays('2026-03-10', i - 6))
    const inRange = onDates(dates)
    const breakdown = await ask<{ results: Array<Record<string, string | number>> }>('breakdown', 'ny', {
      ...params,
      property: 'event:props:plan',
      metrics: 'visitors,events',
    })
    const expected = ['(none)', ...PLANS].map((plan) => {
      const t = truth('ny', (e, zone) => inRange(e, zone) && planOf(e) === plan)
      return { plan, visitors: t.visitors, events: t.events }
    })
    const byPlan = (a: Record<string, unknown>, b: Record<string, unknown>) =>
      String(a.plan).localeCompare(String(b.plan))
    expect([...breakdown.results].sort(byPlan)).toEqual(expected.filter((r) => r.events > 0).sort(byPlan))
    // Sorted by the first metric, as Plausible sorts.
    const visitors = breakdown.results.map((r) => Number(r.visitors))
    expect(visitors).toEqual([...visitors].sort((a, b) => b - a))

    const filtered = await ask<Aggregate>('aggregate', 'ny', {
      ...params,
      metrics: 'visitors,events',
      filters: 'event:props:plan==pro|team',
    })
    const t = truth('ny', (e, zone) => inRange(e, zone) && ['pro', 'team'].includes(planOf(e)))
    expect(values(filtered)).toEqual({ visitors: t.visitors, events: t.events })
    const negated = await ask<Aggregate>('aggregate', 'ny', {
      ...params,
      metrics: 'events',
      filters: 'event:props:plan!=free',
    })
    expect(negated.results.events!.value).toBe(
      truth('ny', (e, zone) => inRange(e, zone) && planOf(e) !== 'free').events,
    )
    const series = await ask<Series>('timeseries', 'ny', {
      ...params,
      metrics: 'events',
      filters: 'event:props:plan==pro',
    })
    for (const p of series.results)
      expect([p.date, p.events]).toEqual([
        p.date,
        truth('ny', (e, z) => onDates([p.date])(e, z) && planOf(e) === 'pro').events,
      ])
  })

  it("GET /v1/sites/:site/props gives the declared keys with the site's read token only", async () => {
    const ny = site.get('ny')!
    const kol = site.get('kol')!
    await h.sites.addPropKey(ny.id, 'author')
    const get = (id: string, token?: string) =>
      app.inject({
        method: 'GET',
        url: `/v1/sites/${encodeURIComponent(id)}/props`,
        headers: token ? { authorization: `Bearer ${token}` } : {},
      })
    const res = await get(ny.id, ny.token)
    expect([res.statusCode, res.json()]).toEqual([
      200,
      { site: ny.id, keys: await h.sites.listPropKeys(ny.id) },
    ])
    expect(res.json().keys).toEqual(['author', 'plan'])
    const none = await get(ny.id)
    expect([none.statusCode, none.json().code]).toEqual([401, 'TALLY_ERR_MISSING_READ_TOKEN'])
    const other = await get(ny.id, kol.token)
    expect([other.statusCode, other.json().code]).toEqual([403, 'TALLY_ERR_WRONG_SITE'])
  })
})
