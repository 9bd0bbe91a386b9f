import { hostname } from 'node:os'
import { UsageError } from '../core/errors.js'
import type {
  ArchiveProgress,
  ArchiveStateStore,
  FinalRowStore,
  JobStore,
  LeaseStore,
} from '../core/ports/batch-store.js'
import type { LogOffsets } from '../core/ports/event-log.js'
import type { SiteStore } from '../core/ports/site-store.js'

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
  /** The sites' declared custom property keys and goals, for the rebuild (batch/prop-columns.ts). Optional: none counted without. */
  sites?: Pick<SiteStore, 'listPropKeys'> & Partial<Pick<SiteStore, 'listGoals'>>
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
): Promise<PartitionBehind[]> {
  return partitionsBehind(archive, key, await offsets.endOffsets(topic), toMs)
}

/** A partition whose archive lags: archived offset, the offset it must reach, latest archived receivedAt. */
export interface PartitionBehind {
  partition: number
  archived: number
  end: number
  watermarkMs: number
}

/**
 * Partitions of `ends` (partition → offset the archive must reach) whose archive has not reached it
 * and whose archived watermark is before `toMs` (Infinity: the offsets alone decide).
 */
export async function partitionsBehind(
  archive: Pick<ArchiveStateStore, 'progress'>,
  key: string,
  ends: ReadonlyMap<number, number>,
  toMs: number,
): Promise<PartitionBehind[]> {
  const progress = new Map<number, ArchiveProgress>(
    (await archive.progress(key, Math.max(0, ...ends.keys()) + 1)).map((p) => [p.partition, p]),
  )
  const behind: PartitionBehind[] = []
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
