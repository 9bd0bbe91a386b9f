import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import {
  benchScript,
  pick,
  type ScenarioContext,
  type ScenarioDefinition,
  type ScenarioOutcome,
} from '../harness/context.js'
import { basicAuth } from '../harness/feed.js'
import {
  BATCH,
  countCheck,
  describeBodies,
  type Endpoint,
  ingestEndpoints,
  measurePair,
  type Phase,
  pairFigure,
  ROUNDS,
} from '../harness/ingest-pair.js'
import { failures, type LoadResult, pacedClient } from '../harness/load.js'
import { type Child, resultOf, runNode, spawnBareFastify, spawnRole, urlOf } from '../harness/proc.js'
import { sampleProc } from '../harness/proc-sample.js'
import { metricSum, scrape } from '../harness/prometheus.js'
import {
  type Check,
  type Figure,
  failedFigure,
  formatBytes,
  formatNumber,
  type Ratio,
  type Target,
} from '../harness/report.js'
import { round } from '../harness/stats.js'

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
 *
 * A second peer shows what the durable write alone costs: a bare kafkajs producer sending the same
 * batch bodies' events to a topic of its own, with no HTTP and no validation or enrichment
 * (bench/peers/bare-producer.ts).
 */

const SITE = 'bench-ingest'
/** The steady run's own site (the site store is shared by the run's scenarios). */
const STEADY_SITE = 'bench-ingest-steady'

/** The bare kafkajs producer over the batch bodies: events/s with every send acknowledged. */
async function bareProducer(
  ctx: ScenarioContext,
  seconds: number,
  guessEventsPerSec: number,
  bodies: readonly Buffer[],
): Promise<Figure> {
  const { env, config } = await ctx.env.scenario('ingest_peer')
  const file = join(ctx.env.logDir, 'bare-producer-bodies.ndjson')
  writeFileSync(file, bodies.map((b) => b.toString('utf8')).join('\n'))
  const sends = Math.max(8, Math.round((guessEventsPerSec * seconds) / BATCH))
  const run = await runNode({
    name: 'bare-producer',
    args: [benchScript('peers/bare-producer.js')],
    env: {
      KAFKA_BROKERS: env.KAFKA_BROKERS!,
      TOPIC: config.kafka.topicRaw,
      BODIES: file,
      SITE,
      SENDS: String(sends),
      CONCURRENCY: '8',
    },
    logDir: ctx.env.logDir,
    timeoutMs: seconds * 10_000 + 60_000,
  })
  const result = resultOf<{ events: number; seconds: number }>(run, 'the bare producer')
  const logged = await ctx.env.topicRecords(config)
  // Its untimed first send is in the topic too.
  const expected = result.events + BATCH
  return {
    scenario: 'ingest.batch100',
    system: 'bare kafkajs producer',
    status: logged === expected ? 'ok' : 'failed',
    throughput: {
      value: result.events / result.seconds,
      unit: 'events/s',
      what: `one kafkajs producer process (idempotent, acks=all) sending the batch bodies' events, one send per body, 8 at a time: no HTTP, no validation or enrichment`,
    },
    ...(run.peakRssBytes !== undefined ? { peakRssBytes: run.peakRssBytes } : {}),
    checks: [{ ok: logged === expected, detail: `events in its topic: ${logged} = ${expected} sent` }],
    details: { sends, seconds: round(result.seconds) },
  }
}

async function run(ctx: ScenarioContext): Promise<ScenarioOutcome> {
  const seconds = pick(ctx, 10, 2)
  const { env, config } = await ctx.env.scenario('ingest')
  const keys = await ctx.env.createSites(config, [SITE])
  const writeKey = keys.get(SITE)!.writeKey
  const endpoints = ingestEndpoints(ctx, SITE)
  ctx.say(`ingest: ${describeBodies(endpoints, seconds)}`)
  const headers = {
    'content-type': 'application/json',
    authorization: basicAuth(writeKey),
    'user-agent': 'tally-bench (autocannon)',
  }
  const children: Child[] = []
  try {
    const bare = await spawnBareFastify(ctx.env.logDir)
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
          'ingest',
        ),
      )
    }

    const bareRss = bare.peakRssBytes()
    const tallyRss = tally.peakRssBytes()
    const bareCount = ((await (await fetch(`${urlOf(bare)}/count`)).json()) as { events: number }).events
    // Events, not records: ingest packs a flush's events per partition (format 2).
    const logged = await ctx.env.topicEvents(config)
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
      figures.push(pairFigure(`ingest.${ep.key}`, 'tally', ep, r.tally, tallyRss, tallyChecks))
      figures.push(pairFigure(`ingest.${ep.key}`, 'bare-fastify', ep, r.bare, bareRss, bareChecks))
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
    const batchEndpoint = endpoints.find((ep) => ep.key === 'batch100')!
    ctx.say('ingest.batch100: the bare kafkajs producer sends the same events')
    // The peer failing leaves the figures above standing.
    const producer = await bareProducer(ctx, seconds, batchRate * 2, batchEndpoint.bodies).catch((err) =>
      failedFigure('ingest.batch100', 'bare kafkajs producer', err),
    )
    figures.push(producer)
    if (producer.status === 'ok' && producer.throughput)
      ratios.push({
        scenario: 'ingest.batch100',
        metric: 'events/s Tally / bare kafkajs producer (the durable write alone)',
        value: batchRate / producer.throughput.value,
      })
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
  description:
    'POST /v1/track and 100-event /v1/batch: Tally (durable, acks=all) vs a bare Fastify route and a bare kafkajs producer',
  needsServices: true,
  run,
}

/**
 * Cost over time (issue 22 point 3): one fresh ingest process under the same steady load for
 * `intervals` back-to-back intervals, /v1/batch and /v1/track at once, each at a fixed rate in an
 * open loop (the load does not follow the server, so every interval asks the same work). Per
 * interval: CPU-µs per accepted event (the process's CPU time from /proc/PID/stat over the events
 * answered 2xx in it), events/s, RSS and V8 heap used at its end (/metrics), p99 of each endpoint.
 * CPU per event rather than rates: the machine is shared, and a rate measures the neighbours too.
 */

/** Steady-load settings; TALLY_BENCH_STEADY=INTERVALSxSECONDS overrides the count and length (exploration). */
function steadyPlan(ctx: ScenarioContext): { intervals: number; seconds: number; warmupSec: number } {
  const fixed = process.env.TALLY_BENCH_STEADY
  if (fixed) {
    const m = /^(\d{1,3})x(\d{1,4})$/.exec(fixed)
    if (!m || Number(m[1]) < 2 || Number(m[2]) < 1)
      throw new Error(`TALLY_BENCH_STEADY=${fixed}: expected INTERVALSxSECONDS, at least 2 intervals of 1 s`)
    return { intervals: Number(m[1]), seconds: Number(m[2]), warmupSec: pick(ctx, 5, 2) }
  }
  // Full: 10 minutes in 30 s intervals. Quick (CI): under a minute in all.
  return pick(ctx, { intervals: 20, seconds: 30, warmupSec: 5 }, { intervals: 3, seconds: 10, warmupSec: 2 })
}

/** /v1/batch requests (100 events each) and /v1/track requests per second: ~4,400 events/s, well under one process's peak. */
const STEADY_BATCH_PER_SEC = 40
const STEADY_TRACK_PER_SEC = 400
/** The target of issue 22: the last interval's CPU per event at most this times the first's. */
const FLAT_TARGET = 1.15

interface IntervalFigure {
  index: number
  events: number
  seconds: number
  cpuUsPerEvent: number
  eventsPerSec: number
  rssBytes: number
  heapUsedBytes: number
  /** Events per producer send in the interval: the fewer, the more each event pays of a send. */
  eventsPerSend: number
  batchP99Ms: number | undefined
  trackP99Ms: number | undefined
}

/** Producer sends so far and the events they carried (tally_ingest_kafka_batch_records). */
function sends(metrics: string): { sends: number; events: number } {
  return {
    sends: metricSum(metrics, 'tally_ingest_kafka_batch_records_count'),
    events: metricSum(metrics, 'tally_ingest_kafka_batch_records_sum'),
  }
}

async function runSteady(ctx: ScenarioContext): Promise<ScenarioOutcome> {
  const plan = steadyPlan(ctx)
  const { env, config } = await ctx.env.scenario('ingest_steady')
  const keys = await ctx.env.createSites(config, [STEADY_SITE])
  const endpoints = ingestEndpoints(ctx, STEADY_SITE)
  const [track, batch] = endpoints as [Endpoint, Endpoint]
  const headers = {
    'content-type': 'application/json',
    authorization: basicAuth(keys.get(STEADY_SITE)!.writeKey),
    'user-agent': 'tally-bench (steady)',
  }
  ctx.say(
    `ingest.steady: ${plan.intervals} intervals of ${plan.seconds} s after ${plan.warmupSec} s of warm-up, ${STEADY_BATCH_PER_SEC} /v1/batch + ${STEADY_TRACK_PER_SEC} /v1/track requests/s`,
  )
  const tally = await spawnRole('ingest', env, ctx.env.logDir, 'ingest-steady')
  const url = urlOf(tally)
  const batchClient = pacedClient({ url, headers, method: 'POST', path: batch.path, bodies: batch.bodies }, 8)
  const trackClient = pacedClient(
    { url, headers, method: 'POST', path: track.path, bodies: track.bodies },
    32,
  )
  const runs: { batch: LoadResult; track: LoadResult }[] = []
  // A run stops sending at 1.25× its length: on a machine too busy to serve the load, intervals
  // stay bounded in time (and the quick bench near its minute); what was sent is still answered.
  const both = async (seconds: number) => {
    const capSec = seconds * 1.25
    const [b, t] = await Promise.all([
      batchClient.run({
        rate: STEADY_BATCH_PER_SEC,
        amount: STEADY_BATCH_PER_SEC * seconds,
        capSec,
      }),
      trackClient.run({
        rate: STEADY_TRACK_PER_SEC,
        amount: STEADY_TRACK_PER_SEC * seconds,
        capSec,
      }),
    ])
    runs.push({ batch: b, track: t })
    return { batch: b, track: t }
  }
  const intervals: IntervalFigure[] = []
  try {
    await both(plan.warmupSec)
    let before = sampleProc(tally.pid)
    let sendsBefore = sends(await scrape(url))
    for (let i = 0; i < plan.intervals; i++) {
      const r = await both(plan.seconds)
      const after = sampleProc(tally.pid)
      const metrics = await scrape(url)
      const heapUsedBytes = metricSum(metrics, 'nodejs_heap_size_used_bytes')
      const sendsAfter = sends(metrics)
      const events = r.batch.ok * BATCH + r.track.ok
      const seconds = (after.atMs - before.atMs) / 1000
      const figure: IntervalFigure = {
        index: i + 1,
        events,
        seconds: round(seconds),
        cpuUsPerEvent: events > 0 ? ((after.cpuSec - before.cpuSec) * 1e6) / events : Number.NaN,
        eventsPerSec: events / seconds,
        rssBytes: after.rssBytes,
        heapUsedBytes,
        eventsPerSend: (sendsAfter.events - sendsBefore.events) / (sendsAfter.sends - sendsBefore.sends),
        batchP99Ms: r.batch.latency?.p99,
        trackP99Ms: r.track.latency?.p99,
      }
      intervals.push(figure)
      ctx.say(
        `ingest.steady ${figure.index}/${plan.intervals}: ${round(figure.cpuUsPerEvent)} CPU-µs/event, ${round(figure.eventsPerSec)} events/s, RSS ${formatBytes(figure.rssBytes)}, heap ${formatBytes(heapUsedBytes)}, ${round(figure.eventsPerSend)} events per Kafka send, p99 batch ${round(figure.batchP99Ms ?? Number.NaN)} ms, track ${round(figure.trackP99Ms ?? Number.NaN)} ms`,
      )
      before = sampleProc(tally.pid)
      sendsBefore = sendsAfter
    }
  } finally {
    await Promise.all([batchClient.close(), trackClient.close()])
    await tally.stop()
  }
  const logged = await ctx.env.topicEvents(config)
  let low = 0
  let high = 0
  for (const r of runs) {
    low += r.batch.ok * BATCH + r.track.ok
    high += (r.batch.ok + failures(r.batch)) * BATCH + r.track.ok + failures(r.track)
  }
  const check: Check = {
    ok: logged >= low && logged <= high,
    detail:
      low === high
        ? `events in the Kafka topic (acks=all): ${logged} kept = ${low} answered 2xx`
        : `events in the Kafka topic (acks=all): ${logged} kept, between the ${low} answered 2xx and the ${high} sent`,
  }
  const first = intervals[0]!
  const last = intervals.at(-1)!
  const ratio = last.cpuUsPerEvent / first.cpuUsPerEvent
  const totalEvents = intervals.reduce((n, f) => n + f.events, 0)
  const totalSec = intervals.reduce((n, f) => n + f.seconds, 0)
  const figure: Figure = {
    scenario: 'ingest.steady',
    system: 'tally',
    status: check.ok ? 'ok' : 'failed',
    throughput: {
      value: totalEvents / totalSec,
      unit: 'events/s',
      what: `one fresh ingest process, ${STEADY_BATCH_PER_SEC} /v1/batch (100 events) + ${STEADY_TRACK_PER_SEC} /v1/track requests/s in an open loop for ${plan.intervals} intervals of ${plan.seconds} s after ${plan.warmupSec} s of warm-up; CPU-µs per event ${round(first.cpuUsPerEvent)} in the first interval, ${round(last.cpuUsPerEvent)} in the last (per interval below)`,
    },
    peakRssBytes: Math.max(...intervals.map((f) => f.rssBytes)),
    failedRequests: runs.reduce((n, r) => n + failures(r.batch) + failures(r.track), 0),
    checks: [check],
    series: {
      title: 'ingest.steady: one ingest process under the same load, per interval',
      columns: [
        'interval',
        'CPU-µs/event',
        'events/s',
        'events per Kafka send',
        'RSS',
        'heap used',
        'p99 batch ms',
        'p99 track ms',
      ],
      rows: intervals.map((f) => [
        `${f.index} (${round(f.seconds)} s)`,
        String(round(f.cpuUsPerEvent)),
        formatNumber(f.eventsPerSec),
        String(round(f.eventsPerSend)),
        formatBytes(f.rssBytes),
        formatBytes(f.heapUsedBytes),
        f.batchP99Ms === undefined ? '—' : String(round(f.batchP99Ms)),
        f.trackP99Ms === undefined ? '—' : String(round(f.trackP99Ms)),
      ]),
    },
    details: {
      intervals: intervals.map((f) => ({
        ...f,
        cpuUsPerEvent: round(f.cpuUsPerEvent),
        eventsPerSec: round(f.eventsPerSec),
        eventsPerSend: round(f.eventsPerSend),
      })),
    },
  }
  return {
    figures: [figure],
    ratios: [],
    targets: [
      {
        scenario: 'ingest.steady',
        metric: 'CPU-µs per event, last interval / first',
        value: ratio,
        unit: '×',
        target: `≤ ${FLAT_TARGET}`,
        met: ratio <= FLAT_TARGET,
      },
    ],
  }
}

export const ingestSteadyScenario: ScenarioDefinition = {
  name: 'ingest-steady',
  description:
    'one ingest process under a steady /v1/batch + /v1/track load, per interval: CPU-µs per event, events/s, RSS, heap (last/first ≤ 1.15)',
  needsServices: true,
  run: runSteady,
}
