import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import type { Registry } from 'prom-client'
import { type BatchPathOptions, batchPaths } from '../core/archive/paths.js'
import { stagingRelDir } from '../core/archive/segment-file.js'
import type { TallyConfig } from '../core/config.js'
import { startOpsServer } from '../core/http.js'
import { once } from '../core/lifecycle.js'
import type { Logger } from '../core/log.js'
import { createProcessRegistry } from '../core/metrics.js'
import type { Ports } from '../core/ports/backend.js'
import type { ArchiveStateStore } from '../core/ports/batch-store.js'
import { makePrivateDir, PRIVATE_DIR_MODE } from '../core/private-files.js'
import { Archiver } from './archiver.js'
import { processOwner } from './context.js'
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
  /** After a crash: leaves the group without closing buffers into segments. */
  abort(): Promise<void>
}

/**
 * An archiver reporting into `registry`, its state in `store`, reading through a consumer of the
 * ports (closed here; the ports themselves are closed by their owner).
 */
export async function createArchiverComponent(
  config: TallyConfig,
  logger: Logger,
  source: { store: ArchiveStateStore; ports: Pick<Ports, 'consumer' | 'offsets'> },
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
  const consumer = source.ports.consumer(request)
  const offsets = source.ports.offsets
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
  const close = once(() => archiver.close())
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
  options: ArchiverRoleOptions & {
    port?: number
    /** The backend (built by app/); closed by its owner after the role. */
    ports: Pick<Ports, 'consumer' | 'offsets' | 'batch'>
  },
): Promise<RunningArchiver> {
  const registry = createProcessRegistry()
  let component: ArchiverComponent | undefined
  // Bound before the archiver joins its group: a process that cannot serve its metrics fails
  // without leaving a dead member behind (which would stall the other archivers for a session).
  const { app, url } = await startOpsServer({
    logger,
    registry,
    host: config.host,
    port: options.port ?? config.port ?? ARCHIVE_DEFAULT_PORT,
    what: "the archiver's /metrics",
    where: 'PORT',
    ready: () => (component ? { partitions: component.archiver.ownedPartitions() } : undefined),
  })
  const { ports, ...archiverOptions } = options
  try {
    component = await createArchiverComponent(
      config,
      logger,
      { store: ports.batch.archive, ports },
      registry,
      archiverOptions,
    )
  } catch (err) {
    await app.close()
    throw err
  }
  const running = component
  return {
    url,
    archiver: running.archiver,
    registryText: () => registry.metrics(),
    // Order: stop HTTP, close buffers into segments and leave the group (the ports' owner closes
    // Cassandra after).
    close: once(async () => {
      await app.close()
      await running.close()
    }),
    abort: () => running.abort(),
  }
}
