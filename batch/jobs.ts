import type { TallyConfig } from '../core/config.js'
import type { Logger } from '../core/log.js'
import type { JobRun, JobStore, LeaseStore } from '../core/ports/batch-store.js'
import type { BatchStores } from './context.js'

/** Options of `tally jobs`. */
export interface ListJobsOptions {
  /** Most runs listed, newest first. Default 50. */
  limit?: number
  /** How far back (days). Default 7. */
  days?: number
}

const DAY_MS = 86_400_000

/**
 * Runs newest first. A run still marked running whose lease its holder no longer has (the process
 * died) is shown as `abandoned`.
 */
export async function readJobs(
  jobs: JobStore,
  leases: LeaseStore,
  options: ListJobsOptions = {},
): Promise<JobRun[]> {
  const limit = options.limit ?? 50
  const since = Date.now() - (options.days ?? 7) * DAY_MS
  const runs = await jobs.list(since, limit)
  for (const run of runs) {
    if (run.status !== 'running') continue
    const holder = await leases.current(run.leaseName)
    if (holder?.holder !== run.holder) run.status = 'abandoned'
  }
  return runs
}

/** `tally jobs`: the recorded rebuild runs (status, range, events read, windows written, duration, error, warnings). */
export async function listJobs(
  _config: TallyConfig,
  _logger: Logger,
  options: ListJobsOptions & { stores: Pick<BatchStores, 'jobs' | 'leases'> },
): Promise<JobRun[]> {
  return readJobs(options.stores.jobs, options.stores.leases, options)
}

function iso(ms: number): string {
  return new Date(ms)
    .toISOString()
    .replace(/:00\.000Z$/, 'Z')
    .replace('.000Z', 'Z')
}

function duration(ms: number | undefined): string {
  if (ms === undefined) return '-'
  if (ms < 1000) return `${ms}ms`
  const s = Math.round(ms / 100) / 10
  if (s < 60) return `${s}s`
  const m = Math.floor(s / 60)
  return `${m}m${Math.round(s - m * 60)}s`
}

/** A plain-text table of runs for a terminal (one run per line, errors and warnings last). */
export function formatJobs(runs: readonly JobRun[]): string {
  const header = ['STARTED', 'KIND', 'STATUS', 'SITE', 'FROM', 'TO', 'EVENTS', 'WINDOWS', 'DURATION', 'ERROR']
  const rows = runs.map((r) => [
    iso(r.startedAtMs),
    r.kind,
    r.status,
    r.siteId ?? '*',
    iso(r.fromMs),
    iso(r.toMs),
    String(r.eventsRead),
    String(r.windowsWritten),
    duration(r.durationMs),
    [
      r.error ?? '',
      r.corruptSegments.length > 0 ? `corrupt: ${r.corruptSegments.join(', ')}` : '',
      ...r.warnings.map((w) => `warning: ${w}`),
    ]
      .filter((x) => x !== '')
      .join('; '),
  ])
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd()
  return `${[line(header), ...rows.map(line)].join('\n')}\n`
}
