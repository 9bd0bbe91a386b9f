import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify'
import { LRUCache } from 'lru-cache'
import { isGoalByDimension } from '../../core/aggregate/goals.js'
import { ERR } from '../../core/error-codes.js'
import { TallyError } from '../../core/errors.js'
import type { SiteStore } from '../../core/ports/site-store.js'
import type { ReadAuthorizer } from '../auth.js'
import { type Filter, type Metric, type ParsedQuery, type ParseLimits, parseQuery } from '../params.js'
import { badParameter, type TimeRange } from '../range.js'
import type { StatsService } from '../stats.js'
import { formatLocalDate, localDateOf, UTC } from '../zone.js'
import { matcherOf, type PlausibleFilter, parsePlausibleFilters } from './filters.js'
import { monthsOf, previousPeriod, type ResolvedPeriod, resolvePeriod } from './period.js'
import {
  checkPlausibleMetrics,
  isPlausibleWorded,
  PLAUSIBLE_DOCS,
  type PlausibleProperty,
  plausibleError,
  plausibleLabel,
  plausibleMetrics,
  plausibleProperty,
  plausibleWording,
  tallyValue,
} from './properties.js'
import { plausibleSchema, realtimeSchema } from './schemas.js'

/**
 * Plausible's Stats API v1 (`/api/v1/stats/{aggregate,timeseries,breakdown,realtime/visitors}`) as
 * a thin translation over Tally's stats (query/stats.ts): Plausible's parameters become a Tally
 * query (its checks and limits apply), the answer is reshaped to Plausible's. Errors answer
 * Plausible's `{"error": "…"}`; what the rollups cannot answer (see query/stats.ts) is a 400 that
 * names what is supported.
 */

export interface PlausibleApiDeps {
  stats: StatsService
  auth: ReadAuthorizer
  /**
   * Finds a site by id, domain or alias (`site_id` may be either), and its goals (a filter on a goal
   * the site does not define is Plausible's 400). Without it: ids only, goals not checked.
   */
  sites?: Pick<SiteStore, 'get' | 'byDomain'> & Partial<Pick<SiteStore, 'listGoals'>>
  limits: ParseLimits
  now: () => number
  /** How long a `site_id` → site resolution is kept. Default 10000 ms. */
  siteCacheTtlMs?: number
}

type Query = Record<string, unknown>

/** An authorized site: its id and IANA time zone (`UTC` for a site without one). */
interface Site {
  siteId: string
  zone: string
}

const UNKNOWN_SITE_TTL_MS = 2000

/** Answered as a bad key (401), as Plausible answers a site the key cannot read. */
function unknownSite(raw: string): TallyError {
  return new TallyError(ERR.SITE_NOT_FOUND, `no site ${raw}`, { statusCode: 401, where: 'site_id' })
}

const MESSAGES = {
  missingKey: 'Missing API key. Please use a valid Plausible API key as a Bearer Token.',
  invalidKey:
    "Invalid API key or site ID. Please make sure you're using a valid API key with access to the site you've requested.",
  missingSite: 'Missing site ID. Please provide the required site_id parameter with your request.',
}

function text(q: Query, name: string): string | undefined {
  const v = q[name]
  if (v === undefined) return undefined
  if (Array.isArray(v)) throw badParameter(name, `${name} is given more than once`)
  return String(v)
}

/** `limit`, from 1 to `max` (Plausible's 1000 by default), with Plausible's message. */
function limitOf(q: Query, fallback: number, max: number): number {
  const raw = text(q, 'limit')
  if (raw === undefined) return fallback
  if (!/^\d{1,9}$/.test(raw) || Number(raw) < 1 || Number(raw) > max)
    throw plausibleError('limit', `Please provide limit as a number between 1 and ${max}.`)
  return Number(raw)
}

/** The most pages a breakdown is paged to (Plausible has no bound; a page past it is empty anyway). */
const MAX_PAGE = 100_000

/** `page`, from 1, with Plausible's message for one that is no positive number. */
function pageOf(q: Query): number {
  const raw = text(q, 'page')
  if (raw === undefined) return 1
  if (!/^\d{1,9}$/.test(raw) || Number(raw) < 1)
    throw plausibleError('page', 'Please provide page as a positive number.')
  if (Number(raw) > MAX_PAGE)
    throw badParameter('page', `page=${raw} is above ${MAX_PAGE}, the most this server pages to`)
  return Number(raw)
}

/** Plausible's answer to an error: its status and `{"error": message}`. */
function answerError(reply: FastifyReply, err: unknown): FastifyReply {
  if (err instanceof TallyError) {
    const status = err.statusCode ?? 500
    if (err.code === ERR.MISSING_READ_TOKEN) return reply.status(401).send({ error: MESSAGES.missingKey })
    if (err.code === ERR.INVALID_READ_TOKEN || err.code === ERR.WRONG_SITE || err.code === ERR.SITE_NOT_FOUND)
      return reply.status(401).send({ error: MESSAGES.invalidKey })
    if (status < 500)
      return reply
        .status(status)
        .send({ error: isPlausibleWorded(err) ? err.message : plausibleWording(err.message) })
    if (err.retriable) return reply.status(503).send({ error: err.message })
  }
  // Anything else is Tally's (logged and answered by the server's handler).
  throw err
}

export async function plausibleStatsRoutes(app: FastifyInstance, deps: PlausibleApiDeps): Promise<void> {
  const ttl = deps.siteCacheTtlMs ?? 10_000
  const resolved = new LRUCache<string, string>({ max: 10_000, ttl: Math.max(1, ttl) })

  /**
   * `site_id` as a Tally site id: the id itself, or the site whose domain or alias it is. Unknown
   * ids are remembered too (2 s, as the read-token cache does), so a flood of made-up ids does not
   * become a flood of store reads.
   */
  async function siteOf(raw: string): Promise<string> {
    const known = resolved.get(raw)
    if (known === '') throw unknownSite(raw)
    if (known !== undefined) return known
    let siteId = raw
    if (deps.sites && (await deps.sites.get(raw)) === undefined) {
      const domain = raw
        .trim()
        .toLowerCase()
        .replace(/^www\./, '')
      const site = await deps.sites.byDomain(domain)
      if (!site) {
        resolved.set(raw, '', { ttl: Math.min(ttl, UNKNOWN_SITE_TTL_MS) })
        throw unknownSite(raw)
      }
      siteId = site.siteId
    }
    resolved.set(raw, siteId)
    return siteId
  }

  /**
   * Authorizes (before any parameter is judged) and returns the site id and its time zone (every
   * period, date and label of the answer is in it; `tally sites set --timezone`).
   */
  async function authorized(q: Query, authorization: string | undefined): Promise<Site> {
    const raw = text(q, 'site_id')
    if (!authorization) throw new TallyError(ERR.MISSING_READ_TOKEN, MESSAGES.missingKey, { statusCode: 401 })
    if (raw === undefined || raw === '')
      throw badParameter('site_id', MESSAGES.missingSite, ERR.MISSING_PARAMETER)
    const siteId = await siteOf(raw)
    if (!deps.auth.allowsNow?.(siteId, authorization)) await deps.auth.authorize(siteId, authorization)
    return { siteId, zone: deps.auth.zoneOf?.(siteId) ?? UTC }
  }

  /**
   * A range of whole local days as Tally's `from`/`to` dates, which Tally's parser resolves in the
   * zone to the same instants, so its stats read local days (exact from minute windows where the
   * zone's midnight is not a whole hour, 23- or 25-hour days across a daylight-saving change).
   */
  function localDates(range: TimeRange, zone: string): { from: string; to: string } {
    return {
      from: formatLocalDate(localDateOf(range.fromMs, zone)),
      to: formatLocalDate(localDateOf(range.toMs - 1, zone)),
    }
  }

  /**
   * A Tally query of `endpoint` over `range`: parsed by Tally's parser (its checks of metrics by
   * property and its limits), then given the filters' values. Negations and wildcards are resolved
   * to the values of the range that match, read from a breakdown of their property.
   */
  async function tallyQuery(
    endpoint: 'aggregate' | 'timeseries' | 'breakdown',
    { siteId, zone }: Site,
    range: TimeRange,
    metrics: Metric[],
    filters: PlausibleFilter[],
    extra: { property?: PlausibleProperty; interval?: string; limit?: number; page?: number } = {},
  ): Promise<ParsedQuery> {
    const raw: Query = {
      site: siteId,
      ...localDates(range, zone),
      metrics: metrics.join(','),
      // Placeholders: the parser checks the metrics against each filtered property.
      ...(filters.length > 0 ? { filters: filters.map((f) => `${f.property.tally}==x`).join(';') } : {}),
      ...(extra.property ? { property: extra.property.tally } : {}),
      ...(extra.interval ? { interval: extra.interval } : {}),
      ...(extra.limit ? { limit: String(extra.limit) } : {}),
      ...(extra.page ? { page: String(extra.page) } : {}),
    }
    const q = parseQuery(endpoint, raw, deps.now(), deps.limits, zone)
    const tallyFilters: Filter[] = []
    for (const f of filters) {
      const property = f.property.tally as Filter['property']
      if (!f.negated && !f.wildcard) {
        tallyFilters.push({ property, values: f.values.map((v) => tallyValue(property, v)) })
        continue
      }
      tallyFilters.push({ property, values: await matchingValues({ siteId, zone }, range, f) })
    }
    return { ...q, filters: tallyFilters }
  }

  /** The values of the filter's property in the range that the filter keeps. */
  async function matchingValues(
    { siteId, zone }: Site,
    range: TimeRange,
    f: PlausibleFilter,
  ): Promise<string[]> {
    const property = f.property.tally
    const visitRows = property === 'entry_page' || property === 'exit_page'
    const max = deps.limits.maxLimit
    const q = parseQuery(
      'breakdown',
      {
        site: siteId,
        ...localDates(range, zone),
        property,
        metrics: visitRows ? 'visits' : 'events',
        limit: String(max),
      },
      deps.now(),
      deps.limits,
      zone,
    )
    const answer = await deps.stats.breakdown(q)
    if (answer.meta.total_values > max) {
      throw badParameter(
        'filters',
        `${f.property.name} has ${answer.meta.total_values} values in this range; a wildcard or != filter is resolved over at most ${max}: use == with the values`,
        ERR.FILTER_UNSUPPORTED,
      )
    }
    const matches = matcherOf(f)
    // Matched by Plausible's name of the value (Desktop, Mac) or Tally's own (desktop, Mac OS), as
    // `==` takes either; asked as Tally stores them.
    const values = answer.results
      .map((r) => String(r[property]))
      .filter((v) => (matches(plausibleLabel(property, v)) || matches(v)) !== f.negated)
    // No value matches: a value no row has, so every number is 0.
    return values.length > 0 ? values : ['\u0000']
  }

  const goalNames = new LRUCache<string, { names: readonly string[]; readAtMs: number }>({
    max: 10_000,
    ttl: Math.max(1, ttl),
  })
  /** A miss reads a site's goals again at most this often (unknown names cannot flood the store). */
  const GOALS_REREAD_MS = 1000

  /**
   * Plausible's check of goal filters: each goal named must be one the site defines (a site moved
   * from Plausible without its goals would otherwise answer 0 without a word). Patterns (`*`) are
   * Tally's and match among the goals the range holds, so they are not checked.
   */
  async function checkGoals(siteId: string, filters: readonly PlausibleFilter[]): Promise<void> {
    const goal = filters.find((f) => f.property.tally === 'goal')
    if (!goal || !deps.sites?.listGoals) return
    const listGoals = deps.sites.listGoals.bind(deps.sites)
    const read = async (): Promise<readonly string[]> => {
      const names = (await listGoals(siteId)).map((g) => g.name)
      goalNames.set(siteId, { names, readAtMs: Date.now() })
      return names
    }
    const missingIn = (names: readonly string[]) =>
      goal.values.find((v) => !v.includes('*') && !names.includes(v))
    const cached = goalNames.get(siteId)
    let missing = missingIn(cached?.names ?? (await read()))
    // A goal added since the list was kept is not refused: a miss reads the list again first (at
    // most once a second per site).
    if (missing !== undefined && cached !== undefined && Date.now() - cached.readAtMs >= GOALS_REREAD_MS)
      missing = missingIn(await read())
    if (missing === undefined) return
    const what = missing.startsWith('Visit ')
      ? `The pageview goal for the pathname \`${missing.slice('Visit '.length)}\` is not configured for this site. `
      : `The goal \`${missing}\` is not configured for this site. `
    throw plausibleError(
      'filters',
      `${what}Find out how to configure goals here: ${PLAUSIBLE_DOCS}#filtering-by-goals`,
    )
  }

  /** Period, filters and metrics, judged in Plausible's order (the first wrong one is answered). */
  async function commonParams(
    q: Query,
    { siteId, zone }: Site,
    property?: PlausibleProperty,
  ): Promise<{ period: ResolvedPeriod; metrics: Metric[]; filters: PlausibleFilter[] }> {
    const period = resolvePeriod(text(q, 'period'), text(q, 'date'), deps.now(), zone)
    const filters = parsePlausibleFilters(text(q, 'filters'), deps.limits.maxFilterValues)
    await checkGoals(siteId, filters)
    const metricsRaw = text(q, 'metrics')
    checkPlausibleMetrics(
      metricsRaw,
      filters.map((f) => f.property.name),
      property?.name,
    )
    return { period, metrics: plausibleMetrics(metricsRaw), filters }
  }

  const errorHandler = (error: FastifyError, _req: unknown, reply: FastifyReply) => answerError(reply, error)

  app.get(
    '/api/v1/stats/aggregate',
    { schema: plausibleSchema('aggregate', deps.limits), errorHandler },
    async (req) => {
      const q = req.query as Query
      const site = await authorized(q, req.headers.authorization)
      const { period, metrics, filters } = await commonParams(q, site)
      const compare = text(q, 'compare')
      if (compare !== undefined && compare !== 'previous_period')
        throw badParameter('compare', `compare=${compare} is not supported; use compare=previous_period`)
      const totals = async (range: TimeRange) =>
        (await deps.stats.aggregate(await tallyQuery('aggregate', site, range, metrics, filters))).results
      const now = await totals(period)
      const before = compare ? await totals(previousPeriod(period, site.zone, deps.now())) : undefined
      const results: Record<string, { value: number; change?: number | null }> = {}
      for (const m of metrics) {
        const value = now[m]?.value ?? 0
        results[m] = before ? { value, change: change(m, before[m]?.value ?? 0, value) } : { value }
      }
      return { results }
    },
  )

  app.get(
    '/api/v1/stats/timeseries',
    { schema: plausibleSchema('timeseries', deps.limits), errorHandler },
    async (req) => {
      const q = req.query as Query
      const site = await authorized(q, req.headers.authorization)
      const { period, metrics, filters } = await commonParams(q, site)
      const intervalRaw = text(q, 'interval')
      // `date` is Plausible's older name of `day`, still taken.
      if (intervalRaw !== undefined && !['date', 'day', 'month'].includes(intervalRaw))
        throw plausibleError(
          'interval',
          `Error parsing \`interval\` parameter: invalid interval \`${intervalRaw}\`. Valid intervals are \`day\`, \`month\``,
        )
      const interval =
        intervalRaw === 'month' ||
        (intervalRaw === undefined && (period.period === '6mo' || period.period === '12mo'))
          ? 'month'
          : period.period === 'day' && intervalRaw === undefined
            ? 'hour'
            : 'day'
      if (interval === 'month') {
        const months = monthsOf(period, site.zone)
        const points = await Promise.all(
          months.map(async (m) => {
            const a = await deps.stats.aggregate(await tallyQuery('aggregate', site, m, metrics, filters))
            return { date: m.date, ...Object.fromEntries(metrics.map((k) => [k, a.results[k]?.value ?? 0])) }
          }),
        )
        return { results: points }
      }
      const answer = await deps.stats.timeseries(
        await tallyQuery('timeseries', site, period, metrics, filters, { interval }),
      )
      // Tally's dates are local times with their offset (2026-03-08T01:00:00.000-05:00): Plausible's
      // labels are the local date and time without it.
      return {
        results: answer.results.map((p) => ({
          date: interval === 'hour' ? `${p.date.slice(0, 10)} ${p.date.slice(11, 19)}` : p.date.slice(0, 10),
          ...Object.fromEntries(metrics.map((k) => [k, p[k] ?? 0])),
        })),
      }
    },
  )

  app.get(
    '/api/v1/stats/breakdown',
    { schema: plausibleSchema('breakdown', deps.limits), errorHandler },
    async (req) => {
      const q = req.query as Query
      const site = await authorized(q, req.headers.authorization)
      const propertyRaw = text(q, 'property')
      if (propertyRaw === undefined || propertyRaw === '')
        throw plausibleError(
          'property',
          'The `property` parameter is required. Please provide at least one property to show a breakdown by.',
          ERR.MISSING_PARAMETER,
        )
      // Plausible judges the period and date before the property.
      resolvePeriod(text(q, 'period'), text(q, 'date'), deps.now(), site.zone)
      const property = plausibleProperty(propertyRaw, 'property')
      const { period, metrics, filters } = await commonParams(q, site, property)
      const limit = limitOf(q, deps.limits.defaultLimit, deps.limits.maxLimit)
      const page = pageOf(q)
      const others = filters.filter((f) => f.property.tally !== property.tally)
      // event:goal with a breakdown by a property conversions are kept by (core/aggregate/goals.ts).
      const goalBy = isGoalByDimension(property.tally) && others.every((f) => f.property.tally === 'goal')
      if (others.length > 0 && !goalBy) {
        throw badParameter(
          'filters',
          `a breakdown by ${property.name} can be filtered on ${property.name} only (rollups keep one property per row); filters on ${others
            .map((f) => f.property.name)
            .join(', ')} are supported on aggregate and timeseries, one property at a time`,
          ERR.FILTER_UNSUPPORTED,
        )
      }
      const answer = await deps.stats.breakdown(
        await tallyQuery('breakdown', site, period, metrics, filters, { property, limit, page }),
      )
      return {
        results: answer.results.map((r) => ({
          [property.rowKey]: plausibleLabel(property.tally, String(r[property.tally])),
          ...Object.fromEntries(metrics.map((k) => [k, r[k] ?? 0])),
        })),
      }
    },
  )

  app.get(
    '/api/v1/stats/realtime/visitors',
    { schema: realtimeSchema(), errorHandler },
    async (req, reply) => {
      const q = req.query as Query
      const { siteId } = await authorized(q, req.headers.authorization)
      const parsed = parseQuery(
        'realtime',
        { site: siteId, metrics: 'visitors', minutes: '5' },
        deps.now(),
        deps.limits,
      )
      const answer = await deps.stats.realtime(parsed)
      return reply
        .header('content-type', 'application/json; charset=utf-8')
        .send(String(answer.results.visitors?.value ?? 0))
    },
  )
}

/**
 * Plausible's `change` of a compared metric (its `Stats.Compare`): bounce_rate in percentage points,
 * null after a period without bounce rate (0); conversion_rate in percentage points to one
 * decimal; the others in whole percent of the previous value (100 from 0 to more, 0 from 0 to 0).
 */
export function change(metric: Metric, before: number, now: number): number | null {
  if (metric === 'bounce_rate') return before > 0 ? now - before : null
  if (metric === 'conversion_rate') return Math.round((now - before) * 10) / 10
  if (before === 0) return now > 0 ? 100 : 0
  return Math.round(((now - before) / before) * 100)
}
