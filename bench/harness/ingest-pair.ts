import { generateWorkload } from '../workload.js'
import { pick, type ScenarioContext } from './context.js'
import { failures, type LoadResult, type LoadTarget, pacedClient, runLoad } from './load.js'
import type { Check, Figure } from './report.js'
import { round } from './stats.js'

/**
 * An ingest server and the bare Fastify route, measured alike by the ingest scenarios (Kafka and
 * embedded): per endpoint a warm-up, alternating peak runs sized by request count (best run counts),
 * then a run at half the peak rate where latency is read.
 */

/** Events per /v1/batch request. */
export const BATCH = 100

export interface Endpoint {
  key: 'track' | 'batch100'
  path: string
  eventsPerRequest: number
  connections: number
  bodies: Buffer[]
  warmupRequests: number
}

export interface Phase {
  warmup: LoadResult
  /** The peak runs, alternating with the other server's. */
  peaks: LoadResult[]
  /** The best of `peaks`: the figure. */
  peak: LoadResult
  /** A short run at the half rate first: the paced client's own warm-up, not measured. */
  halfWarmup: LoadResult
  half: LoadResult
}

export const ROUNDS = 2
/** Seconds of the unmeasured paced run before the half-rate one. */
const HALF_WARMUP_SEC = 2

/** Every run of a phase (each one's events are in the log). */
function runsOf(p: Phase): LoadResult[] {
  return [p.warmup, ...p.peaks, p.halfWarmup, p.half]
}

/**
 * The workload's bodies for one site: single-event /v1/track bodies (64 connections) and
 * BATCH-event /v1/batch bodies (8 connections), the same for every ingest scenario.
 */
export function ingestEndpoints(ctx: ScenarioContext, site: string): Endpoint[] {
  const workload = generateWorkload({
    seed: ctx.seed,
    sites: [site],
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
  return [
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
}

/** One line on the bodies of `endpoints`, for the bench's progress output. */
export function describeBodies(endpoints: readonly Endpoint[], seconds: number): string {
  const avg = (bodies: readonly Buffer[]) => bodies.reduce((n, b) => n + b.length, 0) / bodies.length
  const [track, batch] = endpoints as [Endpoint, Endpoint]
  return `${track.bodies.length} track bodies (${round(avg(track.bodies))} B avg), ${batch.bodies.length} batch bodies (${round(avg(batch.bodies) / 1024)} KiB avg), ${seconds} s per phase`
}

export type Who = 'bare' | 'tally'

/**
 * Both servers on one endpoint: peak runs alternate (bare, Tally, bare, Tally) and each server's
 * best counts. `beforeRun` is awaited before every run of a server (e.g. to let a process that also
 * aggregates what it took in catch up, so a run does not pay for the previous run's backlog).
 */
export async function measurePair(
  targets: Record<Who, Omit<LoadTarget, 'bodies' | 'path' | 'method'>>,
  ep: Endpoint,
  seconds: number,
  say: (line: string) => void,
  label: string,
  beforeRun: (who: Who) => Promise<void> = async () => {},
): Promise<Record<Who, Phase>> {
  const who = ['bare', 'tally'] as const
  const t = (w: Who): LoadTarget => ({ ...targets[w], method: 'POST', path: ep.path, bodies: ep.bodies })
  const warmup = {} as Record<Who, LoadResult>
  const peaks: Record<Who, LoadResult[]> = { bare: [], tally: [] }
  for (const w of who) {
    await beforeRun(w)
    warmup[w] = await runLoad(t(w), { connections: ep.connections, amount: ep.warmupRequests, capSec: 20 })
  }
  for (let round = 0; round < ROUNDS; round++) {
    for (const w of who) {
      const guess = Math.max(warmup[w].okPerSec, ...peaks[w].map((r) => r.okPerSec))
      await beforeRun(w)
      peaks[w].push(
        await runLoad(t(w), {
          connections: ep.connections,
          amount: Math.max(ep.connections * 4, Math.round((guess * seconds) / ROUNDS)),
          capSec: seconds * 3,
        }),
      )
    }
  }
  const out = {} as Record<Who, Phase>
  for (const w of who) {
    const peak = peaks[w].reduce((a, b) => (b.okPerSec > a.okPerSec ? b : a))
    say(
      `${label}.${ep.key} ${w}: peak runs ${peaks[w].map((r) => Math.round(r.okPerSec)).join(', ')} req/s; now at half the best`,
    )
    const rate = Math.max(1, Math.floor(peak.okPerSec / 2))
    await beforeRun(w)
    // One client for both runs: the warm-up opens its connections.
    const client = pacedClient(t(w), ep.connections)
    let halfWarmup: LoadResult
    let half: LoadResult
    try {
      halfWarmup = await client.run({
        rate,
        amount: Math.max(ep.connections, Math.round(rate * HALF_WARMUP_SEC)),
        capSec: HALF_WARMUP_SEC * 3,
      })
      half = await client.run({
        rate,
        amount: Math.max(ep.connections, Math.round(rate * seconds)),
        capSec: seconds * 3,
      })
    } finally {
      await client.close()
    }
    out[w] = { warmup: warmup[w], peaks: peaks[w], peak, halfWarmup, half }
  }
  return out
}

/**
 * What the client counted as accepted against what the server kept: exactly when every request got
 * an answer, else between the 2xx'd events and those plus the unanswered or failed ones.
 */
export function countCheck(label: string, phases: Phase[], eventsPerRequest: number[], kept: number): Check {
  let low = 0
  let high = 0
  phases.forEach((p, i) => {
    for (const r of runsOf(p)) {
      low += r.ok * eventsPerRequest[i]!
      high += (r.capped ? Math.max(r.sent, r.ok + failures(r)) : r.ok + failures(r)) * eventsPerRequest[i]!
    }
  })
  if (low === high) return { ok: kept === low, detail: `${label}: ${kept} kept = ${low} answered 2xx` }
  return {
    ok: kept >= low && kept <= high,
    detail: `${label}: ${kept} kept, between the ${low} answered 2xx and the ${high} sent (some requests failed or were cut off)`,
  }
}

/** The figure of one server on one endpoint (throughput at the peak, latency at half of it). */
export function pairFigure(
  scenario: string,
  system: string,
  ep: Endpoint,
  p: Phase,
  rss: number | undefined,
  checks: Check[],
  note = '',
): Figure {
  const eventsPerSec = p.peak.okPerSec * ep.eventsPerRequest
  return {
    scenario,
    system,
    status: checks.every((c) => c.ok) ? 'ok' : 'failed',
    throughput:
      ep.eventsPerRequest === 1
        ? {
            value: p.peak.okPerSec,
            unit: 'req/s',
            what: `peak 2xx/s with ${ep.connections} connections, 1 event per request (best of ${ROUNDS} runs)${note}`,
          }
        : {
            value: eventsPerSec,
            unit: 'events/s',
            what: `peak events/s with ${ep.connections} connections, ${ep.eventsPerRequest} events per request (best of ${ROUNDS} runs)${note}`,
          },
    ...(p.half.latency
      ? {
          latencyMs: {
            ...p.half.latency,
            what: `at half the peak rate, requests evenly spaced (${round(p.half.okPerSec)} req/s answered of ${Math.floor(p.peak.okPerSec / 2)} offered; latency from when each was due)`,
          },
        }
      : {}),
    ...(rss !== undefined ? { peakRssBytes: rss } : {}),
    failedRequests: runsOf(p).reduce((n, r) => n + failures(r), 0),
    checks,
    details: {
      connections: ep.connections,
      statusesNot2xx: runsOf(p).flatMap((r) => Object.entries(r.statuses).map(([s, c]) => `${s}×${c}`)),
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
        clientSendLateMs: p.half.sendLateMs,
      },
    },
  }
}
