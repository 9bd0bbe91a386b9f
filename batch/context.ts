import { hostname } from 'node:os'
import { join, resolve } from 'node:path'
import type { TallyConfig } from '../core/config.js'
import { UsageError } from '../core/errors.js'
import type {
  ArchiveProgress,
  ArchiveStateStore,
  FinalRowStore,
  JobStore,
  LeaseStore,
} from '../core/ports/batch-store.js'
import type { LogOffsets } from '../core/ports/event-log.js'
import { archiveTopicDir } from './segment-file.js'

/** Where the batch layer keeps its files, from the configuration and the options. */
export interface BatchPathOptions {
  /** Root of the archive. Default `<TALLY_DATA_DIR>/archive`. */
  archiveDir?: string
  /** Staged rebuild results and dedup spill files. Default `<TALLY_DATA_DIR>/batch-staging`. */
  stagingDir?: string
}

export interface BatchPaths {
  archiveDir: string
  /** `<archiveDir>/<raw topic>`. */
  topicDir: string
  stagingDir: string
}

export function batchPaths(
  config: Pick<TallyConfig, 'dataDir' | 'kafka'>,
  o: BatchPathOptions = {},
): BatchPaths {
  const archiveDir = resolve(o.archiveDir ?? join(config.dataDir, 'archive'))
  return {
    archiveDir,
    topicDir: archiveTopicDir(archiveDir, config.kafka.topicRaw),
    stagingDir: resolve(o.stagingDir ?? join(config.dataDir, 'batch-staging')),
  }
}

/** Default consumer group of the archivers. */
export { ARCHIVE_GROUP } from '../core/ports/backend.js'

export function processOwner(): string {
  return `${hostname()}:${process.pid}`
}

/** The stores of the batch layer, and the log's end offsets (to tell how far the archive got). */
export interface BatchStores {
  leases: LeaseStore
  jobs: JobStore
  rows: FinalRowStore
  archive: ArchiveStateStore
  offsets: LogOffsets
}

/**
 * Partitions whose archive is not yet complete through `toMs`: a partition is complete when every
 * record the log holds is archived, or when it archived an event received at or after `toMs`.
 * Empty when the archive can be trusted for the range.
 */
export async function archiveBehind(
  archive: Pick<ArchiveStateStore, 'progress'>,
  offsets: LogOffsets,
  key: string,
  topic: string,
  toMs: number,
): Promise<Array<{ partition: number; archived: number; end: number; watermarkMs: number }>> {
  const ends = await offsets.endOffsets(topic)
  const progress = new Map<number, ArchiveProgress>(
    (await archive.progress(key, Math.max(0, ...ends.keys()) + 1)).map((p) => [p.partition, p]),
  )
  const behind: Array<{ partition: number; archived: number; end: number; watermarkMs: number }> = []
  for (const [partition, end] of ends) {
    const p = progress.get(partition)
    const archived = p?.nextOffset ?? 0
    const watermarkMs = p?.watermarkMs ?? 0
    if (archived < end && watermarkMs < toMs) behind.push({ partition, archived, end, watermarkMs })
  }
  return behind.sort((a, b) => a.partition - b.partition)
}

/** A time given on the command line or in options: a Date, ms since epoch, or an ISO 8601 string. */
export function parseTime(value: Date | number | string, what: string): number {
  const ms =
    value instanceof Date
      ? value.getTime()
      : typeof value === 'number'
        ? value
        : /^\d{4}-\d{2}-\d{2}/.test(value)
          ? Date.parse(value)
          : Number.NaN
  if (!Number.isFinite(ms))
    throw new UsageError(
      `${what} must be a date such as 2024-05-01 or 2024-05-01T13:00Z, got ${String(value)}`,
    )
  return ms
}
