import type { TallyConfig } from './config.js'
import { type EmbeddedBackend, openEmbedded } from './embedded/index.js'
import type { Logger } from './log.js'
import { topicSpecs } from './migrate.js'
import type { AggregateReader, StreamStore } from './ports/aggregate-store.js'
import type { ArchiveStateStore, FinalRowStore, JobStore, LeaseStore } from './ports/batch-store.js'
import type { EventLogConsumer, EventLogWriter, LogOffsets } from './ports/event-log.js'
import type { ProgressListener, ProgressPublisher } from './ports/progress-notices.js'
import type { SiteStore } from './ports/site-store.js'

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
 * Every port the roles use, opened once and shared by the roles of one process (`tally all` on the
 * embedded backend). A role given these uses them and leaves closing them to their owner; a role
 * given none opens its own Kafka and Cassandra connections.
 */
export interface SharedPorts {
  readonly kind: 'embedded'
  /** A writer handle of its own (closing it leaves the log open). */
  writer(): EventLogWriter
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
  /** Progress notices from the stream worker to the query role, one bus for the whole process. */
  readonly progress: {
    /** A publisher of its own; `onSend` observes each notice (for the worker's metrics). */
    publisher(options?: { onSend?: (ok: boolean) => void }): ProgressPublisher
    listener(request: ProgressListenerRequest): ProgressListener
  }
}

/** Default consumer group of the archivers (TALLY_ARCHIVE_GROUP unset). */
export const ARCHIVE_GROUP = 'tally-archive'

/**
 * The embedded backend of `config` (TALLY_DATA_DIR), with the topics, TTLs and retention of the
 * configuration: raw records go after TALLY_LOG_RETENTION_HOURS once the stream workers and the
 * archiver have both read them; dead letters after the dead-letter topic's retention.
 */
export function openEmbeddedBackend(config: TallyConfig, logger?: Logger): EmbeddedBackend {
  // Progress notices stay in memory on the embedded backend (every role is in this process), so
  // the log holds no topic for them.
  const topics = topicSpecs(config).filter((t) => t.topic !== config.kafka.topicProgress)
  const retentionOf = (topic: string) =>
    Number(topics.find((t) => t.topic === topic)?.config?.['retention.ms'])
  return openEmbedded({
    dataDir: config.dataDir,
    hllPrecision: config.stream.hllPrecision,
    ttlSeconds: config.stream.ttlSeconds,
    topics,
    retention: [
      {
        topic: config.kafka.topicRaw,
        ms: config.kafka.retentionMs,
        groups: [config.stream.group, config.archive.group],
      },
      { topic: config.kafka.topicDeadLetter, ms: retentionOf(config.kafka.topicDeadLetter), groups: [] },
    ],
    ...(logger ? { logger } : {}),
  })
}

/** The embedded backend seen through the ports. */
export function embeddedPorts(embedded: EmbeddedBackend): SharedPorts {
  return {
    kind: 'embedded',
    writer: () => embedded.log.writer(),
    consumer: (request) =>
      embedded.log.consumer({
        groupId: request.groupId,
        topic: request.topic,
        ...(request.partitionsConsumedConcurrently === undefined
          ? {}
          : { partitionsConsumedConcurrently: request.partitionsConsumedConcurrently }),
        ...(request.logger ? { logger: request.logger } : {}),
      }),
    offsets: embedded.log,
    sites: embedded.sites,
    streamStore: embedded.streamStore,
    reader: embedded.reader,
    batch: embedded.batch,
    progress: {
      publisher: (options) => embedded.progress.publisher(options),
      listener: (request) => embedded.progress.listener(request),
    },
  }
}
