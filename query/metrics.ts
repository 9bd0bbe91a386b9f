import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import { createProcessRegistry } from '../core/metrics.js'

export interface QueryMetricsOptions {
  /** Whether the role hears the stream's progress notices now (the gauge reads it when scraped). */
  noticesLive?: () => boolean
  /** The process registry (core/metrics.ts); default: a registry of its own. */
  registry?: Registry
}

/** Prometheus metrics of the query role (served at GET /metrics). */
export function createQueryMetrics(options: QueryMetricsOptions = {}) {
  const registry = options.registry ?? createProcessRegistry()
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
    notices: new Counter({
      name: 'tally_query_progress_notices_total',
      help: 'Progress notices heard from the stream workers (each makes the next request re-read the data version)',
      registers: [registry],
    }),
    noticesLive: new Gauge({
      name: 'tally_query_progress_notices_live',
      help: '1 while the role hears the progress notices (versions re-read on notice), 0 while it polls for them',
      registers: [registry],
      collect() {
        this.set(options.noticesLive?.() ? 1 : 0)
      },
    }),
    tokenUses: new Counter({
      name: 'tally_query_token_use_writes_total',
      help: "Writes of a read token's last use (at most one per token and minute): written, failed, or skipped (too many in flight)",
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
