import type { BackendKind } from '../config.js'
import type { Logger } from '../log.js'
import type { AggregateReader, StreamStore } from './aggregate-store.js'
import type { ArchiveStateStore, FinalRowStore, JobStore, LeaseStore } from './batch-store.js'
import type { EventLogConsumer, EventLogWriter, LogOffsets, PackOptions } from './event-log.js'
import type { ProgressListener, ProgressPublisher } from './progress-notices.js'
import type { SiteStore } from './site-store.js'

/** How a role asks for a member of a consumer group. */
export interface ConsumerRequest {
  groupId: string
  topic: string
  partitionsConsumedConcurrently?: number
  sessionTimeoutMs?: number
  logger?: Logger
}

/** How a query role asks to hear the progress notices of one stream group. */
export interface ProgressListenerRequest {
  /** Consumer group of the stream workers. */
  group: string
  /** The raw topic they read. */
  topic: string
  logger?: Logger
}

/**
 * How a role wants its log writer to batch. Hints: a backend that does not batch (embedded)
 * ignores them; each left out keeps the backend's own default.
 */
export interface WriterOptions {
  /** How long the first pending record waits for company before a batch is sent. */
  lingerMs?: number
  compression?: 'gzip' | 'none'
  /** Batches in flight at once. */
  maxInFlightBatches?: number
  /** An append not acknowledged within this time is rejected. */
  appendTimeoutMs?: number
  /** Observes each send: records, bytes, seconds, outcome. */
  onSend?: (records: number, bytes: number, seconds: number, ok: boolean) => void
  /**
   * Write raw events packed (format 2, core/record/packed.ts): one log record per flush and
   * partition, bounded by events and bytes. Left out: one record per event (format 1). A backend
   * whose records cost nothing per record (embedded) writes format 1 either way.
   */
  pack?: PackOptions
}

/**
 * Every port a role uses, built by the composition root (`app/`) for one backend: Kafka and
 * Cassandra, or the embedded backend. A role takes these and nothing else; it closes what it asked
 * for (writers, consumers, publishers, listeners) and leaves the rest (stores, offsets, the
 * connections behind them) to the owner of the ports, which closes them after the role.
 */
export interface Ports {
  readonly kind: BackendKind
  /** A connected writer of its own (closing it leaves the backend open). */
  writer(options?: WriterOptions): Promise<EventLogWriter> | EventLogWriter
  consumer(request: ConsumerRequest): EventLogConsumer
  readonly offsets: LogOffsets
  readonly sites: SiteStore
  readonly streamStore: StreamStore
  readonly reader: AggregateReader
  readonly batch: {
    readonly leases: LeaseStore
    readonly jobs: JobStore
    readonly rows: FinalRowStore
    readonly archive: ArchiveStateStore
  }
  /** Progress notices from the stream workers to the query roles. */
  readonly progress: {
    /** A publisher of its own; `onSend` observes each notice (for the worker's metrics). */
    publisher(options?: { onSend?: (ok: boolean) => void }): ProgressPublisher
    listener(request: ProgressListenerRequest): ProgressListener
  }
}
