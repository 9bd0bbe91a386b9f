import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { IngestMetrics } from '../metrics.js'

export interface RequestMetricsOptions {
  metrics: Pick<IngestMetrics, 'inFlight' | 'requests'>
}

/** Requests in flight, and requests by route and status (`tally_ingest_requests_total`). */
async function requestMetrics(app: FastifyInstance, options: RequestMetricsOptions): Promise<void> {
  const { metrics } = options
  app.addHook('onRequest', (_req, _reply, done) => {
    metrics.inFlight.inc()
    done()
  })
  app.addHook('onResponse', (req, reply, done) => {
    metrics.inFlight.dec()
    metrics.requests.inc({ endpoint: req.routeOptions.url ?? 'unknown', status: String(reply.statusCode) })
    done()
  })
}

export const requestMetricsPlugin = fp(requestMetrics, { name: 'tally-ingest-request-metrics' })
