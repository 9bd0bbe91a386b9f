import { join } from 'node:path'
import { errorMessage } from '../errors.js'
import { once } from '../lifecycle.js'
import type { Logger } from '../log.js'
import { makePrivateDirSync } from '../private-files.js'
import { EmbeddedAggregateReader } from './aggregate-reader.js'
import {
  EmbeddedArchiveStateStore,
  EmbeddedFinalRowStore,
  EmbeddedJobStore,
  EmbeddedLeaseStore,
} from './batch-store.js'
import { EmbeddedEventLog, type EmbeddedTopicSpec } from './event-log.js'
import { type DataDirLock, dataDirLockedError, lockDataDir } from './lock.js'
import { EmbeddedProgressBus } from './progress.js'
import { LOG_MIGRATIONS, STORE_MIGRATIONS } from './schema.js'
import { EmbeddedSiteStore } from './site-store.js'
import { DatabaseLockedError, type Db, openDatabase } from './sqlite.js'
import { EmbeddedStreamStore, type EmbeddedTtlConfig } from './stream-store.js'

export { EmbeddedAggregateReader } from './aggregate-reader.js'
export {
  EmbeddedArchiveStateStore,
  EmbeddedFinalRowStore,
  EmbeddedJobStore,
  EmbeddedLeaseStore,
} from './batch-store.js'
export { EmbeddedGroupConsumer, type EmbeddedGroupConsumerOptions } from './consumer.js'
export { EmbeddedEventLog, type EmbeddedTopicSpec } from './event-log.js'
export { LOCK_FILE } from './lock.js'
export { partitionForKey } from './partitioner.js'
export {
  EmbeddedProgressBus,
  type EmbeddedProgressListenerOptions,
  type EmbeddedProgressPublisherOptions,
} from './progress.js'
export { EmbeddedSiteStore } from './site-store.js'
export { EmbeddedStreamStore, type EmbeddedTtlConfig } from './stream-store.js'
export { EmbeddedLogWriter } from './writer.js'

export interface EmbeddedRetention {
  topic: string
  ms: number
  /** Consumer groups that must have read a record before it may go; empty: by time alone. */
  groups: readonly string[]
}

/** Where the embedded files live inside the data folder (the lock file sits at the folder's top). */
export const EMBEDDED_DIR = 'embedded'

export interface EmbeddedOptions {
  /** The data folder (TALLY_DATA_DIR); created when missing. */
  dataDir: string
  /** HyperLogLog precision the reader merges with (config.stream.hllPrecision). */
  hllPrecision: number
  /** Row lifetimes in seconds per granularity (config.stream.ttlSeconds). Default: forever. */
  ttlSeconds?: EmbeddedTtlConfig
  /** Topics created when missing (e.g. from core/migrate.ts topicSpecs(config)). */
  topics?: readonly EmbeddedTopicSpec[]
  /** How often expired rows are deleted, in ms; 0 turns the timer off. Default 3600000 (1 h). */
  purgeIntervalMs?: number
  /**
   * Log retention, applied with the purge: per topic, records older than `ms` that every one of
   * `groups` has committed past are deleted (like Kafka's retention.ms, but never ahead of a reader).
   * Default: none, the log keeps every record.
   */
  retention?: readonly EmbeddedRetention[]
  /** Rows per page of the reader's bulk export reads. Default 5000. */
  readerPageRows?: number
  /**
   * Threads of this process attach to the same files (attachEmbedded): the files are opened in
   * shared mode (sqlite.ts), and the process keeps other processes out by holding the guard file
   * `embedded/owner.db` exclusively besides the folder's lock. Default false: exclusive files.
   */
  shareWithThreads?: boolean
  /** Told after each log commit which partitions grew (see EmbeddedEventLogOptions.onAppended). */
  onAppended?: (topic: string, partition: number, end: number) => void
  logger?: Logger
}

/** What a thread of the owning process needs to attach to its files (attachEmbedded). */
export type AttachOptions = Pick<
  EmbeddedOptions,
  'dataDir' | 'hllPrecision' | 'ttlSeconds' | 'readerPageRows' | 'logger'
>

/** The guard file of a data folder whose files are shared between threads (see shareWithThreads). */
export const GUARD_FILE = 'owner.db'

/** Everything Tally needs from its storage, on local files, for one process. */
export interface EmbeddedBackend {
  readonly dataDir: string
  /** Event log: `log.writer()` (EventLogWriter), `log.consumer(…)` (EventLogConsumer), `log` itself (LogOffsets). */
  readonly log: EmbeddedEventLog
  readonly streamStore: EmbeddedStreamStore
  readonly reader: EmbeddedAggregateReader
  readonly sites: EmbeddedSiteStore
  /** The batch layer's stores (core/ports/batch-store.ts): rebuild leases, job runs, final rows, archive commits. */
  readonly batch: EmbeddedBatchStores
  /** Progress notices between the stream worker and the query role of this process (in memory). */
  readonly progress: EmbeddedProgressBus
  /** Closes the log then the files and releases the data folder. Close the roles first. Repeat-safe. */
  close(): Promise<void>
}

export interface EmbeddedBatchStores {
  readonly leases: EmbeddedLeaseStore
  readonly jobs: EmbeddedJobStore
  readonly rows: EmbeddedFinalRowStore
  readonly archive: EmbeddedArchiveStateStore
}

/**
 * Opens the embedded backend on `dataDir`: takes the folder's lock (throws TALLY_ERR_DATA_DIR_LOCKED
 * naming the other process when it is in use), opens `embedded/log.db` and `embedded/store.db`
 * (creating and migrating them), and creates the requested topics.
 */
export function openEmbedded(options: EmbeddedOptions): EmbeddedBackend {
  const { dataDir, logger } = options
  const lock = lockDataDir(dataDir)
  if (lock.replaced) {
    logger?.warn(
      { stalePid: lock.replaced.pid, since: lock.replaced.startedAt },
      'took over the data folder from a process that is gone',
    )
  }
  const opened: Db[] = []
  try {
    const dir = join(dataDir, EMBEDDED_DIR)
    makePrivateDirSync(dir)
    const shared = options.shareWithThreads === true
    // Shared files no longer exclude another process by themselves: this one does, for as long as
    // the process lives (even two processes racing for a stale lock file cannot both hold it).
    if (shared) opened.push(openDatabase(join(dir, GUARD_FILE), []))
    const backend = build(options, opened, shared, () => closeAll(opened, lock, logger))
    if (options.topics) backend.log.ensureTopics(options.topics)
    return backend
  } catch (err) {
    closeAll(opened, lock, logger)
    if (err instanceof DatabaseLockedError) throw dataDirLockedError(dataDir, undefined, err)
    throw err
  }
}

/**
 * Opens the files of an embedded backend that a thread of this process owns (openEmbedded with
 * shareWithThreads): no lock taken (the owner holds it), no purge timer (the owner runs it), no
 * topics created. Close it before the owner closes its own.
 */
export function attachEmbedded(options: AttachOptions): EmbeddedBackend {
  const opened: Db[] = []
  try {
    return build(
      { ...options, purgeIntervalMs: 0, retention: [] },
      opened,
      true,
      () => closeAll(opened, undefined, options.logger),
      true,
    )
  } catch (err) {
    closeAll(opened, undefined, options.logger)
    throw err
  }
}

function build(
  options: EmbeddedOptions,
  opened: Db[],
  shared: boolean,
  closeFiles: () => void,
  attached = false,
): EmbeddedBackend {
  const { dataDir, logger } = options
  const dir = join(dataDir, EMBEDDED_DIR)
  const logDb = openDatabase(join(dir, 'log.db'), LOG_MIGRATIONS, { shared })
  opened.push(logDb)
  const storeDb = openDatabase(join(dir, 'store.db'), STORE_MIGRATIONS, { shared })
  opened.push(storeDb)
  const log = new EmbeddedEventLog(logDb, {
    shared,
    ...(logger ? { logger } : {}),
    ...(options.onAppended ? { onAppended: options.onAppended } : {}),
  })
  const ttl = options.ttlSeconds ?? { minute: 0, hour: 0, day: 0 }
  const streamStore = new EmbeddedStreamStore(storeDb, ttl)
  const batch: EmbeddedBatchStores = {
    leases: new EmbeddedLeaseStore(storeDb),
    jobs: new EmbeddedJobStore(storeDb),
    rows: new EmbeddedFinalRowStore(storeDb, ttl),
    archive: new EmbeddedArchiveStateStore(storeDb),
  }
  const purge = () => {
    try {
      const n = streamStore.purgeExpired()
      if (n > 0) logger?.info({ rows: n }, 'expired aggregate rows deleted')
      batch.leases.purgeExpired()
      batch.jobs.purgeExpired()
      for (const r of options.retention ?? []) {
        let records = 0
        // Bounded rounds per purge: each is one short statement per partition.
        for (let round = 0; round < 50; round++) {
          const n = log.trim(r.topic, Date.now() - r.ms, r.groups)
          records += n
          if (n === 0) break
        }
        if (records > 0) logger?.info({ topic: r.topic, records }, 'log records past retention deleted')
      }
    } catch (err) {
      logger?.warn({ err: errorMessage(err) }, 'purge of expired rows failed')
    }
  }
  const purgeMs = options.purgeIntervalMs ?? 3_600_000
  // An attached thread leaves the purge to the owner.
  if (!attached) purge()
  const timer = purgeMs > 0 ? setInterval(purge, purgeMs) : undefined
  timer?.unref()
  return {
    dataDir,
    log,
    streamStore,
    reader: new EmbeddedAggregateReader(
      storeDb,
      options.hllPrecision,
      options.readerPageRows === undefined ? {} : { pageRows: options.readerPageRows },
    ),
    sites: new EmbeddedSiteStore(storeDb),
    batch,
    progress: new EmbeddedProgressBus(),
    close: once(async () => {
      clearInterval(timer)
      try {
        await log.close()
      } finally {
        closeFiles()
      }
    }),
  }
}

function closeAll(dbs: Db[], lock: DataDirLock | undefined, logger: Logger | undefined): void {
  for (const db of dbs) {
    try {
      if (db.open) db.close()
    } catch (err) {
      logger?.error({ err: errorMessage(err), file: db.name }, 'closing an embedded database failed')
    }
  }
  lock?.release()
}
