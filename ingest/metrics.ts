import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import { createProcessRegistry } from '../core/metrics.js'

/**
 * Prometheus metrics of the ingest role (served at GET /metrics), in the process registry
 * (core/metrics.ts); default: a registry of its own.
 */
export function createIngestMetrics(registry: Registry = createProcessRegistry()) {
  return {
    registry,
    requests: new Counter({
      name: 'tally_ingest_requests_total',
      help: 'HTTP requests by endpoint and status',
      labelNames: ['endpoint', 'status'] as const,
      registers: [registry],
    }),
    events: new Counter({
      name: 'tally_ingest_events_total',
      help: 'Events by endpoint and outcome (accepted, rejected)',
      labelNames: ['endpoint', 'outcome'] as const,
      registers: [registry],
    }),
    rejections: new Counter({
      name: 'tally_ingest_rejections_total',
      help: 'Rejected events and requests by reason code',
      labelNames: ['code'] as const,
      registers: [registry],
    }),
    timestampsClamped: new Counter({
      name: 'tally_ingest_timestamps_clamped_total',
      help: 'Accepted events whose timestamp lay more than TALLY_MAX_FUTURE_MS ahead and was set to receivedAt, by endpoint',
      labelNames: ['endpoint'] as const,
      registers: [registry],
    }),
    produceSeconds: new Histogram({
      name: 'tally_ingest_produce_seconds',
      help: 'Time for the log to acknowledge one request’s events (acks=all)',
      buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    batchSize: new Histogram({
      name: 'tally_ingest_request_events',
      help: 'Events per request',
      buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000],
      registers: [registry],
    }),
    plausibleDropped: new Counter({
      name: 'tally_ingest_plausible_dropped_total',
      help: "Plausible events answered 202 but not logged, by reason (unknown_domain: no site has the domain or alias; engagement: the tracker's engagement pings, not kept)",
      labelNames: ['reason'] as const,
      registers: [registry],
    }),
    inFlight: new Gauge({
      name: 'tally_ingest_in_flight_requests',
      help: 'Requests being handled',
      registers: [registry],
    }),
  }
}

export type IngestMetrics = ReturnType<typeof createIngestMetrics>

/** The Kafka producer's metrics: registered only when ingest writes to Kafka (not on the embedded log). */
export function createIngestKafkaMetrics(registry: Registry) {
  return {
    kafkaSendSeconds: new Histogram({
      name: 'tally_ingest_kafka_send_seconds',
      help: 'Time of one producer batch send',
      labelNames: ['outcome'] as const,
      buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    kafkaBatchRecords: new Histogram({
      name: 'tally_ingest_kafka_batch_records',
      help: 'Records per producer batch (how well concurrent requests share sends)',
      buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
      registers: [registry],
    }),
  }
}
