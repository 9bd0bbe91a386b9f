import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { CassandraAggregateReader } from '../../core/cassandra/aggregate-reader.js'
import {
  benchScript,
  isBuilt,
  pick,
  type ScenarioContext,
  type ScenarioDefinition,
  type ScenarioOutcome,
} from '../harness/context.js'
import { importEvents } from '../harness/feed.js'
import { runNode, spawnNode, spawnRole, urlOf } from '../harness/proc.js'
import { metricSum, scrape } from '../harness/prometheus.js'
import { timedRebuildOfDay } from '../harness/rebuild-job.js'
import { type Check, type Figure, failedFigure, type Ratio, type Target } from '../harness/report.js'
import { round } from '../harness/stats.js'
import { Comparison, compareStore, VisitorSketches } from '../harness/verify.js'
import {
  DIMENSIONS,
  type Dimension,
  dimensionValues,
  eventLabel,
  type GeneratedEvent,
  type Granularity,
  generateWorkload,
  type Truth,
} from '../workload.js'

/**
 * Batch: rebuild throughput in events/s per core — Tally's rebuild over its Arrow archive against
 * DuckDB computing the same aggregates over the same events from Parquet, in the same run.
 *
 * Tally's side goes the production way: the events enter through the ingest role (/v1/import), the
 * archiver (`dist/app/run-archiver.js`) writes the Arrow segments, and `dist/app/run-rebuild.js`
 * rebuilds the whole day; its compute time (dedup pass + aggregation pass, from its progress lines)
 * is what is timed — writing the final rows to Cassandra is reported apart. The same day is then
 * rebuilt again from the same segments with visits off (TALLY_REBUILD_VISITS=off, a measuring
 * switch): what visits cost the rebuild, as a second figure and a ratio. DuckDB gets the same
 * events with the same derived values (what a segment holds) and runs on one thread. Both results
 * are compared with the truth, every window and every breakdown value.
 */

const SITES = ['bench-b1', 'bench-b2', 'bench-b3']
const DAY = 86_400_000
const GRANULARITY_MS: Record<Granularity, number> = { minute: 60_000, hour: 3_600_000, day: DAY }

/** One event as DuckDB reads it: the values the rebuild reads from a segment. */
function flatRow(e: GeneratedEvent, seq: number): string {
  const p = e.payload
  return JSON.stringify({
    seq,
    site_id: e.siteId,
    message_id: p.messageId,
    type: p.type,
    visitor: p.anonymousId,
    ts: Date.parse(p.timestamp),
    bot: e.isBot,
    // Every dimension Tally breaks down by, labelled as the truth labels it.
    ...dimensionValues(e),
    event: eventLabel(p) ?? '',
  })
}

type DuckRow = Record<string, string | number | null>

/**
 * DuckDB's approx_count_distinct is a far coarser sketch than Tally's 16,384 registers (errors of
 * 10–40 % on sets of a hundred are common): its visitors are only checked within 50 %, and the
 * largest error seen is reported.
 */
const DUCKDB_APPROX_BOUND = 0.5

/** Every DuckDB result row against the truth, and every truth entry against the result. */
function compareDuck(
  rows: DuckRow[],
  truth: Truth,
  exactVisitors: boolean,
  sets: 'all' | 'hour',
): { check: Check; maxVisitorError: number } {
  const c = new Comparison(`DuckDB result (${rows.length} rows: every window, every breakdown value)`)
  const seen = new Set<string>()
  const visitors = (where: string, expected: number, actual: number) =>
    exactVisitors ? c.exact(where, expected, actual) : c.approx(where, expected, actual, DUCKDB_APPROX_BOUND)
  for (const r of rows) {
    const site = String(r.site_id)
    const g: Granularity = r.m !== null ? 'minute' : r.h !== null ? 'hour' : 'day'
    const ws = Number(r.m ?? r.h ?? r.d) * GRANULARITY_MS[g]
    const key = new Date(ws).toISOString()
    const dim = DIMENSIONS.find((d) => r[d] !== null)
    const w = truth.sites[site]?.windows[g][key]
    const where = `${site} ${g} ${key}${dim ? ` ${dim}=${r[dim]}` : ''}`
    seen.add(`${site}|${g}|${key}|${dim ?? ''}|${dim ? r[dim] : ''}`)
    if (dim === undefined) {
      c.exact(`${where} events`, w?.events ?? 0, Number(r.events))
      c.exact(`${where} pageviews`, w?.pageviews ?? 0, Number(r.pageviews))
      c.exact(`${where} bot events`, w?.bots ?? 0, Number(r.bot_events))
      visitors(`${where} visitors`, w?.visitors ?? 0, Number(r.visitors))
    } else {
      const t = w?.breakdown[dim][String(r[dim])]
      c.exact(`${where} events`, t?.events ?? 0, Number(r.events))
      c.exact(`${where} pageviews`, t?.pageviews ?? 0, Number(r.pageviews))
      visitors(`${where} visitors`, t?.visitors ?? 0, Number(r.visitors))
    }
  }
  for (const [site, st] of Object.entries(truth.sites)) {
    for (const g of sets === 'hour' ? (['hour'] as const) : (['minute', 'hour', 'day'] as const)) {
      for (const [key, w] of Object.entries(st.windows[g])) {
        if (!seen.has(`${site}|${g}|${key}||`)) c.exact(`${site} ${g} ${key} missing`, w.events, 0)
        if (g === 'minute' || sets === 'hour') continue
        for (const d of DIMENSIONS as readonly Dimension[])
          for (const [value, t] of Object.entries(w.breakdown[d]))
            if (!seen.has(`${site}|${g}|${key}|${d}|${value}`))
              c.exact(`${site} ${g} ${key} ${d}=${value} missing`, t.events, 0)
      }
    }
  }
  return { check: c.check(), maxVisitorError: c.maxRelativeError }
}

async function duckdb(ctx: ScenarioContext, dir: string, truth: Truth, events: number): Promise<Figure[]> {
  const parquet = join(dir, 'events.parquet')
  const prep = await runNode({
    name: 'duckdb-prepare',
    args: [
      benchScript('peers/duckdb-aggregate.js'),
      JSON.stringify({ mode: 'prepare', ndjson: join(dir, 'events.ndjson'), parquet }),
    ],
    env: {},
    logDir: ctx.env.logDir,
    timeoutMs: 300_000,
  })
  if (prep.code !== 0) throw new Error(`DuckDB prepare failed (log ${prep.logFile})`)
  const figures: Figure[] = []
  // Every grouping set from the Parquet file (exact and approximate visitors), then the same from a
  // native table, then the hourly totals alone from the table: DuckDB's speed at one GROUP BY.
  const variants = [
    { distinct: 'exact', source: 'parquet', sets: 'all' },
    { distinct: 'approx', source: 'parquet', sets: 'all' },
    { distinct: 'exact', source: 'table', sets: 'all' },
    { distinct: 'exact', source: 'table', sets: 'hour' },
  ] as const
  for (const { distinct, source, sets } of variants) {
    const label = `${distinct}-${source}-${sets}`
    const out = join(dir, `duckdb-${label}.json`)
    const r = await runNode({
      name: `duckdb-${label}`,
      args: [
        benchScript('peers/duckdb-aggregate.js'),
        JSON.stringify({ mode: 'aggregate', parquet, distinct, threads: 1, out, source, sets }),
      ],
      env: {},
      logDir: ctx.env.logDir,
      timeoutMs: 600_000,
    })
    const done = r.lines
      .filter((l) => l.startsWith('{"done"'))
      .map((l) => JSON.parse(l) as Record<string, number>)[0]
    if (r.code !== 0 || !done) throw new Error(`DuckDB (${label}) failed (log ${r.logFile})`)
    const rows = JSON.parse(await readFile(out, 'utf8')) as DuckRow[]
    const compared = compareDuck(rows, truth, distinct === 'exact', sets)
    const checks: Check[] = [
      { ok: done.inputRows === events, detail: `DuckDB read ${done.inputRows} events of ${events}` },
      compared.check,
    ]
    const seconds = done.seconds!
    figures.push({
      scenario: 'batch.rebuild',
      system: `duckdb (${distinct === 'exact' ? 'exact distinct' : 'approx_count_distinct'}${source === 'table' ? ', native table' : ''}${sets === 'hour' ? ', hourly totals only' : ''})`,
      status: checks.every((c) => c.ok) ? 'ok' : 'failed',
      throughput: {
        value: events / seconds,
        unit: 'events/s/core',
        what: `1 thread: dedup by (site, messageId) + ${
          sets === 'hour'
            ? 'hourly totals alone (1 grouping set)'
            : `minute/hour/day totals + hour/day breakdowns of ${DIMENSIONS.length} dimensions (${done.groupingSets} grouping sets)`
        } from ${source === 'table' ? 'a native table loaded from the Parquet file first (load not timed)' : 'the Parquet file'}, into a table (${events} events in ${round(seconds)} s)`,
      },
      peakRssBytes: done.maxRssBytes!,
      checks,
      details: {
        seconds: round(seconds),
        ...(done.loadSeconds !== undefined ? { tableLoadSeconds: round(done.loadSeconds) } : {}),
        resultRows: done.resultRows,
        visitors:
          distinct === 'exact'
            ? 'count(DISTINCT) — exact'
            : `approx_count_distinct — checked within 50 %; largest error seen ${round(compared.maxVisitorError * 100)} %`,
      },
    })
  }
  return figures
}

async function tally(
  ctx: ScenarioContext,
  workload: { events: GeneratedEvent[]; truth: Truth },
  day0: number,
): Promise<Figure[]> {
  const scenario = await ctx.env.scenario('batch')
  const { env, config } = scenario
  const keys = await ctx.env.createSites(config, SITES)
  const archiveDir = join(ctx.env.dir, 'archive')
  const group = ctx.env.trackGroup(`${ctx.env.keyspace}_batch_archive`)
  const n = workload.events.length
  ctx.say(`batch: ${n} events through ingest → Kafka → archiver (Arrow segments)`)
  const ingest = await spawnRole('ingest', env, ctx.env.logDir, 'ingest-loader')
  let accepted: number
  try {
    accepted = await importEvents(urlOf(ingest), workload.events, (s) => keys.get(s)!.writeKey)
  } finally {
    await ingest.stop()
  }
  const archiver = await spawnNode({
    name: 'archiver',
    args: [
      benchScript('../app/run-archiver.js'),
      '--archive-dir',
      archiveDir,
      '--group',
      group,
      '--flush-interval-ms',
      '1000',
    ],
    env: { ...env, LOG_LEVEL: 'info', PORT: '0' },
    logDir: ctx.env.logDir,
    isReady: (line) => {
      const m = /"msg":"Server listening at (http:\/\/[^"]+)"/.exec(line)
      return m ? { url: m[1] } : undefined
    },
  })
  try {
    const deadline = performance.now() + 300_000
    while (
      metricSum(await scrape(urlOf(archiver)), 'tally_archive_records_total', { outcome: 'archived' }) <
      accepted
    ) {
      if (performance.now() > deadline)
        throw new Error(
          `the archiver did not archive ${accepted} events within 300 s (log ${archiver.logFile})`,
        )
      await new Promise((r) => setTimeout(r, 200))
    }
  } finally {
    // SIGTERM closes every buffer into a segment and commits it.
    await archiver.stop()
  }
  const exit = await archiver.exited
  if (exit.code !== 0)
    throw new Error(`the archiver exited with ${exit.code ?? exit.signal} (log ${archiver.logFile})`)

  const rebuild = (visits: boolean) =>
    timedRebuildOfDay(ctx, {
      name: visits ? 'rebuild' : 'rebuild-novisits',
      dayMs: day0,
      env: { ...env, TALLY_REBUILD_VISITS: visits ? 'on' : 'off' },
      args: [
        '--archive-dir',
        archiveDir,
        '--staging-dir',
        join(ctx.env.dir, visits ? 'batch-staging' : 'batch-staging-novisits'),
        // The rebuild waits for this group's archive to hold the log (it would wait for tally-archive).
        '--archive-group',
        group,
      ],
    })
  ctx.say('batch: tally rebuild of the day')
  const { computeMs, run: result, peakRssBytes } = await rebuild(true)
  const eventsRead = result.eventsRead!
  const reader = new CassandraAggregateReader(await ctx.env.client(config), config.stream.hllPrecision)
  const checks: Check[] = [
    {
      ok: accepted === n && eventsRead === n,
      detail: `events: ${n} sent, ${accepted} accepted, ${eventsRead} read by the rebuild`,
    },
    await compareStore(
      reader,
      workload.truth,
      new VisitorSketches(workload.events, config.stream.hllPrecision),
      SITES,
      day0,
      day0 + DAY,
    ),
  ]
  const figure: Figure = {
    scenario: 'batch.rebuild',
    system: 'tally',
    status: checks.every((c) => c.ok) ? 'ok' : 'failed',
    throughput: {
      value: eventsRead / (computeMs / 1000),
      unit: 'events/s/core',
      what: `one process: dedup pass + aggregation pass (visits included) over the Arrow segments (${eventsRead} events in ${round(computeMs / 1000)} s); writing the final rows to Cassandra not included`,
    },
    ...(peakRssBytes !== undefined ? { peakRssBytes: peakRssBytes } : {}),
    checks,
    details: {
      computeSeconds: round(computeMs / 1000),
      jobSeconds: round(result.durationMs! / 1000),
      rowsWritten: result.rowsWritten,
      segmentsRead: result.segmentsRead,
      duplicates: result.duplicates,
      visits: 'on',
    },
  }
  // Visits' cost: the same day from the same segments, rebuilt with visits off (after the check
  // above: its rows carry no visit data).
  ctx.say('batch: tally rebuild of the day again, visits off (TALLY_REBUILD_VISITS=off)')
  let off: Figure
  try {
    const r = await rebuild(false)
    const read = r.run.eventsRead!
    const offChecks: Check[] = [{ ok: read === n, detail: `events: ${n} sent, ${read} read by the rebuild` }]
    off = {
      scenario: 'batch.rebuild',
      system: 'tally (visits off)',
      status: offChecks.every((c) => c.ok) ? 'ok' : 'failed',
      throughput: {
        value: read / (r.computeMs / 1000),
        unit: 'events/s/core',
        what: `the same rebuild of the same segments without visits (${read} events in ${round(r.computeMs / 1000)} s); writing not included`,
      },
      ...(r.peakRssBytes !== undefined ? { peakRssBytes: r.peakRssBytes } : {}),
      checks: offChecks,
      details: {
        computeSeconds: round(r.computeMs / 1000),
        jobSeconds: round(r.run.durationMs! / 1000),
        rowsWritten: r.run.rowsWritten,
        visits: 'off (TALLY_REBUILD_VISITS=off, a measuring switch)',
      },
    }
  } catch (err) {
    ctx.say(`batch.rebuild (tally, visits off) failed: ${(err as Error).message}`)
    off = failedFigure('batch.rebuild', 'tally (visits off)', err)
  }
  return [figure, off]
}

function batchAvailable(): string | undefined {
  for (const f of ['run-archiver.js', 'run-rebuild.js'])
    if (!isBuilt(`app/${f}`)) return `dist/app/${f} is missing: issue 6 (archive and rebuild) is not built`
  return undefined
}

async function run(ctx: ScenarioContext): Promise<ScenarioOutcome> {
  const day0 = Math.floor(Date.now() / DAY) * DAY - 2 * DAY
  const workload = generateWorkload({
    seed: ctx.seed + 4,
    sites: SITES,
    events: pick(ctx, 200_000, 15_000),
    start: new Date(day0 + 5 * 60_000),
    spanMs: DAY - 10 * 60_000,
  })
  const n = workload.events.length
  const dir = join(ctx.env.dir, 'batch')
  await mkdir(dir, { recursive: true })
  let text = ''
  workload.events.forEach((e, i) => {
    text += `${flatRow(e, i)}\n`
  })
  await writeFile(join(dir, 'events.ndjson'), text)
  ctx.say(`batch: ${n} events (one day, ${SITES.length} sites) — DuckDB, 1 thread`)
  const figures: Figure[] = []
  const ratios: Ratio[] = []
  const targets: Target[] = []
  const duck = await duckdb(ctx, dir, workload.truth, n)
  figures.push(...duck)
  const missing = batchAvailable()
  if (missing) {
    figures.unshift({
      scenario: 'batch.rebuild',
      system: 'tally',
      status: 'not-available',
      reason: missing,
      checks: [],
    })
    return { figures, ratios, targets }
  }
  let t: Figure
  let off: Figure
  try {
    ;[t, off] = (await tally(ctx, workload, day0)) as [Figure, Figure]
  } catch (err) {
    ctx.say(`batch.rebuild (tally) failed: ${(err as Error).message}`)
    figures.unshift(failedFigure('batch.rebuild', 'tally', err))
    return { figures, ratios, targets }
  }
  figures.unshift(t, off)
  const rate = t.throughput!.value
  if (off.status === 'ok')
    ratios.push({
      scenario: 'batch.rebuild',
      metric: 'events/s/core Tally rebuild with visits / without visits',
      value: rate / off.throughput!.value,
    })
  for (const d of duck)
    ratios.push({
      scenario: 'batch.rebuild',
      metric: `events/s/core Tally / ${d.system}`,
      value: rate / d.throughput!.value,
      // The hourly totals alone are DuckDB's speed at one GROUP BY, not the same work.
      ...(d.system.includes('hourly') ? {} : { target: '≥ 0.5' }),
    })
  targets.push({
    scenario: 'batch.rebuild',
    metric: 'Tally rebuild events/s per core',
    value: rate,
    unit: 'events/s/core',
    target: '≥ 20,000,000',
    met: rate >= 20_000_000,
  })
  return { figures, ratios, targets }
}

export const batchScenario: ScenarioDefinition = {
  name: 'batch',
  description:
    'rebuild events/s per core: Tally over its Arrow archive (with visits and without) vs DuckDB over Parquet, same events',
  needsServices: true,
  run,
}
