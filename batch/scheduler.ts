import cron, { type ScheduledTask } from 'node-cron'
import { ERR } from '../core/error-codes.js'
import { errorMessage, TallyError } from '../core/errors.js'
import type { Logger } from '../core/log.js'
import { RangeBusyError } from './lease.js'
import type { BatchMetrics } from './metrics.js'
import type { RebuildRequest, RebuildResult } from './rebuild.js'

const HOUR_MS = 3_600_000
const DAY_MS = 86_400_000

/** Options of the `tally batch` scheduler. Cron expressions (5 or 6 fields) run in UTC. */
export interface SchedulerOptions {
  /** When the hourly rebuild runs. Default `5 * * * *` (minute 5 of every hour); empty turns it off. */
  hourlyCron?: string
  /** How many closed hours the hourly rebuild covers, ending at the current hour. Default 2. */
  hourlyHours?: number
  /** When the nightly rebuild of the previous UTC day runs. Default `30 0 * * *`; empty turns it off. */
  nightlyCron?: string
  /**
   * Defer a job while the archive is not complete through its range's end (the archiver lags), so
   * final numbers never undercount. Default true.
   */
  requireArchiveComplete?: boolean
  /** The clock (tests). Default Date.now. */
  now?: () => number
}

export interface ScheduledJob {
  kind: string
  cron: string
  /** The range a run at `nowMs` rebuilds. */
  range(nowMs: number): { fromMs: number; toMs: number }
}

export type JobOutcome = 'succeeded' | 'skipped_busy' | 'skipped_unchanged' | 'deferred' | 'failed'

export interface SchedulerDeps {
  rebuild(request: RebuildRequest): Promise<RebuildResult>
  /** Why the archive cannot be trusted through `toMs` yet (undefined: it can). */
  archiveNotReady?(toMs: number): Promise<string | undefined>
  logger: Logger
  metrics?: BatchMetrics
}

/** The default jobs: the last closed hours every hour, the previous day every night. */
export function defaultJobs(o: SchedulerOptions = {}): ScheduledJob[] {
  const hours = o.hourlyHours ?? 2
  if (!Number.isInteger(hours) || hours < 1 || hours > 24 * 7)
    throw new TallyError(ERR.CONFIG, `hourlyHours must be an integer from 1 to 168, got ${hours}`)
  const jobs: ScheduledJob[] = []
  const hourly = o.hourlyCron ?? '5 * * * *'
  const nightly = o.nightlyCron ?? '30 0 * * *'
  if (hourly !== '') {
    jobs.push({
      kind: 'hourly',
      cron: hourly,
      range: (now) => {
        const to = Math.floor(now / HOUR_MS) * HOUR_MS
        return { fromMs: to - hours * HOUR_MS, toMs: to }
      },
    })
  }
  if (nightly !== '') {
    jobs.push({
      kind: 'nightly',
      cron: nightly,
      range: (now) => {
        const to = Math.floor(now / DAY_MS) * DAY_MS
        return { fromMs: to - DAY_MS, toMs: to }
      },
    })
  }
  return jobs
}

/** Throws a TALLY_ERR_CONFIG error naming the job whose cron expression is not valid. */
export function validateJobs(jobs: readonly ScheduledJob[]): void {
  for (const job of jobs) {
    if (!cron.validate(job.cron))
      throw new TallyError(ERR.CONFIG, `invalid cron expression for the ${job.kind} rebuild: "${job.cron}"`)
  }
}

/**
 * Runs rebuild jobs on cron schedules (node-cron, UTC). Several schedulers may run at once, in one
 * process or many: each run takes its range's lease, so a range is rebuilt by one job at a time, and
 * a range whose segments did not change since its last successful rebuild is skipped, so racing
 * schedulers rebuild each range once.
 */
export class BatchScheduler {
  private readonly tasks: ScheduledTask[] = []
  private readonly running = new Set<Promise<JobOutcome>>()
  private readonly controller = new AbortController()
  private readonly now: () => number
  private closing: Promise<void> | undefined
  readonly counts: Record<JobOutcome, number> = {
    succeeded: 0,
    skipped_busy: 0,
    skipped_unchanged: 0,
    deferred: 0,
    failed: 0,
  }

  constructor(
    private readonly deps: SchedulerDeps,
    readonly jobs: readonly ScheduledJob[],
    private readonly options: SchedulerOptions = {},
  ) {
    this.now = options.now ?? Date.now
    validateJobs(jobs)
  }

  start(): void {
    for (const job of this.jobs) {
      const log = this.deps.logger
      const task = cron.schedule(job.cron, () => this.runNow(job), {
        name: `tally-${job.kind}`,
        timezone: 'Etc/UTC',
        noOverlap: true,
        // A tick skipped because the previous run is still going is expected, not a warning.
        logger: {
          info: (m) => log.debug({ kind: job.kind }, m),
          warn: (m) => log.debug({ kind: job.kind }, m),
          error: (m, err) => log.error({ kind: job.kind, err: errorMessage(err ?? m) }, String(m)),
          debug: (m) => log.debug({ kind: job.kind }, String(m)),
        },
      })
      this.tasks.push(task)
    }
    this.deps.logger.info(
      { jobs: this.jobs.map((j) => ({ kind: j.kind, cron: j.cron })) },
      'batch scheduler running',
    )
  }

  /** Runs a job now, as its schedule would. Never rejects: the outcome is returned and counted. */
  runNow(job: ScheduledJob): Promise<JobOutcome> {
    const p = this.run(job).then((outcome) => {
      this.counts[outcome]++
      return outcome
    })
    this.running.add(p)
    void p.finally(() => this.running.delete(p))
    return p
  }

  private async run(job: ScheduledJob): Promise<JobOutcome> {
    if (this.closing) return 'deferred'
    const { logger, metrics } = this.deps
    const range = job.range(this.now())
    try {
      if (this.options.requireArchiveComplete ?? true) {
        const why = await this.deps.archiveNotReady?.(range.toMs)
        if (why) {
          metrics?.jobs.inc({ kind: job.kind, outcome: 'deferred' })
          logger.warn({ kind: job.kind, reason: why }, 'rebuild deferred until the archive catches up')
          return 'deferred'
        }
      }
      const result = await this.deps.rebuild({
        kind: job.kind,
        fromMs: range.fromMs,
        toMs: range.toMs,
        skipUnchanged: true,
        signal: this.controller.signal,
      })
      return result.status
    } catch (err) {
      if (err instanceof RangeBusyError) {
        logger.debug({ kind: job.kind }, err.message)
        return 'skipped_busy'
      }
      logger.error({ kind: job.kind, err: errorMessage(err) }, 'scheduled rebuild failed')
      return 'failed'
    }
  }

  /** Stops the schedules and cancels a running job (it writes nothing more and frees its lease). */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const task of this.tasks) await task.destroy()
      this.controller.abort(new TallyError(ERR.SHUTTING_DOWN, 'the scheduler is stopping'))
      await Promise.allSettled([...this.running])
    })()
    return this.closing
  }
}
