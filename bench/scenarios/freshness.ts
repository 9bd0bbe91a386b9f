import { CassandraAggregateReader } from '../../core/cassandra/aggregate-reader.js'
import { isBuilt, pick, type ScenarioContext } from '../harness/context.js'
import {
  freshnessChecks,
  freshnessFigure,
  LOAD_SITES,
  PROBE_SITE,
  probeFreshness,
} from '../harness/freshness-probe.js'
import { waitCaughtUp } from '../harness/pipeline.js'
import { type Child, spawnRole, urlOf } from '../harness/proc.js'
import type { Check, Figure, Target } from '../harness/report.js'
import { compareSiteTotals } from '../harness/verify.js'

/**
 * Freshness (bench/harness/freshness-probe.ts) with ingest, one stream worker and the query API as
 * their own processes on Kafka and Cassandra. The probe site's count is read through the query API
 * when the query role exists, else straight from the aggregate store's reader.
 */

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export async function measureFreshness(ctx: ScenarioContext): Promise<{ figure: Figure; targets: Target[] }> {
  const seconds = pick(ctx, 40, 8)
  // A steady, moderate load: the two cores also run Kafka, Cassandra, ingest, the worker and the query API.
  const rate = pick(ctx, 1000, 1000)
  const scenario = await ctx.env.scenario('fresh')
  const { env, config } = scenario
  const keys = await ctx.env.createSites(config, [...LOAD_SITES, PROBE_SITE])
  const start = Date.now()
  const viaQuery = isBuilt('query/role.js')
  const children: Child[] = []
  try {
    const ingest = await spawnRole('ingest', env, ctx.env.logDir, 'ingest')
    children.push(ingest)
    const worker = await spawnRole('stream', env, ctx.env.logDir, 'stream-worker')
    children.push(worker)
    const query = viaQuery ? await spawnRole('query', env, ctx.env.logDir, 'query') : undefined
    if (query) children.push(query)
    const reader = new CassandraAggregateReader(await ctx.env.client(config), config.stream.hllPrecision)
    const dayMs = 86_400_000
    const fromDay = Math.floor(start / dayMs) * dayMs
    const probeToken = keys.get(PROBE_SITE)!.readToken
    const countUrl = query
      ? `${urlOf(query)}/v1/stats/aggregate?site=${PROBE_SITE}&from=${new Date(fromDay).toISOString().slice(0, 10)}&to=${new Date(fromDay + dayMs).toISOString().slice(0, 10)}&metrics=events`
      : undefined
    const probeCount = async (): Promise<number> => {
      if (countUrl) {
        const res = await fetch(countUrl, { headers: { authorization: `Bearer ${probeToken}` } })
        if (!res.ok) throw new Error(`GET ${countUrl}: ${res.status} ${await res.text()}`)
        return ((await res.json()) as { results: { events: { value: number } } }).results.events.value
      }
      const windows = await reader.totals(PROBE_SITE, 'day', fromDay, fromDay + 2 * dayMs, {
        visitors: false,
      })
      return windows.reduce((n, w) => n + w.events, 0)
    }
    // Let the worker join its group and take its partitions before the clock runs.
    await sleep(2000)

    const run = await probeFreshness({
      ctx,
      ingestUrl: urlOf(ingest),
      writeKeys: new Map([...keys].map(([site, k]) => [site, k.writeKey])),
      rate,
      seconds,
      probeCount,
      startMs: start,
    })
    await waitCaughtUp(ctx, scenario, reader, 60_000)
    const rss = worker.peakRssBytes()
    const checks: Check[] = [
      ...freshnessChecks(run),
      await compareSiteTotals(reader, run.truth, LOAD_SITES, fromDay - dayMs, fromDay + 2 * dayMs),
    ]
    const figure = freshnessFigure(run, {
      scenario: 'stream.freshness',
      system: 'tally',
      checks,
      setting: '',
      readVia: query ? 'the query API (/v1/stats/aggregate)' : 'the aggregate store (reader)',
      peakRssBytes: rss,
      details: {
        readVia: query ? 'query API' : 'aggregate reader (query role not built)',
        flushIntervalMs: config.stream.flushIntervalMs,
        offeredEventsPerSec: rate,
        peakRssBytes: {
          stream: rss,
          ingest: ingest.peakRssBytes(),
          ...(query ? { query: query.peakRssBytes() } : {}),
        },
      },
    })
    const p99 = run.latency?.p99
    return {
      figure,
      targets:
        p99 === undefined
          ? []
          : [
              {
                scenario: 'stream.freshness',
                metric: 'freshness p99 (2xx at ingest → readable)',
                value: p99,
                unit: 'ms',
                target: '< 2000 ms',
                met: p99 < 2000,
              },
            ],
    }
  } finally {
    for (const c of children.reverse()) await c.stop()
  }
}
