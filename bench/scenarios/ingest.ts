import {
  benchScript,
  pick,
  type ScenarioContext,
  type ScenarioDefinition,
  type ScenarioOutcome,
} from '../harness/context.js'
import { basicAuth } from '../harness/feed.js'
import { failures, type LoadResult, type LoadTarget, runLoad } from '../harness/load.js'
import { type Child, spawnNode, spawnRole, urlOf } from '../harness/proc.js'
import type { Check, Figure, Ratio, Target } from '../harness/report.js'
import { round } from '../harness/stats.js'
import { generateWorkload } from '../workload.js'

/**
 * Ingest: single-event POST /v1/track and 100-event POST /v1/batch against Tally's ingest role
 * (durable: a 2xx only after Kafka acks=all) and against a bare Fastify route doing nothing, each
 * in its own process, in the same run, on loopback.
 *
 * Per endpoint and server: a warm-up, peak runs (as many requests as the server answers with
 * `connections` clients; the two servers alternate, best run counts) and a run at half the peak
 * rate, where latency is read (issue 3's p99 is "at half the peak rate"). Runs are sized by request count, not by time, so nothing is in flight
 * when they end and the counts are exact: every 2xx'd event must be in the Kafka topic (Tally) or
 * counted by the peer (bare), no more and no fewer.
 */

const SITE = 'bench-ingest'
const BATCH = 100

interface Endpoint {
  key: 'track' | 'batch100'
  path: string
  eventsPerRequest: number
  connections: number
  bodies: Buffer[]
  warmupRequests: number
}

interface Phase {
  warmup: LoadResult
  /** The peak runs, alternating with the other server's (see measurePair). */
  peaks: LoadResult[]
  /** The best of `peaks`: the figure. */
  peak: LoadResult
  half: LoadResult
}

const ROUNDS = 2

/**
 * Measures both servers on one endpoint. The peak runs alternate (bare, Tally, bare, Tally) and
 * each server's best counts, so a burst of other work on the shared machine during one run does
 * not decide the ratio alone.
 */
async function measurePair(
  targets: Record<'bare' | 'tally', Omit<LoadTarget, 'bodies' | 'path' | 'method'>>,
  ep: Endpoint,
  seconds: number,
  say: (line: string) => void,
): Promise<Record<'bare' | 'tally', Phase>> {
  const who = ['bare', 'tally'] as const
  const t = (w: 'bare' | 'tally'): LoadTarget => ({
    ...targets[w],
    method: 'POST',
    path: ep.path,
    bodies: ep.bodies,
  })
  const warmup = {} as Record<'bare' | 'tally', LoadResult>
  const peaks: Record<'bare' | 'tally', LoadResult[]> = { bare: [], tally: [] }
  for (const w of who)
    warmup[w] = await runLoad(t(w), { connections: ep.connections, amount: ep.warmupRequests, capSec: 20 })
  for (let round = 0; round < ROUNDS; round++) {
    for (const w of who) {
      const guess = Math.max(warmup[w].okPerSec, ...peaks[w].map((r) => r.okPerSec))
      peaks[w].push(
        await runLoad(t(w), {
          connections: ep.connections,
          amount: Math.max(ep.connections * 4, Math.round((guess * seconds) / ROUNDS)),
          capSec: seconds * 3,
        }),
      )
    }
  }
  const out = {} as Record<'bare' | 'tally', Phase>
  for (const w of who) {
    const peak = peaks[w].reduce((a, b) => (b.okPerSec > a.okPerSec ? b : a))
    say(
      `ingest.${ep.key} ${w}: peak runs ${peaks[w].map((r) => Math.round(r.okPerSec)).join(', ')} req/s; now at half the best`,
    )
    const rate = Math.max(1, Math.floor(peak.okPerSec / 2))
    const half = await runLoad(t(w), {
      connections: ep.connections,
      overallRate: rate,
      amount: Math.max(ep.connections, Math.round(rate * seconds)),
      capSec: seconds * 3,
    })
    out[w] = { warmup: warmup[w], peaks: peaks[w], peak, half }
  }
  return out
}

/**
 * Checks that what the client counted as accepted is what the server kept: exactly, when every
 * request got an answer; otherwise between the 2xx'd events and those plus the unanswered or failed
 * ones (a request that timed out, or a 503 whose write landed late, may have been kept).
 */
function countCheck(label: string, phases: Phase[], eventsPerRequest: number[], kept: number): Check {
  let low = 0
  let high = 0
  phases.forEach((p, i) => {
    for (const r of [p.warmup, ...p.peaks, p.half]) {
      low += r.ok * eventsPerRequest[i]!
      // A capped run stopped with requests in flight: the server may have kept those too.
      high += (r.capped ? Math.max(r.sent, r.ok + failures(r)) : r.ok + failures(r)) * eventsPerRequest[i]!
    }
  })
  if (low === high) return { ok: kept === low, detail: `${label}: ${kept} kept = ${low} answered 2xx` }
  return {
    ok: kept >= low && kept <= high,
    detail: `${label}: ${kept} kept, between the ${low} answered 2xx and the ${high} sent (some requests failed or were cut off)`,
  }
}

function figureOf(system: string, ep: Endpoint, p: Phase, rss: number | undefined, checks: Check[]): Figure {
  const eventsPerSec = p.peak.okPerSec * ep.eventsPerRequest
  return {
    scenario: `ingest.${ep.key}`,
    system,
    status: checks.every((c) => c.ok) ? 'ok' : 'failed',
    throughput:
      ep.eventsPerRequest === 1
        ? {
            value: p.peak.okPerSec,
            unit: 'req/s',
            what: `peak 2xx/s with ${ep.connections} connections, 1 event per request (best of ${ROUNDS} runs)`,
          }
        : {
            value: eventsPerSec,
            unit: 'events/s',
            what: `peak events/s with ${ep.connections} connections, ${ep.eventsPerRequest} events per request (best of ${ROUNDS} runs)`,
          },
    ...(p.half.latency
      ? {
          latencyMs: {
            ...p.half.latency,
            what: `at half the peak rate (${round(p.half.okPerSec)} req/s offered ${Math.floor(p.peak.okPerSec / 2)})`,
          },
        }
      : {}),
    ...(rss !== undefined ? { peakRssBytes: rss } : {}),
    failedRequests: [p.warmup, ...p.peaks, p.half].reduce((n, r) => n + failures(r), 0),
    checks,
    details: {
      connections: ep.connections,
      statusesNot2xx: [p.warmup, ...p.peaks, p.half].flatMap((r) =>
        Object.entries(r.statuses).map(([s, c]) => `${s}×${c}`),
      ),
      peakRunsReqPerSec: p.peaks.map((r) => round(r.okPerSec)),
      peak: {
        requests: p.peak.ok,
        seconds: round(p.peak.elapsedSec),
        reqPerSec: round(p.peak.okPerSec),
        eventsPerSec: round(eventsPerSec),
        latencyMs: p.peak.latency,
      },
      halfRate: {
        requests: p.half.ok,
        seconds: round(p.half.elapsedSec),
        reqPerSec: round(p.half.okPerSec),
        latencyMs: p.half.latency,
      },
    },
  }
}

async function run(ctx: ScenarioContext): Promise<ScenarioOutcome> {
  const seconds = pick(ctx, 10, 2)
  const { env, config } = await ctx.env.scenario('ingest')
  const keys = await ctx.env.createSites(config, [SITE])
  const writeKey = keys.get(SITE)!.writeKey
  const workload = generateWorkload({
    seed: ctx.seed,
    sites: [SITE],
    events: pick(ctx, 20_000, 8_000),
    start: new Date(Date.now() - 3_600_000),
    spanMs: 3_000_000,
    lateShare: 0,
  })
  const tracks = workload.events
    .filter((e) => e.payload.type === 'track')
    .map((e) => Buffer.from(JSON.stringify(e.payload)))
  const batches: Buffer[] = []
  for (let i = 0; i + BATCH <= workload.events.length; i += BATCH) {
    const sentAt = workload.events[i + BATCH - 1]!.payload.sentAt
    batches.push(
      Buffer.from(
        JSON.stringify({ batch: workload.events.slice(i, i + BATCH).map((e) => e.payload), sentAt }),
      ),
    )
  }
  const endpoints: Endpoint[] = [
    {
      key: 'track',
      path: '/v1/track',
      eventsPerRequest: 1,
      connections: 64,
      bodies: tracks,
      warmupRequests: pick(ctx, 3000, 1000),
    },
    {
      key: 'batch100',
      path: '/v1/batch',
      eventsPerRequest: BATCH,
      connections: 8,
      bodies: batches,
      warmupRequests: pick(ctx, 100, 40),
    },
  ]
  ctx.say(
    `ingest: ${tracks.length} track bodies (${round(tracks.reduce((n, b) => n + b.length, 0) / tracks.length)} B avg), ${batches.length} batch bodies (${round(batches.reduce((n, b) => n + b.length, 0) / batches.length / 1024)} KiB avg), ${seconds} s per phase`,
  )
  const headers = {
    'content-type': 'application/json',
    authorization: basicAuth(writeKey),
    'user-agent': 'tally-bench (autocannon)',
  }
  const children: Child[] = []
  try {
    const bare = await spawnNode({
      name: 'bare-fastify',
      args: [benchScript('peers/bare-fastify.js')],
      env: {},
      logDir: ctx.env.logDir,
      isReady: (line) =>
        line.startsWith('{"ready"') ? (JSON.parse(line) as Record<string, unknown>) : undefined,
    })
    children.push(bare)
    const tally = await spawnRole('ingest', env, ctx.env.logDir, 'ingest')
    children.push(tally)

    const results = new Map<string, { bare: Phase; tally: Phase }>()
    for (const ep of endpoints) {
      ctx.say(`ingest.${ep.key}: bare Fastify and Tally, ${ROUNDS} alternating peak runs each`)
      results.set(
        ep.key,
        await measurePair(
          { bare: { url: urlOf(bare), headers }, tally: { url: urlOf(tally), headers } },
          ep,
          seconds,
          ctx.say,
        ),
      )
    }

    const bareRss = bare.peakRssBytes()
    const tallyRss = tally.peakRssBytes()
    const bareCount = ((await (await fetch(`${urlOf(bare)}/count`)).json()) as { events: number }).events
    const logged = await ctx.env.topicRecords(config)
    const phasesOf = (who: 'bare' | 'tally') => endpoints.map((ep) => results.get(ep.key)![who])
    const perRequest = endpoints.map((ep) => ep.eventsPerRequest)
    const bareChecks = [
      countCheck('events counted by the bare route', phasesOf('bare'), perRequest, bareCount),
    ]
    const tallyChecks = [
      countCheck('events in the Kafka topic (acks=all)', phasesOf('tally'), perRequest, logged),
    ]
    const figures: Figure[] = []
    const ratios: Ratio[] = []
    const targets: Target[] = []
    for (const ep of endpoints) {
      const r = results.get(ep.key)!
      figures.push(figureOf('tally', ep, r.tally, tallyRss, tallyChecks))
      figures.push(figureOf('bare-fastify', ep, r.bare, bareRss, bareChecks))
      ratios.push({
        scenario: `ingest.${ep.key}`,
        metric: `${ep.eventsPerRequest === 1 ? 'req/s' : 'events/s'} Tally / bare Fastify`,
        value: r.tally.peak.okPerSec / r.bare.peak.okPerSec,
        ...(ep.key === 'track' ? { target: '≥ 0.75' } : {}),
      })
      const p99 = r.tally.half.latency?.p99
      if (p99 !== undefined)
        targets.push({
          scenario: `ingest.${ep.key}`,
          metric: 'Tally p99 latency at half the peak rate',
          value: p99,
          unit: 'ms',
          target: '< 10 ms',
          met: p99 < 10,
        })
    }
    const batchRate = results.get('batch100')!.tally.peak.okPerSec * BATCH
    targets.push({
      scenario: 'ingest.batch100',
      metric: 'Tally events/s through /v1/batch, one process',
      value: batchRate,
      unit: 'events/s',
      target: '≥ 250,000',
      met: batchRate >= 250_000,
    })
    return { figures, ratios, targets }
  } finally {
    for (const c of children.reverse()) await c.stop()
  }
}

export const ingestScenario: ScenarioDefinition = {
  name: 'ingest',
  description: 'POST /v1/track and 100-event /v1/batch: Tally (durable, acks=all) vs a bare Fastify route',
  needsServices: true,
  run,
}
