import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { BreakdownDimension } from '../../core/aggregate/breakdowns.js'
import { GOAL_DIMENSION, isGoalByDimension } from '../../core/aggregate/goals.js'
import { TallyError } from '../../core/errors.js'
import { projectRoot } from '../../core/paths.js'
import { METRICS, type Metric, PROPERTIES, parseQuery } from '../params.js'
import { DEFAULT_QUERY_LIMITS, type QueryLimits } from '../stats.js'

interface Asset {
  body: Buffer
  type: string
  etag: string
}

/** Whether the query API takes `metric` with a filter on `property` (and so in a breakdown by it). */
function accepts(property: string, metric: Metric, limits: QueryLimits): boolean {
  try {
    parseQuery(
      'aggregate',
      { site: 'model', period: 'day', metrics: metric, filters: `${property}==x` },
      0,
      limits,
    )
    return true
  } catch (err) {
    if (err instanceof TallyError) return false
    throw err
  }
}

/**
 * Whether the query API answers `metric` in a breakdown by `property` under a goal filter
 * (`filters=goal==NAME`: conversions by another dimension, docs/design.md "Goals"): the property
 * is one conversions are kept by (the rule query/stats.ts answers by) and the parser takes the metric.
 */
function acceptsUnderGoal(property: string, metric: Metric, limits: QueryLimits): boolean {
  if (!isGoalByDimension(property)) return false
  try {
    parseQuery(
      'breakdown',
      { site: 'model', period: 'day', property, metrics: metric, filters: `${GOAL_DIMENSION}==x` },
      0,
      limits,
    )
    return true
  } catch (err) {
    if (err instanceof TallyError) return false
    throw err
  }
}

/** A card of the dashboard's top row: the element showing the value, the metric, the heading. */
export interface TopCard {
  id: string
  metric: Metric
  label: string
}
/** A line of the dashboard's chart: the metric and its legend. */
export interface ChartLine {
  metric: Metric
  label: string
}

/**
 * The top row and the chart: unfiltered (or under a filter on a property, less what its rows do
 * not hold), the traffic's; under a goal filter (`goal==NAME`), as in Plausible, the goal's unique
 * conversions (converters), total conversions (completions) and conversion rate (percent of the
 * range's visitors), the chart plotting conversions. A goal card keeps the element of the card whose
 * number it replaces, so a value has one place.
 */
export const TOP_CARDS: { all: readonly TopCard[]; goal: readonly TopCard[] } = {
  all: [
    { id: 'total-visitors', metric: 'visitors', label: 'Visitors' },
    { id: 'total-pageviews', metric: 'pageviews', label: 'Pageviews' },
    { id: 'total-events', metric: 'events', label: 'Events' },
    { id: 'total-visits', metric: 'visits', label: 'Visits' },
    { id: 'bounce-rate', metric: 'bounce_rate', label: 'Bounce rate' },
    { id: 'visit-duration', metric: 'visit_duration', label: 'Visit duration' },
  ],
  goal: [
    { id: 'total-visitors', metric: 'conversions', label: 'Unique conversions' },
    { id: 'total-events', metric: 'events', label: 'Total conversions' },
    { id: 'conversion-rate', metric: 'conversion_rate', label: 'Conversion rate' },
  ],
}
export const CHART_LINES: { all: readonly ChartLine[]; goal: readonly ChartLine[] } = {
  all: [
    { metric: 'pageviews', label: 'Pageviews' },
    { metric: 'visitors', label: 'Visitors' },
  ],
  goal: [
    { metric: 'events', label: 'Total conversions' },
    { metric: 'conversions', label: 'Unique conversions' },
  ],
}

/**
 * What the page needs of the API's rules, as a script setting `window.TALLY_MODEL`: per property,
 * the metrics it can be asked for (query/params.ts refuses visit metrics by path or event, and
 * anything but visit metrics by entry or exit page; `goal` takes conversions and conversion_rate),
 * and those of a custom property `prop:KEY`. Asked of the parser itself, so the page
 * follows params.ts without a copy of its rules. A property the deployment does not aggregate
 * (TALLY_BREAKDOWNS) takes no metric: the page hides its panel or tab. `goalMetrics` (and
 * `propGoalMetrics` for `prop:KEY`): the metrics a breakdown by the property takes under a goal
 * filter (`filters=goal==NAME`; exit_page takes visitors and conversions only), none where the API
 * cannot answer by it under a goal. `cards` and `lines`: the top row's cards and the chart's lines,
 * unfiltered and under a goal filter (TOP_CARDS, CHART_LINES).
 */
export function dashboardModel(breakdowns?: readonly BreakdownDimension[]): {
  metrics: Record<string, Metric[]>
  propMetrics: Metric[]
  goalMetrics: Record<string, Metric[]>
  propGoalMetrics: Metric[]
  cards: typeof TOP_CARDS
  lines: typeof CHART_LINES
} {
  const limits: QueryLimits =
    breakdowns === undefined ? DEFAULT_QUERY_LIMITS : { ...DEFAULT_QUERY_LIMITS, breakdowns }
  return {
    metrics: Object.fromEntries(
      [...PROPERTIES, GOAL_DIMENSION].map((p) => [p, METRICS.filter((m) => accepts(p, m, limits))]),
    ),
    // Custom properties (`prop:KEY`, the properties panel) all take the same metrics.
    propMetrics: METRICS.filter((m) => accepts('prop:key', m, limits)),
    goalMetrics: Object.fromEntries(
      PROPERTIES.map((p) => [p, METRICS.filter((m) => acceptsUnderGoal(p, m, limits))]),
    ),
    propGoalMetrics: METRICS.filter((m) => acceptsUnderGoal('prop:key', m, limits)),
    cards: TOP_CARDS,
    lines: CHART_LINES,
  }
}

/**
 * The dashboard's own files are plain HTML/CSS/JS read from the package root (no build step); the
 * chart library is uPlot's distribution files from node_modules.
 */
function loadAssets(breakdowns: readonly BreakdownDimension[] | undefined): Map<string, Asset> {
  const own = join(projectRoot(), 'query', 'dashboard')
  const uplot = dirname(createRequire(import.meta.url).resolve('uplot'))
  const files: Array<[url: string, file: string, type: string]> = [
    ['/', join(own, 'index.html'), 'text/html; charset=utf-8'],
    ['/dashboard/app.js', join(own, 'app.js'), 'text/javascript; charset=utf-8'],
    ['/dashboard/style.css', join(own, 'style.css'), 'text/css; charset=utf-8'],
    [
      '/dashboard/vendor/uPlot.iife.min.js',
      join(uplot, 'uPlot.iife.min.js'),
      'text/javascript; charset=utf-8',
    ],
    ['/dashboard/vendor/uPlot.min.css', join(uplot, 'uPlot.min.css'), 'text/css; charset=utf-8'],
  ]
  const out = new Map<string, Asset>()
  const model = Buffer.from(`window.TALLY_MODEL = ${JSON.stringify(dashboardModel(breakdowns))}\n`)
  const bodies: Array<[url: string, body: Buffer | string, type: string]> = [
    ...files,
    ['/dashboard/model.js', model, 'text/javascript; charset=utf-8'],
  ]
  for (const [url, source, type] of bodies) {
    const body = typeof source === 'string' ? readFileSync(source) : source
    out.set(url, {
      body,
      type,
      etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`,
    })
  }
  return out
}

/**
 * Only this server's own files and API: the token typed into the page can go nowhere else. Styles
 * set through the CSSOM (uPlot sizes its elements that way) need no 'unsafe-inline'.
 */
const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ')

/** Serves the dashboard at `/` with its assets under `/dashboard/`. */
export async function dashboardPlugin(
  app: FastifyInstance,
  opts: { breakdowns?: readonly BreakdownDimension[] } = {},
): Promise<void> {
  const assets = loadAssets(opts.breakdowns)
  for (const [url, asset] of assets) {
    // Static files, not API: left out of the OpenAPI document.
    app.get(url, { schema: { hide: true } }, async (req: FastifyRequest, reply: FastifyReply) => {
      void reply
        .header('content-type', asset.type)
        // Revalidated every time (cheap with the ETag), so an upgrade shows at once.
        .header('cache-control', 'no-cache')
        .header('etag', asset.etag)
        .header('x-content-type-options', 'nosniff')
        .header('referrer-policy', 'no-referrer')
      if (url === '/') void reply.header('content-security-policy', CSP).header('x-frame-options', 'DENY')
      if (req.headers['if-none-match'] === asset.etag) return reply.status(304).send()
      return reply.send(asset.body)
    })
  }
}
