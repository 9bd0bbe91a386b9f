import type { FastifyInstance } from 'fastify'
import { collectDefaultMetrics, Histogram, Registry } from 'prom-client'

/**
 * One registry per process: the standard `process_*` and `nodejs_*` metrics once, unprefixed, and
 * every role's own `tally_*` metrics beside them. `tally all` passes one registry to all its roles,
 * so each of its /metrics endpoints serves the whole process; a role run alone makes its own.
 */
export function createProcessRegistry(): Registry {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  return registry
}

const HTTP_DURATION = 'http_request_duration_seconds'

type HttpLabels = 'method' | 'route' | 'status_code'

/** The HTTP request-duration histogram of `registry` (one per registry, shared by its servers). */
export function httpRequestDuration(registry: Registry): Histogram<HttpLabels> {
  const existing = registry.getSingleMetric(HTTP_DURATION)
  if (existing) return existing as Histogram<HttpLabels>
  return new Histogram({
    name: HTTP_DURATION,
    help: 'HTTP requests by method, route (the route pattern) and status code, with their duration',
    labelNames: ['method', 'route', 'status_code'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  })
}

/** Times every request of `app` into `http_request_duration_seconds`. */
export function observeHttpRequests(app: FastifyInstance, registry: Registry): void {
  const histogram = httpRequestDuration(registry)
  // One labelled child per method, route and status: label hashing per request shows in profiles.
  const children = new Map<string, { observe(seconds: number): void }>()
  app.addHook('onResponse', (req, reply, done) => {
    const route = req.routeOptions.url ?? 'unmatched'
    const key = `${req.method} ${reply.statusCode} ${route}`
    let child = children.get(key)
    if (!child) {
      child = histogram.labels({ method: req.method, route, status_code: String(reply.statusCode) })
      children.set(key, child)
    }
    child.observe(reply.elapsedTime / 1000)
    done()
  })
}

/** The route's OpenAPI description (ingest and query publish theirs). */
const METRICS_SCHEMA = {
  summary: 'Prometheus metrics',
  tags: ['operation'],
  response: {
    200: {
      description: 'The process registry, Prometheus text format.',
      content: { 'text/plain': { schema: { type: 'string' } } },
    },
  },
}

/** GET /metrics: the registry in Prometheus' text format; one route for every server that has one. */
export function serveMetrics(app: FastifyInstance, registry: Registry): void {
  app.get('/metrics', { schema: METRICS_SCHEMA }, async (_req, reply) =>
    reply.header('content-type', registry.contentType).send(await registry.metrics()),
  )
}
