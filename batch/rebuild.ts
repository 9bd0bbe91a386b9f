import { createHash, randomUUID } from 'node:crypto'
import { mkdir, readdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import {
  DIMENSION_GRANULARITIES,
  DIMENSIONS,
  type Granularity,
  windowMs,
  windowStart,
} from '../core/aggregate/definition.js'
import { spansOfDay } from '../core/aggregate/final.js'
import { findDuplicates } from '../core/archive/dedup.js'
import { listSegments } from '../core/archive/segment-file.js'
import { CorruptSegmentError, readSegment, type SegmentColumns } from '../core/archive/segment-reader.js'
import { ERR } from '../core/error-codes.js'
import { errorMessage, TallyError } from '../core/errors.js'
import type { Logger } from '../core/log.js'
import type { FinalRow, FinalRowStore, JobRun, JobStore, LeaseStore } from '../core/ports/batch-store.js'
import { sleep } from '../core/retry.js'
import {
  type AggregateRow,
  type AggregateStats,
  DayAggregator,
  emptyStats,
  HourAggregator,
} from './aggregate.js'
import { acquireLease, LeaseKeeper, LeaseLostError, RangeBusyError } from './lease.js'
import type { BatchMetrics } from './metrics.js'
import { RegisterSet } from './registers.js'
import { StagingArea } from './staging.js'

const HOUR_MS = 3_600_000
const DAY_MS = 86_400_000

export interface RebuildProgress {
  /** dedup: pass 1 over the segments; aggregate: pass 2; write: final rows, day by day. */
  phase: 'dedup' | 'aggregate' | 'write'
  /** Units done / in all in this phase: segments (dedup, aggregate) or days (write). */
  done: number
  total: number
  /** Of the whole job, 0..1. */
  fraction: number
  eventsRead: number
  rowsWritten: number
  elapsedMs: number
  /** Estimated time left (undefined until there is something to go by). */
  etaMs: number | undefined
}

export interface RebuildRequest {
  /** One site; undefined: every site in the archive. */
  siteId?: string | undefined
  /** Range start (ms); rounded down to the hour. */
  fromMs: number
  /** Range end, exclusive (ms); rounded up to the hour. */
  toMs: number
  /** Skip corrupt or truncated segments (reported with their paths) instead of failing. Default false. */
  skipCorrupt?: boolean
  /** Recorded with the run: manual, hourly, nightly. Default manual. */
  kind?: string
  /** Skip when the range's segments are the same as at its last successful rebuild. Default false. */
  skipUnchanged?: boolean
  /** On each phase change and at its end, else at most every 100 ms within a phase. */
  onProgress?: (p: RebuildProgress) => void
  /** Cancels the job (it stops before its next write; nothing more is written). */
  signal?: AbortSignal
  /**
   * The archive holds every event received before this time (ms), not necessarily later ones
   * (`tally rebuild --allow-incomplete`): the spans ending after it are committed provisional (read,
   * not final; core/aggregate/final.ts) and the run records a warning. Default: the archive covers
   * the range.
   */
  archiveCompleteThroughMs?: number
}

export interface RebuildSettings {
  /** The archive folder of the raw topic (`<archiveDir>/<topic>`). */
  topicDir: string
  /** Folder for staged results and dedup spill files; each range uses a subfolder. */
  stagingDir: string
  /** HyperLogLog precision of `visitors` (the stream's). */
  precision: number
  /** Identifies this process in leases and runs. */
  owner: string
  /** Lease TTL; renewed every third of it. Default 30000 ms. */
  leaseTtlMs?: number
  /** How long to wait for a busy range's lease before giving up. Default 0. */
  waitForLeaseMs?: number
  /** Dedup candidates kept in memory (28 bytes each) before spilling to files. Default 4 000 000. */
  maxDedupRowsInMemory?: number
  /** Pause after each segment read and before each write round, to leave disk, CPU and the store to other work. Default 0 ms. */
  throttleMs?: number
  /** Segment bytes kept in memory between the two passes (beyond, pass 2 reads them again). Default 256 MiB. */
  segmentCacheBytes?: number
  /** Final rows per write round (the lease is checked between rounds). Default 500. */
  writeChunkRows?: number
  /**
   * Row TTLs per granularity in seconds (0: forever), as the stream writes them. Windows whose TTL
   * has run out are not written (a rebuild of old history does not bring back expired minutes).
   * Default: keep everything.
   */
  ttlSeconds?: Readonly<Record<Granularity, number>>
}

export interface RebuildDeps {
  leases: LeaseStore
  jobs: JobStore
  rows: FinalRowStore
  logger: Logger
  metrics?: BatchMetrics
}

export interface RebuildResult {
  /** succeeded, or skipped_unchanged (nothing new since the last success). */
  status: 'succeeded' | 'skipped_unchanged'
  run: JobRun
  fromMs: number
  toMs: number
  /** Candidates of the dedup pass spread over this many files (1: all in memory). */
  dedupBuckets: number
  /** Wall time of the read passes (dedup + aggregation), for throughput figures. */
  computeMs: number
}

/** The lease (and range) name of a rebuild: site (or *) and hour-aligned range. */
export function rangeName(siteId: string | undefined, fromMs: number, toMs: number): string {
  return `rebuild|${siteId ?? '*'}|${new Date(fromMs).toISOString()}|${new Date(toMs).toISOString()}`
}

/** The range rounded out to whole hours. */
export function alignRange(fromMs: number, toMs: number): { fromMs: number; toMs: number } {
  if (!Number.isFinite(fromMs) || !Number.isFinite(toMs))
    throw new TallyError(ERR.BAD_RANGE, 'from and to must be dates', { statusCode: 400 })
  const from = Math.floor(fromMs / HOUR_MS) * HOUR_MS
  const to = Math.ceil(toMs / HOUR_MS) * HOUR_MS
  if (to <= from)
    throw new TallyError(
      ERR.BAD_RANGE,
      `the range ${new Date(fromMs).toISOString()} .. ${new Date(toMs).toISOString()} is empty`,
      {
        statusCode: 400,
      },
    )
  return { fromMs: from, toMs: to }
}

function cancelled(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    throw signal.reason instanceof Error
      ? signal.reason
      : new TallyError(ERR.CANCELLED, 'the rebuild was cancelled')
  }
}

function finalRowOf(r: AggregateRow): FinalRow {
  return {
    siteId: r.siteId,
    granularity: r.granularity,
    windowStart: r.windowStart,
    dimension: r.dimension,
    value: r.value,
    values: {
      events: r.events,
      pageviews: r.pageviews,
      botEvents: r.botEvents,
      visitors: r.visitors.toBytes(),
    },
  }
}

function rowKey(r: {
  granularity: Granularity
  windowStart: number
  dimension: string | undefined
  value: string
}): string {
  return `${r.granularity}\u0001${r.windowStart}\u0001${r.dimension ?? ''}\u0001${r.value}`
}

/**
 * Rebuilds the final aggregates of a range from the archive:
 * 1. takes the range's lease (one job per range at a time) and keeps renewing it;
 * 2. pass 1 reads every segment of the range and finds the duplicates (core/archive/dedup.ts);
 * 3. pass 2 aggregates hour by hour (batch/aggregate.ts) into staging files, one per day; day
 *    windows only when the whole day is in the range. Nothing is written to the store before both
 *    passes finish, so a failure — a corrupt segment, a crash, a lost lease — leaves the previous
 *    numbers as they were;
 * 4. writes the final rows day by day as the job's generation (core/aggregate/final.ts), with the
 *    lease's fencing token as write timestamp, checking the lease before each round, and commits
 *    each site-day once its rows are written: readers switch to it at once. A row that exists in
 *    the store for a window of the range (stream partial or older final row) but not in the result
 *    gets a final row of zeros, so the result replaces the stream's windows completely.
 * Every run is recorded (status, range, counts, duration, error).
 */
export async function runRebuild(
  deps: RebuildDeps,
  settings: RebuildSettings,
  request: RebuildRequest,
): Promise<RebuildResult> {
  const { logger, metrics } = deps
  const started = Date.now()
  const { fromMs, toMs } = alignRange(request.fromMs, request.toMs)
  const siteId = request.siteId
  const kind = request.kind ?? 'manual'
  const name = rangeName(siteId, fromMs, toMs)
  const ttl = settings.leaseTtlMs ?? 30_000
  const holder = `${settings.owner}/${randomUUID()}`
  const lease = await acquireLease(
    deps.leases,
    name,
    holder,
    ttl,
    settings.waitForLeaseMs ?? 0,
    request.signal,
  )
  if (!lease) {
    metrics?.jobs.inc({ kind, outcome: 'skipped_busy' })
    throw new RangeBusyError(name)
  }
  const keeper = new LeaseKeeper(deps.leases, lease, logger)
  const signal = request.signal ? AbortSignal.any([request.signal, keeper.signal]) : keeper.signal
  const staging = join(settings.stagingDir, createHash('sha256').update(name).digest('hex').slice(0, 24))
  const run: JobRun = {
    jobId: randomUUID(),
    kind,
    siteId,
    fromMs,
    toMs,
    status: 'running',
    holder,
    leaseName: name,
    token: lease.token,
    startedAtMs: started,
    finishedAtMs: undefined,
    durationMs: undefined,
    segmentsRead: 0,
    eventsRead: 0,
    duplicates: 0,
    windowsWritten: 0,
    rowsWritten: 0,
    corruptSegments: [],
    warnings: [],
    error: undefined,
  }
  const log = logger.child({ job: run.jobId, range: name, token: lease.token })
  // Recorded with the run (bounded: a run over many site-days could otherwise carry thousands).
  const warn = (message: string, fields: Record<string, unknown>) => {
    log.warn(fields, message)
    if (run.warnings.length < MAX_WARNINGS) run.warnings.push(message)
    else if (run.warnings.length === MAX_WARNINGS) run.warnings.push('… more warnings in the log')
  }
  let area: StagingArea | undefined
  metrics?.running.inc()
  try {
    const listing = await listSegments(settings.topicDir, fromMs, toMs)
    const fingerprint = createHash('sha256')
      .update([...listing.segments.map((s) => s.relPath), ...listing.misnamed].join('\n'))
      .digest('hex')
    if (request.skipUnchanged) {
      const last = await deps.jobs.lastSuccess(name)
      if (last?.fingerprint === fingerprint) {
        metrics?.jobs.inc({ kind, outcome: 'skipped_unchanged' })
        log.debug('range unchanged since its last rebuild; skipped')
        return {
          status: 'skipped_unchanged',
          run: { ...run, status: 'succeeded' },
          fromMs,
          toMs,
          dedupBuckets: 0,
          computeMs: 0,
        }
      }
    }
    await deps.jobs.save(run)
    log.info({ segments: listing.segments.length, site: siteId ?? '*' }, 'rebuild started')

    // Misnamed files in the archive are segments nobody can trust.
    for (const path of listing.misnamed) {
      const err = new CorruptSegmentError(path, 'the file name is not a segment name')
      if (!request.skipCorrupt) throw err
      run.corruptSegments.push(path)
      log.warn({ path }, err.message)
    }
    const segments = listing.segments
    const corrupt = new Set<number>()
    // Segments read by pass 1 are kept for pass 2 while they fit the budget (then read again).
    const cache = new Map<number, SegmentColumns>()
    const cacheBudget = settings.segmentCacheBytes ?? 256 * 1024 * 1024
    let cached = 0
    let caching = true
    const read = async (i: number): Promise<SegmentColumns | undefined> => {
      if (corrupt.has(i)) return undefined
      const hit = cache.get(i)
      if (hit) {
        cache.delete(i)
        return hit
      }
      try {
        const cols = await readSegment(segments[i]!)
        if (caching && cached + cols.byteLength <= cacheBudget) {
          cache.set(i, cols)
          cached += cols.byteLength
        }
        return cols
      } catch (err) {
        if (!(err instanceof CorruptSegmentError) || !request.skipCorrupt) throw err
        corrupt.add(i)
        run.corruptSegments.push(err.path)
        log.warn({ path: err.path }, `${err.message}; skipped (--skip-corrupt)`)
        return undefined
      }
    }

    const n = segments.length
    // One segment read ahead: the disk works while the CPU aggregates the current one.
    let ahead: { i: number; p: Promise<SegmentColumns | undefined> } | undefined
    const readAhead = (i: number): Promise<SegmentColumns | undefined> => {
      const current = ahead?.i === i ? ahead.p : read(i)
      ahead = i + 1 < n ? { i: i + 1, p: read(i + 1) } : undefined
      // Awaited on the next call; a failure here must not go unhandled if the job stops first.
      ahead?.p.catch(() => undefined)
      return current
    }
    let eventsRead = 0
    let rowsWritten = 0
    // Reported on a phase change, at a phase's end, and otherwise at most every PROGRESS_EVERY_MS:
    // a line per segment or write round costs more than the work on small segments.
    let lastPhase: RebuildProgress['phase'] | undefined
    let lastAt = 0
    const progress = (phase: RebuildProgress['phase'], done: number, total: number) => {
      if (!request.onProgress) return
      const now = Date.now()
      if (phase === lastPhase && done < total && now - lastAt < PROGRESS_EVERY_MS) return
      lastPhase = phase
      lastAt = now
      const share = phase === 'dedup' ? [0, 0.35] : phase === 'aggregate' ? [0.35, 0.55] : [0.9, 0.1]
      const fraction = share[0]! + share[1]! * (total === 0 ? 1 : done / total)
      const elapsedMs = Date.now() - started
      request.onProgress({
        phase,
        done,
        total,
        fraction,
        eventsRead,
        rowsWritten,
        elapsedMs,
        etaMs: fraction > 0.01 ? Math.round((elapsedMs / fraction) * (1 - fraction)) : undefined,
      })
    }
    const pause = async () => {
      cancelled(signal)
      if (settings.throttleMs) await sleep(settings.throttleMs, signal)
    }

    // Pass 1: duplicates across the whole range.
    const computeStarted = Date.now()
    progress('dedup', 0, n)
    await mkdir(settings.stagingDir, { recursive: true })
    await removeStaleStaging(settings.stagingDir, staging, log)
    area = await StagingArea.create(staging)
    const dedup = await findDuplicates(n, (i) => segments[i]!.rows, readAhead, {
      siteId,
      maxRowsInMemory: settings.maxDedupRowsInMemory ?? 4_000_000,
      spillDir: area.dir,
      afterSegment: async (i) => {
        progress('dedup', i + 1, n)
        await pause()
      },
    })
    run.duplicates = dedup.duplicates
    caching = false

    // Pass 2: aggregate hour by hour into the staging area; day rows once a whole day is done.
    const stats: AggregateStats = emptyStats()
    let day: DayAggregator | undefined
    const dayInRange = (d: number) => d >= fromMs && d + DAY_MS <= toMs
    const ttl = settings.ttlSeconds
    const live = (r: AggregateRow) =>
      !ttl ||
      ttl[r.granularity] === 0 ||
      r.windowStart + windowMs(r.granularity) + ttl[r.granularity] * 1000 > started
    const flushDay = async () => {
      if (!day) return
      for (const row of day.rows()) if (live(row)) await area!.write(day.dayStartMs, finalRowOf(row))
      day = undefined
    }
    let done = 0
    progress('aggregate', 0, n)
    for (let hour = fromMs; hour < toMs; hour += HOUR_MS) {
      const dayStart = windowStart(hour, 'day')
      if (day && day.dayStartMs !== dayStart) await flushDay()
      if (!day && dayInRange(dayStart)) day = new DayAggregator(dayStart, settings.precision)
      const agg = new HourAggregator(hour, settings.precision, siteId)
      while (done < n && segments[done]!.hourStartMs === hour) {
        const i = done++
        const cols = await readAhead(i)
        if (cols) {
          agg.add(cols, dedup.losers.get(i), stats)
          run.segmentsRead++
        }
        eventsRead = stats.rowsRead
        progress('aggregate', done, n)
        await pause()
      }
      for (const site of agg.siteIds()) {
        for (const row of agg.rows(site)) {
          day?.add(row)
          if (live(row)) await area.write(dayStart, finalRowOf(row))
        }
      }
    }
    await flushDay()
    const days = await area.finish()
    const computeMs = Date.now() - computeStarted
    run.eventsRead = stats.rowsRead
    metrics?.eventsRead.inc(stats.rowsRead)
    log.info(
      { ...stats, segments: run.segmentsRead, computeMs, dedupBuckets: dedup.buckets },
      'range computed',
    )

    const through = request.archiveCompleteThroughMs
    if (through !== undefined && through < toMs) {
      const firstProvisional = Math.max(fromMs, Math.floor(through / HOUR_MS) * HOUR_MS)
      warn(
        `the archive holds the events received through ${iso(through)} only: the windows from ${iso(firstProvisional)} on are committed but not final (--allow-incomplete); rebuild again once the archive has caught up`,
        { archiveCompleteThroughMs: through },
      )
    }

    // Write: only while the lease is ours; its token fences the writes.
    await keeper.check()
    const written = await writeDays(deps.rows, area, days, {
      siteId,
      fromMs,
      toMs,
      completeThroughMs: through,
      onZeroed: (site, hours, streamEvents) =>
        warn(
          `site ${site}: the rebuild read 0 events in ${hours.length} hour(s) where the stream counted ${streamEvents} (${listHours(hours)}); those windows now read 0. Is the archive complete?`,
          { site, hours: hours.map(iso), streamEvents },
        ),
      token: lease.token,
      precision: settings.precision,
      chunk: Math.max(1, settings.writeChunkRows ?? 500),
      beforeChunk: async () => {
        await pause()
        if (keeper.lost) throw new LeaseLostError(name)
      },
      onWritten: (k, rows) => {
        rowsWritten = rows
        progress('write', k, days.length)
      },
    })
    run.rowsWritten = written.rows
    run.windowsWritten = written.windows
    // Days without an event of the site are not written at all: the stream's numbers stay there,
    // provisional. When the stream counted events in them the rebuild did not do what was asked.
    if (siteId !== undefined) {
      const counted = await deps.rows.streamHourEvents(siteId, fromMs, toMs)
      const writtenDays = new Set(days)
      const hours = [...counted]
        .filter(([h, n]) => n > 0 && !writtenDays.has(windowStart(h, 'day')))
        .map(([h]) => h)
        .sort((a, b) => a - b)
      if (hours.length > 0) {
        const streamEvents = hours.reduce((n, h) => n + (counted.get(h) ?? 0), 0)
        warn(
          `site ${siteId}: the rebuild read 0 events in ${hours.length} hour(s) where the stream counted ${streamEvents} (${listHours(hours)}); nothing was written there, those windows keep the stream's provisional numbers. Is the archive complete?`,
          { site: siteId, hours: hours.map(iso), streamEvents },
        )
      }
    }
    metrics?.rowsWritten.inc(written.rows)
    run.status = 'succeeded'
    run.finishedAtMs = Date.now()
    run.durationMs = run.finishedAtMs - started
    await deps.jobs.save(run)
    await deps.jobs.recordSuccess(name, { fingerprint, jobId: run.jobId, finishedAtMs: run.finishedAtMs })
    metrics?.jobs.inc({ kind, outcome: 'succeeded' })
    metrics?.jobSeconds.observe({ kind }, run.durationMs / 1000)
    log.info(
      {
        events: run.eventsRead,
        rows: run.rowsWritten,
        windows: run.windowsWritten,
        durationMs: run.durationMs,
      },
      'rebuild done',
    )
    return { status: 'succeeded', run, fromMs, toMs, dedupBuckets: dedup.buckets, computeMs }
  } catch (err) {
    run.status = keeper.lost ? 'lost_lease' : request.signal?.aborted ? 'cancelled' : 'failed'
    run.error = errorMessage(err)
    run.finishedAtMs = Date.now()
    run.durationMs = run.finishedAtMs - started
    metrics?.jobs.inc({ kind, outcome: run.status })
    log.error({ err: run.error, status: run.status }, 'rebuild failed; the previous numbers stay')
    await deps.jobs
      .save(run)
      .catch((e: unknown) => log.warn({ err: errorMessage(e) }, 'cannot record the run'))
    throw keeper.lost && !(err instanceof LeaseLostError) ? new LeaseLostError(name) : err
  } finally {
    metrics?.running.dec()
    await keeper.stop()
    await area
      ?.remove()
      .catch((e: unknown) => log.warn({ err: errorMessage(e) }, 'cannot remove staging files'))
  }
}

const STALE_STAGING_MS = 7 * DAY_MS

/** Most warnings recorded with one run (all are logged). */
const MAX_WARNINGS = 50

function iso(ms: number): string {
  return new Date(ms).toISOString()
}

/** The first few hours of a list, for a one-line warning. */
function listHours(hours: readonly number[]): string {
  return `${hours.slice(0, 5).map(iso).join(', ')}${hours.length > 5 ? ', …' : ''}`
}

/** Least time between two progress reports of one phase. */
const PROGRESS_EVERY_MS = 100

/** Staging folders of jobs killed long ago (other ranges; a range's own is emptied when it runs). */
async function removeStaleStaging(root: string, keep: string, log: Logger): Promise<void> {
  for (const name of await readdir(root)) {
    const path = join(root, name)
    if (path === keep) continue
    const info = await stat(path).catch(() => undefined)
    if (info?.isDirectory() && Date.now() - info.mtimeMs > STALE_STAGING_MS) {
      await rm(path, { recursive: true, force: true })
      log.info({ path }, 'removed the staging files of a job that never finished')
    }
  }
}

interface WriteOptions {
  siteId: string | undefined
  fromMs: number
  toMs: number
  /** Spans ending after this are committed provisional (RebuildRequest.archiveCompleteThroughMs). */
  completeThroughMs: number | undefined
  /** A site-day's hours the rebuild found empty although the stream counted events in them. */
  onZeroed: (siteId: string, hours: number[], streamEvents: number) => void
  token: number
  precision: number
  chunk: number
  /** Before each chunk of rows and each commit. */
  beforeChunk: () => Promise<void>
  /** After each chunk and each day: days done, rows written. */
  onWritten: (daysDone: number, rowsWritten: number) => void
}

/**
 * Writes the staged rows day by day, site by site, as the job's generation, and commits each
 * site's day (its hours, and the day when whole) once all its rows are written: readers switch
 * from the previous numbers to the new ones at the commit, so a job killed while writing leaves
 * every uncommitted day as it was (core/aggregate/final.ts). Row keys the store holds for a window
 * of the range that the result lacks (stream partials of events now known to be duplicates,
 * values of an older rebuild) get final rows of zeros, so readers see exactly the rebuild's numbers.
 */
async function writeDays(
  store: FinalRowStore,
  area: StagingArea,
  days: readonly number[],
  o: WriteOptions,
): Promise<{ rows: number; windows: number }> {
  let rows = 0
  let windows = 0
  let daysDone = 0
  const empty = new RegisterSet(o.precision).toBytes()
  o.onWritten(0, 0)
  for (const day of days) {
    const bySite = new Map<string, Map<string, FinalRow>>()
    for await (const row of area.read(day)) {
      let m = bySite.get(row.siteId)
      if (!m) {
        m = new Map()
        bySite.set(row.siteId, m)
      }
      m.set(rowKey(row), row)
    }
    if (o.siteId !== undefined && !bySite.has(o.siteId)) bySite.set(o.siteId, new Map())
    const from = Math.max(day, o.fromMs)
    const to = Math.min(day + DAY_MS, o.toMs)
    const wholeDay = day >= o.fromMs && day + DAY_MS <= o.toMs
    for (const [siteId, produced] of bySite) {
      const out: FinalRow[] = [...produced.values()]
      const zero = (
        granularity: Granularity,
        windowStart: number,
        dimension: FinalRow['dimension'],
        value: string,
      ) =>
        out.push({
          siteId,
          granularity,
          windowStart,
          dimension,
          value,
          values: { events: 0, pageviews: 0, botEvents: 0, visitors: empty },
        })
      const granularities: Granularity[] = wholeDay ? ['minute', 'hour', 'day'] : ['minute', 'hour']
      const zeroedHours: number[] = []
      for (const g of granularities) {
        for (const ws of await store.existingWindows(siteId, g, from, to)) {
          if (!produced.has(rowKey({ granularity: g, windowStart: ws, dimension: undefined, value: '' }))) {
            zero(g, ws, undefined, '')
            if (g === 'hour') zeroedHours.push(ws)
          }
          if (!DIMENSION_GRANULARITIES.includes(g)) continue
          for (const d of DIMENSIONS) {
            for (const value of await store.existingValues(siteId, g, d, ws)) {
              if (!produced.has(rowKey({ granularity: g, windowStart: ws, dimension: d, value })))
                zero(g, ws, d, value)
            }
          }
        }
      }
      // An hour the store has rows for but the archive had no event of: if the stream counted
      // events there, the rebuild is about to replace real counts with zeros (a lagging or missing
      // archive, a wrong --archive-dir): the caller says so loudly.
      if (zeroedHours.length > 0) {
        const counted = await store.streamHourEvents(siteId, from, to)
        const hours = zeroedHours.filter((h) => (counted.get(h) ?? 0) > 0).sort((a, b) => a - b)
        if (hours.length > 0)
          o.onZeroed(
            siteId,
            hours,
            hours.reduce((n, h) => n + (counted.get(h) ?? 0), 0),
          )
      }
      const keys = new Set(out.map((r) => `${r.granularity}\u0001${r.windowStart}`))
      windows += keys.size
      for (let i = 0; i < out.length; i += o.chunk) {
        await o.beforeChunk()
        const part = out.slice(i, i + o.chunk)
        await store.writeFinal(part, o.token)
        rows += part.length
        o.onWritten(daysDone, rows)
      }
      await o.beforeChunk()
      const through = o.completeThroughMs
      const spans = spansOfDay(day, from, to).map((span) => {
        const end = span.startMs + (span.scope === 'day' ? DAY_MS : HOUR_MS)
        return through !== undefined && end > through ? { ...span, provisional: true } : span
      })
      await store.commitFinal(siteId, spans, o.token)
    }
    o.onWritten(++daysDone, rows)
  }
  return { rows, windows }
}
