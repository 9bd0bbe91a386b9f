import { mkdir, readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { Client } from 'cassandra-driver'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { loadConfig } from '../../core/config.js'
import { writeArrowDay } from '../filters/arrow-files.js'
import {
  type Answer,
  answerDifference,
  type FilterQuery,
  querySet,
  RANGES_DAYS,
  SITE_SIZES,
  SiteGenerator,
  type SiteSize,
  type SizeName,
} from '../filters/data.js'
import { ParquetWriter } from '../filters/duck-files.js'
import type { QueryResult, QuerySpec } from '../filters/query-proc.js'
import { hourlyTupleCount, rollupDay } from '../filters/tuples.js'
import {
  createTupleKeyspace,
  dropTupleKeyspace,
  keyspaceDiskBytes,
  writeTuples,
} from '../filters/tuples-cassandra.js'
import {
  benchScript,
  type ScenarioContext,
  type ScenarioDefinition,
  type ScenarioOutcome,
} from '../harness/context.js'
import { runNode } from '../harness/proc.js'
import { type Check, type Figure, failedFigure, formatBytes } from '../harness/report.js'
import { round, Samples } from '../harness/stats.js'

/**
 * The filters study (issue 21): any filter with any breakdown, three designs on the same data.
 *
 * For each site size (10 k, 1 M, 20 M counted events a day over 30 days; bench/filters/data.ts) the
 * generated days are stored by each prototype — a. full-tuple rollup rows in Cassandra, b. compacted
 * Arrow files per site-day, c. the same days as Parquet for DuckDB — then each answers the query set
 * (totals, timeseries, top-10 paths; 0–3 filters; last 1, 7, 30 days) in a process of its own, cold
 * then warm. Every answer is compared across the designs; the totals with the generated counts.
 *
 * Sampling, stated in the table: the 20 M size stores 1 day for b and c (7- and 30-day latencies
 * are the 1-day ones × 7 and × 30, scans being linear in the days read); design a stores 1 day at
 * 1 M (same extrapolation) and is not run at 20 M (0.67 rows per event at 1 M: a 20 M day would be
 * ~13 M Cassandra rows to write, and to read per query).
 */

interface SizePlan {
  size: SiteSize
  /** Days stored for b and c (the last ones of the 30). */
  days: number
  /** Days stored for a (0: not run). */
  tupleDays: number
  warmRuns: number
  tupleWarmRuns: number
}

export const FILTER_SIZES: readonly SizeName[] = ['small', 'medium', 'large']

function plan(name: SizeName, quick: boolean): SizePlan {
  const size = SITE_SIZES[name]
  if (quick) return { size, days: 7, tupleDays: name === 'small' ? 7 : 1, warmRuns: 2, tupleWarmRuns: 1 }
  if (name === 'small') return { size, days: 30, tupleDays: 30, warmRuns: 5, tupleWarmRuns: 3 }
  if (name === 'medium') return { size, days: 30, tupleDays: 1, warmRuns: 3, tupleWarmRuns: 1 }
  return { size, days: 1, tupleDays: 0, warmRuns: 3, tupleWarmRuns: 0 }
}

const TOTAL_DAYS = 30
const SYSTEMS = {
  a: 'a. tuple rollup (Cassandra)',
  b: 'b. Arrow files (TS scan)',
  c: 'c. DuckDB over Parquet',
} as const
type DesignKey = keyof typeof SYSTEMS

interface DesignRun {
  design: DesignKey
  /** Events stored and how many days. */
  events: number
  days: number
  storedBytes?: number
  writeSeconds: number
  /** Rows stored per event (a). */
  rowsPerEvent?: number
  hourlyRowsPerEvent?: number
  result?: QueryResult
  peakRssBytes?: number
  answers?: Answer[]
  error?: string
}

/** The local Cassandra the bench manages (for the on-disk size after a flush), or undefined when configured elsewhere. */
function localCassandra() {
  const config = loadConfig(process.env)
  if (config.cassandra.configured) return undefined
  const s = config.services
  return {
    java: s.java,
    lib: join(s.cacheDir, `cassandra-${s.cassandraVersion}`, 'lib'),
    jmxPort: s.cassandraJmxPort,
    dataDir: join(s.runDir, 'cassandra', 'data', 'data'),
  }
}

async function runSize(ctx: ScenarioContext, p: SizePlan, cassandra: Client | undefined): Promise<Figure[]> {
  const { size } = p
  const dir = join(ctx.env.dir, 'filters', size.name)
  await mkdir(dir, { recursive: true })
  const gen = new SiteGenerator(size, ctx.seed)
  const site = `filters-${size.name}`
  const keyspace = `${ctx.env.keyspace}_filters_${size.name}`
  const runs: Record<DesignKey, DesignRun> = {
    a: { design: 'a', events: 0, days: 0, writeSeconds: 0 },
    b: { design: 'b', events: 0, days: 0, writeSeconds: 0, storedBytes: 0 },
    c: { design: 'c', events: 0, days: 0, writeSeconds: 0, storedBytes: 0 },
  }
  const firstDay = TOTAL_DAYS - p.days
  let tupleRows = 0
  let hourlyRows = 0
  const writer = await ParquetWriter.open(dir, gen.dicts)
  const tuplesOn = p.tupleDays > 0 && cassandra !== undefined
  const queries = querySet(p.days, RANGES_DAYS, TOTAL_DAYS - 1)
  const tupleQueries = querySet(p.tupleDays, RANGES_DAYS, TOTAL_DAYS - 1)
  const config = loadConfig(process.env)
  // The keyspace and the files go whatever happens (a failed write included).
  try {
    if (tuplesOn) await createTupleKeyspace(cassandra, keyspace)
    try {
      let genSeconds = 0
      for (let day = firstDay; day < TOTAL_DAYS; day++) {
        let t0 = performance.now()
        const batch = gen.day(day)
        genSeconds += (performance.now() - t0) / 1000
        t0 = performance.now()
        runs.b.storedBytes! += await writeArrowDay(dir, batch, gen.dicts)
        runs.b.writeSeconds += (performance.now() - t0) / 1000
        runs.b.events += batch.n
        runs.b.days++
        t0 = performance.now()
        runs.c.storedBytes! += await writer.write(batch)
        runs.c.writeSeconds += (performance.now() - t0) / 1000
        runs.c.events += batch.n
        runs.c.days++
        if (tuplesOn && day >= TOTAL_DAYS - p.tupleDays) {
          t0 = performance.now()
          const rows = rollupDay(batch, gen.dicts)
          await writeTuples(cassandra, keyspace, site, day, rows)
          runs.a.writeSeconds += (performance.now() - t0) / 1000
          runs.a.events += batch.n
          runs.a.days++
          tupleRows += rows.length
          hourlyRows += hourlyTupleCount(batch)
        }
      }
      ctx.say(
        `filters ${size.name}: ${runs.b.events.toLocaleString('en-US')} events over ${p.days} days generated in ${round(genSeconds)} s; ` +
          `written: b ${round(runs.b.writeSeconds)} s, c ${round(runs.c.writeSeconds)} s, a ${round(runs.a.writeSeconds)} s (${tupleRows.toLocaleString('en-US')} rows)`,
      )
      if (tuplesOn) {
        runs.a.rowsPerEvent = tupleRows / runs.a.events
        runs.a.hourlyRowsPerEvent = hourlyRows / runs.a.events
        const local = localCassandra()
        if (local) runs.a.storedBytes = await keyspaceDiskBytes(keyspace, local)
      }
    } finally {
      writer.close()
    }

    for (const design of ['b', 'c', 'a'] as const) {
      const run = runs[design]
      if (design === 'a' && !tuplesOn) continue
      const answersOut = join(dir, `answers-${design}.json`)
      const spec: QuerySpec = {
        design,
        dir,
        keyspace,
        site,
        queries: design === 'a' ? tupleQueries : queries,
        warmRuns: design === 'a' ? p.tupleWarmRuns : p.warmRuns,
        answersOut,
        threads: 1,
      }
      const job = await runNode({
        name: `filters-${size.name}-${design}`,
        args: [benchScript('filters/query-proc.js'), JSON.stringify(spec)],
        env: {
          CASSANDRA_CONTACT_POINTS: config.cassandra.contactPoints.join(','),
          CASSANDRA_LOCAL_DC: config.cassandra.localDataCenter,
          ...(process.env.CASSANDRA_USERNAME ? { CASSANDRA_USERNAME: process.env.CASSANDRA_USERNAME } : {}),
          ...(process.env.CASSANDRA_PASSWORD ? { CASSANDRA_PASSWORD: process.env.CASSANDRA_PASSWORD } : {}),
        },
        logDir: ctx.env.logDir,
        timeoutMs: 1_800_000,
      })
      const last = job.lines.at(-1)
      if (job.code !== 0 || !last?.startsWith('{"done"')) {
        run.error = `query process failed (exit ${job.code}, log ${job.logFile})`
        continue
      }
      run.result = JSON.parse(last) as QueryResult
      run.peakRssBytes = job.peakRssBytes
      run.answers = JSON.parse(await readFile(answersOut, 'utf8')) as Answer[]
      ctx.say(
        `filters ${size.name} ${SYSTEMS[design]}: queries done, peak RSS ${formatBytes(job.peakRssBytes)}`,
      )
    }
  } finally {
    if (tuplesOn) await dropTupleKeyspace(cassandra, keyspace)
    await rm(dir, { recursive: true, force: true })
  }
  return figuresOf(p, runs, queries, gen.eventsPerDay)
}

/** Per range (days): cold and warm percentiles of one design's queries over that range. */
function latencies(result: QueryResult, queries: readonly FilterQuery[], range: number) {
  const cold = new Samples()
  const warm = new Samples()
  for (const q of queries) {
    if (q.toDay - q.fromDay + 1 !== range) continue
    const c = result.coldMs[q.id]
    if (c !== undefined) cold.push(c)
    for (const w of result.warmMs[q.id] ?? []) warm.push(w)
  }
  return { cold: cold.percentiles(), warm: warm.percentiles() }
}

export interface StudyRow {
  size: SizeName
  system: string
  eventsPerDay: number
  measuredDays: number
  bytesPerEvent?: number
  writeUsPerEvent: number
  rowsPerEvent?: number
  /** range → [p50, p99] ms, and whether extrapolated from the 1-day figure. */
  warm: Record<number, { p50: number; p99: number; extrapolated: boolean }>
  cold: Record<number, { p50: number; p99: number; extrapolated: boolean }>
  peakRssBytes?: number
}

function studyRow(p: SizePlan, run: DesignRun): StudyRow | undefined {
  if (!run.result) return undefined
  const queries = querySet(run.days, RANGES_DAYS, TOTAL_DAYS - 1)
  const warm: StudyRow['warm'] = {}
  const cold: StudyRow['cold'] = {}
  const one = latencies(run.result, queries, 1)
  for (const range of RANGES_DAYS) {
    const l = latencies(run.result, queries, range)
    const measured = range <= run.days
    const factor = measured ? 1 : range
    const w = measured ? l.warm : one.warm
    const c = measured ? l.cold : one.cold
    if (w) warm[range] = { p50: w.p50 * factor, p99: w.p99 * factor, extrapolated: !measured }
    else if (c) warm[range] = { p50: c.p50 * factor, p99: c.p99 * factor, extrapolated: !measured }
    if (c) cold[range] = { p50: c.p50 * factor, p99: c.p99 * factor, extrapolated: !measured }
  }
  return {
    size: p.size.name,
    system: SYSTEMS[run.design],
    eventsPerDay: p.size.eventsPerDay,
    measuredDays: run.days,
    ...(run.storedBytes !== undefined ? { bytesPerEvent: run.storedBytes / run.events } : {}),
    writeUsPerEvent: (run.writeSeconds * 1e6) / run.events,
    ...(run.rowsPerEvent !== undefined ? { rowsPerEvent: run.rowsPerEvent } : {}),
    warm,
    cold,
    ...(run.peakRssBytes !== undefined ? { peakRssBytes: run.peakRssBytes } : {}),
  }
}

function figuresOf(
  p: SizePlan,
  runs: Record<DesignKey, DesignRun>,
  queries: FilterQuery[],
  perDay: number,
): Figure[] {
  const scenario = `filters.${p.size.name}`
  const figures: Figure[] = []
  for (const design of ['a', 'b', 'c'] as const) {
    const run = runs[design]
    if (run.days === 0) {
      figures.push({
        scenario,
        system: SYSTEMS[design],
        status: 'not-available',
        reason:
          design === 'a'
            ? `not run at ${perDay.toLocaleString('en-US')} events a day (0.67 Cassandra rows per event at 1 M: ~13 M rows a day)`
            : 'no Cassandra',
        checks: [],
      })
      continue
    }
    if (run.error || !run.result || !run.answers) {
      figures.push(failedFigure(scenario, SYSTEMS[design], new Error(run.error ?? 'no result')))
      continue
    }
    const checks: Check[] = run.result.mismatches.map((m) => ({ ok: false, detail: m }))
    // Equal answers across the designs, query by query (a answers the ranges it stores).
    for (const other of ['b', 'c', 'a'] as const) {
      if (other === design || !runs[other].answers) continue
      const theirs = new Map(runs[other].answers!.map((a) => [a.id, a]))
      let compared = 0
      const diffs: string[] = []
      for (const a of run.answers) {
        const b = theirs.get(a.id)
        if (!b) continue
        compared++
        const d = answerDifference(a, b)
        if (d) diffs.push(d)
      }
      if (compared > 0)
        checks.push({
          ok: diffs.length === 0,
          detail: `answers equal to ${SYSTEMS[other]}'s: ${compared - diffs.length}/${compared}${diffs.length > 0 ? `; first: ${diffs[0]}` : ''}`,
        })
    }
    const total = run.answers.find((a) => a.id === 'totals/0f/1d')?.rows[0]?.events
    checks.push({ ok: total === perDay, detail: `events of the last day = generated: ${total} = ${perDay}` })
    const row = studyRow(p, run)!
    const widest = Math.max(...RANGES_DAYS.filter((r) => r <= run.days))
    const warm =
      latencies(run.result, querySet(run.days, RANGES_DAYS, TOTAL_DAYS - 1), widest).warm ??
      latencies(run.result, querySet(run.days, RANGES_DAYS, TOTAL_DAYS - 1), widest).cold
    figures.push({
      scenario,
      system: SYSTEMS[design],
      status: 'ok',
      throughput: {
        value: run.events / run.writeSeconds,
        unit: 'ev/s stored',
        what: `events stored per second on the write path (${design === 'a' ? 'tuple rollup + Cassandra writes' : design === 'b' ? 'compacted Arrow file per day' : 'Parquet per day via DuckDB'}), ${run.days} day(s) of ${perDay.toLocaleString('en-US')} events`,
      },
      ...(warm
        ? {
            latencyMs: {
              ...warm,
              what: `warm queries over the last ${widest} day(s), ${run.result ? Object.keys(run.result.coldMs).length : 0} queries × runs`,
            },
          }
        : {}),
      ...(run.peakRssBytes !== undefined ? { peakRssBytes: run.peakRssBytes } : {}),
      checks,
      details: {
        study: row,
        queries: queries.length,
        cachedBytes: run.result.cachedBytes,
        hourlyRowsPerEvent: run.hourlyRowsPerEvent,
      },
    })
  }
  return figures
}

/** Two significant digits; whole numbers from 100 on (no float noise such as 220000.00000000003). */
const fmt = (v: number) => (v >= 100 ? Math.round(round(v, 2)).toLocaleString('en-US') : String(round(v, 2)))

const cell = (v: { p50: number; p99: number; extrapolated: boolean } | undefined) =>
  v ? `${v.extrapolated ? '~' : ''}${fmt(v.p50)} / ${fmt(v.p99)}` : '—'

/** The study's table, in Markdown (what docs/design.md carries). */
export function studyTable(rows: readonly StudyRow[]): string {
  const out = [
    '| size (events/day) | design | days stored | bytes/event | write µs/event | rows/event | warm p50 / p99 ms 1 d | 7 d | 30 d | cold p50 / p99 ms 30 d | query RSS |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for (const r of rows)
    out.push(
      `| ${r.eventsPerDay.toLocaleString('en-US')} | ${r.system} | ${r.measuredDays} | ${r.bytesPerEvent === undefined ? '—' : round(r.bytesPerEvent, 3)} | ${round(r.writeUsPerEvent, 3)} | ${r.rowsPerEvent === undefined ? '—' : round(r.rowsPerEvent, 2)} | ${cell(r.warm[1])} | ${cell(r.warm[7])} | ${cell(r.warm[30])} | ${cell(r.cold[30])} | ${formatBytes(r.peakRssBytes)} |`,
    )
  out.push('', '~ = extrapolated from the 1-day queries (× days), the size being sampled.')
  return out.join('\n')
}

async function run(ctx: ScenarioContext): Promise<ScenarioOutcome> {
  const sizes = ctx.quick ? (['small'] as SizeName[]) : (ctx.filterSizes ?? ['small', 'medium'])
  const config = loadConfig(process.env)
  let cassandra: Client | undefined = createCassandraClient(config.cassandra, { readTimeoutMs: 120_000 })
  try {
    await cassandra.connect()
  } catch (err) {
    ctx.say(`filters: no Cassandra (${(err as Error).message}); design a is left out`)
    await cassandra.shutdown()
    cassandra = undefined
  }
  const figures: Figure[] = []
  try {
    for (const name of sizes) {
      const t0 = performance.now()
      try {
        figures.push(...(await runSize(ctx, plan(name, ctx.quick), cassandra)))
      } catch (err) {
        ctx.say(`filters ${name} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`)
        figures.push(failedFigure(`filters.${name}`, 'filters study', err))
      }
      ctx.say(`filters ${name}: ${Math.round((performance.now() - t0) / 1000)} s`)
    }
  } finally {
    await cassandra?.shutdown()
  }
  const rows = figures
    .map((f) => (f.details?.study as StudyRow | undefined) ?? undefined)
    .filter((r): r is StudyRow => r !== undefined)
  if (rows.length > 0) ctx.say(`filters study:\n${studyTable(rows)}`)
  return { figures, ratios: [], targets: [] }
}

export const filtersScenario: ScenarioDefinition = {
  name: 'filters',
  description:
    'study (issue 21): any filter with any breakdown, tuple rollup in Cassandra vs Arrow files vs DuckDB over Parquet; only with --only filters',
  needsServices: true,
  optIn: true,
  run,
}
