import { Counter, Gauge, Histogram, type Registry } from 'prom-client'

/** Prometheus metrics of the archiver (served by `tally archive` / `tally batch` at /metrics). */
export function createArchiveMetrics(registry: Registry) {
  return {
    lag: new Gauge({
      name: 'tally_archive_consumer_lag',
      help: 'Records of the raw topic not yet in a closed archive segment, per partition (the archiver’s queue depth)',
      labelNames: ['partition'] as const,
      registers: [registry],
    }),
    records: new Counter({
      name: 'tally_archive_records_total',
      help: 'Records read by outcome (archived, invalid, replayed)',
      labelNames: ['outcome'] as const,
      registers: [registry],
    }),
    segments: new Counter({
      name: 'tally_archive_segments_total',
      help: 'Segments closed (written, committed and renamed)',
      registers: [registry],
    }),
    bytes: new Counter({
      name: 'tally_archive_bytes_total',
      help: 'Bytes of closed segments',
      registers: [registry],
    }),
    flushSeconds: new Histogram({
      name: 'tally_archive_flush_seconds',
      help: 'Time to encode, write, fsync, commit and rename one flush of a partition',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    commitRefused: new Counter({
      name: 'tally_archive_commit_refused_total',
      help: 'Flushes refused because another archiver owns the partition now (the flush is dropped)',
      registers: [registry],
    }),
    buffered: new Gauge({
      name: 'tally_archive_buffered_events',
      help: 'Events held in memory, not yet in a closed segment',
      registers: [registry],
    }),
  }
}

export type ArchiveMetrics = ReturnType<typeof createArchiveMetrics>

/** Prometheus metrics of rebuilds and the scheduler. */
export function createBatchMetrics(registry: Registry) {
  return {
    jobs: new Counter({
      name: 'tally_batch_jobs_total',
      help: 'Rebuild jobs by kind and outcome (succeeded, failed, lost_lease, cancelled, skipped_busy, skipped_unchanged, deferred)',
      labelNames: ['kind', 'outcome'] as const,
      registers: [registry],
    }),
    jobSeconds: new Histogram({
      name: 'tally_batch_job_seconds',
      help: 'Duration of rebuild jobs that ran',
      labelNames: ['kind'] as const,
      buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600],
      registers: [registry],
    }),
    eventsRead: new Counter({
      name: 'tally_batch_events_read_total',
      help: 'Archived events read by rebuilds',
      registers: [registry],
    }),
    rowsWritten: new Counter({
      name: 'tally_batch_rows_written_total',
      help: 'Final aggregate rows written by rebuilds',
      registers: [registry],
    }),
    running: new Gauge({
      name: 'tally_batch_jobs_running',
      help: 'Rebuild jobs running in this process',
      registers: [registry],
    }),
  }
}

export type BatchMetrics = ReturnType<typeof createBatchMetrics>
