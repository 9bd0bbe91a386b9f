import { CassandraAggregateReader } from '../../core/cassandra/aggregate-reader.js'
import { isBuilt, pick, type ScenarioContext } from '../harness/context.js'
import { basicAuth, batchesBySite, postJson } from '../harness/feed.js'
import { waitCaughtUp } from '../harness/pipeline.js'
import { type Child, spawnRole, urlOf } from '../harness/proc.js'
import type { Check, Figure, Target } from '../harness/report.js'
import { Samples } from '../harness/stats.js'
import { compareSiteTotals } from '../harness/verify.js'
import { generateWorkload, truthOf, USER_AGENTS } from '../workload.js'

/**
 * Freshness: the time from a 2xx at ingest until the event is counted in what users read.
 *
 * Ingest, one stream worker and the query API run as their own processes; background traffic from
 * the workload flows through /v1/batch at a steady rate. Every `PROBE_EVERY_MS` a probe event goes to
 * a probe site through /v1/track. All probes share one visitor, so they share a Kafka partition and
 * are counted in the order they were acknowledged: once the probe site's count reaches k, probe k
 * is visible. The bench polls that count every `POLL_MS` — through the query API when the query
 * role exists, else straight from the aggregate store's reader — and records, per probe, the time
 * from its 2xx to the first poll that saw it.
 */

const LOAD_SITES = ['bench-f1', 'bench-f2']
const PROBE_SITE = 'bench-probe'
const PROBE_EVERY_MS = 200
const POLL_MS = 20
const LOAD_BATCH = 50
const HUMAN_UA = USER_AGENTS.find((u) => !u.isBot)!.ua

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export async function measureFreshness(ctx: ScenarioContext): Promise<{ figure: Figure; targets: Target[] }> {
  const seconds = pick(ctx, 40, 8)
  // A steady, moderate load: the two cores also run Kafka, Cassandra, ingest, the worker and the query API.
  const rate = pick(ctx, 1000, 1000)
  const scenario = await ctx.env.scenario('fresh')
  const { env, config } = scenario
  const keys = await ctx.env.createSites(config, [...LOAD_SITES, PROBE_SITE])
  const start = Date.now()
  // A little more traffic than the run can send; what was sent is cut off and its truth recomputed.
  const workload = generateWorkload({
    seed: ctx.seed + 1,
    sites: LOAD_SITES,
    events: Math.ceil(rate * (seconds + 5) * 1.05),
    start: new Date(start),
    spanMs: (seconds + 5) * 1000,
    lateShare: 0,
  })
  const batches = batchesBySite(workload.events, LOAD_BATCH)
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

    const ingestUrl = urlOf(ingest)
    let stop = false
    let sentBatches = 0
    let loadAccepted = 0
    let loadInFlight = 0
    const loadErrors: string[] = []
    const failedBatches = new Set<number>()
    const loadStarted = performance.now()
    const load = (async () => {
      const intervalMs = (LOAD_BATCH / rate) * 1000
      while (!stop && sentBatches < batches.length) {
        const due = loadStarted + sentBatches * intervalMs
        const wait = due - performance.now()
        if (wait > 0) await sleep(wait)
        if (loadInFlight >= 16) {
          await sleep(1)
          continue
        }
        const index = sentBatches++
        const b = batches[index]!
        loadInFlight++
        postJson(
          `${ingestUrl}/v1/batch`,
          { batch: b.payloads },
          { authorization: basicAuth(keys.get(b.siteId)!.writeKey) },
        )
          .then(
            (a) => {
              loadAccepted += a.accepted
            },
            (err: Error) => {
              loadErrors.push(err.message)
              failedBatches.add(index)
            },
          )
          .finally(() => {
            loadInFlight--
          })
      }
    })()

    const sentAt: number[] = []
    const visibleAt: number[] = []
    const probeErrors: string[] = []
    const pollErrors: string[] = []
    let seen = 0
    let probing = true
    // After the last probe, polling goes on until every probe was seen or this deadline passes.
    let pollUntil = Number.POSITIVE_INFINITY
    const poller = (async () => {
      while ((probing || seen < sentAt.length) && performance.now() < pollUntil) {
        try {
          const c = Math.min(await probeCount(), sentAt.length)
          const t = performance.now()
          for (let k = seen; k < c; k++) visibleAt[k] = t
          seen = Math.max(seen, c)
        } catch (err) {
          pollErrors.push((err as Error).message)
        }
        await sleep(POLL_MS)
      }
    })()
    const probeWriteKey = keys.get(PROBE_SITE)!.writeKey
    const probeUntil = performance.now() + seconds * 1000
    for (let i = 0; performance.now() < probeUntil; i++) {
      const next = performance.now() + PROBE_EVERY_MS
      try {
        await postJson(
          `${ingestUrl}/v1/track`,
          {
            type: 'track',
            event: 'bench_probe',
            anonymousId: 'bench-probe-visitor',
            messageId: `bench-probe-${ctx.env.runId}-${i}`,
            timestamp: new Date().toISOString(),
            properties: { i },
            context: { userAgent: HUMAN_UA },
          },
          { authorization: basicAuth(probeWriteKey) },
        )
        sentAt.push(performance.now())
      } catch (err) {
        probeErrors.push((err as Error).message)
      }
      const wait = next - performance.now()
      if (wait > 0) await sleep(wait)
    }
    probing = false
    stop = true
    await load
    while (loadInFlight > 0) await sleep(10)
    const loadSec = (performance.now() - loadStarted) / 1000
    pollUntil = performance.now() + 30_000
    await poller
    const finalCount = await probeCount()
    const samples = new Samples()
    sentAt.forEach((t, k) => {
      const v = visibleAt[k]
      if (v !== undefined) samples.push(v - t)
    })
    const latency = samples.percentiles()

    // Background traffic: the truth of exactly what was sent (retries once, bots apart).
    const sentPayloads = new Set(
      batches.slice(0, sentBatches).flatMap((b, i) => (failedBatches.has(i) ? [] : b.payloads)),
    )
    const truth = truthOf(
      workload.events.filter((e) => sentPayloads.has(e.payload)),
      LOAD_SITES,
    )
    await waitCaughtUp(ctx, scenario, reader, 60_000)
    const rss = worker.peakRssBytes()
    const checks: Check[] = [
      {
        ok: finalCount === sentAt.length && samples.count === sentAt.length,
        detail: `probes: ${sentAt.length} answered 2xx, ${samples.count} seen, the probe site counts ${finalCount}`,
      },
      {
        ok: loadAccepted === sentPayloads.size,
        detail: `background events accepted: ${loadAccepted} = ${sentPayloads.size} in the batches answered 2xx`,
      },
      await compareSiteTotals(reader, truth, LOAD_SITES, fromDay - dayMs, fromDay + 2 * dayMs),
    ]
    const figure: Figure = {
      scenario: 'stream.freshness',
      system: 'tally',
      status: checks.every((c) => c.ok) ? 'ok' : 'failed',
      throughput: {
        value: loadAccepted / loadSec,
        unit: 'events/s',
        what: `background traffic through /v1/batch (${LOAD_BATCH} events per request) while probing`,
      },
      ...(latency
        ? {
            latencyMs: {
              ...latency,
              what: `2xx at ingest → counted in ${query ? 'the query API (/v1/stats/aggregate)' : 'the aggregate store (reader)'}, one probe every ${PROBE_EVERY_MS} ms, polled every ${POLL_MS} ms`,
            },
          }
        : {}),
      ...(rss !== undefined ? { peakRssBytes: rss } : {}),
      failedRequests: probeErrors.length + loadErrors.length + pollErrors.length,
      checks,
      details: {
        probes: sentAt.length,
        failures: {
          probes: probeErrors.length,
          loadBatches: loadErrors.length,
          polls: pollErrors.length,
          first: [...probeErrors, ...loadErrors, ...pollErrors][0],
        },
        readVia: query ? 'query API' : 'aggregate reader (query role not built)',
        flushIntervalMs: config.stream.flushIntervalMs,
        offeredEventsPerSec: rate,
        peakRssBytes: {
          stream: rss,
          ingest: ingest.peakRssBytes(),
          ...(query ? { query: query.peakRssBytes() } : {}),
        },
      },
    }
    const p99 = latency?.p99
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
