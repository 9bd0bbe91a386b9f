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
  ingestEndpoints,
  measurePair,
  type Phase,
  pairFigure,
  ROUNDS,
} from '../harness/ingest-pair.js'
import { type Child, resultOf, runNode, spawnBareFastify, spawnRole, urlOf } from '../harness/proc.js'
import { type Figure, failedFigure, type Ratio, type Target } from '../harness/report.js'
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
