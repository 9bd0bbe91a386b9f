import { type BreakdownDimension, ORIGINAL_BREAKDOWNS } from '../../core/aggregate/breakdowns.js'
import { DIMENSIONS } from '../../core/aggregate/definition.js'
import { eventGoal, pageGoal } from '../../core/aggregate/goals.js'
import { CassandraAggregateReader } from '../../core/cassandra/aggregate-reader.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import type { TallyConfig } from '../../core/config.js'
import {
  benchScript,
  pick,
  type ScenarioContext,
  type ScenarioDefinition,
  type ScenarioOutcome,
} from '../harness/context.js'
import { importEvents } from '../harness/feed.js'
import { type Child, resultOf, runNode, spawnRole, urlOf } from '../harness/proc.js'
import { metricSum, scrape } from '../harness/prometheus.js'
import { type Check, type Figure, failedFigure, type Ratio, type Target } from '../harness/report.js'
import { round } from '../harness/stats.js'
import { compareStore, VisitorSketches } from '../harness/verify.js'
import { kafkaStreamsPeer } from '../peers/kafka-streams.js'
import { generateWorkload } from '../workload.js'
import { measureFreshness } from './freshness.js'

/**
 * Stream: (1) events/s of one worker process from Kafka into Cassandra — N events are loaded into a
 * fresh topic first (through the ingest role's /v1/import), then one `tally stream` starts and the
 * clock runs until every partition's checkpoint reaches the end of the topic; every window and
 * breakdown it wrote is then compared with the truth. Its peer, a bare kafkajs consumer that only
 * decodes and parses each record (bench/peers/bare-consumer.ts), then reads the same topic. The
 * same load is then counted again, into a topic and sites of their own, by a worker with visits off
 * (TALLY_STREAM_VISITS=off): what visits cost, and the visit state's bytes per open visit; by a
 * worker with the issue-17 dimensions off (TALLY_BREAKDOWNS = the dimensions before it): what they
 * cost in events/s and in store rows per counted event; and (full run only) with 3 custom
 * properties and 2 goals declared: the rows they add.
 * (2) Freshness under load: see freshness.ts.
 */

const SITES = ['bench-s1', 'bench-s2', 'bench-s3']
const POLL_MS = 100

/** Polls the worker's /metrics and the checkpoints until the checkpoints reach `ends`. */
async function watchCatchUp(
  worker: Child,
  reader: CassandraAggregateReader,
  config: TallyConfig,
  ends: Map<number, number>,
  startedAt: number,
  timeoutMs: number,
): Promise<{
  firstRecordMs: number | undefined
  recordsAtFirst: number
  caughtUpMs: number
  records: number
}> {
  let firstRecordMs: number | undefined
  let recordsAtFirst = 0
  let records = 0
  const deadline = startedAt + timeoutMs
  const url = urlOf(worker)
  while (performance.now() < deadline) {
    records = metricSum(await scrape(url), 'tally_stream_records_total')
    if (firstRecordMs === undefined && records > 0) {
      firstRecordMs = performance.now()
      recordsAtFirst = records
    }
    const progress = await reader.streamProgress(
      config.stream.group,
      config.kafka.topicRaw,
      config.kafka.partitions,
    )
    const done = new Map(progress.map((p) => [p.partition, p.nextOffset]))
    if ([...ends].every(([p, end]) => end === 0 || (done.get(p) ?? 0) >= end))
      return { firstRecordMs, recordsAtFirst, caughtUpMs: performance.now(), records }
    await new Promise((r) => setTimeout(r, POLL_MS))
  }
  throw new Error(
    `the stream worker did not reach the end of the topic within ${timeoutMs} ms (log ${worker.logFile})`,
  )
}

interface Part {
  figures: Figure[]
  ratios: Ratio[]
  targets: Target[]
}

/**
 * The bare kafkajs consumer over the same topic, in a group of its own: events/s from its first
 * batch to its last record.
 */
async function bareConsumer(
  ctx: ScenarioContext,
  env: Record<string, string>,
  topic: string,
  group: string,
  records: number,
): Promise<Figure> {
  const timeoutMs = pick(ctx, 300_000, 120_000)
  const run = await runNode({
    name: 'bare-consumer',
    args: [benchScript('peers/bare-consumer.js')],
    env: {
      KAFKA_BROKERS: env.KAFKA_BROKERS!,
      TOPIC: topic,
      GROUP: group,
      EXPECT: String(records),
      TIMEOUT_MS: String(timeoutMs),
    },
    logDir: ctx.env.logDir,
    timeoutMs: timeoutMs + 30_000,
  })
  const result = resultOf<{ records: number; pageviews: number; firstRecordMs: number; doneMs: number }>(
    run,
    'the bare consumer',
  )
  const seconds = (result.doneMs - result.firstRecordMs) / 1000
  return {
    scenario: 'stream.throughput',
    system: 'bare kafkajs consumer',
    status: result.records === records ? 'ok' : 'failed',
    throughput: {
      value: result.records / seconds,
      unit: 'events/s',
      what: "one kafkajs consumer process with the worker's fetch settings, decoding and JSON-parsing every event (a packed record unpacked into its events) and nothing else, from its first batch to the end of the topic",
    },
    ...(run.peakRssBytes !== undefined ? { peakRssBytes: run.peakRssBytes } : {}),
    checks: [
      { ok: result.records === records, detail: `events read: ${result.records} = ${records} in the topic` },
    ],
    details: { seconds: round(seconds), pageviewRecords: result.pageviews },
  }
}

/**
 * How one worker run is set up: the default (every dimension, visits on, with the peers), and the
 * same load with one thing changed, each in a scenario, topic and sites of its own so its rows never
 * meet another run's: visits off (what visits cost), the issue-17 dimensions off (TALLY_BREAKDOWNS =
 * the dimensions Tally had before: what they cost in events/s and store rows per event), or three
 * custom properties and two goals declared on every site (the rows they add).
 */
interface Variant {
  system: string
  scenario: string
  /** Appended to the site ids. */
  suffix: string
  visits: boolean
  /** TALLY_BREAKDOWNS; undefined: all. */
  breakdowns?: readonly BreakdownDimension[]
  /** Declares BENCH_PROPS and BENCH_GOALS on every site. */
  propsAndGoals?: boolean
  /** Runs the peers over the same topic (the default run only). */
  peers?: boolean
}

const ALL: Variant = { system: 'tally', scenario: 'stream', suffix: '', visits: true, peers: true }
const NO_VISITS: Variant = {
  system: 'tally (visits off)',
  scenario: 'stream_novisits',
  suffix: '-novisits',
  visits: false,
}
const ORIGINAL_DIMENSIONS: Variant = {
  system: 'tally (issue-17 dimensions off)',
  scenario: 'stream_dims7',
  suffix: '-dims7',
  visits: true,
  breakdowns: ORIGINAL_BREAKDOWNS,
}
const PROPS_AND_GOALS: Variant = {
  system: 'tally (3 properties, 2 goals)',
  scenario: 'stream_props',
  suffix: '-props',
  visits: true,
  propsAndGoals: true,
}
/** Keys the workload's track events carry (bench/workload.ts trackProperties). */
const BENCH_PROPS = ['category', 'currency', 'plan'] as const
/** An event goal and a page goal the workload reaches. */
const BENCH_GOALS = [eventGoal('Signed Up'), pageGoal('/docs/**')]

/** One worker's events/s over a fresh topic, set up as `variant` says. */
async function throughput(ctx: ScenarioContext, variant: Variant = ALL): Promise<Part & { rate?: number }> {
  const now = Date.now()
  const { visits, system } = variant
  const sites = SITES.map((s) => `${s}${variant.suffix}`)
  const { env, config } = await ctx.env.scenario(variant.scenario, {
    TALLY_GRACE_MS: String(2 * 3_600_000),
    TALLY_STREAM_VISITS: visits ? 'on' : 'off',
    ...(variant.breakdowns ? { TALLY_BREAKDOWNS: variant.breakdowns.join(',') } : {}),
  })
  const keys = await ctx.env.createSites(config, sites)
  if (variant.propsAndGoals) {
    const store = new CassandraSiteStore(await ctx.env.client(config))
    for (const site of sites) {
      for (const key of BENCH_PROPS) await store.addPropKey(site, key)
      for (const goal of BENCH_GOALS) await store.addGoal(site, goal)
    }
  }
  const workload = generateWorkload({
    seed: ctx.seed,
    sites,
    events: pick(ctx, 300_000, 20_000),
    start: new Date(now - 45 * 60_000),
    spanMs: 30 * 60_000,
    // Late events belong to the batch path; on-time traffic is what the worker's speed is about.
    lateShare: 0,
  })
  const n = workload.events.length
  ctx.say(
    `stream${variant === ALL ? '' : ` ${system.slice('tally '.length)}`}: loading ${n} events (${sites.length} sites, duplicates and bots included) into a fresh topic`,
  )
  const children: Child[] = []
  try {
    const ingest = await spawnRole('ingest', env, ctx.env.logDir, 'ingest-loader')
    children.push(ingest)
    const accepted = await importEvents(urlOf(ingest), workload.events, (s) => keys.get(s)!.writeKey, {
      batchSize: 250,
      concurrency: 4,
    })
    await ingest.stop()
    const ends = await ctx.env.topicEnds(config)
    const logged = [...ends.values()].reduce((a, b) => a + b, 0)
    const checks: Check[] = [
      {
        // Format 2 packs several events per record: the events are counted by the worker below.
        ok:
          accepted === n && (process.env.TALLY_LOG_FORMAT === '1' ? logged === n : logged > 0 && logged <= n),
        detail: `events loaded: ${n} sent, ${accepted} accepted, ${logged} records in the topic`,
      },
    ]
    const reader = new CassandraAggregateReader(await ctx.env.client(config), config.stream.hllPrecision)
    ctx.say('stream: starting one worker')
    const t0 = performance.now()
    const worker = await spawnRole('stream', env, ctx.env.logDir, 'stream-worker')
    children.push(worker)
    const readyMs = performance.now()
    const w = await watchCatchUp(worker, reader, config, ends, t0, pick(ctx, 300_000, 120_000))
    // The open visits at the end and the bytes of their last written state (its serialized form).
    const metricsText = await scrape(urlOf(worker))
    const openVisits = metricSum(metricsText, 'tally_stream_open_visits')
    const stateBytes = metricSum(metricsText, 'tally_stream_visit_state_bytes')
    // What each counted event costs the store (issue 17 point 7: each dimension adds rows per event):
    // row writes (a row is written again at each flush that changed it) and the distinct rows held,
    // which are the rows the worker wrote to the store while no window was evicted.
    const counted = metricSum(metricsText, 'tally_stream_records_total', { outcome: 'counted' })
    const rowsWritten = metricSum(metricsText, 'tally_stream_rows_written_total')
    const rowsHeld = metricSum(metricsText, 'tally_stream_open_rows')
    const windowsEvicted = metricSum(metricsText, 'tally_stream_windows_evicted_total')
    // The worker process's CPU (prom-client's process metrics, startup included): per counted event,
    // a figure the other work on the shared cores disturbs much less than the wall rate.
    const cpuSeconds = metricSum(metricsText, 'process_cpu_seconds_total')
    const rss = worker.peakRssBytes()
    await worker.stop()
    const steadySec = (w.caughtUpMs - (w.firstRecordMs ?? readyMs)) / 1000
    const steadyRate = (n - w.recordsAtFirst) / steadySec
    const wallSec = (w.caughtUpMs - t0) / 1000
    ctx.say(`stream: caught up ${round(wallSec)} s after the worker was spawned; checking every window`)
    checks.push(
      {
        ok: w.records === n,
        detail: `events the worker processed (its metrics): ${w.records} = ${n} in the topic`,
      },
      await compareStore(
        reader,
        workload.truth,
        new VisitorSketches(workload.events, config.stream.hllPrecision),
        sites,
        now - 86_400_000,
        now + 86_400_000,
        DIMENSIONS.filter((d) => config.stream.breakdowns.includes(d)),
      ),
    )
    const figure: Figure = {
      scenario: 'stream.throughput',
      system,
      status: checks.every((c) => c.ok) ? 'ok' : 'failed',
      throughput: {
        value: steadyRate,
        unit: 'events/s',
        what: `one worker process, from its first record to every checkpoint at the end of the topic (${n} events, ${config.kafka.partitions} partitions)`,
      },
      ...(rss !== undefined ? { peakRssBytes: rss } : {}),
      checks,
      details: {
        events: n,
        partitions: config.kafka.partitions,
        secondsFirstRecordToCaughtUp: round(steadySec),
        secondsSpawnToCaughtUp: round(wallSec),
        eventsPerSecIncludingStartup: round(n / wallSec),
        secondsSpawnToReady: round((readyMs - t0) / 1000),
        visits: visits ? 'on' : 'off (TALLY_STREAM_VISITS=off)',
        breakdowns: variant.breakdowns ? variant.breakdowns.join(',') : 'all',
        ...(variant.propsAndGoals
          ? { props: BENCH_PROPS.join(','), goals: BENCH_GOALS.map((g) => g.name).join(',') }
          : {}),
        countedEvents: counted,
        rowsWrittenPerCountedEvent: counted > 0 ? round(rowsWritten / counted) : null,
        workerCpuMicrosecondsPerCountedEvent: counted > 0 ? round((cpuSeconds * 1e6) / counted) : null,
        storeRowsPerCountedEvent: counted > 0 && windowsEvicted === 0 ? round(rowsHeld / counted) : null,
        storeRows: rowsHeld,
        windowsEvicted,
        ...(visits
          ? {
              openVisitsAtEnd: openVisits,
              visitStateBytes: stateBytes,
              visitStateBytesPerOpenVisit: openVisits > 0 ? round(stateBytes / openVisits) : null,
            }
          : {}),
      },
    }
    if (!variant.peers) return { figures: [figure], ratios: [], targets: [], rate: steadyRate }
    ctx.say('stream: the bare kafkajs consumer reads the same topic')
    // The peer failing leaves Tally's figure standing.
    const bare = await bareConsumer(
      ctx,
      env,
      config.kafka.topicRaw,
      ctx.env.trackGroup(`${config.stream.group}_bare`),
      n,
    ).catch((err) => failedFigure('stream.throughput', 'bare kafkajs consumer', err))
    // Kafka Streams over the same topic: exactly_once_v2 (the peer of the target), and
    // at_least_once in the full run. A peer failing leaves Tally's figure standing.
    const guarantees = ctx.quick
      ? (['exactly_once_v2'] as const)
      : (['exactly_once_v2', 'at_least_once'] as const)
    const streams: Figure[] = []
    for (const g of guarantees) {
      ctx.say(`stream: the Kafka Streams peer (${g}) reads the same topic`)
      streams.push(
        await kafkaStreamsPeer(ctx, config, config.kafka.topicRaw, n, g, pick(ctx, 600_000, 180_000)).catch(
          (err) => failedFigure('stream.throughput', `Kafka Streams (${g})`, err),
        ),
      )
    }
    const eos = streams[0]
    const eosRate = eos?.status === 'ok' ? eos.throughput?.value : undefined
    return {
      figures: [figure, bare, ...streams],
      ratios: [
        ...(bare.status === 'ok' && bare.throughput
          ? [
              {
                scenario: 'stream.throughput',
                metric: 'events/s Tally worker / bare kafkajs consumer',
                value: steadyRate / bare.throughput.value,
              },
            ]
          : []),
        ...streams.flatMap((k) =>
          k.status === 'ok' && k.throughput
            ? [
                {
                  scenario: 'stream.throughput',
                  metric: `events/s Tally worker / ${k.system}`,
                  value: steadyRate / k.throughput.value,
                  ...(k === eos ? { target: '≥ 3' } : {}),
                },
              ]
            : [],
        ),
      ],
      targets: [
        {
          scenario: 'stream.throughput',
          metric: 'events/s of one worker process',
          value: steadyRate,
          unit: 'events/s',
          target: '≥ 200,000',
          met: steadyRate >= 200_000,
        },
        ...(eosRate !== undefined
          ? [
              {
                scenario: 'stream.throughput',
                metric: 'events/s Tally worker / Kafka Streams (exactly_once_v2)',
                value: steadyRate / eosRate,
                unit: 'ratio',
                target: '≥ 3',
                met: steadyRate / eosRate >= 3,
              },
            ]
          : []),
      ],
    }
  } finally {
    for (const c of children.reverse()) await c.stop()
  }
}

/**
 * Store rows per counted event of a run (from its figure's details, not rounded), when measured: no
 * window was evicted, so the rows held are every row written.
 */
function rowsPerEvent(f: Figure | undefined): number | undefined {
  const d = f?.status === 'ok' ? f.details : undefined
  const rows = d?.storeRows
  const counted = d?.countedEvents
  return typeof rows === 'number' && typeof counted === 'number' && counted > 0 && d?.windowsEvicted === 0
    ? rows / counted
    : undefined
}

/**
 * What the issue-17 dimensions cost, from the runs of the same load: events/s and store rows per
 * counted event with every dimension over those with the dimensions before issue 17 only (and
 * with 3 properties and 2 goals over without).
 */
function dimensionCost(
  all: Figure | undefined,
  dims7: Figure | undefined,
  props: Figure | undefined,
): Ratio[] {
  const rate = (f: Figure | undefined) => (f?.status === 'ok' ? f.throughput?.value : undefined)
  const out: Ratio[] = []
  const [allRate, dims7Rate] = [rate(all), rate(dims7)]
  if (allRate !== undefined && dims7Rate !== undefined)
    out.push({
      scenario: 'stream.throughput',
      metric: 'events/s Tally worker, all dimensions / issue-17 dimensions off',
      value: allRate / dims7Rate,
    })
  const [allRows, dims7Rows, propsRows] = [rowsPerEvent(all), rowsPerEvent(dims7), rowsPerEvent(props)]
  if (allRows !== undefined && dims7Rows !== undefined)
    out.push({
      scenario: 'stream.throughput',
      metric: 'store rows per counted event, all dimensions / issue-17 dimensions off',
      value: allRows / dims7Rows,
    })
  if (allRows !== undefined && propsRows !== undefined)
    out.push({
      scenario: 'stream.throughput',
      metric: 'store rows per counted event, with 3 properties and 2 goals / without',
      value: propsRows / allRows,
    })
  const propsRate = rate(props)
  if (allRate !== undefined && propsRate !== undefined)
    out.push({
      scenario: 'stream.throughput',
      metric: 'events/s Tally worker, with 3 properties and 2 goals / without',
      value: propsRate / allRate,
    })
  return out
}

async function run(ctx: ScenarioContext): Promise<ScenarioOutcome> {
  const figures: Figure[] = []
  const ratios: Ratio[] = []
  const targets: Target[] = []
  // The two parts are independent: one failing does not keep the other from being measured.
  for (const [scenario, part] of [
    [
      'stream.throughput',
      async (c: ScenarioContext): Promise<Part> => {
        const on = await throughput(c, ALL)
        const tally = on.figures.find((f) => f.system === 'tally')
        const variant = (v: Variant) =>
          throughput(c, v).catch((err): Part & { rate?: number } => ({
            figures: [failedFigure('stream.throughput', v.system, err)],
            ratios: [],
            targets: [],
          }))
        // Visits' cost: the same load counted by a worker with visits off, in the same run.
        const off = await variant(NO_VISITS)
        // The issue-17 dimensions' cost (issue 17 point 7): the same load with TALLY_BREAKDOWNS =
        // the dimensions before it; and, in the full run only, what 3 properties and 2 goals add.
        const dims7 = await variant(ORIGINAL_DIMENSIONS)
        const props = c.quick ? undefined : await variant(PROPS_AND_GOALS)
        const onRate = tally?.status === 'ok' ? tally.throughput?.value : undefined
        const both = onRate !== undefined && off.rate !== undefined
        return {
          figures: [...on.figures, ...off.figures, ...dims7.figures, ...(props?.figures ?? [])],
          ratios: [
            ...on.ratios,
            ...dimensionCost(tally, dims7.figures[0], props?.figures[0]),
            ...(both
              ? [
                  {
                    scenario: 'stream.throughput',
                    metric: 'events/s Tally worker with visits / without visits',
                    value: onRate / off.rate!,
                    target: '≥ 0.75 (visits cost at most 25 %)',
                  },
                ]
              : []),
          ],
          targets: [
            ...on.targets,
            ...(both
              ? [
                  {
                    scenario: 'stream.throughput',
                    metric: 'events/s with visits / without visits',
                    value: onRate / off.rate!,
                    unit: 'ratio',
                    target: '≥ 0.75',
                    met: onRate / off.rate! >= 0.75,
                  },
                ]
              : []),
          ],
        }
      },
    ],
    [
      'stream.freshness',
      async (c: ScenarioContext): Promise<Part> => {
        const r = await measureFreshness(c)
        return { figures: [r.figure], ratios: [], targets: r.targets }
      },
    ],
  ] as const) {
    try {
      const r = await part(ctx)
      figures.push(...r.figures)
      ratios.push(...r.ratios)
      targets.push(...r.targets)
    } catch (err) {
      ctx.say(`${scenario} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`)
      figures.push(failedFigure(scenario, 'tally', err))
    }
  }
  return { figures, ratios, targets }
}

export const streamScenario: ScenarioDefinition = {
  name: 'stream',
  description:
    'one worker Kafka → Cassandra (events/s, with visits and without, with the issue-17 dimensions and without: store rows per event) vs a bare kafkajs consumer, and freshness from a 2xx at ingest to the query API',
  needsServices: true,
  run,
}
