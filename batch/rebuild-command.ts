import { archiveKey, type BatchPathOptions, batchPaths } from '../core/archive/paths.js'
import { backendOf, type TallyConfig } from '../core/config.js'
import { ERR } from '../core/error-codes.js'
import { TallyError } from '../core/errors.js'
import type { Logger } from '../core/log.js'
import { sleep } from '../core/retry.js'
import {
  type BatchStores,
  type PartitionBehind,
  parseTime,
  partitionsBehind,
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
   * How long to wait for the archive to hold every record the log had when the rebuild started,
   * before failing with TALLY_ERR_ARCHIVE_BEHIND. Default TALLY_REBUILD_WAIT_ARCHIVE_MS (300000).
   * The embedded backend does not wait: its archiver cannot run while the rebuild holds the data
   * folder.
   */
  waitArchiveMs?: number
  /**
   * Do not wait: rebuild from what is archived, and commit the windows the archive may not fully
   * hold as provisional (not final in `meta`), with a warning. Default false.
   */
  allowIncomplete?: boolean
  /** Called while the rebuild waits for the archive: at the first check, then about every second. */
  onArchiveWait?: (w: ArchiveWait) => void
}

/** How far the archive is while a rebuild waits for it. */
export interface ArchiveWait {
  /** Partitions not yet archived up to the end the log had when the rebuild started. */
  behind: PartitionBehind[]
  /** Records archived / to archive, over those partitions. */
  archived: number
  end: number
  elapsedMs: number
  waitMs: number
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
    visitGapMs: config.stream.visitGapMs,
    countsVisits: config.batch.countsVisits,
    propValuesMax: config.stream.propValuesMax,
    dimensionValuesMax: config.stream.dimensionValuesMax,
    breakdowns: config.stream.breakdowns,
    owner: processOwner(),
    ttlSeconds: config.stream.ttlSeconds,
    ...(o.leaseTtlMs === undefined ? {} : { leaseTtlMs: o.leaseTtlMs }),
    ...(o.waitForLeaseMs === undefined ? {} : { waitForLeaseMs: o.waitForLeaseMs }),
    ...(o.throttleMs === undefined ? {} : { throttleMs: o.throttleMs }),
    ...(o.writeChunkRows === undefined ? {} : { writeChunkRows: o.writeChunkRows }),
    ...(o.maxDedupRowsInMemory === undefined ? {} : { maxDedupRowsInMemory: o.maxDedupRowsInMemory }),
  }
}

/** Between two looks at the archive's progress while waiting for it. */
const ARCHIVE_POLL_MS = 500

/** `1100 of 1500 records (partition 0: 300/500, 1: 400/500, 2: 400/500)`: archived / to archive. */
function describeBehind(behind: readonly PartitionBehind[]): string {
  const archived = behind.reduce((n, b) => n + b.archived, 0)
  const end = behind.reduce((n, b) => n + b.end, 0)
  const shown = behind
    .slice(0, 8)
    .map((b) => `${b.partition}: ${b.archived}/${b.end}`)
    .join(', ')
  return `${archived} of ${end} records (partition ${shown}${behind.length > 8 ? ', …' : ''})`
}

/**
 * Waits until the archive holds every record the log had when the rebuild started (offsets, not
 * watermarks: imported history and bursts carry event times far from their arrival), so the
 * rebuild never commits numbers from a partial archive. Returns undefined once it does. With
 * `allowIncomplete` it does not wait and returns the time through which the archive holds every
 * received event (the least watermark of the partitions behind): windows ending after it are
 * committed provisional. Throws TALLY_ERR_ARCHIVE_BEHIND when the wait runs out.
 */
async function awaitArchive(
  config: TallyConfig,
  logger: Logger,
  stores: BatchStores,
  o: RebuildOptions,
): Promise<number | undefined> {
  const topic = config.kafka.topicRaw
  const key = archiveKey(o.archiveGroup ?? config.archive.group, topic)
  const ends = await stores.offsets.endOffsets(topic)
  const embedded = backendOf(config) === 'embedded'
  const waitMs = embedded ? 0 : (o.waitArchiveMs ?? config.batch.rebuildWaitArchiveMs)
  const started = Date.now()
  let lastLogged = 0
  for (;;) {
    const behind = await partitionsBehind(stores.archive, key, ends, Number.POSITIVE_INFINITY)
    if (behind.length === 0) return undefined
    if (o.allowIncomplete) {
      // The archive holds what was received through the lagging partitions' oldest watermark; an
      // event received after it may still be timed up to the grace earlier (the stream's lateness
      // rule: later ones are late data, which a later rebuild counts). So windows ending after
      // (watermark − grace) may lack events: they stay provisional.
      const through = Math.min(...behind.map((b) => b.watermarkMs)) - config.stream.graceMs
      logger.warn(
        { behind, archiveCompleteThroughMs: through },
        `of the records the log held when the rebuild started, the archive holds ${describeBehind(behind)}; rebuilding from what is archived (--allow-incomplete)`,
      )
      return through
    }
    const elapsedMs = Date.now() - started
    const archived = behind.reduce((n, b) => n + b.archived, 0)
    const end = behind.reduce((n, b) => n + b.end, 0)
    o.onArchiveWait?.({ behind, archived, end, elapsedMs, waitMs })
    if (elapsedMs >= waitMs) {
      const why = embedded
        ? 'the embedded archiver runs in `tally all`, which cannot run while this rebuild holds the data folder: run `tally all` until it has archived the log.'
        : `waited ${Math.round(elapsedMs / 1000)} s (--wait-archive-ms ${waitMs}): is \`tally archive\` or \`tally batch\` running?`
      throw new TallyError(
        ERR.ARCHIVE_BEHIND,
        `the archive is not complete: of the records the log held when the rebuild started, it holds ${describeBehind(behind)}; ${why} Or pass --allow-incomplete to commit what is archived (those windows stay provisional)`,
        { retriable: true, where: 'archive', details: { behind } },
      )
    }
    if (Date.now() - lastLogged >= 10_000) {
      lastLogged = Date.now()
      logger.info({ behind }, `waiting for the archive: it holds ${describeBehind(behind)}`)
    }
    await sleep(Math.min(ARCHIVE_POLL_MS, waitMs - elapsedMs), o.signal)
  }
}

/**
 * `tally rebuild [--site S] --from T1 --to T2 [--skip-corrupt]`: rebuilds the final aggregates of a
 * range from the archive (see runRebuild in batch/rebuild.ts), recorded in `tally jobs`. First it
 * waits (bounded) for the archive to hold every record the log had at the start; with
 * `allowIncomplete` it rebuilds at once and commits the windows the archive may lack as provisional.
 * Rejects with TALLY_ERR_ARCHIVE_BEHIND when the wait runs out (nothing written, no run recorded), with RangeBusyError (TALLY_ERR_RANGE_BUSY) when another job holds the range, with
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
  const through = await awaitArchive(config, logger, stores, options)
  return await runRebuild(
    {
      leases: stores.leases,
      jobs: stores.jobs,
      rows: stores.rows,
      logger,
      ...(stores.sites ? { propKeys: stores.sites } : {}),
    },
    rebuildSettings(config, options),
    {
      siteId: options.site,
      fromMs,
      toMs,
      skipCorrupt: options.skipCorrupt ?? false,
      kind: options.kind ?? 'manual',
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
      ...(through === undefined ? {} : { archiveCompleteThroughMs: through }),
    },
  )
}
