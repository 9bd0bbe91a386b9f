import type { Granularity, RowDimension } from '../aggregate/definition.js'
import type { FinalSpan } from '../aggregate/final.js'
import type { AggregateValues } from './aggregate-store.js'

/**
 * What the batch layer (archiver, rebuild, scheduler) needs from the store. Implemented by
 * Cassandra (core/cassandra/batch-store.ts).
 */

// --- archiver ------------------------------------------------------------------------------------

/** The committed archive position of one source partition. */
export interface ArchivePartitionState {
  /** The owner's epoch: every commit of the owner is conditional on it. */
  epoch: number
  /** Every record below this offset is in a closed segment (or was not an event). */
  nextOffset: number
  /** Latest receivedAt (ms) among the archived events; 0 when none. */
  watermarkMs: number
  /**
   * The segments of the last committed flush: final path (relative to the archive's topic folder)
   * → staging path (same base). The commit point is the store; renames follow it.
   */
  pending: ReadonlyMap<string, string>
}

export interface ArchiveCommit {
  /** First offset of the flush: must equal the stored next offset, else the commit is refused. */
  firstOffset: number
  nextOffset: number
  watermarkMs: number
  pending: ReadonlyMap<string, string>
}

export interface ArchiveProgress {
  partition: number
  nextOffset: number
  watermarkMs: number
  committedAtMs: number
}

export interface ArchiveStateStore {
  /**
   * Takes ownership of a partition of `archive`: a new epoch, higher than any before, and the state
   * as it was at that moment (no commit of an older owner can follow).
   */
  acquire(archive: string, partition: number, owner: string): Promise<ArchivePartitionState>
  /** The committed state of a partition (read linearizably), undefined when never archived. */
  read(archive: string, partition: number): Promise<ArchivePartitionState | undefined>
  /** Commits a flush if `epoch` still owns the partition and the flush starts at its next offset. */
  commit(archive: string, partition: number, epoch: number, commit: ArchiveCommit): Promise<boolean>
  /** The committed position of partitions 0..partitions-1 of `archive` that have one. */
  progress(archive: string, partitions: number): Promise<ArchiveProgress[]>
}

// --- leases --------------------------------------------------------------------------------------

export interface Lease {
  name: string
  /** Unique per acquisition. */
  holder: string
  /**
   * Fencing token: grows with every acquisition of any lease; results are written with it as the
   * write timestamp, so a later job's results win over an earlier one's.
   */
  token: number
  ttlMs: number
  acquiredAtMs: number
}

export interface LeaseStore {
  /** Takes the lease when nobody holds it (insert if absent, with a TTL); undefined when held. */
  tryAcquire(name: string, holder: string, ttlMs: number): Promise<Lease | undefined>
  /** Extends the lease by its TTL; false when it expired or another holder has it now. */
  renew(lease: Lease): Promise<boolean>
  /** Gives the lease up (only if still held by this holder). */
  release(lease: Lease): Promise<void>
  /** Who holds the lease now, if anyone. */
  current(name: string): Promise<{ holder: string; token: number } | undefined>
}

// --- job runs ------------------------------------------------------------------------------------

export type JobStatus = 'running' | 'succeeded' | 'failed' | 'lost_lease' | 'cancelled' | 'abandoned'

export interface JobRun {
  jobId: string
  /** hourly, nightly, manual. */
  kind: string
  /** undefined: all sites. */
  siteId: string | undefined
  fromMs: number
  toMs: number
  status: JobStatus
  holder: string
  leaseName: string
  token: number
  startedAtMs: number
  finishedAtMs: number | undefined
  durationMs: number | undefined
  segmentsRead: number
  eventsRead: number
  duplicates: number
  windowsWritten: number
  rowsWritten: number
  /** Paths of corrupt segments that were skipped (--skip-corrupt) or that failed the run. */
  corruptSegments: string[]
  /**
   * What a reader of the run must know although it succeeded: the archive did not cover the range
   * (`--allow-incomplete`), or the rebuild read zero events in windows where the stream counted some.
   */
  warnings: string[]
  error: string | undefined
}

export interface RangeRecord {
  /** Digest of the segment names the last successful run read. */
  fingerprint: string
  jobId: string
  finishedAtMs: number
}

export interface JobStore {
  /** Inserts or updates a run (keyed by its start time and id). */
  save(run: JobRun): Promise<void>
  /** Runs started since `sinceMs`, newest first, at most `limit`. */
  list(sinceMs: number, limit: number): Promise<JobRun[]>
  lastSuccess(rangeKey: string): Promise<RangeRecord | undefined>
  recordSuccess(rangeKey: string, record: RangeRecord): Promise<void>
}

// --- final rows ----------------------------------------------------------------------------------

/**
 * A final (batch) aggregate row, stored as part of its rebuild's generation (source_partition =
 * −generation, core/aggregate/final.ts) and read only once that generation is committed.
 */
export interface FinalRow {
  siteId: string
  granularity: Granularity
  windowStart: number
  /** undefined: the window's totals. */
  dimension: RowDimension | undefined
  value: string
  values: AggregateValues
}

export interface FinalRowStore {
  /** Starts of the windows of `granularity` in [fromMs, toMs) that hold any row (stream or final). */
  existingWindows(siteId: string, granularity: Granularity, fromMs: number, toMs: number): Promise<number[]>
  /**
   * Events (`events` + `botEvents`) the stream counted in each hour window of the site starting in
   * [fromMs, toMs): its partials only, summed over source partitions (final rows are not read).
   * Hours without stream rows are absent.
   */
  streamHourEvents(siteId: string, fromMs: number, toMs: number): Promise<Map<number, number>>
  /** Values of `dimension` that hold any row in one window. */
  existingValues(
    siteId: string,
    granularity: Granularity,
    dimension: RowDimension,
    windowStart: number,
  ): Promise<string[]>
  /**
   * Writes final rows as generation `generationOf(token)`, with the fencing token as write
   * timestamp (idempotent). Readers do not see them until `commitFinal`.
   */
  writeFinal(rows: readonly FinalRow[], token: number): Promise<void>
  /**
   * Makes generation `generationOf(token)` what readers use for `spans` of a site, all spans at
   * once (one single-partition batch, one transaction), then writes a new final mark
   * (AggregateReader.finalMark). A span whose commit has a higher token keeps it. Call it after
   * every row of the spans is written. A span marked `provisional` is read but not reported final.
   */
  commitFinal(siteId: string, spans: readonly FinalSpan[], token: number): Promise<void>
}
