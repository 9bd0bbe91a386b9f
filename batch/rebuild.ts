import { createHash, randomUUID } from 'node:crypto'
import { mkdir, readdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { type BreakdownDimension, KeptBreakdowns } from '../core/aggregate/breakdowns.js'
import { type Granularity, windowStart } from '../core/aggregate/definition.js'
import { type DedupOutcome, findDuplicates } from '../core/archive/dedup.js'
import { listSegments, type SegmentRef } from '../core/archive/segment-file.js'
import { CorruptSegmentError } from '../core/archive/segment-reader.js'
import { ERR } from '../core/error-codes.js'
import { errorMessage, TallyError } from '../core/errors.js'
import type { Logger } from '../core/log.js'
import type { FinalRowStore, JobRun, JobStore, LeaseStore } from '../core/ports/batch-store.js'
import { sleep } from '../core/retry.js'
import type { AggregateStats } from './aggregate.js'
import { computeRange } from './compute.js'
import { acquireLease, LeaseKeeper, LeaseLostError, RangeBusyError } from './lease.js'
import type { BatchMetrics } from './metrics.js'
import { type RebuildPropKeys, RunPropKeys } from './prop-columns.js'
import { writeDays } from './rebuild-write.js'
import { SegmentSource } from './segment-source.js'
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
  /** A gap of at least this much event time ends a visit (TALLY_VISIT_GAP_MS, the stream's). Default 30 min. */
  visitGapMs?: number
  /**
   * Count visits (TALLY_REBUILD_VISITS). Off only to measure what visits cost (the bench): no visit
   * is computed, the final rows carry no visit data (they show no visits until a rebuild with visits
   * on), and the run is not taken as unchanged by a later `skipUnchanged`. Default true.
   */
  countsVisits?: boolean
  /** Distinct values kept per custom property and window (TALLY_PROP_VALUES_MAX, the stream's). Default 1000. */
  propValuesMax?: number
  /** Distinct values kept per capped dimension and window (TALLY_DIMENSION_VALUES_MAX, the stream's). Default 10000. */
  dimensionValuesMax?: number
  /** The breakdown dimensions aggregated (TALLY_BREAKDOWNS, the stream's). Default all. */
  breakdowns?: readonly BreakdownDimension[]
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
  /**
   * The sites' declared custom property keys (core/aggregate/props.ts) and goals
   * (core/aggregate/goals.ts), read at the run's start: the run counts the keys and goals declared
   * then. Optional: without it no property is counted.
   */
  propKeys?: RebuildPropKeys
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

/**
 * Rebuilds the final aggregates of a range from the archive, in five steps:
 * 1. **lease**: takes the range's lease (one job per range at a time) and keeps renewing it;
 * 2. **list**: the segments of the whole UTC days the range touches (visits need their day's
 *    events), and their fingerprint (an unchanged range can be skipped);
 * 3. **dedup**: pass 1 reads every segment listed and finds the duplicates
 *    (core/archive/dedup.ts);
 * 4. **aggregate**: pass 2 aggregates the range hour by hour (batch/aggregate.ts) into staging
 *    files, one per day; day windows only when the whole day is in the range. It also keeps the
 *    counted events of each whole day, in the range or not, and stages at the day's end the visit
 *    counts (batch/visits.ts) of the range's windows, computed from the whole day's events. Nothing
 *    is written to the store before both passes finish, so a failure — a corrupt segment, a crash,
 *    a lost lease — leaves the previous numbers as they were;
 * 5. **commit**: writes the final rows day by day as the job's generation (core/aggregate/final.ts,
 *    batch/rebuild-write.ts), with the lease's fencing token as write timestamp, checking the lease
 *    before each round, and commits each site-day once its rows are written: readers switch to it
 *    at once. Every row written carries visit counts (0 where no visit started). A row that exists
 *    in the store for a window of the range (stream partial or older final row, entry_page and
 *    exit_page included) but not in the result gets a final row of zeros, so the result replaces
 *    the stream's windows completely.
 * Every run is recorded (status, range, counts, duration, error).
 */
export async function runRebuild(
  deps: RebuildDeps,
  settings: RebuildSettings,
  request: RebuildRequest,
): Promise<RebuildResult> {
  const job = await lease(deps, settings, request)
  deps.metrics?.running.inc()
  try {
    const listing = await list(settings, job)
    if (request.skipUnchanged && (await unchanged(deps.jobs, job, runFingerprint(settings, listing))))
      return skipped(deps, job)
    await recordStart(deps.jobs, job, listing, request.skipCorrupt ?? false)
    const source = new SegmentSource(listing.segments, {
      cacheBytes: settings.segmentCacheBytes ?? 256 * 1024 * 1024,
      skipCorrupt: request.skipCorrupt ?? false,
      onCorrupt: (path) => job.run.corruptSegments.push(path),
      log: job.log,
    })
    const computeStarted = Date.now()
    const duplicates = await dedup(settings, job, source)
    const days = await aggregate(deps, settings, job, source, duplicates)
    const computeMs = Date.now() - computeStarted
    job.log.info(
      { ...days.stats, segments: job.run.segmentsRead, computeMs, dedupBuckets: duplicates.buckets },
      'range computed',
    )
    await commit(deps, settings, job, days.days)
    // A run without visits is no reason to skip the next one: its fingerprint matches no listing.
    const countsVisits = settings.countsVisits ?? true
    const fingerprint = runFingerprint(settings, listing)
    await recordSuccess(deps, job, countsVisits ? fingerprint : `${fingerprint}:no-visits`)
    return { status: 'succeeded', run: job.run, ...job.range, dedupBuckets: duplicates.buckets, computeMs }
  } catch (err) {
    throw await recordFailure(deps, job, err)
  } finally {
    deps.metrics?.running.dec()
    await job.keeper.stop()
    await job.area
      ?.remove()
      .catch((e: unknown) => job.log.warn({ err: errorMessage(e) }, 'cannot remove staging files'))
  }
}

/** One rebuild as its steps share it: the range and its lease, the run recorded, its log and progress. */
interface Job {
  readonly range: { fromMs: number; toMs: number }
  readonly siteId: string | undefined
  readonly kind: string
  /** The range's lease name (rangeName). */
  readonly name: string
  readonly startedMs: number
  readonly token: number
  readonly keeper: LeaseKeeper
  /** The request's signal and the lease's: aborts when either does. */
  readonly signal: AbortSignal
  /** Aborted by the request only (a cancelled run, not a lost lease). */
  readonly requestSignal: AbortSignal | undefined
  /** RebuildRequest.archiveCompleteThroughMs. */
  readonly archiveCompleteThroughMs: number | undefined
  readonly run: JobRun
  readonly log: Logger
  readonly progress: ProgressReporter
  /** The range's staging folder, and the area in it once the dedup step made it. */
  readonly stagingDir: string
  area: StagingArea | undefined
  /** Throttle and cancellation point, after each segment and before each write round. */
  pause(): Promise<void>
  /** Logged, and recorded with the run (bounded: a run over many site-days could otherwise carry thousands). */
  warn(message: string, fields: Record<string, unknown>): void
}

/** Step 1: the range's lease, kept renewed while the job runs, and the job's record. */
async function lease(deps: RebuildDeps, settings: RebuildSettings, request: RebuildRequest): Promise<Job> {
  const startedMs = Date.now()
  const { fromMs, toMs } = alignRange(request.fromMs, request.toMs)
  const siteId = request.siteId
  const kind = request.kind ?? 'manual'
  const name = rangeName(siteId, fromMs, toMs)
  const holder = `${settings.owner}/${randomUUID()}`
  const lease = await acquireLease(
    deps.leases,
    name,
    holder,
    settings.leaseTtlMs ?? 30_000,
    settings.waitForLeaseMs ?? 0,
    request.signal,
  )
  if (!lease) {
    deps.metrics?.jobs.inc({ kind, outcome: 'skipped_busy' })
    throw new RangeBusyError(name)
  }
  const keeper = new LeaseKeeper(deps.leases, lease, deps.logger)
  const signal = request.signal ? AbortSignal.any([request.signal, keeper.signal]) : keeper.signal
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
    startedAtMs: startedMs,
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
  const log = deps.logger.child({ job: run.jobId, range: name, token: lease.token })
  return {
    range: { fromMs, toMs },
    siteId,
    kind,
    name,
    startedMs,
    token: lease.token,
    keeper,
    signal,
    requestSignal: request.signal,
    archiveCompleteThroughMs: request.archiveCompleteThroughMs,
    run,
    log,
    progress: new ProgressReporter(startedMs, request.onProgress),
    stagingDir: join(settings.stagingDir, createHash('sha256').update(name).digest('hex').slice(0, 24)),
    area: undefined,
    pause: async () => {
      cancelled(signal)
      if (settings.throttleMs) await sleep(settings.throttleMs, signal)
    },
    warn: (message, fields) => {
      log.warn(fields, message)
      if (run.warnings.length < MAX_WARNINGS) run.warnings.push(message)
      else if (run.warnings.length === MAX_WARNINGS) run.warnings.push('… more warnings in the log')
    },
  }
}

interface Listing {
  segments: SegmentRef[]
  /** Files in the range's folders whose names are not segment names. */
  misnamed: string[]
  /** Of the segments and misnamed files: the same at the range's last success, nothing changed. */
  fingerprint: string
}

/**
 * Step 2: the segments of the whole days the range touches, in hour order: the range's own, and
 * those of its days' other hours, which only the visits read (a visit of the range's hours may have
 * begun before the range or go on after it, until midnight UTC).
 */
async function list(settings: RebuildSettings, job: Job): Promise<Listing> {
  const { fromDay, toDay } = daysOf(job.range)
  const { segments, misnamed } = await listSegments(settings.topicDir, fromDay, toDay)
  const fingerprint = createHash('sha256')
    .update([...segments.map((s) => s.relPath), ...misnamed].join('\n'))
    .digest('hex')
  return { segments, misnamed, fingerprint }
}

async function unchanged(jobs: JobStore, job: Job, fingerprint: string): Promise<boolean> {
  const last = await jobs.lastSuccess(job.name)
  return last?.fingerprint === fingerprint
}

/**
 * What a run's result depends on besides the settings every run shares: the listing, and the
 * breakdowns kept when not all (TALLY_BREAKDOWNS), so a run after the list changed is not skipped.
 */
function runFingerprint(settings: RebuildSettings, listing: Listing): string {
  const kept = new KeptBreakdowns(settings.breakdowns)
  return kept.all ? listing.fingerprint : `${listing.fingerprint}:breakdowns=${kept.dimensions.join(',')}`
}

function skipped(deps: RebuildDeps, job: Job): RebuildResult {
  deps.metrics?.jobs.inc({ kind: job.kind, outcome: 'skipped_unchanged' })
  job.log.debug('range unchanged since its last rebuild; skipped')
  return {
    status: 'skipped_unchanged',
    run: { ...job.run, status: 'succeeded' },
    ...job.range,
    dedupBuckets: 0,
    computeMs: 0,
  }
}

/** Records the run as running; misnamed files in the archive are segments nobody can trust. */
async function recordStart(jobs: JobStore, job: Job, listing: Listing, skipCorrupt: boolean): Promise<void> {
  await jobs.save(job.run)
  job.log.info({ segments: listing.segments.length, site: job.siteId ?? '*' }, 'rebuild started')
  for (const path of listing.misnamed) {
    const err = new CorruptSegmentError(path, 'the file name is not a segment name')
    if (!skipCorrupt) throw err
    job.run.corruptSegments.push(path)
    job.log.warn({ path }, err.message)
  }
}

/** The whole UTC days a range touches. */
function daysOf(range: { fromMs: number; toMs: number }): { fromDay: number; toDay: number } {
  return { fromDay: windowStart(range.fromMs, 'day'), toDay: Math.ceil(range.toMs / DAY_MS) * DAY_MS }
}

/** Step 3 (pass 1): the duplicates across the whole days of the range, in the staging area it makes. */
async function dedup(settings: RebuildSettings, job: Job, source: SegmentSource): Promise<DedupOutcome> {
  const n = source.length
  job.progress.report('dedup', 0, n)
  await mkdir(settings.stagingDir, { recursive: true })
  await removeStaleStaging(settings.stagingDir, job.stagingDir, job.log)
  job.area = await StagingArea.create(job.stagingDir)
  const outcome = await findDuplicates(
    n,
    (i) => source.segments[i]!.rows,
    (i) => source.next(i),
    {
      siteId: job.siteId,
      maxRowsInMemory: settings.maxDedupRowsInMemory ?? 4_000_000,
      spillDir: job.area.dir,
      afterSegment: async (i) => {
        job.progress.report('dedup', i + 1, n)
        await job.pause()
      },
    },
  )
  job.run.duplicates = outcome.duplicates
  source.stopCaching()
  return outcome
}

/**
 * Step 4 (pass 2): aggregates the range hour by hour into the staging area, without the duplicates;
 * day rows once a whole day is done. Every hour of the range's days, in the range or not, feeds the
 * day's visits, staged when the day is done for the windows of the range (batch/compute.ts, the
 * compute the batch benchmark runs too). Returns the days staged.
 */
async function aggregate(
  deps: RebuildDeps,
  settings: RebuildSettings,
  job: Job,
  source: SegmentSource,
  duplicates: DedupOutcome,
): Promise<{ days: number[]; stats: AggregateStats }> {
  const area = job.area!
  const n = source.length
  job.progress.report('aggregate', 0, n)
  const stats = await computeRange(
    {
      range: job.range,
      siteId: job.siteId,
      hours: source.segments.map((s) => s.hourStartMs),
      next: (i) => source.next(i),
      duplicates,
      propKeys: deps.propKeys ? new RunPropKeys(deps.propKeys) : undefined,
      afterSegment: async (done, stats, read) => {
        if (read) job.run.segmentsRead++
        job.progress.eventsRead = stats.rowsRead
        job.progress.report('aggregate', done, n)
        await job.pause()
      },
      emit: (day, row) => area.write(day, row),
    },
    {
      precision: settings.precision,
      visitGapMs: settings.visitGapMs ?? DEFAULT_VISIT_GAP_MS,
      countsVisits: settings.countsVisits ?? true,
      propValuesMax: settings.propValuesMax,
      dimensionValuesMax: settings.dimensionValuesMax,
      breakdowns: settings.breakdowns,
      ttlSeconds: settings.ttlSeconds,
      nowMs: job.startedMs,
    },
  )
  const days = await area.finish()
  job.run.eventsRead = stats.rowsRead
  // The range's duplicates (pass 1 also saw those of its days' other hours).
  job.run.duplicates = stats.duplicates
  deps.metrics?.eventsRead.inc(stats.rowsRead)
  return { days, stats }
}

/**
 * Step 5: writes the staged days as final rows and commits each site-day (batch/rebuild-write.ts),
 * only while the lease is ours: its token fences the writes. Warns where the result may be short of
 * what the stream counted.
 */
async function commit(deps: RebuildDeps, settings: RebuildSettings, job: Job, days: number[]): Promise<void> {
  const { fromMs, toMs } = job.range
  const siteId = job.siteId
  const through = job.archiveCompleteThroughMs
  if (through !== undefined && through < toMs) {
    const firstProvisional = Math.max(fromMs, Math.floor(through / HOUR_MS) * HOUR_MS)
    job.warn(
      `the archive holds the events received through ${iso(through)} only: the windows from ${iso(firstProvisional)} on are committed but not final (--allow-incomplete); rebuild again once the archive has caught up`,
      { archiveCompleteThroughMs: through },
    )
  }
  await job.keeper.check()
  const written = await writeDays(deps.rows, job.area!, days, {
    siteId,
    fromMs,
    toMs,
    completeThroughMs: through,
    onZeroed: (site, hours, streamEvents) =>
      job.warn(
        `site ${site}: the rebuild read 0 events in ${hours.length} hour(s) where the stream counted ${streamEvents} (${listHours(hours)}); those windows now read 0. Is the archive complete?`,
        { site, hours: hours.map(iso), streamEvents },
      ),
    token: job.token,
    precision: settings.precision,
    countsVisits: settings.countsVisits ?? true,
    chunk: Math.max(1, settings.writeChunkRows ?? 500),
    beforeChunk: async () => {
      await job.pause()
      if (job.keeper.lost) throw new LeaseLostError(job.name)
    },
    onWritten: (k, rows) => {
      job.progress.rowsWritten = rows
      job.progress.report('write', k, days.length)
    },
  })
  job.run.rowsWritten = written.rows
  job.run.windowsWritten = written.windows
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
      job.warn(
        `site ${siteId}: the rebuild read 0 events in ${hours.length} hour(s) where the stream counted ${streamEvents} (${listHours(hours)}); nothing was written there, those windows keep the stream's provisional numbers. Is the archive complete?`,
        { site: siteId, hours: hours.map(iso), streamEvents },
      )
    }
  }
  deps.metrics?.rowsWritten.inc(written.rows)
}

/** The run succeeded: recorded, with the range's fingerprint for a later skipUnchanged. */
async function recordSuccess(deps: RebuildDeps, job: Job, fingerprint: string): Promise<void> {
  const { run } = job
  run.status = 'succeeded'
  run.finishedAtMs = Date.now()
  run.durationMs = run.finishedAtMs - job.startedMs
  await deps.jobs.save(run)
  await deps.jobs.recordSuccess(job.name, { fingerprint, jobId: run.jobId, finishedAtMs: run.finishedAtMs })
  deps.metrics?.jobs.inc({ kind: job.kind, outcome: 'succeeded' })
  deps.metrics?.jobSeconds.observe({ kind: job.kind }, run.durationMs / 1000)
  job.log.info(
    {
      events: run.eventsRead,
      rows: run.rowsWritten,
      windows: run.windowsWritten,
      durationMs: run.durationMs,
    },
    'rebuild done',
  )
}

/** The run failed (or was cancelled, or lost its lease): recorded; returns the error to throw. */
async function recordFailure(deps: RebuildDeps, job: Job, err: unknown): Promise<unknown> {
  const { run, keeper, log } = job
  run.status = keeper.lost ? 'lost_lease' : job.requestSignal?.aborted ? 'cancelled' : 'failed'
  run.error = errorMessage(err)
  run.finishedAtMs = Date.now()
  run.durationMs = run.finishedAtMs - job.startedMs
  deps.metrics?.jobs.inc({ kind: job.kind, outcome: run.status })
  log.error({ err: run.error, status: run.status }, 'rebuild failed; the previous numbers stay')
  await deps.jobs.save(run).catch((e: unknown) => log.warn({ err: errorMessage(e) }, 'cannot record the run'))
  return keeper.lost && !(err instanceof LeaseLostError) ? new LeaseLostError(job.name) : err
}

/**
 * Reports a job's progress: on a phase change, at a phase's end, and otherwise at most every
 * PROGRESS_EVERY_MS (a line per segment or write round costs more than the work on small segments).
 */
class ProgressReporter {
  eventsRead = 0
  rowsWritten = 0
  private lastPhase: RebuildProgress['phase'] | undefined
  private lastAt = 0

  constructor(
    private readonly startedMs: number,
    private readonly onProgress: ((p: RebuildProgress) => void) | undefined,
  ) {}

  report(phase: RebuildProgress['phase'], done: number, total: number): void {
    if (!this.onProgress) return
    const now = Date.now()
    if (phase === this.lastPhase && done < total && now - this.lastAt < PROGRESS_EVERY_MS) return
    this.lastPhase = phase
    this.lastAt = now
    const share = phase === 'dedup' ? [0, 0.35] : phase === 'aggregate' ? [0.35, 0.55] : [0.9, 0.1]
    const fraction = share[0]! + share[1]! * (total === 0 ? 1 : done / total)
    const elapsedMs = Date.now() - this.startedMs
    this.onProgress({
      phase,
      done,
      total,
      fraction,
      eventsRead: this.eventsRead,
      rowsWritten: this.rowsWritten,
      elapsedMs,
      etaMs: fraction > 0.01 ? Math.round((elapsedMs / fraction) * (1 - fraction)) : undefined,
    })
  }
}

const STALE_STAGING_MS = 7 * DAY_MS

/** TALLY_VISIT_GAP_MS's default. */
const DEFAULT_VISIT_GAP_MS = 1_800_000

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
