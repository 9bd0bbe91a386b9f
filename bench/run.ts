import { mkdir, writeFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { Command, InvalidArgumentError } from 'commander'
import type { ScenarioContext, ScenarioDefinition } from './harness/context.js'
import { BenchEnvironment } from './harness/environment.js'
import { formatMarkdown } from './harness/markdown.js'
import { runningChildren } from './harness/proc.js'
import {
  besideTheirCounterparts,
  embeddedRatios,
  type Figure,
  formatTable,
  machineInfo,
  packageVersions,
  type RunReport,
} from './harness/report.js'
import { batchScenario } from './scenarios/batch.js'
import { embeddedScenario } from './scenarios/embedded.js'
import { FILTER_SIZES, filtersScenario } from './scenarios/filters.js'
import { ingestScenario, ingestSteadyScenario } from './scenarios/ingest.js'
import { lookupsScenario } from './scenarios/lookups.js'
import { queryScenario } from './scenarios/query.js'
import { streamScenario } from './scenarios/stream.js'

/**
 * `npm run bench`: measures every stage of Tally against a peer in the same run and checks every
 * number it timed against the workload's truth. Figures are printed (and saved with --json), never
 * asserted; the exit code is 1 only when a check of the numbers failed or a scenario broke.
 */

const SCENARIOS: readonly ScenarioDefinition[] = [
  ingestScenario,
  ingestSteadyScenario,
  streamScenario,
  queryScenario,
  batchScenario,
  embeddedScenario,
  lookupsScenario,
  filtersScenario,
]

interface Options {
  quick: boolean
  json?: string
  markdown?: string
  only?: string[]
  seed: number
  keepServices: boolean
  keepFiles: boolean
  filtersSize?: (typeof FILTER_SIZES)[number][]
}

function parseOnly(value: string): string[] {
  const names = value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
  const known = SCENARIOS.map((s) => s.name)
  const unknown = names.filter((n) => !known.includes(n))
  if (names.length === 0 || unknown.length > 0)
    throw new InvalidArgumentError(`expected a comma-separated list of ${known.join(', ')}`)
  return names
}

function parseSizes(value: string): (typeof FILTER_SIZES)[number][] {
  const names = value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
  const unknown = names.filter((n) => !(FILTER_SIZES as readonly string[]).includes(n))
  if (names.length === 0 || unknown.length > 0)
    throw new InvalidArgumentError(`expected a comma-separated list of ${FILTER_SIZES.join(', ')}`)
  return names as (typeof FILTER_SIZES)[number][]
}

function parseSeed(value: string): number {
  const n = Number(value)
  if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError('expected a non-negative integer')
  return n
}

const say = (line: string): void => {
  process.stderr.write(`[bench] ${line}\n`)
}

function failedFigure(scenario: string, err: unknown): Figure {
  const message = err instanceof Error ? err.message : String(err)
  return { scenario, system: 'tally', status: 'failed', reason: message, checks: [] }
}

async function main(argv: string[]): Promise<number> {
  const program = new Command()
    .name('npm run bench --')
    .description(
      'Tally benchmark suite: each scenario against a peer in the same run, every timed number checked against the workload truth.',
    )
    .option('--quick', 'every scenario for a few seconds (whole run under 3 minutes; what CI runs)', false)
    .option('--json <path>', 'also write the results as JSON to this file')
    .option('--markdown <path>', 'also write the results as a Markdown report (BENCHMARKS.md) to this file')
    .option(
      '--only <scenarios>',
      `run only these (comma-separated): ${SCENARIOS.map((s) => s.name).join(', ')}; without it, all but ${SCENARIOS.filter(
        (s) => s.optIn,
      )
        .map((s) => s.name)
        .join(', ')}`,
      parseOnly,
    )
    .option(
      '--filters-size <sizes>',
      `filters study: site sizes (comma-separated) of ${FILTER_SIZES.join(', ')} (10 k, 1 M, 20 M events a day; large is sampled: 1 day); default small,medium (under 15 minutes); --quick: small over 7 days`,
      parseSizes,
    )
    .option('--seed <n>', 'workload seed', parseSeed, 20_240_501)
    .option('--keep-services', 'leave Kafka/Cassandra running when this run started them', false)
    .option('--keep-files', 'keep the run folder (role logs, workload files) under the OS temp folder', false)
    .addHelpText(
      'after',
      `
Scenarios:
${SCENARIOS.map((s) => `  ${s.name.padEnd(9)} ${s.description}`).join('\n')}

Starts the local Kafka and Cassandra when they are not running (and stops them afterwards) unless
KAFKA_BROKERS / CASSANDRA_CONTACT_POINTS point elsewhere. Uses keyspaces tally_bench_<run>[_filters_<size>] and
topics tally_bench_<run>_*, removed at the end. Loopback only. TALLY_LOG_FORMAT (1 or 2) is passed on to
the roles it starts, to compare the raw log's record formats.`,
    )
  program.parse(argv)
  const opts = program.opts<Options>()
  const selected = SCENARIOS.filter((s) => (opts.only ? opts.only.includes(s.name) : !s.optIn))
  const started = performance.now()
  const command = `npm run bench${argv.length > 2 ? ` -- ${argv.slice(2).join(' ')}` : ''}`

  const env = new BenchEnvironment(say)
  await env.init()
  let interrupted = false
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) return
    interrupted = true
    say(`${signal}: stopping the processes under test and cleaning up`)
    void Promise.all(runningChildren().map((c) => c.stop(5_000)))
      .then(() => env.close({ keepServices: opts.keepServices, keepFiles: opts.keepFiles }))
      .finally(() => process.exit(130))
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)

  const report: RunReport = {
    tool: 'tally-bench',
    date: new Date().toISOString(),
    command,
    quick: opts.quick,
    machine: machineInfo(),
    versions: packageVersions([
      'fastify',
      'kafkajs',
      'cassandra-driver',
      'autocannon',
      'undici',
      '@duckdb/node-api',
      'apache-arrow',
    ]),
    figures: [],
    ratios: [],
    targets: [],
    durationSec: 0,
  }
  let cleanupError: unknown
  try {
    if (selected.some((s) => s.needsServices)) {
      say('checking Kafka and Cassandra (starting the local ones when they are down)')
      await env.ensureServices()
      Object.assign(report.versions, await env.serviceVersions())
    }
    const ctx: ScenarioContext = {
      env,
      quick: opts.quick,
      seed: opts.seed,
      say,
      ...(opts.filtersSize ? { filterSizes: opts.filtersSize } : {}),
    }
    for (const scenario of selected) {
      // After Ctrl-C the signal handler cleans up and exits; start nothing new meanwhile.
      if (interrupted) break
      say(`── ${scenario.name}: ${scenario.description}`)
      const t0 = performance.now()
      try {
        const outcome = await scenario.run(ctx)
        report.figures.push(...outcome.figures)
        report.ratios.push(...outcome.ratios)
        report.targets.push(...outcome.targets)
      } catch (err) {
        say(`${scenario.name} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`)
        report.figures.push(failedFigure(scenario.name, err))
        // Whatever it left running goes before the next scenario measures anything.
        await Promise.all(runningChildren().map((c) => c.stop(5_000)))
      }
      say(`${scenario.name}: ${Math.round((performance.now() - t0) / 1000)} s`)
    }
  } finally {
    // The logs named in a failure's message are in the run folder: keep it then.
    const keepFiles = opts.keepFiles || report.figures.some((f) => f.status === 'failed')
    try {
      await env.close({ keepServices: opts.keepServices, keepFiles })
    } catch (err) {
      cleanupError = err
    }
    if (keepFiles) say(`run folder kept: ${env.dir}`)
  }
  report.durationSec = Math.round((performance.now() - started) / 1000)
  // The embedded backend's figures beside the Kafka/Cassandra ones of the same scenario.
  report.ratios.push(...embeddedRatios(report.figures))
  report.figures = besideTheirCounterparts(report.figures)
  process.stdout.write(`\n${formatTable(report)}\n\nwhole run: ${report.durationSec} s\n`)
  if (opts.json) {
    const path = resolve(opts.json)
    await mkdir(dirname(path), { recursive: true })
    await writeFile(path, `${JSON.stringify(report, null, 2)}\n`)
    say(`JSON written to ${path}`)
  }
  if (opts.markdown) {
    const path = resolve(opts.markdown)
    await writeFile(path, formatMarkdown(report))
    say(`Markdown written to ${path}`)
  }
  if (cleanupError) say(String(cleanupError instanceof Error ? cleanupError.message : cleanupError))
  const broken = report.figures.filter((f) => f.status === 'failed')
  return broken.length > 0 || cleanupError ? 1 : 0
}

main(process.argv).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
    process.exit(1)
  },
)
