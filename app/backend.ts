import { CassandraAggregateReader } from '../core/cassandra/aggregate-reader.js'
import {
  CassandraArchiveStateStore,
  CassandraFinalRowStore,
  CassandraJobStore,
  CassandraLeaseStore,
} from '../core/cassandra/batch-store.js'
import { connectCassandra, createCassandraClient, isUnknownKeyspace } from '../core/cassandra/client.js'
import { migrationName, notMigrated, unappliedMigrations } from '../core/cassandra/migrate.js'
import { CassandraSiteStore } from '../core/cassandra/sites.js'
import { CassandraStreamStore } from '../core/cassandra/stream-store.js'
import { type BackendKind, backendOf, type TallyConfig } from '../core/config.js'
import { type EmbeddedBackend, type EmbeddedOptions, openEmbedded } from '../core/embedded/index.js'
import { errorMessage, UsageError } from '../core/errors.js'
import { createKafka } from '../core/kafka/client.js'
import { KafkaGroupConsumer, KafkaOffsets } from '../core/kafka/consumer.js'
import { KafkaBatchingProducer } from '../core/kafka/producer.js'
import { KafkaProgressListener, KafkaProgressPublisher } from '../core/kafka/progress.js'
import { createLogger, type Logger } from '../core/log.js'
import { topicSpecs } from '../core/migrate.js'
import type { Ports } from '../core/ports/backend.js'

/**
 * The embedded backend of `config` (TALLY_DATA_DIR), with the topics, TTLs and retention of the
 * configuration: raw records go after TALLY_LOG_RETENTION_HOURS once the stream workers and the
 * archiver have both read them; dead letters after the dead-letter topic's retention.
 */
export function openEmbeddedBackend(
  config: TallyConfig,
  logger?: Logger,
  sharing: Pick<EmbeddedOptions, 'shareWithThreads' | 'onAppended'> = {},
): EmbeddedBackend {
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
    ...sharing,
    ...(logger ? { logger } : {}),
  })
}

/**
 * The embedded backend seen through the ports: one set for every role of the process (`tally all`);
 * its owner closes the backend after the roles.
 */
export function embeddedPorts(embedded: EmbeddedBackend): Ports {
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

/** Ports together with what closes them: the connections behind the stores and offsets. */
export interface OwnedPorts extends Ports {
  close(): Promise<void>
}

/**
 * Kafka and Cassandra seen through the ports: one Cassandra session (connected here, so a role
 * that cannot reach Cassandra fails before it starts) and one kafkajs client, whose producers,
 * consumers and admin connect when a role asks for them.
 */
export async function openKafkaCassandraPorts(
  config: TallyConfig,
  logger?: Logger,
  options: OpenOptions = {},
): Promise<OwnedPorts> {
  const keyspace = config.cassandra.keyspace
  const cassandra = await connectCassandra(() => createCassandraClient(config.cassandra, { keyspace }), {
    waitMs: options.waitForServices ? config.cassandra.connectWaitMs : 0,
    onWait: (err, waitedMs, delayMs) =>
      logger?.warn(
        { err: errorMessage(err), waitedMs, retryInMs: delayMs },
        `cassandra does not answer yet; retrying (waiting up to ${config.cassandra.connectWaitMs} ms in all, TALLY_CONNECT_WAIT_MS)`,
      ),
  }).catch((err: unknown) => {
    throw isUnknownKeyspace(err) ? notMigrated(keyspace, 'does not exist') : err
  })
  // A keyspace never migrated is refused before any role reads or writes it; one an upgrade has not
  // migrated yet runs on the tables it has, with a warning naming what is missing.
  try {
    const missing = await unappliedMigrations(cassandra, keyspace)
    if (missing.length > 0)
      logger?.warn(
        { missing: missing.map(migrationName) },
        `keyspace ${keyspace} lacks ${missing.length} migration(s) of this version (${missing.map(migrationName).join(', ')}): run \`tally migrate\``,
      )
  } catch (err) {
    await cassandra.shutdown().catch(() => undefined)
    throw err
  }
  const kafka = createKafka(config.kafka, logger ? { logger } : {})
  const offsets = new KafkaOffsets(kafka)
  return {
    kind: 'kafka-cassandra',
    async writer(options = {}) {
      const producer = new KafkaBatchingProducer(kafka, { ...options, ...(logger ? { logger } : {}) })
      await producer.connect()
      return producer
    },
    consumer: (request) => new KafkaGroupConsumer(kafka, request),
    offsets,
    sites: new CassandraSiteStore(cassandra),
    streamStore: new CassandraStreamStore(cassandra, config.stream.ttlSeconds),
    reader: new CassandraAggregateReader(cassandra, config.stream.hllPrecision),
    batch: {
      leases: new CassandraLeaseStore(cassandra),
      jobs: new CassandraJobStore(cassandra),
      rows: new CassandraFinalRowStore(cassandra, config.stream.ttlSeconds),
      archive: new CassandraArchiveStateStore(cassandra),
    },
    progress: {
      publisher: (options = {}) =>
        new KafkaProgressPublisher(kafka, {
          topic: config.kafka.topicProgress,
          logger: logger ?? createLogger('silent'),
          ...options,
        }),
      listener: (request) =>
        new KafkaProgressListener(kafka, {
          group: request.group,
          streamTopic: request.topic,
          topic: config.kafka.topicProgress,
          logger: request.logger ?? logger ?? createLogger('silent'),
        }),
    },
    close: async () => {
      await offsets.close().catch(() => undefined)
      await cassandra.shutdown()
    },
  }
}

/** The ports of the configured backend (see backendOf), owned by the caller. */
export interface OpenOptions {
  /** A long-running role: wait for Cassandra up to TALLY_CONNECT_WAIT_MS instead of failing at once. */
  waitForServices?: boolean
}

export async function openPorts(
  config: TallyConfig,
  logger?: Logger,
  options: OpenOptions = {},
): Promise<OwnedPorts> {
  if (backendOf(config) === 'kafka-cassandra') return openKafkaCassandraPorts(config, logger, options)
  const embedded = openEmbeddedBackend(config, logger)
  return { ...embeddedPorts(embedded), close: () => embedded.close() }
}

/**
 * The line every command logs first: which backend it talks to and where, so that two commands
 * run with different environments are told apart at once.
 */
export function describeBackend(config: TallyConfig): string {
  const kind: BackendKind = backendOf(config)
  const why = config.backend === 'auto' ? 'TALLY_BACKEND=auto' : `TALLY_BACKEND=${config.backend}`
  return kind === 'embedded'
    ? `backend: embedded (TALLY_DATA_DIR=${config.dataDir}; ${why})`
    : `backend: kafka-cassandra (KAFKA_BROKERS=${config.kafka.brokers.join(',')}, CASSANDRA_CONTACT_POINTS=${config.cassandra.contactPoints.join(',')}, CASSANDRA_KEYSPACE=${config.cassandra.keyspace}; ${why})`
}

/**
 * Refuses a role that runs in a process of its own on the embedded backend, whose log and stores
 * live inside one process: one line that says what to set.
 */
export function requireSeparateProcessBackend(config: TallyConfig, role: string): void {
  if (backendOf(config) !== 'embedded') return
  const why =
    config.backend === 'embedded'
      ? 'TALLY_BACKEND=embedded'
      : 'with TALLY_BACKEND=auto and neither KAFKA_BROKERS nor CASSANDRA_CONTACT_POINTS set, the backend is embedded, which'
  throw new UsageError(
    `${why} keeps the log and the store inside one process: run \`tally all\`, or run \`tally ${role}\` on Kafka and Cassandra (set KAFKA_BROKERS and CASSANDRA_CONTACT_POINTS, or TALLY_BACKEND=kafka-cassandra for the local servers of \`tally services up\`)`,
  )
}
