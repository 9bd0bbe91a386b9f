import { join } from 'node:path'
import { pick, type ScenarioContext } from '../../harness/context.js'
import {
  appendEvents,
  archiverRead,
  createEmbeddedSites,
  embeddedSetup,
  type RunningAll,
  spawnAll,
  stopAll,
  withBackend,
} from '../../harness/embedded.js'
import { scrape } from '../../harness/prometheus.js'
import { timedRebuildOfDay } from '../../harness/rebuild-job.js'
import type { Check, Figure } from '../../harness/report.js'
import { round } from '../../harness/stats.js'
import { compareStore, VisitorSketches } from '../../harness/verify.js'
import { generateWorkload } from '../../workload.js'

/**
 * embedded.batch.rebuild: the batch scenario's rebuild on the embedded backend. The batch scenario's
 * workload (same seed and size: one day, two days ago, three sites) is appended to the embedded log;
 * `tally all` runs until its archiver has written every event into Arrow segments, then stops (the
 * rebuild needs the data folder, which `tally all` locks), and `dist/app/run-rebuild.js` (what
 * `tally rebuild` runs) rebuilds the day. Its compute time (dedup pass + aggregation pass, from its
 * progress lines) is timed, as on Kafka/Cassandra; writing the final rows into the embedded store
 * is reported apart. Every window and breakdown value the store then returns is compared with the truth.
 */

const SITES = ['bench-b1', 'bench-b2', 'bench-b3']
const DAY = 86_400_000

export async function embeddedRebuild(ctx: ScenarioContext): Promise<Figure> {
  const day0 = Math.floor(Date.now() / DAY) * DAY - 2 * DAY
  const workload = generateWorkload({
    seed: ctx.seed + 4,
    sites: SITES,
    events: pick(ctx, 200_000, 15_000),
    start: new Date(day0 + 5 * 60_000),
    spanMs: DAY - 10 * 60_000,
  })
  const n = workload.events.length
  const setup = embeddedSetup(ctx, 'batch')
  ctx.say(`embedded.batch: ${n} events (one day, ${SITES.length} sites) → embedded log → archiver`)
  const appended = await withBackend(setup, async (b) => {
    await createEmbeddedSites(b, SITES)
    return appendEvents(setup, b, workload.events)
  })
  let all: RunningAll | undefined
  let archiveSec: number
  try {
    const t0 = performance.now()
    all = await spawnAll(ctx, setup, 'all-embedded-batch')
    const deadline = t0 + pick(ctx, 600_000, 120_000)
    for (;;) {
      // Read (in closed segments or buffered): the stop closes the buffers into segments.
      const archived = archiverRead(await scrape(all.batch))
      if (archived >= appended) break
      if (performance.now() > deadline)
        throw new Error(
          `the archiver of tally all read ${archived} of ${appended} events before the deadline (log ${all.child.logFile})`,
        )
      await new Promise((r) => setTimeout(r, 200))
    }
    archiveSec = (performance.now() - t0) / 1000
    // SIGTERM closes every buffer into a segment and commits it, and frees the data folder.
    await stopAll(all)
    all = undefined
  } finally {
    if (all) await all.child.stop()
  }

  ctx.say('embedded.batch: rebuild of the day (tally all stopped: the data folder is locked while it runs)')
  const {
    computeMs,
    run: result,
    peakRssBytes,
  } = await timedRebuildOfDay(ctx, {
    name: 'rebuild-embedded',
    dayMs: day0,
    env: setup.env,
    args: ['--staging-dir', join(setup.dir, '..', 'batch-staging')],
  })
  const eventsRead = result.eventsRead!
  const checks: Check[] = [
    {
      ok: appended === n && eventsRead === n,
      detail: `events: ${n} sent, ${appended} appended, ${eventsRead} read by the rebuild`,
    },
    await withBackend(setup, (b) =>
      compareStore(
        b.reader,
        workload.truth,
        new VisitorSketches(workload.events, setup.config.stream.hllPrecision),
        SITES,
        day0,
        day0 + DAY,
      ),
    ),
  ]
  return {
    scenario: 'embedded.batch.rebuild',
    system: 'tally embedded',
    status: checks.every((c) => c.ok) ? 'ok' : 'failed',
    throughput: {
      value: eventsRead / (computeMs / 1000),
      unit: 'events/s/core',
      what: `one process: dedup pass + aggregation pass over the Arrow segments the archiver of \`tally all\` wrote (${eventsRead} events in ${round(computeMs / 1000)} s); writing the final rows into the embedded store not included`,
    },
    ...(peakRssBytes !== undefined ? { peakRssBytes: peakRssBytes } : {}),
    checks,
    details: {
      computeSeconds: round(computeMs / 1000),
      jobSeconds: round(result.durationMs! / 1000),
      secondsSpawnToArchived: round(archiveSec),
      rowsWritten: result.rowsWritten,
      segmentsRead: result.segmentsRead,
      duplicates: result.duplicates,
    },
  }
}
