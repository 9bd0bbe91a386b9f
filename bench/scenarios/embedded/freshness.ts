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
import { basicAuth, batchesBySite, postJson } from '../../harness/feed.js'
import type { Check, Figure } from '../../harness/report.js'
import { Samples } from '../../harness/stats.js'
import { compareSiteTotals } from '../../harness/verify.js'
import { generateWorkload, truthOf, USER_AGENTS } from '../../workload.js'

/**
 * embedded.stream.freshness: the time from a 2xx at ingest until the event is counted by the query
 * API, on one `tally all` on the embedded backend, measured as the stream scenario's freshness part
 * does: steady background traffic from the workload through /v1/batch, a probe through /v1/track
 * every PROBE_EVERY_MS (one visitor, so one partition and counted in order), the probe site's count
 * polled through /v1/stats/aggregate every POLL_MS. Checked: every probe seen and counted once, the
 * background events accepted, and (after the stop, from the store itself) the sites' totals.
 */

const LOAD_SITES = ['bench-f1', 'bench-f2']
const PROBE_SITE = 'bench-probe'
const PROBE_EVERY_MS = 200
const POLL_MS = 20
const LOAD_BATCH = 50
const DAY = 86_400_000
const HUMAN_UA = USER_AGENTS.find((u) => !u.isBot)!.ua

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export async function embeddedFreshness(ctx: ScenarioContext): Promise<Figure> {
  const seconds = pick(ctx, 40, 4)
  const rate = 1000
  const setup = embeddedSetup(ctx, 'fresh')
  const keys = await withBackend(setup, (b) => createEmbeddedSites(b, [...LOAD_SITES, PROBE_SITE]))
  const start = Date.now()
  const workload = generateWorkload({
    seed: ctx.seed + 1,
    sites: LOAD_SITES,
    events: Math.ceil(rate * (seconds + 5) * 1.05),
    start: new Date(start),
    spanMs: (seconds + 5) * 1000,
    lateShare: 0,
  })
  const batches = batchesBySite(workload.events, LOAD_BATCH)
  const fromDay = Math.floor(start / DAY) * DAY
  let all: RunningAll | undefined
  try {
    all = await spawnAll(ctx, setup, 'all-embedded-fresh')
    const { ingest: ingestUrl, query: queryUrl } = all
    const probeToken = keys.get(PROBE_SITE)!.readToken
    const probeCount = async () =>
      (await siteCounts(queryUrl, PROBE_SITE, probeToken, fromDay, fromDay + DAY)).events
    // As on Kafka: a moment for the worker to settle before the clock runs.
    await sleep(1000)

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
    const sentPayloads = new Set(
      batches.slice(0, sentBatches).flatMap((b, i) => (failedBatches.has(i) ? [] : b.payloads)),
    )
    const truth = truthOf(
      workload.events.filter((e) => sentPayloads.has(e.payload)),
      LOAD_SITES,
    )
    // A clean stop flushes the stream: what it counted is then in the store.
    const rss = await stopAll(all)
    all = undefined
    const checks: Check[] = [
      {
        ok: finalCount === sentAt.length && samples.count === sentAt.length,
        detail: `probes: ${sentAt.length} answered 2xx, ${samples.count} seen, the probe site counts ${finalCount}`,
      },
      {
        ok: loadAccepted === sentPayloads.size,
        detail: `background events accepted: ${loadAccepted} = ${sentPayloads.size} in the batches answered 2xx`,
      },
      await withBackend(setup, (b) =>
        compareSiteTotals(b.reader, truth, LOAD_SITES, fromDay - DAY, fromDay + 2 * DAY),
      ),
    ]
    return {
      scenario: 'embedded.stream.freshness',
      system: 'tally embedded',
      status: checks.every((c) => c.ok) ? 'ok' : 'failed',
      throughput: {
        value: loadAccepted / loadSec,
        unit: 'events/s',
        what: `background traffic through /v1/batch (${LOAD_BATCH} events per request) while probing, one \`tally all\``,
      },
      ...(latency
        ? {
            latencyMs: {
              ...latency,
              what: `2xx at ingest → counted in the query API (/v1/stats/aggregate), one probe every ${PROBE_EVERY_MS} ms, polled every ${POLL_MS} ms`,
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
        flushIntervalMs: setup.config.stream.flushIntervalMs,
        offeredEventsPerSec: rate,
      },
    }
  } finally {
    if (all) await all.child.stop()
  }
}
