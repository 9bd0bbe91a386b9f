import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client'

/** Prometheus metrics of the query role (served at GET /metrics). */
export function createQueryMetrics() {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'tally_query_' })
  return {
    registry,
    requests: new Counter({
      name: 'tally_query_requests_total',
      help: 'HTTP requests by route and status',
      labelNames: ['route', 'status'] as const,
      registers: [registry],
    }),
    seconds: new Histogram({
      name: 'tally_query_request_seconds',
      help: 'Time to answer, by route (for exports: until the body started)',
      labelNames: ['route'] as const,
      buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    errors: new Counter({
      name: 'tally_query_errors_total',
      help: 'Error answers by code',
      labelNames: ['code'] as const,
      registers: [registry],
    }),
    exportRows: new Counter({
      name: 'tally_query_export_rows_total',
      help: 'Rows written by bulk exports',
      registers: [registry],
    }),
    cache: new Counter({
      name: 'tally_query_cache_total',
      help: 'Stats answers by cache outcome: hit (same query, data unchanged) or miss (computed)',
      labelNames: ['outcome'] as const,
      registers: [registry],
    }),
    inFlight: new Gauge({
      name: 'tally_query_in_flight_requests',
      help: 'Requests being handled',
      registers: [registry],
    }),
  }
}

export type QueryMetrics = ReturnType<typeof createQueryMetrics>
