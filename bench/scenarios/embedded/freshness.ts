import { pick, type ScenarioContext } from '../../harness/context.js'
import {
  createEmbeddedSites,
  embeddedSetup,
  type RunningAll,
  siteCounts,
  spawnAll,
  stopAll,
  withBackend,
} from '../../harness/embedded.js'
import {
  freshnessChecks,
  freshnessFigure,
  LOAD_SITES,
  PROBE_SITE,
  probeFreshness,
} from '../../harness/freshness-probe.js'
import type { Check, Figure } from '../../harness/report.js'
import { compareSiteTotals } from '../../harness/verify.js'

/**
 * embedded.stream.freshness: the time from a 2xx at ingest until the event is counted by the query
 * API, on one `tally all` on the embedded backend, measured as the stream scenario's freshness part
 * does (bench/harness/freshness-probe.ts), the probe site's count read through /v1/stats/aggregate.
 * Checked: every probe seen and counted once, the background events accepted, and (after the stop,
 * from the store itself) the sites' totals.
 */

const DAY = 86_400_000

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export async function embeddedFreshness(ctx: ScenarioContext): Promise<Figure> {
  const seconds = pick(ctx, 40, 4)
  const rate = 1000
  const setup = embeddedSetup(ctx, 'fresh')
  const keys = await withBackend(setup, (b) => createEmbeddedSites(b, [...LOAD_SITES, PROBE_SITE]))
  const start = Date.now()
  const fromDay = Math.floor(start / DAY) * DAY
  let all: RunningAll | undefined
  try {
    all = await spawnAll(ctx, setup, 'all-embedded-fresh')
    const { ingest: ingestUrl, query: queryUrl } = all
    const probeToken = keys.get(PROBE_SITE)!.readToken
    // As on Kafka: a moment for the worker to settle before the clock runs.
    await sleep(1000)
    const run = await probeFreshness({
      ctx,
      ingestUrl,
      writeKeys: new Map([...keys].map(([site, k]) => [site, k.writeKey])),
      rate,
      seconds,
      probeCount: async () =>
        (await siteCounts(queryUrl, PROBE_SITE, probeToken, fromDay, fromDay + DAY)).events,
      startMs: start,
    })
    // A clean stop flushes the stream: what it counted is then in the store.
    const rss = await stopAll(all)
    all = undefined
    const checks: Check[] = [
      ...freshnessChecks(run),
      await withBackend(setup, (b) =>
        compareSiteTotals(b.reader, run.truth, LOAD_SITES, fromDay - DAY, fromDay + 2 * DAY),
      ),
    ]
    return freshnessFigure(run, {
      scenario: 'embedded.stream.freshness',
      system: 'tally embedded',
      checks,
      setting: ', one `tally all`',
      readVia: 'the query API (/v1/stats/aggregate)',
      peakRssBytes: rss,
      details: {
        flushIntervalMs: setup.config.stream.flushIntervalMs,
        offeredEventsPerSec: rate,
      },
    })
  } finally {
    if (all) await all.child.stop()
  }
}
