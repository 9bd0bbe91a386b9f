import type { TallyConfig } from '../core/config.js'
import { errorMessage, TallyError } from '../core/errors.js'
import type { Logger } from '../core/log.js'
import { archiveKey } from './archiver.js'
import {
  ARCHIVE_GROUP,
  archiveBehind,
  type BatchPathOptions,
  type BatchStores,
  batchPaths,
  parseTime,
  processOwner,
} from './context.js'
import { type RebuildProgress, type RebuildResult, type RebuildSettings, runRebuild } from './rebuild.js'

/** Options of `tally rebuild`. */
export interface RebuildOptions extends BatchPathOptions {
  /** Rebuild one site; default all sites in the archive. */
  site?: string
  /** Range start (a Date, ms, or ISO 8601 such as 2024-05-01 or 2024-05-01T13:00Z); rounded down to the hour. */
  from: Date | number | string
  /** Range end, exclusive; rounded up to the hour. */
  to: Date | number | string
  /** Skip corrupt or truncated segments (each reported with its path) instead of failing. Default false. */
  skipCorrupt?: boolean
  /** Called as the job advances: on each phase change and end, else at most every 100 ms (drives the progress bar). */
  onProgress?: (p: RebuildProgress) => void
  signal?: AbortSignal
  /** Recorded with the run. Default manual. */
  kind?: string
  /** Lease TTL, renewed every third of it. Default 30000 ms. */
  leaseTtlMs?: number
  /** Wait this long for a busy range (another job on it) before failing. Default 0. */
  waitForLeaseMs?: number
  /** Pause after each segment read and before each write round. Default 0 ms. */
  throttleMs?: number
  /** Final rows per write round (the lease is checked between rounds). Default 500. */
  writeChunkRows?: number
  /** Dedup candidates kept in memory before spilling to disk (28 bytes each). Default 4 000 000. */
  maxDedupRowsInMemory?: number
  /** Archiver consumer group whose progress is checked. Default tally-archive. */
  archiveGroup?: string
  /**
   * Fail when the archive is not complete through `to` (the archiver lags); otherwise a warning is
   * logged and the rebuild counts what is archived. Default false.
   */
  requireArchiveComplete?: boolean
}

/** Settings of runRebuild from the configuration and the options. */
export function rebuildSettings(
  config: TallyConfig,
  o: Omit<RebuildOptions, 'from' | 'to'> = {},
): RebuildSettings {
  const paths = batchPaths(config, o)
  return {
    topicDir: paths.topicDir,
    stagingDir: paths.stagingDir,
    precision: config.stream.hllPrecision,
    owner: processOwner(),
    ttlSeconds: config.stream.ttlSeconds,
    ...(o.leaseTtlMs === undefined ? {} : { leaseTtlMs: o.leaseTtlMs }),
    ...(o.waitForLeaseMs === undefined ? {} : { waitForLeaseMs: o.waitForLeaseMs }),
    ...(o.throttleMs === undefined ? {} : { throttleMs: o.throttleMs }),
    ...(o.writeChunkRows === undefined ? {} : { writeChunkRows: o.writeChunkRows }),
    ...(o.maxDedupRowsInMemory === undefined ? {} : { maxDedupRowsInMemory: o.maxDedupRowsInMemory }),
  }
}

async function checkArchive(
  config: TallyConfig,
  logger: Logger,
  stores: BatchStores,
  toMs: number,
  o: RebuildOptions,
): Promise<void> {
  try {
    const behind = await archiveBehind(
      stores.archive,
      stores.offsets,
      archiveKey(o.archiveGroup ?? ARCHIVE_GROUP, config.kafka.topicRaw),
      config.kafka.topicRaw,
      toMs,
    )
    if (behind.length === 0) return
    const message = `the archive is not complete through ${new Date(toMs).toISOString()} (partitions ${behind.map((b) => `${b.partition}: ${b.archived}/${b.end}`).join(', ')}); is \`tally archive\` running?`
    if (o.requireArchiveComplete)
      throw new TallyError('TALLY_ERR_ARCHIVE_BEHIND', message, { retriable: true })
    logger.warn({ behind }, message)
  } catch (err) {
    if (o.requireArchiveComplete) throw err
    logger.warn({ err: errorMessage(err) }, 'cannot check the archive’s progress')
  }
}

/**
 * `tally rebuild [--site S] --from T1 --to T2 [--skip-corrupt]`: rebuilds the final aggregates of a
 * range from the archive (see runRebuild in batch/rebuild.ts), recorded in `tally jobs`.
 * Rejects with RangeBusyError (TALLY_ERR_RANGE_BUSY) when another job holds the range, with
 * CorruptSegmentError (TALLY_ERR_CORRUPT_SEGMENT, naming the file) on a bad segment without
 * `skipCorrupt`, and with LeaseLostError when the job lost its lease; in every failure the previous
 * numbers stay.
 */
export async function rebuild(
  config: TallyConfig,
  logger: Logger,
  options: RebuildOptions & { stores: BatchStores },
): Promise<RebuildResult> {
  const fromMs = parseTime(options.from, '--from')
  const toMs = parseTime(options.to, '--to')
  const { stores } = options
  await checkArchive(config, logger, stores, toMs, options)
  return await runRebuild(
    { leases: stores.leases, jobs: stores.jobs, rows: stores.rows, logger },
    rebuildSettings(config, options),
    {
      siteId: options.site,
      fromMs,
      toMs,
      skipCorrupt: options.skipCorrupt ?? false,
      kind: options.kind ?? 'manual',
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    },
  )
}
