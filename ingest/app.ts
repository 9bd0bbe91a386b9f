import type { FastifyInstance } from 'fastify'
import type { IngestConfig } from '../core/config.js'
import { createHttpServer } from '../core/http.js'
import type { Logger } from '../core/log.js'
import { apiDocs } from '../core/openapi.js'
import type { EventLogWriter } from '../core/ports/event-log.js'
import type { DailySalt } from './daily-salt.js'
import type { IngestMetrics } from './metrics.js'
import { appendPlugin } from './plugins/append.js'
import { authPlugin } from './plugins/auth.js'
import { corsPlugin } from './plugins/cors.js'
import { inflatePlugin } from './plugins/inflate.js'
import { jsonBodyPlugin } from './plugins/json-body.js'
import { rateLimitPlugin } from './plugins/rate-limit.js'
import { requestMetricsPlugin } from './plugins/request-metrics.js'
import { eventRoutes } from './routes/events.js'
import { healthRoutes } from './routes/health.js'
import { pixelRoute } from './routes/pixel.js'
import { plausibleRoute } from './routes/plausible.js'
import { INGEST_SECURITY_SCHEMES } from './routes/schemas.js'
import type { SiteCache } from './site-cache.js'
import { trackerPlugin } from './tracker/plugin.js'

export interface IngestDeps {
  config: IngestConfig
  /** Topic of the raw log. */
  topic: string
  log: EventLogWriter
  sites: Pick<SiteCache, 'byWriteKey' | 'isKnownOrigin'>
  metrics: IngestMetrics
  logger: Logger
  /**
   * Plausible's event API (POST /api/event): sites by domain and the daily salt of cookieless
   * visitor ids. Undefined: no domain is known, every Plausible event is dropped (answered 202).
   */
  plausible?: {
    sites: Pick<SiteCache, 'byDomain'>
    salt: Pick<DailySalt, 'current'>
  }
}

/**
 * The ingest HTTP API (Segment HTTP Tracking API and Plausible's event API compatible), as Fastify plugins registered in
 * order: body parsing and inflating, the OpenAPI document, the tracker, CORS, request metrics,
 * then the write key check (a preHandler setting `request.site`), the rate limits and the append
 * to the event log as decorators the routes use. A 2xx is sent only after the raw log
 * acknowledged every accepted event.
 */
export async function buildIngestApp(deps: IngestDeps): Promise<FastifyInstance> {
  const { config, metrics } = deps
  const app = createHttpServer({
    logger: deps.logger,
    bodyLimit: config.maxBodyBytes,
    requestTimeoutMs: config.requestTimeoutMs,
    maxConnections: config.maxConnections,
    ...(config.trustProxy !== undefined ? { trustProxy: config.trustProxy } : {}),
    onErrorAnswer: (err) => metrics.rejections.inc({ code: err.code }),
    registry: metrics.registry,
  })
  await app.register(jsonBodyPlugin)
  await app.register(inflatePlugin, { maxBodyBytes: config.maxBodyBytes })
  // Before any route: the document is made from the routes registered after it.
  await app.register(apiDocs, {
    title: 'Tally ingest API',
    description:
      "Takes analytics events (Segment HTTP Tracking API compatible: unmodified Segment libraries work against it; Plausible's event API at /api/event for its script and npm tracker) and answers 2xx once every accepted event is in the raw log.",
    securitySchemes: INGEST_SECURITY_SCHEMES,
    auth: 'HTTP Basic with the write key as user name, or writeKey in the body (wk in the pixel URL).',
  })
  // Before the routes: with a prefix, the plugin aliases every /v1/ route registered after it.
  await app.register(trackerPlugin, { prefix: config.trackerPrefix ?? '' })
  await app.register(corsPlugin, { sites: deps.sites })
  await app.register(requestMetricsPlugin, { metrics })
  await app.register(authPlugin, { sites: deps.sites })
  await app.register(rateLimitPlugin, config)
  await app.register(appendPlugin, { config, topic: deps.topic, log: deps.log, metrics })
  await app.register(eventRoutes)
  await app.register(pixelRoute)
  await app.register(plausibleRoute, {
    sites: deps.plausible?.sites,
    salt: deps.plausible?.salt,
    metrics,
  })
  await app.register(healthRoutes, { log: deps.log, metrics })
  return app
}
