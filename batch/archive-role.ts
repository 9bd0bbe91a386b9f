import type { AddressInfo } from 'node:net'
import { collectDefaultMetrics, Registry } from 'prom-client'
import type { SharedPorts } from '../core/backend.js'
import { CassandraArchiveStateStore } from '../core/cassandra/batch-store.js'
import { createCassandraClient } from '../core/cassandra/client.js'
import type { TallyConfig } from '../core/config.js'
import { createHttpServer } from '../core/http.js'
import { createKafka } from '../core/kafka/client.js'
import { KafkaGroupConsumer, KafkaOffsets } from '../core/kafka/consumer.js'
import { once } from '../core/lifecycle.js'
import type { Logger } from '../core/log.js'
import type { ArchiveStateStore } from '../core/ports/batch-store.js'
import type { EventLogConsumer, LogOffsets } from '../core/ports/event-log.js'
import { Archiver } from './archiver.js'
import { ARCHIVE_GROUP, type BatchPathOptions, batchPaths, processOwner } from './context.js'
import { createArchiveMetrics } from './metrics.js'

export const ARCHIVE_DEFAULT_PORT = 9466

/** Options of `tally archive` (and of the archiver inside `tally batch`). */
export interface ArchiverRoleOptions extends Pick<BatchPathOptions, 'archiveDir'> {
  /** Consumer group of the archivers. Default tally-archive. */
  group?: string
  /** A partition's buffered events are closed into segments at least this often. Default 30000 ms. */
  flushIntervalMs?: number
  /** A partition flushes as soon as it buffers this many events. Default 50000. */
  maxBufferedEvents?: number
  /** …or this many bytes of raw events. Default 16 MiB. */
  maxBufferedBytes?: number
  /** Partitions processed at once. Default 3. */
  partitionsConcurrently?: number
  /** A silent archiver leaves the group after this long. Default TALLY_STREAM_SESSION_TIMEOUT_MS. */
  sessionTimeoutMs?: number
}

export interface ArchiverComponent {
  archiver: Archiver
  /** Stops consuming after closing every buffer into segments; then disconnects. */
  close(): Promise<void>
}

/**
 * An archiver reporting into `registry`, its state in `store`: over its own Kafka consumer, or over
 * the shared ports of this process (embedded backend).
 */
export async function createArchiverComponent(
  config: TallyConfig,
  logger: Logger,
  source: { store: ArchiveStateStore; ports?: SharedPorts | undefined },
  registry: Registry,
  options: ArchiverRoleOptions = {},
): Promise<ArchiverComponent> {
  const paths = batchPaths(config, options)
  const group = options.group ?? ARCHIVE_GROUP
  const request = {
    groupId: group,
    topic: config.kafka.topicRaw,
    partitionsConsumedConcurrently: options.partitionsConcurrently ?? 3,
    sessionTimeoutMs: options.sessionTimeoutMs ?? config.stream.sessionTimeoutMs,
    logger,
  }
  let consumer: EventLogConsumer
  let offsets: LogOffsets
  let release = async () => {}
  if (source.ports) {
    consumer = source.ports.consumer(request)
    offsets = source.ports.offsets
  } else {
    const kafka = createKafka(config.kafka, { logger })
    const kafkaOffsets = new KafkaOffsets(kafka)
    consumer = new KafkaGroupConsumer(kafka, request)
    offsets = kafkaOffsets
    release = () => kafkaOffsets.close()
  }
  const archiver = new Archiver(
    {
      consumer,
      store: source.store,
      offsets,
      metrics: createArchiveMetrics(registry),
      logger: logger.child({ component: 'archiver' }),
    },
    {
      archiveDir: paths.archiveDir,
      topic: config.kafka.topicRaw,
      group,
      owner: processOwner(),
      maxOpenHours: config.archive.maxOpenHours,
      ...(options.flushIntervalMs === undefined ? {} : { flushIntervalMs: options.flushIntervalMs }),
      ...(options.maxBufferedEvents === undefined ? {} : { maxBufferedEvents: options.maxBufferedEvents }),
      ...(options.maxBufferedBytes === undefined ? {} : { maxBufferedBytes: options.maxBufferedBytes }),
    },
  )
  await archiver.start()
  logger.info({ group, archive: paths.topicDir }, 'archiver running')
  return {
    archiver,
    close: once(async () => {
      await archiver.close()
      await release()
    }),
  }
}

export interface RunningArchiver {
  url: string
  archiver: Archiver
  registryText(): Promise<string>
  close(): Promise<void>
}

/**
 * `tally archive`: the archiver as its own process, with /metrics (lag per partition), /healthz and
 * /readyz on port 9466 unless `port` or PORT says otherwise.
 */
export async function startArchiver(
  config: TallyConfig,
  logger: Logger,
  options: ArchiverRoleOptions & { port?: number } = {},
): Promise<RunningArchiver> {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'tally_archive_' })
  const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await cassandra.connect()
  const component = await createArchiverComponent(
    config,
    logger,
    { store: new CassandraArchiveStateStore(cassandra) },
    registry,
    options,
  )
  const app = createHttpServer({ logger, bodyLimit: 1024, requestTimeoutMs: 10_000 })
  app.get('/healthz', async () => ({ status: 'ok' }))
  app.get('/readyz', async () => ({ status: 'ready', partitions: component.archiver.ownedPartitions() }))
  app.get('/metrics', async (_req, reply) =>
    reply.header('content-type', registry.contentType).send(await registry.metrics()),
  )
  await app.listen({ host: config.host, port: options.port ?? config.port ?? ARCHIVE_DEFAULT_PORT })
  const addr = app.server.address() as AddressInfo
  const url = `http://${addr.address}:${addr.port}`
  return {
    url,
    archiver: component.archiver,
    registryText: () => registry.metrics(),
    // Order: stop HTTP, close buffers into segments and leave the group, close Cassandra.
    close: once(async () => {
      await app.close()
      await component.close()
      await cassandra.shutdown()
    }),
  }
}
