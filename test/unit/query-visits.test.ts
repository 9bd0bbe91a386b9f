import { tableFromIPC } from 'apache-arrow'
import { afterEach, describe, expect, it } from 'vitest'
import type { Granularity, RowDimension } from '../../core/aggregate/definition.js'
import type { TallyError } from '../../core/errors.js'
import { HyperLogLog } from '../../core/hll.js'
import { hashToken } from '../../core/keys.js'
import { createLogger } from '../../core/log.js'
import type {
  AggregateReader,
  BreakdownResult,
  MergedValues,
  MergedWindow,
  VisitCounts,
} from '../../core/ports/aggregate-store.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import { arrowStream, type ExportMeta, type ExportRow, ndjsonStream } from '../../query/export.js'
import type { DataSnapshot, Freshness, FreshnessSource, SnapshotSource } from '../../query/freshness.js'
import { parseQuery } from '../../query/params.js'
import { DEFAULT_QUERY_LIMITS, StatsService } from '../../query/stats.js'

/**
 * Visit metrics in the stats answers and the export, on a fake store: rates are computed from the
 * summed counts of every window (never averaged), entry/exit pages answer visits, unknown
 * combinations are refused naming what is supported, and windows without visit data are named.
 */

const HOUR = 3_600_000
const DAY = 24 * HOUR
const DAY0 = Date.parse('2024-05-10T00:00:00Z')
const NOW = DAY0 + 3 * DAY

const freshness: Freshness = {
  completeThroughMs: NOW - HOUR,
  receivedThroughMs: NOW,
  graceMs: 300_000,
  partitionsReporting: 1,
  partitionsExpected: 1,
}

const EMPTY = new Uint8Array(0)

function counts(visits: number, bounces: number, durationS: number, pageviews: number): VisitCounts {
  return { visits, bounces, visitDurationMs: durationS * 1000, visitPageviews: pageviews }
}

/**
 * Day 0: 4 visits (1 bounce, 400 s, 10 pageviews) in its hour windows; day 1: 1 visit (a bounce,
 * 0 s, 1 pageview); day 2: written before visits (no visit data).
 */
const DAYS: Array<[number, MergedValues]> = [
  [DAY0, { events: 20, pageviews: 10, botEvents: 0, visitors: EMPTY, ...counts(4, 1, 400, 10) }],
  [DAY0 + DAY, { events: 1, pageviews: 1, botEvents: 0, visitors: EMPTY, ...counts(1, 1, 0, 1) }],
  [DAY0 + 2 * DAY, { events: 7, pageviews: 3, botEvents: 0, visitors: EMPTY }],
]

const ENTRY: Record<string, MergedValues & { final: boolean }> = {
  '/': { events: 0, pageviews: 0, botEvents: 0, visitors: EMPTY, final: false, ...counts(3, 1, 100, 5) },
  '/docs': { events: 0, pageviews: 0, botEvents: 0, visitors: EMPTY, final: false, ...counts(2, 1, 300, 6) },
}

const reader = {
  totals: async (_s: string, g: Granularity, fromMs: number, toMs: number): Promise<MergedWindow[]> =>
    g === 'day'
      ? DAYS.filter(([t]) => t >= fromMs && t < toMs).map(([t, v]) => ({
          windowStart: t,
          ...v,
          final: false,
        }))
      : [],
  breakdownDetailed: async (
    _s: string,
    _g: Granularity,
    d: RowDimension,
    fromMs: number,
  ): Promise<BreakdownResult> => ({
    values: new Map(d === 'entry_page' && fromMs === DAY0 ? Object.entries(ENTRY) : []),
    windows: new Map([[fromMs, { final: false }]]),
    windowsWithoutVisits: new Set(d === 'referrer' ? [fromMs] : []),
  }),
  dimensionWindows: async (
    _s: string,
    _g: Granularity,
    _d: RowDimension,
    values: readonly string[],
    fromMs: number,
  ): Promise<MergedWindow[]> =>
    fromMs === DAY0 && values.includes('/docs') ? [{ windowStart: DAY0, ...ENTRY['/docs']! }] : [],
} as unknown as AggregateReader

const source: FreshnessSource = { current: async () => freshness } as unknown as FreshnessSource

const stats = new StatsService({
  reader,
  freshness: source,
  precision: 14,
  retentionSeconds: { minute: 0, hour: 0, day: 0 },
  limits: DEFAULT_QUERY_LIMITS,
  now: () => NOW,
})

const query = (endpoint: Parameters<typeof parseQuery>[0], q: Record<string, string>) =>
  parseQuery(endpoint, { site: 's', from: '2024-05-10', to: '2024-05-12', ...q }, NOW, DEFAULT_QUERY_LIMITS)

function errorOf(fn: () => unknown): TallyError {
  try {
    fn()
  } catch (e) {
    return e as TallyError
  }
  throw new Error('no error')
}

describe('visit metrics', () => {
  it('aggregate: rates from the summed counts of every window, never averaged; windows without visit data named in meta', async () => {
    const a = await stats.aggregate(
      query('aggregate', { metrics: 'visits,bounce_rate,visit_duration,views_per_visit' }),
    )
    // 5 visits, 2 bounces, 400 s, 11 pageviews (averaging the days' rates would give 62 %, 50 s, 1.75).
    expect(a.results).toEqual({
      visits: { value: 5 },
      bounce_rate: { value: 40 },
      visit_duration: { value: 80 },
      views_per_visit: { value: 2.2 },
    })
    expect(a.meta.visits?.windows_without_data).toBe(1)
    expect(a.meta.visits?.ranges_without_data).toEqual([
      { from: '2024-05-12T00:00:00.000Z', to: '2024-05-13T00:00:00.000Z' },
    ])
    const plain = await stats.aggregate(query('aggregate', { metrics: 'events' }))
    expect(plain.meta.visits).toBeUndefined()
  })

  it('timeseries: per window, 0 without visits', async () => {
    const t = await stats.timeseries(query('timeseries', { interval: 'day', metrics: 'visits,bounce_rate' }))
    expect(t.results.map((p) => [p.visits, p.bounce_rate])).toEqual([
      [4, 25],
      [1, 100],
      [0, 0],
    ])
  })

  it('breakdown by entry_page: visits, pageviews of the visits, bounce rate and duration; sorted by the first metric', async () => {
    const b = await stats.breakdown(query('breakdown', { property: 'entry_page' }))
    expect(b.results).toEqual([
      { entry_page: '/', visits: 3, pageviews: 5, bounce_rate: 33, visit_duration: 33 },
      { entry_page: '/docs', visits: 2, pageviews: 6, bounce_rate: 50, visit_duration: 150 },
    ])
    const byDuration = await stats.breakdown(
      query('breakdown', { property: 'entry_page', metrics: 'visit_duration' }),
    )
    expect(byDuration.results.map((r) => r.entry_page)).toEqual(['/docs', '/'])
    const ref = await stats.breakdown(query('breakdown', { property: 'referrer', metrics: 'visits' }))
    expect(ref.meta.visits?.windows_without_data).toBeGreaterThan(0)
  })

  it('a filter on entry_page answers the visits that entered there', async () => {
    const a = await stats.aggregate(
      query('aggregate', { filters: 'entry_page==/docs', metrics: 'visits,pageviews,views_per_visit' }),
    )
    expect(a.results).toEqual({
      visits: { value: 2 },
      pageviews: { value: 6 },
      views_per_visit: { value: 3 },
    })
  })

  it('refuses combinations the rows do not hold, naming what is supported', () => {
    const byPath = errorOf(() => query('breakdown', { property: 'path', metrics: 'pageviews,visits' }))
    expect([byPath.statusCode, byPath.where]).toEqual([400, 'metrics'])
    expect(byPath.message).toMatch(
      /referrer, utm_source, browser, os, device, country, source, channel, utm_medium, utm_campaign, utm_content, utm_term, entry_page, exit_page, not by path/,
    )
    const filtered = errorOf(() => query('aggregate', { filters: 'event==signup', metrics: 'bounce_rate' }))
    expect(filtered.message).toMatch(/not by event/)
    const entry = errorOf(() => query('breakdown', { property: 'exit_page', metrics: 'visits,visitors' }))
    expect(entry.statusCode).toBe(400)
    expect(entry.message).toMatch(
      /exit_page holds visit metrics only \(visitors not available\): use visits, pageviews/,
    )
    expect(errorOf(() => query('breakdown', { property: 'landing_page' })).message).toMatch(
      /entry_page, exit_page/,
    )
    // Visit metrics by session dimensions and in totals are answerable.
    expect(query('breakdown', { property: 'referrer', metrics: 'visits,bounce_rate' }).metrics).toEqual([
      'visits',
      'bounce_rate',
    ])
    expect(query('breakdown', { property: 'entry_page' }).metrics).toEqual([
      'visits',
      'pageviews',
      'bounce_rate',
      'visit_duration',
    ])
  })
})

describe('visit columns of the export', () => {
  const META: ExportMeta = {
    site: 's',
    from: '2024-05-10T00:00:00.000Z',
    to: '2024-05-11T00:00:00.000Z',
    interval: 'hour',
    property: null,
    complete_through: null,
    freshness: { received_through: null, grace_ms: 300000, partitions_reporting: 0, partitions_expected: 1 },
    metrics: {},
    sketches: false,
    visits: true,
  }
  async function* rows(): AsyncGenerator<ExportRow> {
    const base = {
      value: null,
      events: 3,
      pageviews: 2,
      bot_events: 0,
      visitors: 1,
      final: false,
      status: 'open',
    }
    yield { window_start: DAY0, ...base, visitors_sketch: null, visit: counts(2, 1, 61, 3) }
    yield { window_start: DAY0 + HOUR, ...base, visitors_sketch: null, visit: null }
  }

  it('are asked for with visits=true (export only)', () => {
    expect(query('export', { visits: 'true' }).visits).toBe(true)
    expect(query('export', {}).visits).toBe(false)
    expect(errorOf(() => query('aggregate', { visits: 'true' })).code).toBe('TALLY_ERR_UNKNOWN_PARAMETER')
  })

  it('NDJSON rows carry the sums and the rates, null without visit data', async () => {
    const parts: Buffer[] = []
    for await (const b of ndjsonStream(META, rows())) parts.push(b)
    const lines = Buffer.concat(parts)
      .toString()
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>)
    expect(lines[1]).toMatchObject({
      visits: 2,
      bounces: 1,
      visit_duration_ms: 61_000,
      visit_pageviews: 3,
      bounce_rate: 50,
      visit_duration: 31,
      views_per_visit: 1.5,
    })
    expect(lines[2]).toMatchObject({ visits: null, bounce_rate: null, visit_duration_ms: null })
  })

  it('Arrow has nullable visit columns', async () => {
    const parts: Buffer[] = []
    for await (const b of arrowStream(META, rows())) parts.push(b)
    const table = tableFromIPC(Buffer.concat(parts))
    expect(table.schema.fields.map((f) => f.name)).toEqual([
      'window_start',
      'events',
      'pageviews',
      'bot_events',
      'visitors',
      'visits',
      'bounces',
      'visit_duration_ms',
      'visit_pageviews',
      'bounce_rate',
      'visit_duration',
      'views_per_visit',
      'final',
      'status',
    ])
    const got = table.toArray().map((r) => r.toJSON() as Record<string, unknown>)
    expect([Number(got[0]!.visits), Number(got[0]!.visit_duration_ms), got[0]!.views_per_visit]).toEqual([
      2, 61_000, 1.5,
    ])
    expect([got[1]!.visits, got[1]!.bounce_rate]).toEqual([null, null])
  })
})

describe('settled reads of rows that change after their window closed', () => {
  const now = Date.parse('2024-05-20T12:00:00Z')
  const day = Date.parse('2024-05-20T00:00:00Z')
  let close: (() => Promise<void>) | undefined
  afterEach(async () => {
    await close?.()
    close = undefined
  })

  /**
   * The query API over breakdown rows `valuesOf(dimension, window start)`, complete through an hour
   * ago, whose data version is `state.version` (the stream rewrote rows: a new version, no rebuild).
   */
  async function settledApp(
    valuesOf: (d: RowDimension, fromMs: number) => Array<[string, MergedValues & { final: boolean }]>,
    state: { version: number },
  ) {
    const reader = {
      breakdownDetailed: async (
        _s: string,
        _g: Granularity,
        d: RowDimension,
        fromMs: number,
      ): Promise<BreakdownResult> => ({
        values: new Map(valuesOf(d, fromMs)),
        windows: new Map([[fromMs, { final: false }]]),
        windowsWithoutVisits: new Set(),
      }),
    } as unknown as AggregateReader
    const fresh: Freshness = { ...freshness, completeThroughMs: now - HOUR, receivedThroughMs: now }
    const snapshots: SnapshotSource = {
      current: async () => fresh,
      snapshot: async (): Promise<DataSnapshot> => ({
        freshness: fresh,
        version: `m|${state.version}`,
        finalMark: 'm',
      }),
    }
    const site = {
      siteId: 's',
      domain: 's',
      origins: [],
      readTokenHashes: [hashToken('rt_v')],
      createdAt: day,
    } as unknown as Site
    const app = await buildQueryApp({
      reader,
      auth: new ReadAccessCache({ get: async () => site, list: async () => [site] }),
      freshness: snapshots,
      logger: createLogger('silent'),
      now: () => now,
      retentionSeconds: { minute: 0, hour: 0, day: 0 },
      hllPrecision: 14,
    })
    close = () => app.close()
    return async (params: string) => {
      const res = await app.inject({
        method: 'GET',
        url: `/v1/stats/breakdown?site=s&from=2024-05-20&to=2024-05-20&${params}`,
        headers: { authorization: 'Bearer rt_v' },
      })
      expect(res.statusCode, res.body).toBe(200)
      return (res.json() as { results: Array<Record<string, number | string>> }).results[0]
    }
  }

  it('re-reads the closed hours of the current day: a continuing visit still changes them', async () => {
    const state = { visits: 1, version: 1 }
    const ask = await settledApp(
      (_d, fromMs) =>
        fromMs < now - 2 * HOUR
          ? [
              [
                'x.com',
                {
                  events: 5,
                  pageviews: 5,
                  botEvents: 0,
                  visitors: EMPTY,
                  final: false,
                  ...counts(state.visits, 0, 60, 2),
                },
              ],
            ]
          : [],
      state,
    )
    const visits = async () => (await ask('property=referrer&metrics=visits'))?.visits
    expect(await visits()).toBe(1)
    // The stream rewrote the start hour of a visit (a new data version, no rebuild).
    state.visits = 2
    state.version++
    expect(await visits()).toBe(2)
  })

  it('re-reads them for conversions by exit page: a visit that ends later adds its converter to its start hour', async () => {
    const state = { converters: ['a'], version: 1 }
    const registers = (ids: readonly string[]) => {
      const h = new HyperLogLog(14)
      for (const id of ids) h.add(id)
      return h.toBytes()
    }
    const ask = await settledApp(
      (d, fromMs) =>
        d === 'goal|exit_page' && fromMs < now - 2 * HOUR
          ? [
              [
                'Signup\u001f/pricing',
                {
                  events: 0,
                  pageviews: 0,
                  botEvents: 0,
                  visitors: registers(state.converters),
                  final: false,
                },
              ],
            ]
          : [],
      state,
    )
    const byExit = () =>
      ask(`property=exit_page&metrics=conversions&filters=${encodeURIComponent('goal==Signup')}`)
    expect(await byExit()).toEqual({ exit_page: '/pricing', conversions: 1 })
    // A visit that began in a closed hour ended: the stream added its converter there.
    state.converters = ['a', 'b']
    state.version++
    expect(await byExit()).toEqual({ exit_page: '/pricing', conversions: 2 })
  })
})
