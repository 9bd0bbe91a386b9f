import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { createContext, runInContext } from 'node:vm'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { GOAL_BY_DIMENSIONS } from '../../core/aggregate/goals.js'
import { createLogger } from '../../core/log.js'
import { projectRoot } from '../../core/paths.js'
import type { AggregateReader } from '../../core/ports/aggregate-store.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import type { FreshnessSource } from '../../query/freshness.js'
import { parseQuery } from '../../query/params.js'
import { DEFAULT_QUERY_LIMITS } from '../../query/stats.js'

/**
 * The dashboard asks the query API only what it answers: /dashboard/model.js tells the page which
 * metrics each property takes (from query/params.ts), and every table of index.html asks a
 * property the API knows, for metrics it takes. The page itself is tested in Chromium
 * (test/integration/browser.test.ts).
 */

let app: FastifyInstance
let model: {
  metrics: Record<string, string[]>
  propMetrics: string[]
  goalMetrics: Record<string, string[]>
  propGoalMetrics: string[]
  cards: Record<'all' | 'goal', Array<{ id: string; metric: string; label: string }>>
  lines: Record<'all' | 'goal', Array<{ metric: string; label: string }>>
}

beforeAll(async () => {
  app = await buildQueryApp({
    reader: {} as AggregateReader,
    auth: new ReadAccessCache({ get: async () => undefined, list: async () => [] }),
    freshness: { current: async () => ({}) } as unknown as FreshnessSource,
    logger: createLogger('silent'),
  })
  const res = await app.inject({ method: 'GET', url: '/dashboard/model.js' })
  expect(res.statusCode).toBe(200)
  expect(res.headers['content-type']).toMatch(/^text\/javascript/)
  const window: Record<string, unknown> = {}
  runInContext(res.body, createContext({ window }))
  model = window.TALLY_MODEL as typeof model
})

afterAll(async () => {
  await app?.close()
})

const VISIT_METRICS = ['visits', 'bounce_rate', 'visit_duration', 'views_per_visit']

describe('dashboard model (/dashboard/model.js)', () => {
  it('gives each property the metrics the API takes with it', () => {
    // Event rows (path, event): counts and visitors, no visit metrics.
    for (const p of ['path', 'event']) {
      expect(model.metrics[p]).toEqual(expect.arrayContaining(['visitors', 'pageviews', 'events']))
      for (const m of VISIT_METRICS) expect(model.metrics[p], `${p} ${m}`).not.toContain(m)
    }
    // Entry and exit pages: visits and the pageviews of those visits only.
    for (const p of ['entry_page', 'exit_page']) {
      expect(model.metrics[p]).toEqual(expect.arrayContaining([...VISIT_METRICS, 'pageviews']))
      for (const m of ['visitors', 'events']) expect(model.metrics[p], `${p} ${m}`).not.toContain(m)
    }
    // Session properties (a visit's first event): counts, visitors and visit metrics.
    for (const p of ['country', 'source', 'channel', 'referrer', 'utm_campaign', 'browser', 'device'])
      expect(model.metrics[p]).toEqual(
        expect.arrayContaining(['visitors', 'pageviews', 'events', ...VISIT_METRICS]),
      )
    // Custom properties (the properties panel asks visitors and events): event rows that also carry
    // the visits of their first event's value (issue 17 point 4), so visit metrics too.
    expect(model.propMetrics).toEqual(expect.arrayContaining(['visitors', 'events', ...VISIT_METRICS]))
  })

  it('every table of the page asks a known property for metrics it takes', () => {
    const html = readFileSync(join(projectRoot(), 'query', 'dashboard', 'index.html'), 'utf8')
    const tables = [...html.matchAll(/<table id="([^"]+)" data-property="([^"]+)" data-metrics="([^"]+)"/g)]
    expect(tables.map((t) => t[2])).toEqual(
      expect.arrayContaining(['country', 'source', 'channel', 'referrer', 'entry_page', 'exit_page']),
    )
    for (const k of ['source', 'medium', 'campaign', 'content', 'term'])
      expect(tables.map((t) => t[2])).toContain(`utm_${k}`)
    for (const [, id, property, metrics] of tables) {
      expect(model.metrics[property!], `#${id}: ${property}`).toBeDefined()
      for (const m of metrics!.split(',')) expect(model.metrics[property!], `#${id}: ${m}`).toContain(m)
    }
  })

  it('gives each property the metrics a breakdown by it takes under a goal filter', () => {
    // docs/design.md "Goals": conversions are kept by the session dimensions, entry_page, path,
    // event and prop:KEY (`goal|DIM` rows): converters (visitors, conversions), completions
    // (events) and the rate over DIM's own visitors, which entry_page rows do not hold (visits).
    const byGoal = new Set<string>(GOAL_BY_DIMENSIONS)
    for (const p of GOAL_BY_DIMENSIONS) {
      expect(model.goalMetrics[p], p).toEqual(expect.arrayContaining(['conversions', 'events', 'visitors']))
      for (const m of ['bounce_rate', 'visits', 'visit_duration'])
        expect(model.goalMetrics[p], `${p} ${m}`).not.toContain(m)
      if (p === 'entry_page') expect(model.goalMetrics[p]).not.toContain('conversion_rate')
      else expect(model.goalMetrics[p], p).toContain('conversion_rate')
    }
    expect(model.propGoalMetrics).toEqual(
      expect.arrayContaining(['conversions', 'events', 'visitors', 'conversion_rate']),
    )
    // Exit pages: converters of ended visits only.
    expect(model.goalMetrics.exit_page).toEqual(['visitors', 'conversions'])
    // Any other property: no `goal|DIM` rows, so nothing under a goal filter.
    const others = Object.keys(model.goalMetrics).filter((p) => !byGoal.has(p) && p !== 'exit_page')
    for (const p of others) expect(model.goalMetrics[p], p).toEqual([])
    // Every table's property is in the model, so the page knows whether it answers under a goal.
    const html = readFileSync(join(projectRoot(), 'query', 'dashboard', 'index.html'), 'utf8')
    for (const [, property] of html.matchAll(/<table id="[^"]+" data-property="([^"]+)"/g))
      if (property !== 'goal') expect(model.goalMetrics[property!], property).toBeDefined()
  })

  it('gives the top row and the chart the metrics the API answers, unfiltered and under a goal filter', () => {
    /** Whether the parser takes `metrics` on `endpoint` (with `filters` when given). */
    const takes = (endpoint: 'aggregate' | 'timeseries', metrics: string[], filters?: string) => {
      try {
        parseQuery(
          endpoint,
          { site: 's', period: 'day', metrics: metrics.join(','), ...(filters ? { filters } : {}) },
          0,
          DEFAULT_QUERY_LIMITS,
        )
        return true
      } catch {
        return false
      }
    }
    const html = readFileSync(join(projectRoot(), 'query', 'dashboard', 'index.html'), 'utf8')
    // The value elements of the top row's cards (the live card's is "Visitors now", unfiltered).
    const valueIds = [...html.matchAll(/<p class="value" id="([^"]+)">/g)].map((m) => m[1]!)
    // Unfiltered: the six traffic totals, as before goals; the chart, pageviews and visitors.
    expect(model.cards.all.map((c) => c.metric)).toEqual([
      'visitors',
      'pageviews',
      'events',
      'visits',
      'bounce_rate',
      'visit_duration',
    ])
    expect(
      takes(
        'aggregate',
        model.cards.all.map((c) => c.metric),
      ),
    ).toBe(true)
    expect(model.lines.all.map((l) => l.metric)).toEqual(['pageviews', 'visitors'])
    expect(
      takes(
        'timeseries',
        model.lines.all.map((l) => l.metric),
      ),
    ).toBe(true)
    // Under a goal filter: Plausible's Unique conversions (converters), Total conversions
    // (completions) and Conversion rate, asked with the filter; none of the traffic cards whose
    // numbers do not apply to a goal (pageviews of an event goal are 0; visits are not kept by goal).
    expect(model.cards.goal.map((c) => [c.metric, c.label])).toEqual([
      ['conversions', 'Unique conversions'],
      ['events', 'Total conversions'],
      ['conversion_rate', 'Conversion rate'],
    ])
    const goalMetrics = model.cards.goal.map((c) => c.metric)
    expect(takes('aggregate', goalMetrics, 'goal==x')).toBe(true)
    // Conversion metrics need the goal filter: unfiltered they are refused, so they are goal-only.
    for (const m of ['conversions', 'conversion_rate']) expect(takes('aggregate', [m]), m).toBe(false)
    expect(model.metrics.goal).toEqual(expect.arrayContaining(goalMetrics))
    expect(model.lines.goal.map((l) => [l.metric, l.label])).toEqual([
      ['events', 'Total conversions'],
      ['conversions', 'Unique conversions'],
    ])
    expect(
      takes(
        'timeseries',
        model.lines.goal.map((l) => l.metric),
        'goal==x',
      ),
    ).toBe(true)
    // Every card's value element is on the page, and every card of the page is in one set.
    const ids = new Set([...model.cards.all, ...model.cards.goal].map((c) => c.id))
    for (const id of ids) expect(valueIds, id).toContain(id)
    expect(valueIds.filter((id) => !ids.has(id))).toEqual(['realtime'])
    // A card's element shows one metric per set.
    for (const set of [model.cards.all, model.cards.goal])
      expect(new Set(set.map((c) => c.id)).size).toBe(set.length)
  })
})
