import { mkdir } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { collectDefaultMetrics, Registry } from 'prom-client'
import type { SharedPorts } from '../core/backend.js'
import { CassandraArchiveStateStore } from '../core/cassandra/batch-store.js'
import { createCassandraClient } from '../core/cassandra/client.js'
import type { TallyConfig } from '../core/config.js'
import { createHttpServer, listenOrExplain } from '../core/http.js'
import { createKafka } from '../core/kafka/client.js'
import { KafkaGroupConsumer, KafkaOffsets } from '../core/kafka/consumer.js'
import { once } from '../core/lifecycle.js'
import type { Logger } from '../core/log.js'
import type { ArchiveStateStore } from '../core/ports/batch-store.js'
import type { EventLogConsumer, LogOffsets } from '../core/ports/event-log.js'
import { makePrivateDir, PRIVATE_DIR_MODE } from '../core/private-files.js'
import { Archiver } from './archiver.js'
import { type BatchPathOptions, batchPaths, processOwner } from './context.js'
import { createArchiveMetrics } from './metrics.js'
import { stagingRelDir } from './segment-file.js'

export const ARCHIVE_DEFAULT_PORT = 9466

/** Options of `tally archive` (and of the archiver inside `tally batch`). */
export interface ArchiverRoleOptions extends Pick<BatchPathOptions, 'archiveDir'> {
  /** Consumer group of the archivers. Default TALLY_ARCHIVE_GROUP (tally-archive). */
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
  /** After a crash: leaves the group without closing buffers into segments. */
  abort(): Promise<void>
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
  const group = options.group ?? config.archive.group
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
  // Owner-only before the archiver creates anything in it (see fsyncDir for the folders below); an
  // archive root the operator made keeps its mode, the topic folder is Tally's own.
  await mkdir(paths.archiveDir, { recursive: true, mode: PRIVATE_DIR_MODE })
  await makePrivateDir(paths.topicDir)
  // The archiver makes each partition's staging folder when it takes the partition, with mkdir's
  // default mode: made here first, owner-only (one beyond the configured partitions is narrowed at
  // its first flush, by fsyncDir).
  for (let p = 0; p < config.kafka.partitions; p++) {
    await makePrivateDir(join(paths.topicDir, stagingRelDir(p)))
  }
  const close = once(async () => {
    await archiver.close()
    await release()
  })
  try {
    await archiver.start()
  } catch (err) {
    // The consumer may have joined before the start failed: closing leaves the group.
    await close().catch((closeErr: unknown) =>
      logger.error({ err: closeErr }, 'closing the archiver after a failed start failed'),
    )
    throw err
  }
  logger.info({ group, archive: paths.topicDir }, 'archiver running')
  return { archiver, close, abort: () => archiver.abort() }
}

export interface RunningArchiver {
  url: string
  archiver: Archiver
  registryText(): Promise<string>
  close(): Promise<void>
  /** After a crash: leave the consumer group without the final flush (see Closable.abort). */
  abort(): Promise<void>
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
  let component: ArchiverComponent | undefined
  const app = createHttpServer({ logger, bodyLimit: 1024, requestTimeoutMs: 10_000 })
  app.get('/healthz', async () => ({ status: 'ok' }))
  app.get('/readyz', async (_req, reply) =>
    component
      ? { status: 'ready', partitions: component.archiver.ownedPartitions() }
      : reply.status(503).send({ status: 'starting' }),
  )
  app.get('/metrics', async (_req, reply) =>
    reply.header('content-type', registry.contentType).send(await registry.metrics()),
  )
  // Bound before the archiver joins its group: a process that cannot serve its metrics fails
  // without leaving a dead member behind (which would stall the other archivers for a session).
  const url = await listenOrExplain(
    app,
    config.host,
    options.port ?? config.port ?? ARCHIVE_DEFAULT_PORT,
    "the archiver's /metrics",
    'PORT',
  )
  const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  try {
    await cassandra.connect()
    component = await createArchiverComponent(
      config,
      logger,
      { store: new CassandraArchiveStateStore(cassandra) },
      registry,
      options,
    )
  } catch (err) {
    await app.close()
    await cassandra.shutdown()
    throw err
  }
  const running = component
  return {
    url,
    archiver: running.archiver,
    registryText: () => registry.metrics(),
    // Order: stop HTTP, close buffers into segments and leave the group, close Cassandra.
    close: once(async () => {
      await app.close()
      await running.close()
      await cassandra.shutdown()
    }),
    abort: () => running.abort(),
  }
}
