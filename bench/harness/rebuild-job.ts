import { benchScript, type ScenarioContext } from './context.js'
import { runNode } from './proc.js'

const DAY = 86_400_000

export interface TimedRebuild {
  /** Dedup pass + aggregation pass: from the first `dedup` progress line to the first `write` one. */
  computeMs: number
  /** The job's run record (eventsRead, rowsWritten, segmentsRead, duplicates, durationMs, …). */
  run: Record<string, number>
  peakRssBytes: number | undefined
}

/**
 * Runs `dist/app/run-rebuild.js` (what `tally rebuild` runs) over one day and times its compute
 * from its progress lines; writing the final rows is not in `computeMs`. Throws, naming the log,
 * when the job fails.
 */
export async function timedRebuildOfDay(
  ctx: ScenarioContext,
  o: { name: string; dayMs: number; env: Record<string, string>; args: string[] },
): Promise<TimedRebuild> {
  const job = await runNode({
    name: o.name,
    args: [
      benchScript('../app/run-rebuild.js'),
      '--from',
      new Date(o.dayMs).toISOString(),
      '--to',
      new Date(o.dayMs + DAY).toISOString(),
      ...o.args,
    ],
    env: { ...o.env, LOG_LEVEL: 'warn' },
    logDir: ctx.env.logDir,
    timeoutMs: 600_000,
  })
  const parsed = job.lines
    .filter((l) => l.startsWith('{"progress"') || l.startsWith('{"result"') || l.startsWith('{"error"'))
    .map(
      (l) =>
        JSON.parse(l) as {
          progress?: { phase: string; elapsedMs: number }
          result?: { run: Record<string, number> }
          error?: string
        },
    )
  const error = parsed.find((p) => p.error)?.error
  const result = parsed.find((p) => p.result)?.result
  if (job.code !== 0 || !result)
    throw new Error(`the rebuild failed: ${error ?? `exit ${job.code}`} (log ${job.logFile})`)
  const first = (phase: string) => parsed.find((p) => p.progress?.phase === phase)?.progress?.elapsedMs
  return {
    computeMs: (first('write') ?? Number.NaN) - (first('dedup') ?? Number.NaN),
    run: result.run,
    peakRssBytes: job.peakRssBytes,
  }
}
