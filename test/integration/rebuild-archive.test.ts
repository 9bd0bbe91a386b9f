import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { listJobs, rebuild, startArchiver, startStream } from '../../app/start.js'
import type { RunningArchiver } from '../../batch/archive-role.js'
import { formatJobs } from '../../batch/jobs.js'
import type { ArchiveWait } from '../../batch/rebuild-command.js'
import { type GeneratedEvent, generateWorkload, truthOf } from '../../bench/workload.js'
import { archiveKey } from '../../core/archive/paths.js'
import { CassandraAggregateReader } from '../../core/cassandra/aggregate-reader.js'
import { CassandraArchiveStateStore } from '../../core/cassandra/batch-store.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { createKafka } from '../../core/kafka/client.js'
import { KafkaOffsets } from '../../core/kafka/consumer.js'
import { KafkaBatchingProducer } from '../../core/kafka/producer.js'
import { createLogger } from '../../core/log.js'
import { migrate } from '../../core/migrate.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import { CheckpointFreshness } from '../../query/freshness.js'
import type { RunningStream } from '../../stream/role.js'
import { cleanup, envOf, eventually, testConfig } from '../helpers/context.js'
import { compareWithTruth, feed, ingestApp, waitCaughtUp } from '../helpers/stream.js'

/**
 * A manual rebuild and a lagging archive (real Kafka and Cassandra): by default `tally rebuild`
 * waits for the archive to hold the log (bounded, with progress, then a clear error); with
 * --allow-incomplete it commits what is archived and `meta` reports the windows the archive did
 * not cover as provisional; reading 0 events where the stream counted some is a warning.
 */

const HOUR = 3_600_000
const logger = createLogger('silent')

let dataDir: string
let config: ReturnType<typeof testConfig>
let cassandra: ReturnType<typeof createCassandraClient>
let producer: KafkaBatchingProducer
let stream: RunningStream
let archiver: RunningArchiver | undefined
let ingest: FastifyInstance
let query: FastifyInstance
const sites: Site[] = []
const readTokens = new Map<string, string>()

// History three to one hours back (older than the stream's grace: only the batch layer counts it).
const HIST_FROM = Math.floor(Date.now() / HOUR) * HOUR - 3 * HOUR
const HIST_TO = HIST_FROM + 2 * HOUR
const lagHistory = history(11, 'lag.test', 500)

function history(seed: number, site: string, events: number): GeneratedEvent[] {
  return generateWorkload({
    seed,
    sites: [site],
    events,
    start: new Date(HIST_FROM),
    spanMs: HIST_TO - HIST_FROM,
    lateShare: 0,
  }).events
}

const keyOf = (siteId: string) => sites.find((s) => s.siteId === siteId)!.writeKey

async function startArchiving(): Promise<void> {
  archiver = await startArchiver(config, logger, { flushIntervalMs: 200, port: 0 })
}

async function stopArchiving(): Promise<void> {
  await archiver?.close()
  archiver = undefined
}

/** Waits until the archive holds every record the raw topic has. */
async function waitArchived(): Promise<void> {
  const offsets = new KafkaOffsets(createKafka(config.kafka))
  const store = new CassandraArchiveStateStore(cassandra)
  try {
    const ends = await offsets.endOffsets(config.kafka.topicRaw)
    await eventually(
      async () => {
        const progress = await store.progress(
          archiveKey(config.archive.group, config.kafka.topicRaw),
          ends.size,
        )
        for (const [p, end] of ends)
          if ((progress.find((x) => x.partition === p)?.nextOffset ?? 0) < end) return undefined
        return true
      },
      90_000,
      'the archive to hold the whole raw topic',
    )
  } finally {
    await offsets.close()
  }
}

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'tally-rebuild-archive-test-'))
  config = testConfig({
    TALLY_FLUSH_INTERVAL_MS: '200',
    TALLY_GRACE_MS: '300000',
    PORT: '0',
    TALLY_DATA_DIR: dataDir,
  })
  await migrate(config)
  cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await cassandra.connect()
  producer = new KafkaBatchingProducer(createKafka(config.kafka), {
    ...(config.ingest.pack ? { pack: config.ingest.pack } : {}),
  })
  const siteStore = new CassandraSiteStore(cassandra)
  for (const id of ['wait.test', 'lag.test']) {
    const created = await siteStore.create({ siteId: id, domain: id, origins: [] })
    sites.push(created.site)
    readTokens.set(id, created.readToken)
  }
  stream = await startStream(config, logger)
  await startArchiving()
  ingest = await ingestApp(config, producer, sites, logger)
  const reader = new CassandraAggregateReader(cassandra, config.stream.hllPrecision)
  query = await buildQueryApp({
    reader,
    auth: new ReadAccessCache(siteStore),
    freshness: new CheckpointFreshness(reader, {
      group: config.stream.group,
      topic: config.kafka.topicRaw,
      partitions: config.kafka.partitions,
      graceMs: config.stream.graceMs,
      cacheMs: 0,
    }),
    logger,
    hllPrecision: config.stream.hllPrecision,
    retentionSeconds: config.stream.ttlSeconds,
  })
  // History of lag.test, archived while the archiver runs: its watermark passes the history's hours.
  await feed(ingest, lagHistory, keyOf)
  await waitCaughtUp(config, cassandra)
  await waitArchived()
})

afterAll(async () => {
  await query?.close()
  await ingest?.close()
  await stopArchiving()
  await stream?.close()
  await producer?.close()
  await cassandra?.shutdown()
  await cleanup(config)
  await rm(dataDir, { recursive: true, force: true })
})

describe('tally rebuild and a lagging archive (real Kafka and Cassandra)', () => {
  it('waits for the archive to hold the log, reporting how far it is, then counts all of it', async () => {
    await stopArchiving()
    const events = history(12, 'wait.test', 600)
    await feed(ingest, events, keyOf)
    await waitCaughtUp(config, cassandra)

    const waits: ArchiveWait[] = []
    const running = rebuild(config, logger, {
      site: 'wait.test',
      from: HIST_FROM,
      to: HIST_TO,
      waitArchiveMs: 120_000,
      onArchiveWait: (w) => waits.push(structuredClone(w)),
    })
    // It is still waiting after a few looks at the archive; then an archiver catches up.
    await eventually(async () => (waits.length >= 3 ? true : undefined), 30_000, 'the rebuild to wait')
    const first = waits[0]!
    expect(first.behind.length).toBeGreaterThan(0)
    expect(first.archived).toBeLessThan(first.end)
    expect(first.waitMs).toBe(120_000)
    await startArchiving()
    const result = await running
    expect(result.status).toBe('succeeded')
    expect(result.run.warnings).toEqual([])
    expect(
      await compareWithTruth(
        cassandra,
        config.stream.hllPrecision,
        truthOf(events, ['wait.test']),
        ['wait.test'],
        HIST_FROM,
        HIST_TO,
      ),
    ).toEqual([])
    const reader = new CassandraAggregateReader(cassandra, config.stream.hllPrecision)
    const hours = await reader.totals('wait.test', 'hour', HIST_FROM, HIST_TO)
    expect(hours.map((h) => h.final)).toEqual([true, true])
  })

  it('a wait that runs out ends in a clear error and a non-zero exit, and changes nothing', async () => {
    await stopArchiving()
    await feed(ingest, live(), keyOf)
    await waitCaughtUp(config, cassandra)
    const reader = new CassandraAggregateReader(cassandra, config.stream.hllPrecision)
    const before = await reader.totals('lag.test', 'minute', HIST_FROM, Date.now() + HOUR)

    const out = await tally([
      'rebuild',
      '--site',
      'lag.test',
      '--from',
      new Date(HIST_FROM).toISOString(),
      '--to',
      new Date(Date.now()).toISOString(),
      '--wait-archive-ms',
      '1500',
    ])
    expect(out.code).toBe(1)
    // Progress while waiting, on the progress output (stderr, not a terminal here).
    expect(out.stderr).toMatch(/waiting for the archive: \d+\/\d+ records on \d partitions? \(p\d/)
    expect(out.stderr).toMatch(
      /tally: the archive is not complete: of the records the log held when the rebuild started, it holds \d+ of \d+ records \(partition \d: \d+\/\d+.*\); waited \d+ s \(--wait-archive-ms 1500\): is `tally archive` or `tally batch` running\? Or pass --allow-incomplete to commit what is archived \(those windows stay provisional\) \[TALLY_ERR_ARCHIVE_BEHIND\]\n$/,
    )
    expect(await reader.totals('lag.test', 'minute', HIST_FROM, Date.now() + HOUR)).toEqual(before)
    expect((await listJobs(config, logger)).filter((r) => r.siteId === 'lag.test')).toEqual([])
  })

  it('--allow-incomplete commits what is archived; meta reports the windows the archive did not cover as provisional; 0 events read where the stream counted some is a warning', async () => {
    // The archiver is still stopped: the live events of lag.test are counted by the stream only.
    const counted = truthOf(liveEvents, ['lag.test']).sites['lag.test']!
    expect(counted.events + counted.bots).toBeGreaterThan(100)
    const liveHours = [
      ...new Set(liveEvents.map((e) => Math.floor(Date.parse(e.payload.timestamp) / HOUR) * HOUR)),
    ]
    const to = Math.max(...liveHours) + HOUR
    const result = await rebuild(config, logger, {
      site: 'lag.test',
      from: HIST_FROM,
      to,
      allowIncomplete: true,
    })
    expect(result.status).toBe('succeeded')
    // What is archived (the history) is committed and final.
    expect(
      await compareWithTruth(
        cassandra,
        config.stream.hllPrecision,
        truthOf(lagHistory, ['lag.test']),
        ['lag.test'],
        HIST_FROM,
        HIST_TO,
      ),
    ).toEqual([])
    expect(result.run.warnings).toEqual([
      expect.stringMatching(
        /^the archive holds the events received through \S+ only: the windows from \S+ on are committed but not final \(--allow-incomplete\)/,
      ),
      expect.stringMatching(
        new RegExp(
          `^site lag\\.test: the rebuild read 0 events in ${liveHours.length} hour\\(s\\) where the stream counted ${counted.events + counted.bots} \\(`,
        ),
      ),
    ])
    expect(formatJobs(await listJobs(config, logger))).toContain(
      `warning: site lag.test: the rebuild read 0 events in ${liveHours.length} hour(s) where the stream counted ${counted.events + counted.bots}`,
    )

    const res = await query.inject({
      method: 'GET',
      url: `/v1/stats/timeseries?${new URLSearchParams({
        site: 'lag.test',
        from: new Date(HIST_FROM).toISOString(),
        to: new Date(to).toISOString(),
        interval: 'hour',
        metrics: 'events',
      })}`,
      headers: { authorization: `Bearer ${readTokens.get('lag.test')}` },
    })
    expect(res.statusCode, res.body).toBe(200)
    const body = res.json() as {
      results: Array<{ date: string; status: string; events: number }>
      meta: { windows: { final: number; ranges: Array<{ from: string; to: string; status: string }> } }
    }
    const status = new Map(body.results.map((p) => [Date.parse(p.date), p.status]))
    expect([status.get(HIST_FROM), status.get(HIST_FROM + HOUR)]).toEqual(['final', 'final'])
    for (const h of liveHours) expect(status.get(h), new Date(h).toISOString()).not.toBe('final')
    expect(body.meta.windows.final).toBe(2)
    expect(body.meta.windows.ranges[0]).toEqual({
      from: new Date(HIST_FROM).toISOString(),
      to: new Date(HIST_TO).toISOString(),
      status: 'final',
    })
    const last = body.meta.windows.ranges.at(-1)!
    expect(last.status).not.toBe('final')
    expect(Date.parse(last.from)).toBeLessThanOrEqual(Math.min(...liveHours))

    // The archive is complete only through its watermark less the grace: an event received after
    // the watermark may be timed up to the grace earlier, so an hour ending between the two may
    // still lack events (the hour boundary decides when it matters; the bound is what is checked).
    const progress = await new CassandraArchiveStateStore(cassandra).progress(
      archiveKey(config.archive.group, config.kafka.topicRaw),
      config.kafka.partitions,
    )
    const watermark = Math.min(...progress.map((p) => p.watermarkMs).filter((w) => w > 0))
    const through = /received through (\S+) only/.exec(result.run.warnings[0] ?? '')?.[1]
    expect(through).toBe(new Date(watermark - config.stream.graceMs).toISOString())
  })
})

let liveEvents: GeneratedEvent[] = []

/** Events of lag.test in the last two minutes (the stream counts them at once). */
function live(): GeneratedEvent[] {
  liveEvents = generateWorkload({
    seed: 13,
    sites: ['lag.test'],
    events: 400,
    start: new Date(Date.now() - 2 * 60_000),
    spanMs: 90_000,
    lateShare: 0,
  }).events
  return liveEvents
}

/** Runs `node bin/tally.js ARGS` (it runs dist/: `npm run build` first) against the test's servers. */
function tally(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['bin/tally.js', ...args], {
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      LOG_LEVEL: 'silent',
      ...envOf(config),
      TALLY_DATA_DIR: dataDir,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString()
  })
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString()
  })
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, stdout, stderr })))
}
