import type { FastifyInstance } from 'fastify'
import { afterEach, describe, expect, it } from 'vitest'
import type { Granularity } from '../../core/aggregate/definition.js'
import type { Goal } from '../../core/aggregate/goals.js'
import { hashToken } from '../../core/keys.js'
import { createLogger } from '../../core/log.js'
import type { AggregateReader, MergedWindow } from '../../core/ports/aggregate-store.js'
import type { Site } from '../../core/ports/site-store.js'
import { parsePlausibleBody } from '../../ingest/plausible.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import type { DataSnapshot, Freshness, SnapshotSource } from '../../query/freshness.js'
import { change } from '../../query/plausible/api.js'
import { parsePlausibleFilters } from '../../query/plausible/filters.js'

/**
 * Plausible's Stats API v1 as a Plausible client meets it, checked against Plausible's own answers
 * (the messages and rules of plausible/analytics `external_stats_controller.ex`,
 * `Stats.Compare` and `Stats.Comparisons`, and its controller tests): errors before any read, and
 * compare=previous_period over a fake store whose day D of a month holds D pageviews.
 */

const DAY = 86_400_000
const TOKEN = 'rt_compat'
const SITE = 'compat.test'
/** Today is 2024-05-20 (UTC, the site's zone). */
const NOW = Date.parse('2024-05-20T12:00:00Z')
const logger = createLogger('silent')
const DOCS = 'https://plausible.io/docs/stats-api'

const site: Site = {
  siteId: SITE,
  domain: SITE,
  origins: [],
  writeKey: 'wk_compat',
  readTokenHashes: [hashToken(TOKEN)],
  createdAt: NOW - 400 * DAY,
} as unknown as Site

const freshness: Freshness = {
  completeThroughMs: NOW - 3_600_000,
  receivedThroughMs: NOW,
  graceMs: 300_000,
  partitionsReporting: 1,
  partitionsExpected: 1,
}

/** Pageviews of a UTC day: its day of the month (nothing after today, as a real store). */
const pageviewsOn = (dayStartMs: number) => (dayStartMs > NOW ? 0 : new Date(dayStartMs).getUTCDate())

const MAY = Date.parse('2024-05-01T00:00:00Z')

const reader = {
  totals: async (_site: string, g: Granularity, fromMs: number, toMs: number): Promise<MergedWindow[]> => {
    const out: MergedWindow[] = []
    if (g === 'day')
      for (let t = fromMs; t < toMs; t += DAY)
        if (t <= NOW)
          out.push({
            windowStart: t,
            events: pageviewsOn(t),
            pageviews: pageviewsOn(t),
            // As many one-pageview visits; from May on each one bounces, before May none does.
            visits: pageviewsOn(t),
            bounces: t >= MAY ? pageviewsOn(t) : 0,
            visitDurationMs: 0,
            visitPageviews: pageviewsOn(t),
            botEvents: 0,
            visitors: new Uint8Array(0),
            final: true,
          })
    return out
  },
  // No goal or property rows: the site's goals are never reached in this store.
  dimensionWindows: async (): Promise<MergedWindow[]> => [],
} as unknown as AggregateReader

/** The goals the site defines, as `tally sites goals` keeps them. */
const GOALS: Goal[] = [
  { name: 'Signup', kind: 'event', target: 'Signup' },
  { name: 'Visit /register', kind: 'page', target: '/register' },
]

const source: SnapshotSource = {
  current: async () => freshness,
  snapshot: async (): Promise<DataSnapshot> => ({ freshness, version: 'v', finalMark: 'm' }),
}

let app: FastifyInstance | undefined
afterEach(async () => {
  await app?.close()
  app = undefined
})

async function start(): Promise<FastifyInstance> {
  app = await buildQueryApp({
    reader,
    auth: new ReadAccessCache({
      get: async (id) => (id === SITE ? site : undefined),
      list: async () => [site],
    }),
    sites: {
      get: async (id) => (id === SITE ? site : undefined),
      byDomain: async () => undefined,
      listGoals: async () => GOALS,
    },
    freshness: source,
    logger,
    now: () => NOW,
    retentionSeconds: { minute: 0, hour: 0, day: 0 },
  })
  return app
}

async function ask(endpoint: string, params: Record<string, string>) {
  const a = app ?? (await start())
  const res = await a.inject({
    method: 'GET',
    url: `/api/v1/stats/${endpoint}?${new URLSearchParams({ site_id: SITE, ...params })}`,
    headers: { authorization: `Bearer ${TOKEN}` },
  })
  return { status: res.statusCode, body: res.json() as unknown }
}

describe("Plausible's Stats API v1 errors, as Plausible words them", () => {
  const cases: Array<[string, Record<string, string>, string]> = [
    ['aggregate', { metrics: 'visitors,visitors' }, 'Metrics cannot be queried multiple times.'],
    [
      'aggregate',
      { metrics: 'pageviews,led_zeppelin' },
      `The metric \`led_zeppelin\` is not recognized. Find valid metrics from the documentation: ${DOCS}#metrics`,
    ],
    [
      'aggregate',
      { period: 'aosuhsacp' },
      `Error parsing \`period\` parameter: invalid period \`aosuhsacp\`. Please find accepted values in our docs: ${DOCS}#time-periods`,
    ],
    [
      'aggregate',
      { period: 'custom' },
      `The \`date\` parameter is required when using a custom period. See ${DOCS}#time-periods`,
    ],
    [
      'aggregate',
      { period: 'custom', date: '2020-131-2piaskj,s,a90uac' },
      `Invalid format for \`date\` parameter. When using a custom period, please include two ISO-8601 formatted dates joined by a comma. See ${DOCS}#time-periods`,
    ],
    [
      'aggregate',
      { period: 'month', date: '2021-dkjbAS' },
      'Error parsing `date` parameter: invalid_format. Please specify a valid date in ISO-8601 format.',
    ],
    [
      'aggregate',
      { period: 'day', date: '2021-02-30' },
      'Error parsing `date` parameter: invalid_date. Please specify a valid date in ISO-8601 format.',
    ],
    [
      'timeseries',
      { interval: 'hour' },
      'Error parsing `interval` parameter: invalid interval `hour`. Valid intervals are `day`, `month`',
    ],
    [
      'breakdown',
      {},
      'The `property` parameter is required. Please provide at least one property to show a breakdown by.',
    ],
    [
      'breakdown',
      { property: 'visit:planet' },
      `Invalid property 'visit:planet'. Please provide a valid property for the breakdown endpoint: ${DOCS}#properties`,
    ],
    [
      'aggregate',
      { filters: 'visit:planet==Mars' },
      `Invalid filter property 'visit:planet'. Please provide a valid filter property: ${DOCS}#properties`,
    ],
    [
      'breakdown',
      { property: 'event:page', limit: '0' },
      'Please provide limit as a number between 1 and 1000.',
    ],
    [
      'breakdown',
      { property: 'event:page', limit: '1001' },
      'Please provide limit as a number between 1 and 1000.',
    ],
    ['breakdown', { property: 'event:page', page: '0' }, 'Please provide page as a positive number.'],
    [
      'aggregate',
      { metrics: 'conversion_rate' },
      'Metric `conversion_rate` can only be queried in a goal breakdown or with a goal filter',
    ],
    [
      'aggregate',
      { metrics: 'time_on_page' },
      'Metric `time_on_page` can only be queried in a page breakdown or with a page filter.',
    ],
    [
      'aggregate',
      { metrics: 'pageviews,visit_duration', filters: 'event:name==Signup' },
      'Session metric `visit_duration` cannot be queried when using a filter on `event:name`.',
    ],
    [
      'aggregate',
      { metrics: 'views_per_visit', filters: 'event:page==/something' },
      'Metric `views_per_visit` cannot be queried with a filter on `event:page`.',
    ],
    [
      'breakdown',
      { property: 'event:name', metrics: 'visitors,bounce_rate' },
      'Session metric `bounce_rate` cannot be queried for breakdown by `event:name`.',
    ],
    [
      'aggregate',
      { filters: 'event:goal==Signu' },
      'The goal `Signu` is not configured for this site. Find out how to configure goals here: https://plausible.io/docs/stats-api#filtering-by-goals',
    ],
    [
      'timeseries',
      { filters: 'event:goal==Signup|Visit /pricing' },
      'The pageview goal for the pathname `/pricing` is not configured for this site. Find out how to configure goals here: https://plausible.io/docs/stats-api#filtering-by-goals',
    ],
  ]
  it.each(cases)('%s %j', async (endpoint, params, error) => {
    expect(await ask(endpoint, params)).toEqual({ status: 400, body: { error } })
  })
})

/** Sum of pageviewsOn over local days first..last inclusive (UTC). */
function pageviewsOf(first: string, last: string): number {
  let n = 0
  for (let t = Date.parse(`${first}T00:00:00Z`); t <= Date.parse(`${last}T00:00:00Z`); t += DAY)
    n += pageviewsOn(t)
  return n
}

const percent = (before: number, now: number) =>
  before === 0 ? (now > 0 ? 100 : 0) : Math.round(((now - before) / before) * 100)

describe('filters as Plausible parses them', () => {
  it('trims spaces around the property, the operator and the value', () => {
    const [page, source] = parsePlausibleFilters(' event:page == /blog ;visit:source!= Google ', 20)
    expect(page).toMatchObject({ values: ['/blog'], negated: false, property: { tally: 'path' } })
    expect(source).toMatchObject({ values: ['Google'], negated: true, property: { tally: 'source' } })
  })
})

describe("Plausible's event API", () => {
  it('drops props whose key or value is blank, as Plausible does', () => {
    const parsed = parsePlausibleBody({
      n: 'Signup',
      u: 'https://shop.test/',
      p: { plan: 'pro', blank: '   ', empty: '', ' ': 'x', seats: 3, trial: false },
    })
    expect(parsed.ok && parsed.event.props).toEqual({ plan: 'pro', seats: 3, trial: false })
  })
})

describe('goal filters', () => {
  it('answers a goal the site defines (by name, or a page goal by its Visit name)', async () => {
    for (const goal of ['Signup', 'Visit /register', 'Signup|Visit /register']) {
      const res = await ask('aggregate', { metrics: 'visitors,events', filters: `event:goal==${goal}` })
      expect([goal, res]).toEqual([
        goal,
        { status: 200, body: { results: { visitors: { value: 0 }, events: { value: 0 } } } },
      ])
    }
  })
})

describe('goal filters, goals added later', () => {
  it("answers a goal added after the site's goals were read (a miss reads them again before a 400)", async () => {
    const before = await ask('aggregate', { filters: 'event:goal==Signup' })
    expect(before.status).toBe(200)
    expect((await ask('aggregate', { filters: 'event:goal==Trial' })).status).toBe(400)
    GOALS.push({ name: 'Trial', kind: 'event', target: 'Trial' })
    try {
      // Within a second of the last read a miss is refused from the kept list (no store read per
      // unknown name); after it, the list is read again.
      expect((await ask('aggregate', { filters: 'event:goal==Trial' })).status).toBe(400)
      await new Promise((r) => setTimeout(r, 1100))
      const res = await ask('aggregate', { metrics: 'visitors', filters: 'event:goal==Trial' })
      expect(res).toEqual({ status: 200, body: { results: { visitors: { value: 0 } } } })
    } finally {
      GOALS.pop()
    }
  })
})

describe('compare=previous_period as Plausible compares', () => {
  it('compares a period that runs past today with as many days before it as it has up to today', async () => {
    // period=month on 2024-05-20: May 1..31 is asked; up to today it has 20 days, so Plausible
    // compares with the 20 days before May 1 (April 11..30), not with 31 days.
    const month = await ask('aggregate', {
      period: 'month',
      metrics: 'pageviews',
      compare: 'previous_period',
    })
    const now = pageviewsOf('2024-05-01', '2024-05-31')
    const before = pageviewsOf('2024-04-11', '2024-04-30')
    expect(month).toEqual({
      status: 200,
      body: { results: { pageviews: { value: now, change: percent(before, now) } } },
    })
    // A past period is compared whole: 7d ending 2024-05-10 with May 4..10 against April 27..May 3.
    const week = await ask('aggregate', {
      period: '7d',
      date: '2024-05-10',
      metrics: 'pageviews',
      compare: 'previous_period',
    })
    const w = pageviewsOf('2024-05-04', '2024-05-10')
    const wb = pageviewsOf('2024-04-27', '2024-05-03')
    expect(week.body).toEqual({ results: { pageviews: { value: w, change: percent(wb, w) } } })
  })

  it("answers bounce_rate's change as null after a period whose bounce rate is 0", async () => {
    // May 1st: every visit bounces (100); April 30th: none does (0). Plausible: change null, not 100.
    const res = await ask('aggregate', {
      period: 'day',
      date: '2024-05-01',
      metrics: 'bounce_rate,visits',
      compare: 'previous_period',
    })
    const visits = pageviewsOf('2024-05-01', '2024-05-01')
    expect(res).toEqual({
      status: 200,
      body: {
        results: {
          bounce_rate: { value: 100, change: null },
          visits: { value: visits, change: percent(pageviewsOf('2024-04-30', '2024-04-30'), visits) },
        },
      },
    })
  })

  it("computes bounce_rate's and conversion_rate's changes in points", () => {
    // Plausible's Stats.Compare: bounce_rate's change exists only when the previous one is above 0.
    expect(change('bounce_rate', 0, 40)).toBeNull()
    expect(change('bounce_rate', 50, 40)).toBe(-10)
    // conversion_rate (a percentage): the difference in points, one decimal (its test: 33.33 → 50.0 is 16.7).
    expect(change('conversion_rate', 33.33, 50)).toBe(16.7)
  })
})
