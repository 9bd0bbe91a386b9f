import { generateWorkload, type Truth, truthOf, USER_AGENTS } from '../workload.js'
import type { ScenarioContext } from './context.js'
import { basicAuth, batchesBySite, postJson } from './feed.js'
import type { Check, Figure } from './report.js'
import { type Percentiles, Samples } from './stats.js'

/**
 * The freshness measurement both backends share: the time from a 2xx at ingest until the event is
 * counted in what users read.
 *
 * Background traffic from the workload flows through /v1/batch at a steady rate. Every
 * `PROBE_EVERY_MS` a probe event goes to a probe site through /v1/track. All probes share one
 * visitor, so they share a partition and are counted in the order they were acknowledged: once
 * the probe site's count reaches k, probe k is visible. The count is polled every `POLL_MS`, and
 * each probe's sample is the time from its 2xx to the first poll that saw it.
 */

export const LOAD_SITES = ['bench-f1', 'bench-f2']
export const PROBE_SITE = 'bench-probe'
export const PROBE_EVERY_MS = 200
export const POLL_MS = 20
export const LOAD_BATCH = 50
const HUMAN_UA = USER_AGENTS.find((u) => !u.isBot)!.ua

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export interface FreshnessOptions {
  ctx: ScenarioContext
  ingestUrl: string
  /** Write keys of the load sites and the probe site. */
  writeKeys: ReadonlyMap<string, string>
  /** Background events/s offered. */
  rate: number
  seconds: number
  /** The probe site's count as users read it. */
  probeCount: () => Promise<number>
  /** Start of the workload (and of the day it falls in). */
  startMs: number
}

export interface FreshnessRun {
  latency: Percentiles | undefined
  /** Probes answered 2xx, seen by the poller, and the probe site's count at the end. */
  probes: { sent: number; seen: number; finalCount: number }
  /** Background events accepted, and those in the batches answered 2xx (their truth is `truth`). */
  load: { accepted: number; sent: number; seconds: number }
  truth: Truth
  failures: { probes: string[]; loadBatches: string[]; polls: string[] }
}

/** Runs the background traffic and the probes, then polls until every probe was seen (≤ 30 s more). */
export async function probeFreshness(o: FreshnessOptions): Promise<FreshnessRun> {
  // A little more traffic than the run can send; what was sent is cut off and its truth recomputed.
  const workload = generateWorkload({
    seed: o.ctx.seed + 1,
    sites: LOAD_SITES,
    events: Math.ceil(o.rate * (o.seconds + 5) * 1.05),
    start: new Date(o.startMs),
    spanMs: (o.seconds + 5) * 1000,
    lateShare: 0,
  })
  const batches = batchesBySite(workload.events, LOAD_BATCH)
  let stop = false
  let sentBatches = 0
  let loadAccepted = 0
  let loadInFlight = 0
  const loadErrors: string[] = []
  const failedBatches = new Set<number>()
  const loadStarted = performance.now()
  const load = (async () => {
    const intervalMs = (LOAD_BATCH / o.rate) * 1000
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
        `${o.ingestUrl}/v1/batch`,
        { batch: b.payloads },
        { authorization: basicAuth(o.writeKeys.get(b.siteId)!) },
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
        const c = Math.min(await o.probeCount(), sentAt.length)
        const t = performance.now()
        for (let k = seen; k < c; k++) visibleAt[k] = t
        seen = Math.max(seen, c)
      } catch (err) {
        pollErrors.push((err as Error).message)
      }
      await sleep(POLL_MS)
    }
  })()
  const probeWriteKey = o.writeKeys.get(PROBE_SITE)!
  const probeUntil = performance.now() + o.seconds * 1000
  for (let i = 0; performance.now() < probeUntil; i++) {
    const next = performance.now() + PROBE_EVERY_MS
    try {
      await postJson(
        `${o.ingestUrl}/v1/track`,
        {
          type: 'track',
          event: 'bench_probe',
          anonymousId: 'bench-probe-visitor',
          messageId: `bench-probe-${o.ctx.env.runId}-${i}`,
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
  const finalCount = await o.probeCount()
  const samples = new Samples()
  sentAt.forEach((t, k) => {
    const v = visibleAt[k]
    if (v !== undefined) samples.push(v - t)
  })
  // Background traffic: the truth of exactly what was sent (retries once, bots apart).
  const sentPayloads = new Set(
    batches.slice(0, sentBatches).flatMap((b, i) => (failedBatches.has(i) ? [] : b.payloads)),
  )
  return {
    latency: samples.percentiles(),
    probes: { sent: sentAt.length, seen: samples.count, finalCount },
    load: { accepted: loadAccepted, sent: sentPayloads.size, seconds: loadSec },
    truth: truthOf(
      workload.events.filter((e) => sentPayloads.has(e.payload)),
      LOAD_SITES,
    ),
    failures: { probes: probeErrors, loadBatches: loadErrors, polls: pollErrors },
  }
}

/** Every probe seen and counted once; every background event of a 2xx batch accepted. */
export function freshnessChecks(run: FreshnessRun): Check[] {
  const { probes, load } = run
  return [
    {
      ok: probes.finalCount === probes.sent && probes.seen === probes.sent,
      detail: `probes: ${probes.sent} answered 2xx, ${probes.seen} seen, the probe site counts ${probes.finalCount}`,
    },
    {
      ok: load.accepted === load.sent,
      detail: `background events accepted: ${load.accepted} = ${load.sent} in the batches answered 2xx`,
    },
  ]
}

/** The figure of a freshness run: throughput of the background traffic, latency of the probes. */
export function freshnessFigure(
  run: FreshnessRun,
  f: {
    scenario: string
    system: string
    checks: Check[]
    /** What the throughput was, after "background traffic through /v1/batch (…) while probing". */
    setting: string
    /** Where a probe counts: "the query API (/v1/stats/aggregate)", … */
    readVia: string
    peakRssBytes: number | undefined
    details: Record<string, unknown>
  },
): Figure {
  const { failures } = run
  return {
    scenario: f.scenario,
    system: f.system,
    status: f.checks.every((c) => c.ok) ? 'ok' : 'failed',
    throughput: {
      value: run.load.accepted / run.load.seconds,
      unit: 'events/s',
      what: `background traffic through /v1/batch (${LOAD_BATCH} events per request) while probing${f.setting}`,
    },
    ...(run.latency
      ? {
          latencyMs: {
            ...run.latency,
            what: `2xx at ingest → counted in ${f.readVia}, one probe every ${PROBE_EVERY_MS} ms, polled every ${POLL_MS} ms`,
          },
        }
      : {}),
    ...(f.peakRssBytes !== undefined ? { peakRssBytes: f.peakRssBytes } : {}),
    failedRequests: failures.probes.length + failures.loadBatches.length + failures.polls.length,
    checks: f.checks,
    details: {
      probes: run.probes.sent,
      failures: {
        probes: failures.probes.length,
        loadBatches: failures.loadBatches.length,
        polls: failures.polls.length,
        first: [...failures.probes, ...failures.loadBatches, ...failures.polls][0],
      },
      ...f.details,
    },
  }
}
