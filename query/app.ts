import type { FastifyInstance, FastifyRequest } from 'fastify'
import { LRUCache } from 'lru-cache'
import type { BreakdownDimension } from '../core/aggregate/breakdowns.js'
import type { Granularity } from '../core/aggregate/definition.js'
import { ERR } from '../core/error-codes.js'
import { TallyError } from '../core/errors.js'
import { DEFAULT_PRECISION } from '../core/hll.js'
import { createHttpServer } from '../core/http.js'
import type { Logger } from '../core/log.js'
import { serveMetrics } from '../core/metrics.js'
import { apiDocs } from '../core/openapi.js'
import type { AggregateReader, BreakdownResult, MergedWindow } from '../core/ports/aggregate-store.js'
import type { SiteStore } from '../core/ports/site-store.js'
import type { ReadAuthorizer } from './auth.js'
import { AnswerCache, type AnswerCacheOptions, DEFAULT_ANSWER_CACHE } from './cache.js'
import { CSV_CONTENT_TYPE, statsCsv } from './csv.js'
import { dashboardPlugin } from './dashboard/plugin.js'
import { prepareExport } from './export.js'
import { type RawEventSource, sendRawExport } from './export-raw.js'
import type { FreshnessSource } from './freshness.js'
import { createQueryMetrics, type QueryMetrics } from './metrics.js'
import { type Endpoint, type ParsedQuery, parseQuery, siteParam } from './params.js'
import { plausibleStatsRoutes } from './plausible/api.js'
import {
  exportAggregatesSchema,
  exportEventsSchema,
  HEALTHZ_SCHEMA,
  QUERY_API,
  READYZ_SCHEMA,
  SITE_PROPS_SCHEMA,
  statsSchema,
} from './schemas.js'
import {
  DEFAULT_QUERY_LIMITS,
  type QueryLimits,
  type Rendered,
  STATS_ENDPOINTS,
  StatsService,
} from './stats.js'
import { UTC } from './zone.js'

export interface QueryAppDeps {
  /** The aggregate store, read only. */
  reader: AggregateReader
  /** Read-token checks (with their cache). */
  auth: ReadAuthorizer
  /** Where `complete_through` comes from. */
  freshness: FreshnessSource
  logger: Logger
  /** HyperLogLog precision of the stored sketches (TALLY_HLL_PRECISION). Default 14. */
  hllPrecision?: number
  /** Distinct values kept per custom property (TALLY_PROP_VALUES_MAX). Default 1000. */
  propValuesMax?: number
  /** Distinct values kept per window of path, referrer, source and UTM (TALLY_DIMENSION_VALUES_MAX). Default 10000. */
  dimensionValuesMax?: number
  /** The breakdown dimensions aggregated (TALLY_BREAKDOWNS); a breakdown or filter on another is refused. Default all. */
  breakdowns?: readonly BreakdownDimension[]
  /**
   * Row TTL per granularity in seconds, 0 = forever (TALLY_TTL_*_DAYS); ranges needing expired rows
   * are refused. Default minute 7 days, hour 90 days, day forever.
   */
  retentionSeconds?: Readonly<Record<Granularity, number>>
  /** Limits on ranges, pages and filters; see DEFAULT_QUERY_LIMITS. */
  limits?: Partial<Omit<QueryLimits, 'maxPoints'>> & { maxPoints?: Partial<QueryLimits['maxPoints']> }
  metrics?: QueryMetrics
  /** Time allowed to receive a whole request, headers and body. Default 10000 ms. */
  requestTimeoutMs?: number
  /** Most connections held at once (TALLY_MAX_CONNECTIONS). Default 10000. */
  maxConnections?: number
  /** Clock (tests). Default Date.now. */
  now?: () => number
  /**
   * Raw events for GET /v1/export/events (query/export-raw.ts, read from the archive). Without it
   * that route answers 501.
   */
  rawEvents?: RawEventSource
  /**
   * Stats answers kept until the data under them changes (query/cache.ts); needs a freshness source
   * with snapshots. Default DEFAULT_ANSWER_CACHE; `maxBytes: 0` turns it off.
   */
  answerCache?: AnswerCacheOptions
  /**
   * Sites by id and by domain, for Plausible's Stats API, whose `site_id` may be a domain or alias,
   * and their declared property keys (GET /v1/sites/:site/props) and goals (Plausible's 400 for a
   * goal filter on a goal the site does not define). Without it, `site_id` is a Tally site id only
   * and that route answers 501.
   */
  sites?: Pick<SiteStore, 'get' | 'byDomain'> & Partial<Pick<SiteStore, 'listPropKeys' | 'listGoals'>>
  /** How long Plausible's `site_id` → site is kept. Default 10000 ms. */
  siteCacheTtlMs?: number
}

const DAY_S = 86_400

/**
 * Parsed queries kept by URL: at most this many, holding at most this many bytes (a URL's twice:
 * the key, and the filter values the query keeps of it). A dashboard's URLs are a few hundred bytes,
 * so the count binds; distinct ~16 KB URLs from one token holder meet the byte budget instead.
 */
const PARSED_URLS_MAX = 10_000
const PARSED_URLS_MAX_BYTES = 8 * 1024 * 1024

export const DEFAULT_RETENTION_SECONDS: Readonly<Record<Granularity, number>> = Object.freeze({
  minute: 7 * DAY_S,
  hour: 90 * DAY_S,
  day: 0,
})

type Query = Record<string, unknown>

/**
 * The query HTTP API: /v1/stats/{aggregate,timeseries,breakdown,realtime}, /v1/export/aggregates,
 * /docs (the OpenAPI document, generated from the routes' schemas), /healthz, /readyz, /metrics.
 * Reads only; every stats answer is `{results, meta}`.
 */
export async function buildQueryApp(deps: QueryAppDeps): Promise<FastifyInstance> {
  const metrics = deps.metrics ?? createQueryMetrics()
  const now = deps.now ?? Date.now
  const precision = deps.hllPrecision ?? DEFAULT_PRECISION
  const limits: QueryLimits = {
    ...DEFAULT_QUERY_LIMITS,
    ...deps.limits,
    maxPoints: { ...DEFAULT_QUERY_LIMITS.maxPoints, ...deps.limits?.maxPoints },
    ...(deps.breakdowns === undefined ? {} : { breakdowns: deps.breakdowns }),
  }
  const answerCache = deps.answerCache ?? DEFAULT_ANSWER_CACHE
  const stats = new StatsService({
    reader: deps.reader,
    freshness: deps.freshness,
    precision,
    retentionSeconds: deps.retentionSeconds ?? DEFAULT_RETENTION_SECONDS,
    ...(deps.propValuesMax === undefined ? {} : { propValuesMax: deps.propValuesMax }),
    ...(deps.dimensionValuesMax === undefined ? {} : { dimensionValuesMax: deps.dimensionValuesMax }),
    limits,
    now,
    cache: new AnswerCache(answerCache, {
      onHit: () => metrics.cache.inc({ outcome: 'hit' }),
      onMiss: () => metrics.cache.inc({ outcome: 'miss' }),
      sizeOf: (r) => (r as Rendered<unknown>).body.length,
    }),
    // Reads of settled windows (windows, or a map per value): the same budget again, and kept 60 times
    // as long, since only a rebuild (which changes the final mark) can change them.
    settled: new AnswerCache(
      { ...answerCache, maxAgeMs: answerCache.maxAgeMs * 60 },
      {
        sizeOf: (r) =>
          Array.isArray(r)
            ? (r as MergedWindow[]).reduce((n, w) => n + 64 + w.visitors.byteLength, 0)
            : 160 * (r as BreakdownResult).values.size + 48 * (r as BreakdownResult).windows.size,
      },
    ),
  })
  const app = createHttpServer({
    logger: deps.logger,
    // Only GETs: nothing to receive but the request line and headers.
    bodyLimit: 1024,
    requestTimeoutMs: deps.requestTimeoutMs ?? 10_000,
    maxConnections: deps.maxConnections ?? 10_000,
    onErrorAnswer: (err) => metrics.errors.inc({ code: err.code }),
    registry: metrics.registry,
  })

  // Before any route: the document is made from the routes registered after it.
  await app.register(apiDocs, QUERY_API)

  // Callback hooks and label children looked up once per route and status: on a cached answer,
  // promises and label hashing per request showed in profiles (routes and statuses are few).
  const requestCounters = new Map<string, { inc(): void }>()
  const latencies = new Map<string, { observe(seconds: number): void }>()
  app.addHook('onRequest', (_req, _reply, done) => {
    metrics.inFlight.inc()
    done()
  })
  app.addHook('onResponse', (req, reply, done) => {
    metrics.inFlight.dec()
    const route = req.routeOptions.url ?? 'unknown'
    const status = reply.statusCode
    const key = `${status} ${route}`
    let count = requestCounters.get(key)
    if (!count) {
      count = metrics.requests.labels({ route, status: String(status) })
      requestCounters.set(key, count)
    }
    count.inc()
    let latency = latencies.get(route)
    if (!latency) {
      latency = metrics.seconds.labels({ route })
      latencies.set(route, latency)
    }
    latency.observe(reply.elapsedTime / 1000)
    done()
  })

  // Parsed queries by URL, for the current minute. Dashboards ask the same URLs again and again, and
  // parsing depends on the clock only through the current hour and day (periods), so within one
  // minute a URL always parses to the same query. Only queries that parsed are kept; they are never
  // changed afterwards (the answer cache keys them once, see StatsService.answerKey). Bounded in
  // bytes as well as entries: a URL can be ~16 KB of filter values, and a query holds them again.
  const parsedByUrl = new LRUCache<string, ParsedQuery>({
    max: PARSED_URLS_MAX,
    maxSize: PARSED_URLS_MAX_BYTES,
    sizeCalculation: (_q, key) => 2 * key.length + 256,
  })

  /** Authorizes first, so a caller without a valid token learns nothing from parameter errors. */
  async function parsed(req: FastifyRequest, endpoint: Endpoint): Promise<ParsedQuery> {
    const q = req.query as Query
    const site = siteParam(q)
    const authorization = req.headers.authorization
    // A cached site holding the token decides at once; anything else takes the full check.
    if (!deps.auth.allowsNow?.(site, authorization)) await deps.auth.authorize(site, authorization)
    const t = now()
    // Periods and dates follow the site's time zone (tally sites set --timezone).
    const zone = deps.auth.zoneOf?.(site) ?? UTC
    const key = `${endpoint}\n${Math.floor(t / 60_000)}\n${zone}\n${req.url}`
    let query = parsedByUrl.get(key)
    if (!query) {
      query = parseQuery(endpoint, q, t, limits, zone)
      parsedByUrl.set(key, query)
    }
    return query
  }

  for (const endpoint of STATS_ENDPOINTS) {
    app.get(`/v1/stats/${endpoint}`, { schema: statsSchema(endpoint, limits) }, async (req, reply) => {
      const q = await parsed(req, endpoint)
      void reply.header('cache-control', 'private, no-cache')
      // The body serialized when the answer was computed: a cached answer is not serialized again;
      // one that can be given at once (a reusable data version) skips render's promises too.
      const rendered = stats.cachedRender(endpoint, q) ?? (await stats.render(endpoint, q))
      if (q.format === 'csv') {
        const name = `${q.siteId}-${endpoint}${q.property ? `-${q.property}` : ''}`.replace(
          /[^A-Za-z0-9._-]/g,
          '_',
        )
        return reply
          .header('content-type', CSV_CONTENT_TYPE)
          .header('content-disposition', `attachment; filename="${name}.csv"`)
          .send(statsCsv(endpoint, q, rendered.value))
      }
      return reply.header('content-type', 'application/json; charset=utf-8').send(rendered.body)
    })
  }

  app.get('/v1/export/aggregates', { schema: exportAggregatesSchema(limits) }, async (req, reply) => {
    const q = await parsed(req, 'export')
    const prepared = await prepareExport(
      {
        stats,
        reader: deps.reader,
        freshness: deps.freshness,
        precision,
        maxExportWindows: limits.maxExportWindows,
        maxExportDimensionWindows: limits.maxExportDimensionWindows,
        onRow: () => metrics.exportRows.inc(),
      },
      q,
    )
    prepared.body.on('error', (err) => req.log.error({ err }, 'export failed after the answer started'))
    const name = `${q.siteId}-${prepared.meta.interval}${q.property ? `-${q.property}` : ''}`.replace(
      /[^A-Za-z0-9._-]/g,
      '_',
    )
    return reply
      .header('content-type', prepared.contentType)
      .header('cache-control', 'private, no-cache')
      .header(
        'content-disposition',
        `attachment; filename="${name}.${q.format === 'arrow' ? 'arrows' : q.format}"`,
      )
      .send(prepared.body)
  })

  app.get('/v1/export/events', { schema: exportEventsSchema(limits) }, async (req, reply) => {
    if (!deps.rawEvents) {
      throw new TallyError(
        ERR.NOT_IMPLEMENTED,
        'raw-event export is not available on this server: it reads the archive of raw events (Arrow segments written by `tally archive`), which this query role was not given; export aggregates with /v1/export/aggregates',
        {},
      )
    }
    const q = await parsed(req, 'events')
    return sendRawExport(deps.rawEvents, req.query as Query, q, req, reply)
  })

  // The site's declared custom properties (the dashboard's properties panel: one tab per key).
  app.get('/v1/sites/:site/props', { schema: SITE_PROPS_SCHEMA }, async (req, reply) => {
    const { site } = req.params as { site: string }
    const authorization = req.headers.authorization
    if (!deps.auth.allowsNow?.(site, authorization)) await deps.auth.authorize(site, authorization)
    if (!deps.sites?.listPropKeys)
      throw new TallyError(
        ERR.NOT_IMPLEMENTED,
        'this query role has no site store to read property keys from',
        {
          where: 'site',
        },
      )
    const keys = await deps.sites.listPropKeys(site)
    return reply.header('cache-control', 'private, no-cache').send({ site, keys })
  })

  // Plausible's Stats API v1, over the same stats service.
  await app.register(plausibleStatsRoutes, {
    stats,
    auth: deps.auth,
    limits,
    now,
    ...(deps.sites ? { sites: deps.sites } : {}),
    ...(deps.siteCacheTtlMs !== undefined ? { siteCacheTtlMs: deps.siteCacheTtlMs } : {}),
  })

  // The dashboard at / (static files; its data comes from the API above with a read token).
  await app.register(dashboardPlugin, deps.breakdowns === undefined ? {} : { breakdowns: deps.breakdowns })

  app.get('/healthz', { schema: HEALTHZ_SCHEMA }, async () => ({ status: 'ok' }))
  app.get('/readyz', { schema: READYZ_SCHEMA }, async (req, reply) => {
    try {
      await deps.freshness.current()
      return { status: 'ready' }
    } catch (err) {
      req.log.warn({ err }, 'aggregate store unavailable')
      return reply.status(503).send({ status: 'aggregate store unavailable' })
    }
  })
  serveMetrics(app, metrics.registry)

  return app
}
