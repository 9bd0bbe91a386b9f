import { pick, type ScenarioContext } from '../../harness/context.js'
import {
  appendEvents,
  createEmbeddedSites,
  embeddedSetup,
  logRecords,
  type RunningAll,
  siteCounts,
  spawnAll,
  stopAll,
  withBackend,
} from '../../harness/embedded.js'
import { metricSum, scrape } from '../../harness/prometheus.js'
import type { Check, Figure } from '../../harness/report.js'
import { round } from '../../harness/stats.js'
import { compareStore, VisitorSketches } from '../../harness/verify.js'
import { generateWorkload } from '../../workload.js'

/**
 * embedded.stream.throughput: events/s of the embedded stream worker from the embedded log into the
 * embedded store. The stream scenario's workload (same seed, sizes and shape) is appended to the log
 * of a fresh data folder first (as `tally import` does), then `tally all` starts and the clock runs
 * from the worker's first record until the query API counts every event of every site. The same
 * process runs the archiver, which archives the same records meanwhile. Then `tally all` stops and
 * the bench opens the store itself: every window and breakdown value against the truth, and every
 * partition's checkpoint at the end of the log.
 */

const SITES = ['bench-s1', 'bench-s2', 'bench-s3']
const POLL_MS = 100
const DAY = 86_400_000

export async function embeddedStreamThroughput(ctx: ScenarioContext): Promise<Figure> {
  const now = Date.now()
  const setup = embeddedSetup(ctx, 'stream', { TALLY_GRACE_MS: String(2 * 3_600_000) })
  const workload = generateWorkload({
    seed: ctx.seed,
    sites: SITES,
    events: pick(ctx, 300_000, 20_000),
    start: new Date(now - 45 * 60_000),
    spanMs: 30 * 60_000,
    lateShare: 0,
  })
  const n = workload.events.length
  ctx.say(`embedded.stream: appending ${n} events (${SITES.length} sites) to the embedded log`)
  const loaded = await withBackend(setup, async (b) => {
    const keys = await createEmbeddedSites(b, SITES)
    const appended = await appendEvents(setup, b, workload.events)
    return { keys, appended, logged: await logRecords(setup, b) }
  })
  const checks: Check[] = [
    {
      ok: loaded.appended === n && loaded.logged === n,
      detail: `events loaded: ${n} sent, ${loaded.appended} appended, ${loaded.logged} in the log`,
    },
  ]
  const expected = SITES.map((s) => ({
    site: s,
    events: workload.truth.sites[s]?.events ?? 0,
    bots: workload.truth.sites[s]?.bots ?? 0,
  }))
  let all: RunningAll | undefined
  try {
    const t0 = performance.now()
    all = await spawnAll(ctx, setup, 'all-embedded-stream')
    const readyMs = performance.now()
    let firstRecordMs: number | undefined
    let recordsAtFirst = 0
    let records = 0
    let caughtUpMs: number | undefined
    let caughtUpAtMs = 0
    const deadline = t0 + pick(ctx, 600_000, 120_000)
    while (performance.now() < deadline) {
      records = metricSum(await scrape(all.stream), 'tally_stream_records_total')
      if (firstRecordMs === undefined && records > 0) {
        firstRecordMs = performance.now()
        recordsAtFirst = records
      }
      if (records >= n) {
        let visible = true
        for (const e of expected) {
          const c = await siteCounts(
            all.query,
            e.site,
            loaded.keys.get(e.site)!.readToken,
            now - DAY,
            now + DAY,
          )
          if (c.events !== e.events || c.bots !== e.bots) visible = false
        }
        if (visible) {
          caughtUpMs = performance.now()
          caughtUpAtMs = Date.now()
          break
        }
      }
      await new Promise((r) => setTimeout(r, POLL_MS))
    }
    if (caughtUpMs === undefined)
      throw new Error(
        `the query API did not count every event within the deadline (stream records ${records} of ${n}; log ${all.child.logFile})`,
      )
    // The worker starts on the preloaded log as soon as it has its partitions, before `tally all`
    // is ready (its query API starts last): the clock starts at its "partitions assigned" line.
    const assignedAt = all.streamAssignedAtMs
    const steadySec =
      assignedAt !== undefined
        ? (caughtUpAtMs - assignedAt) / 1000
        : (caughtUpMs - (firstRecordMs ?? readyMs)) / 1000
    const steadyRate = (assignedAt !== undefined ? n : n - recordsAtFirst) / steadySec
    const wallSec = (caughtUpMs - t0) / 1000
    const rss = await stopAll(all)
    all = undefined
    ctx.say(
      `embedded.stream: all counted ${round(wallSec)} s after tally all was spawned; checking every window`,
    )
    const precision = setup.config.stream.hllPrecision
    checks.push({
      ok: records === n,
      detail: `records the worker processed (its metrics): ${records} = ${n} in the log`,
    })
    checks.push(
      ...(await withBackend(setup, async (b) => {
        const ends = await b.log.endOffsets(setup.config.kafka.topicRaw)
        const progress = await b.reader.streamProgress(
          setup.config.stream.group,
          setup.config.kafka.topicRaw,
          setup.config.kafka.partitions,
        )
        const done = new Map(progress.map((p) => [p.partition, p.nextOffset]))
        const behind = [...ends].filter(([p, end]) => (done.get(p) ?? 0) !== end)
        return [
          {
            ok: behind.length === 0,
            detail: `stream checkpoints at the end of the log: ${ends.size - behind.length} of ${ends.size} partitions`,
          },
          await compareStore(
            b.reader,
            workload.truth,
            new VisitorSketches(workload.events, precision),
            SITES,
            now - DAY,
            now + DAY,
          ),
        ]
      })),
    )
    return {
      scenario: 'embedded.stream.throughput',
      system: 'tally embedded',
      status: checks.every((c) => c.ok) ? 'ok' : 'failed',
      throughput: {
        value: steadyRate,
        unit: 'events/s',
        what: `the stream worker of one \`tally all\` (archiver running beside it), from the moment it took its partitions until the query API counts every event (${n} events, ${setup.config.kafka.partitions} partitions)`,
      },
      ...(rss !== undefined ? { peakRssBytes: rss } : {}),
      checks,
      details: {
        events: n,
        partitions: setup.config.kafka.partitions,
        secondsPartitionsToCounted: round(steadySec),
        clockStartsAt:
          assignedAt !== undefined ? 'partitions assigned (log line)' : 'first record seen in its metrics',
        secondsSpawnToCounted: round(wallSec),
        eventsPerSecIncludingStartup: round(n / wallSec),
        secondsSpawnToReady: round((readyMs - t0) / 1000),
        recordsBeforeFirstScrape: recordsAtFirst,
      },
    }
  } finally {
    if (all) await all.child.stop()
  }
}
