import type { FastifyInstance } from 'fastify'
import { serveMetrics } from '../../core/metrics.js'
import type { EventLogWriter } from '../../core/ports/event-log.js'
import type { IngestMetrics } from '../metrics.js'

export interface HealthOptions {
  log: Pick<EventLogWriter, 'healthy'>
  metrics: Pick<IngestMetrics, 'registry'>
}

const STATUS = { type: 'object', required: ['status'], properties: { status: { type: 'string' } } }

/** GET /healthz (alive), /readyz (ready while the log takes writes), /metrics (Prometheus). */
export async function healthRoutes(app: FastifyInstance, options: HealthOptions): Promise<void> {
  const { log, metrics } = options
  app.get(
    '/healthz',
    {
      schema: {
        summary: 'Liveness',
        tags: ['operation'],
        response: { 200: { description: 'Alive.', ...STATUS } },
      },
    },
    async () => ({ status: 'ok' }),
  )
  app.get(
    '/readyz',
    {
      schema: {
        summary: 'Readiness',
        tags: ['operation'],
        response: {
          200: { description: 'The event log takes writes.', ...STATUS },
          503: { description: 'The event log does not take writes now.', ...STATUS },
        },
      },
    },
    async (_req, reply) => {
      const ready = log.healthy()
      return reply.status(ready ? 200 : 503).send({ status: ready ? 'ready' : 'log unavailable' })
    },
  )
  serveMetrics(app, metrics.registry)
}
