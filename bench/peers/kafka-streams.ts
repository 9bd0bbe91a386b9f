import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { type Artifact, ensureArtifact } from '../../app/services/fetch.js'
import type { TallyConfig } from '../../core/config.js'
import { projectRoot } from '../../core/paths.js'
import type { ScenarioContext } from '../harness/context.js'
import { resultOf, runJob } from '../harness/proc.js'
import type { Figure } from '../harness/report.js'
import { round } from '../harness/stats.js'

/**
 * The Kafka Streams peer of the stream benchmark: bench/peers/kafka-streams/CountPeer.java, one
 * Kafka Streams instance (the version of the Kafka server the project runs, from Maven Central,
 * fetched like the servers into the services cache and compiled there with `javac` once) counting
 * events per site-minute and per site-hour-path over the raw topic the Tally worker read, with
 * `exactly_once_v2` or `at_least_once`.
 */

export type Guarantee = 'exactly_once_v2' | 'at_least_once'

const SOURCE = join(projectRoot(), 'bench', 'peers', 'kafka-streams', 'CountPeer.java')

function artifact(kafkaVersion: string): Artifact {
  return {
    name: 'kafka-streams',
    version: kafkaVersion,
    coordinates: [
      `org.apache.kafka:kafka-streams:${kafkaVersion}`,
      // Kafka 3.9's own JSON library; Kafka Streams ships none.
      'com.fasterxml.jackson.core:jackson-databind:2.16.2',
      'org.slf4j:slf4j-nop:1.7.36',
    ],
  }
}

/** `javac` beside the configured `java`, else the one on the PATH. */
function javacOf(java: string): string {
  const beside = join(dirname(java), 'javac')
  return java.includes('/') && existsSync(beside) ? beside : 'javac'
}

function exec(cmd: string, args: readonly string[]): Promise<{ code: number; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let output = ''
    child.stdout.on('data', (d: Buffer) => {
      output += d.toString()
    })
    child.stderr.on('data', (d: Buffer) => {
      output += d.toString()
    })
    child.on('error', reject)
    child.on('close', (code) => resolve({ code: code ?? 1, output }))
  })
}

/** The peer's class path: its jars, and its classes compiled (once per source) into the cache. */
async function prepare(config: TallyConfig, say: (line: string) => void): Promise<string> {
  const a = artifact(config.services.kafkaVersion)
  const lib = await ensureArtifact(config.services.cacheDir, a, say)
  const source = await readFile(SOURCE)
  const hash = createHash('sha256').update(source).digest('hex').slice(0, 12)
  const classes = join(dirname(lib), `classes-${hash}`)
  if (!existsSync(join(classes, 'CountPeer.class'))) {
    const work = `${classes}.tmp-${process.pid}`
    await rm(work, { recursive: true, force: true })
    await mkdir(work, { recursive: true })
    const r = await exec(javacOf(config.services.java), ['-d', work, '-cp', join(lib, '*'), SOURCE])
    if (r.code !== 0) throw new Error(`javac could not compile ${SOURCE}:\n${r.output.slice(-2000)}`)
    await writeFile(join(work, '.complete'), hash)
    await rm(classes, { recursive: true, force: true })
    await rename(work, classes)
  }
  return `${join(lib, '*')}:${classes}`
}

/** One run of the peer over `topic` (`records` in it) in an application id of its own. */
export async function kafkaStreamsPeer(
  ctx: ScenarioContext,
  config: TallyConfig,
  topic: string,
  records: number,
  guarantee: Guarantee,
  timeoutMs: number,
): Promise<Figure> {
  const classPath = await prepare(config, ctx.say)
  const appId = ctx.env.trackGroup(`${topic}_kstreams_${guarantee === 'exactly_once_v2' ? 'eos' : 'alo'}`)
  const stateDir = join(ctx.env.dir, 'kafka-streams', appId)
  await mkdir(stateDir, { recursive: true })
  try {
    const run = await runJob({
      name: `kafka-streams-${guarantee}`,
      command: config.services.java,
      args: ['-Xmx1g', '-cp', classPath, 'CountPeer'],
      env: {
        BROKERS: config.kafka.brokers.join(','),
        TOPIC: topic,
        APP_ID: appId,
        GUARANTEE: guarantee,
        EXPECT: String(records),
        STATE_DIR: stateDir,
        TIMEOUT_MS: String(timeoutMs),
      },
      logDir: ctx.env.logDir,
      timeoutMs: timeoutMs + 60_000,
    })
    const r = resultOf<{
      records: number
      counted: [number, number]
      firstRecordMs: number
      doneMs: number
      closedMs: number
      cpuMs: number
    }>(run, `the Kafka Streams peer (${guarantee})`)
    const seconds = (r.closedMs - r.firstRecordMs) / 1000
    const ok = r.counted[0] >= records && r.counted[1] >= records
    return {
      scenario: 'stream.throughput',
      system: `Kafka Streams ${config.services.kafkaVersion} (${guarantee})`,
      status: ok ? 'ok' : 'failed',
      throughput: {
        value: records / seconds,
        unit: 'events/s',
        what: `one Kafka Streams instance (one stream thread) counting events per site-minute and per site-hour-path in RocksDB stores over the same topic, from its first record to its close (last commit included); each record's events unpacked (format 1 or 2) and their JSON parsed with Jackson, no dedup, no bots, no HyperLogLog`,
      },
      ...(run.peakRssBytes !== undefined ? { peakRssBytes: run.peakRssBytes } : {}),
      checks: [
        {
          ok,
          detail: `events counted by each aggregate: ${r.counted.join(', ')} ≥ ${records} in the topic`,
        },
      ],
      details: {
        seconds: round(seconds),
        secondsToLastCount: round((r.doneMs - r.firstRecordMs) / 1000),
        cpuMicrosecondsPerEvent: round((r.cpuMs * 1000) / records),
      },
    }
  } finally {
    // Its repartition and changelog topics are named after the application id.
    for (const t of await ctx.env.topicsStartingWith(config, `${appId}-`)) ctx.env.trackTopic(t)
  }
}
