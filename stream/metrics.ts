import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import { createProcessRegistry } from '../core/metrics.js'

/**
 * Prometheus metrics of a stream worker (served at GET /metrics), in the process registry
 * (core/metrics.ts); default: a registry of its own.
 */
export function createStreamMetrics(registry: Registry = createProcessRegistry()) {
  return {
    registry,
    lag: new Gauge({
      name: 'tally_stream_consumer_lag',
      help: 'Records in the raw topic not yet checkpointed, per partition (queue depth: the health and scaling signal)',
      labelNames: ['partition'] as const,
      registers: [registry],
    }),
    records: new Counter({
      name: 'tally_stream_records_total',
      help: 'Records processed by outcome (counted, duplicate, late, future, not_counted, dead_letter, replayed)',
      labelNames: ['outcome'] as const,
      registers: [registry],
    }),
    stepSeconds: new Histogram({
      name: 'tally_stream_step_seconds',
      help: 'Time per pipeline step and batch: decode_validate_dedup (decode, validate, dedup, classify, aggregate and visits of a batch), load (rows read from the store)',
      labelNames: ['step'] as const,
      buckets: [0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    flushSeconds: new Histogram({
      name: 'tally_stream_flush_seconds',
      help: 'Time to write one partition’s dirty windows, dedup entries, visit state and checkpoint',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    rowsWritten: new Counter({
      name: 'tally_stream_rows_written_total',
      help: 'Aggregate rows written',
      registers: [registry],
    }),
    checkpointAge: new Gauge({
      name: 'tally_stream_checkpoint_age_seconds',
      help: 'Seconds since each owned partition was last checkpointed',
      labelNames: ['partition'] as const,
      registers: [registry],
    }),
    storeRetries: new Counter({
      name: 'tally_stream_store_retries_total',
      help: 'Failed store writes that were retried (consumption pauses meanwhile)',
      registers: [registry],
    }),
    progressNotices: new Counter({
      name: 'tally_stream_progress_notices_total',
      help: 'Progress notices (one per checkpoint written) by outcome: sent, or failed (query roles then poll for changes)',
      labelNames: ['outcome'] as const,
      registers: [registry],
    }),
    openRows: new Gauge({
      name: 'tally_stream_open_rows',
      help: 'Aggregate rows held in memory',
      registers: [registry],
    }),
    openWindows: new Gauge({
      name: 'tally_stream_open_windows',
      help: 'Windows held in memory (at most TALLY_STREAM_MAX_OPEN_WINDOWS per partition)',
      registers: [registry],
    }),
    openVisits: new Gauge({
      name: 'tally_stream_open_visits',
      help: 'Open visits held in memory per owned partition (dropped once the visit gap passed on the partition’s watermark)',
      labelNames: ['partition'] as const,
      registers: [registry],
    }),
    visitsEndedEarly: new Counter({
      name: 'tally_stream_visits_ended_early_total',
      help: "Open visits ended before their gap passed because a partition held more than TALLY_STREAM_OPEN_VISITS_MAX (their days' visits are approximate until rebuilt)",
      labelNames: ['partition'] as const,
      registers: [registry],
    }),
    visitStateBytes: new Gauge({
      name: 'tally_stream_visit_state_bytes',
      help: 'Bytes of the visit state last written with a checkpoint, per owned partition',
      labelNames: ['partition'] as const,
      registers: [registry],
    }),
    windowsEvicted: new Counter({
      name: 'tally_stream_windows_evicted_total',
      help: 'Open windows written and dropped from memory because a partition reached TALLY_STREAM_MAX_OPEN_WINDOWS (read back if touched again)',
      registers: [registry],
    }),
  }
}

export type StreamMetrics = ReturnType<typeof createStreamMetrics>

/**
 * The `step` label of tally_stream_step_seconds: `decode_validate_dedup` is the pass of a batch
 * through the per-event steps (decode, validate, dedup, classify, aggregate, visits: stream/pipeline.ts),
 * `load` the loading of the rows it touched for the first time.
 */
export type StreamStep = 'decode_validate_dedup' | 'load'

/**
 * Runs one step and, once it succeeds, gives its duration in seconds to `observe`: the one place the
 * stream worker's steps are timed.
 */
export async function timed<T>(observe: (seconds: number) => void, step: () => Promise<T>): Promise<T> {
  const started = process.hrtime.bigint()
  const out = await step()
  observe(Number(process.hrtime.bigint() - started) / 1e9)
  return out
}
