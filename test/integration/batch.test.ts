import { type ChildProcess, spawn } from 'node:child_process'
import { createWriteStream, mkdirSync } from 'node:fs'
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  importFile,
  listJobs,
  openBatchStores,
  rebuild,
  startArchiver,
  startBatch,
  startStream,
} from '../../app/start.js'
import type { RunningArchiver } from '../../batch/archive-role.js'
import { archiveBehind } from '../../batch/context.js'
import type { EventNormalizer } from '../../batch/import.js'
import { formatJobs } from '../../batch/jobs.js'
import { type RebuildProgress, rangeName, runRebuild } from '../../batch/rebuild.js'
import { rebuildSettings } from '../../batch/rebuild-command.js'
import { BatchScheduler, defaultJobs } from '../../batch/scheduler.js'
import { type GeneratedEvent, generateWorkload, truthOf } from '../../bench/workload.js'
import {
  DIMENSION_GRANULARITIES,
  DIMENSIONS,
  GRANULARITIES,
  VISIT_DIMENSIONS,
} from '../../core/aggregate/definition.js'
import { archiveKey, batchPaths } from '../../core/archive/paths.js'
import { listSegments } from '../../core/archive/segment-file.js'
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
import { normalizeEvent } from '../../ingest/normalize.js'
import { UserAgentParser } from '../../ingest/user-agent.js'
import type { RunningStream } from '../../stream/role.js'
import { cleanup, envOf, eventually, testConfig } from '../helpers/context.js'
import { compareWithTruth, feed, ingestApp, lateInRealTime, waitCaughtUp } from '../helpers/stream.js'

const HOUR = 3_600_000
const DAY = 86_400_000
const logger = createLogger('silent')

let dataDir: string
let config: ReturnType<typeof testConfig>
let cassandra: ReturnType<typeof createCassandraClient>
let producer: KafkaBatchingProducer
let stream: RunningStream
let archiver: RunningArchiver
let app: Awaited<ReturnType<typeof ingestApp>>
const sites: Site[] = []
const SITE_IDS = ['same-a.test', 'same-b.test', 'late.test', 'history.test']

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'tally-batch-test-'))
  config = testConfig({
    TALLY_FLUSH_INTERVAL_MS: '200',
    TALLY_GRACE_MS: '300000',
    PORT: '0',
    TALLY_DATA_DIR: dataDir,
  })
  await migrate(config)
  cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await cassandra.connect()
  producer = new KafkaBatchingProducer(createKafka(config.kafka))
  const store = new CassandraSiteStore(cassandra)
  for (const id of SITE_IDS) sites.push((await store.create({ siteId: id, domain: id, origins: [] })).site)
  stream = await startStream(config, logger)
  archiver = await startArchiver(config, logger, { flushIntervalMs: 200, port: 0 })
  app = await ingestApp(config, producer, sites, logger)
})

afterAll(async () => {
  await app?.close()
  await archiver?.close()
  await stream?.close()
  await producer?.close()
  await cassandra?.shutdown()
  await cleanup(config)
  await rm(dataDir, { recursive: true, force: true })
})

const keyOf = (siteId: string) => sites.find((s) => s.siteId === siteId)!.writeKey
const dayStart = (t: number) => Math.floor(t / DAY) * DAY

/** Waits until the archive holds every record the raw topic has. */
async function waitArchived(): Promise<void> {
  const offsets = new KafkaOffsets(createKafka(config.kafka))
  const store = new CassandraArchiveStateStore(cassandra)
  try {
    const key = archiveKey(config.archive.group, config.kafka.topicRaw)
    const ends = await offsets.endOffsets(config.kafka.topicRaw)
    await eventually(
      async () => {
        const progress = await store.progress(key, ends.size)
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

interface Cell {
  values: string
  final: boolean
}

/** Every window (totals) and every (window, value) of every breakdown, as read by the query side. */
async function snapshot(siteIds: readonly string[], from: number, to: number): Promise<Map<string, Cell>> {
  const reader = new CassandraAggregateReader(cassandra, config.stream.hllPrecision)
  const out = new Map<string, Cell>()
  const cell = (v: {
    events: number
    pageviews: number
    botEvents: number
    visitors: Uint8Array
    visits?: number
    bounces?: number
    visitDurationMs?: number
    visitPageviews?: number
    final: boolean
  }) => ({
    values: `${v.events}/${v.pageviews}/${v.botEvents}/${Buffer.from(v.visitors).toString('hex')} visits ${v.visits}/${v.bounces}/${v.visitDurationMs}/${v.visitPageviews}`,
    final: v.final,
  })
  for (const site of siteIds) {
    for (const g of GRANULARITIES) {
      for (const w of await reader.totals(site, g, from, to))
        out.set(`${site}|${g}|${w.windowStart}`, cell(w))
    }
    for (const g of DIMENSION_GRANULARITIES) {
      for (const d of [...DIMENSIONS, ...VISIT_DIMENSIONS]) {
        for await (const r of reader.streamDimension(site, g, d, from, to))
          out.set(`${site}|${g}|${r.windowStart}|${d}|${r.value}`, cell(r))
      }
    }
  }
  return out
}

const values = (m: Map<string, Cell>) => new Map([...m].map(([k, c]) => [k, c.values]))

function normalizer(siteId: string): EventNormalizer {
  const ua = new UserAgentParser()
  return (payload, receivedAtMs) =>
    normalizeEvent(
      payload,
      {
        siteId,
        userAgent: undefined,
        receivedAtMs,
        batchSentAt: undefined,
        routeType: undefined,
        imported: true,
      },
      config.ingest,
      ua,
    )
}

async function writeNdjson(name: string, events: readonly GeneratedEvent[]): Promise<string> {
  const file = join(dataDir, name)
  await writeFile(file, `${events.map((e) => JSON.stringify(e.payload)).join('\n')}\n`)
  return file
}

// History three days back, hour-aligned, six hours long.
const HISTORY_FROM = Math.floor((Date.now() - 3 * DAY) / HOUR) * HOUR
const HISTORY_TO = HISTORY_FROM + 6 * HOUR
// The range the rebuilds of the late and history tests cover (whole days).
const WIDE_FROM = dayStart(HISTORY_FROM)
const WIDE_TO = dayStart(Date.now()) + DAY
const history: GeneratedEvent[] = []

describe('batch rebuilds from the Arrow archive (real Kafka and Cassandra)', () => {
  it('stream = batch: for on-time data the rebuild writes exactly the stream’s numbers, HyperLogLog registers and visits (entry and exit pages too)', async () => {
    const now = Date.now()
    const ids = ['same-a.test', 'same-b.test']
    const workload = generateWorkload({
      seed: 42,
      sites: ids,
      events: 3000,
      start: new Date(now - 4 * 60_000),
      spanMs: 3 * 60_000,
      lateShare: 0,
    })
    expect(workload.events.some((e) => e.isDuplicate)).toBe(true)
    expect(workload.events.some((e) => e.isBot)).toBe(true)
    await feed(app, workload.events, keyOf)
    await waitCaughtUp(config, cassandra)
    await waitArchived()
    const from = dayStart(now) - DAY
    const to = dayStart(now) + DAY
    const before = await snapshot(ids, from, to)
    expect(before.size).toBeGreaterThan(500)
    expect([...before.values()].every((c) => !c.final)).toBe(true)
    // The stream counted visits (and their entry and exit pages): the rebuild must write the same.
    expect([...before.values()].filter((c) => / visits [1-9]/.test(c.values)).length).toBeGreaterThan(100)
    expect([...before.keys()].some((k) => k.includes('|entry_page|'))).toBe(true)

    const progress: RebuildProgress[] = []
    const result = await rebuild(config, logger, { from, to, onProgress: (p) => progress.push(p) })
    expect(result.status).toBe('succeeded')
    expect(result.run.duplicates).toBeGreaterThan(0)

    const after = await snapshot(ids, from, to)
    // Same windows, same values, same register bytes; now final.
    expect(values(after)).toEqual(values(before))
    expect([...after.values()].every((c) => c.final)).toBe(true)
    expect(
      await compareWithTruth(
        cassandra,
        config.stream.hllPrecision,
        truthOf(workload.events, ids),
        ids,
        from,
        to,
      ),
    ).toEqual([])

    expect(new Set(progress.map((p) => p.phase))).toEqual(new Set(['dedup', 'aggregate', 'write']))
    expect(progress.at(-1)?.fraction).toBe(1)
    const runs = await listJobs(config, logger)
    const run = runs.find((r) => r.jobId === result.run.jobId)!
    expect(run).toMatchObject({
      status: 'succeeded',
      kind: 'manual',
      fromMs: from,
      toMs: to,
      siteId: undefined,
    })
    expect(run.eventsRead).toBe(result.run.eventsRead)
    expect(run.eventsRead).toBeGreaterThan(2900)
    // Per site: the minutes of the workload, their hour and their day (at least 4 + 1 + 1).
    expect(run.windowsWritten).toBeGreaterThanOrEqual(12)
    expect(run.rowsWritten).toBeGreaterThan(100)
    expect(run.durationMs).toBeGreaterThan(0)
    expect(formatJobs(runs)).toMatch(/succeeded/)
  })

  it('counts late events and imported history after a rebuild', async () => {
    const now = Date.now()
    const late = generateWorkload({
      seed: 7,
      sites: ['late.test'],
      events: 2000,
      start: new Date(now - 4 * 60_000),
      spanMs: 3 * 60_000,
      lateShare: 0.05,
      lateByMs: 20 * 60_000,
    })
    const lateEvents = lateInRealTime(late.events, 20 * 60_000)
    expect(lateEvents.some((e) => e.isLate)).toBe(true)
    await feed(app, lateEvents, keyOf)

    const old = generateWorkload({
      seed: 9,
      sites: ['history.test'],
      events: 1500,
      start: new Date(HISTORY_FROM),
      spanMs: HISTORY_TO - HISTORY_FROM,
      lateShare: 0,
    })
    history.push(...old.events)
    const file = await writeNdjson('history.ndjson', old.events)
    const imported = await importFile(config, logger, {
      file,
      siteId: 'history.test',
      normalize: normalizer('history.test'),
    })
    expect(imported).toMatchObject({ lines: old.events.length, accepted: old.events.length, rejected: 0 })
    await waitCaughtUp(config, cassandra)
    await waitArchived()

    // The stream counted what was on time and left the rest to batch.
    const onTime = truthOf(
      lateEvents.filter((e) => !e.isLate),
      ['late.test'],
    )
    expect(
      await compareWithTruth(
        cassandra,
        config.stream.hllPrecision,
        onTime,
        ['late.test'],
        WIDE_FROM,
        WIDE_TO,
      ),
    ).toEqual([])
    const reader = new CassandraAggregateReader(cassandra, config.stream.hllPrecision)
    expect(await reader.totals('history.test', 'hour', WIDE_FROM, WIDE_TO)).toEqual([])

    await rebuild(config, logger, { from: WIDE_FROM, to: WIDE_TO })
    const all = truthOf(lateEvents, ['late.test'])
    expect(
      await compareWithTruth(cassandra, config.stream.hllPrecision, all, ['late.test'], WIDE_FROM, WIDE_TO),
    ).toEqual([])
    const past = truthOf(history, ['history.test'])
    expect(past.sites['history.test']!.events).toBeGreaterThan(1000)
    expect(
      await compareWithTruth(
        cassandra,
        config.stream.hllPrecision,
        past,
        ['history.test'],
        WIDE_FROM,
        WIDE_TO,
      ),
    ).toEqual([])
  })

  it('reports a corrupt segment with its path and keeps the old numbers; --skip-corrupt skips it', async () => {
    const { topicDir } = batchPaths(config)
    const segments = (await listSegments(topicDir, HISTORY_FROM, HISTORY_TO)).segments
    const victim = segments[Math.floor(segments.length / 2)]!
    const original = await readFile(victim.path)
    const before = await snapshot(['history.test'], WIDE_FROM, WIDE_TO)
    await truncate(victim.path, original.length - 64)
    try {
      await expect(rebuild(config, logger, { from: WIDE_FROM, to: WIDE_TO })).rejects.toThrow(victim.path)
      expect(await snapshot(['history.test'], WIDE_FROM, WIDE_TO)).toEqual(before)
      const failed = (await listJobs(config, logger)).find((r) => r.status === 'failed')!
      expect(failed.error).toContain(victim.path)

      const skipped = await rebuild(config, logger, { from: WIDE_FROM, to: WIDE_TO, skipCorrupt: true })
      expect(skipped.run.corruptSegments).toEqual([victim.path])
      const reader = new CassandraAggregateReader(cassandra, config.stream.hllPrecision)
      const day = await reader.totals('history.test', 'hour', HISTORY_FROM, HISTORY_TO)
      const counted = day.reduce((n, w) => n + w.events + w.botEvents, 0)
      const truth = truthOf(history, ['history.test']).sites['history.test']!
      expect(counted).toBeLessThan(truth.events + truth.bots)
    } finally {
      await writeFile(victim.path, original)
    }
    await rebuildCountsHistory([])
  })

  it('two schedulers racing run each range once', async () => {
    const stores = [await openBatchStores(config), await openBatchStores(config)]
    const offsets = new KafkaOffsets(createKafka(config.kafka))
    const options = {
      hourlyCron: '* * * * * *',
      hourlyHours: 6,
      nightlyCron: '',
      // The clock of both: just after the history's last hour.
      now: () => HISTORY_TO + 10 * 60_000,
    }
    const schedulers = stores.map(
      (s) =>
        new BatchScheduler(
          {
            rebuild: (request) =>
              runRebuild(
                { leases: s.leases, jobs: s.jobs, rows: s.rows, logger },
                rebuildSettings(config),
                request,
              ),
            archiveNotReady: async (toMs) => {
              const behind = await archiveBehind(
                s.archive,
                offsets,
                archiveKey(config.archive.group, config.kafka.topicRaw),
                config.kafka.topicRaw,
                toMs,
              )
              return behind.length > 0 ? 'archive behind' : undefined
            },
            logger,
          },
          defaultJobs(options),
          options,
        ),
    )
    const name = rangeName(undefined, HISTORY_FROM, HISTORY_TO)
    try {
      for (const s of schedulers) s.start()
      const started = Date.now()
      await eventually(
        async () => {
          const total = schedulers.reduce((n, s) => n + Object.values(s.counts).reduce((a, b) => a + b, 0), 0)
          return Date.now() - started > 5000 && total >= 8 ? true : undefined
        },
        60_000,
        'several ticks of both schedulers',
      )
    } finally {
      for (const s of schedulers) await s.close()
      await offsets.close()
      for (const s of stores) await s.close()
    }
    const runs = (await listJobs(config, logger, { limit: 500 })).filter((r) => r.leaseName === name)
    expect(runs.map((r) => r.status)).toEqual(['succeeded'])
    const counts = schedulers.map((s) => s.counts)
    expect(counts[0]!.succeeded + counts[1]!.succeeded).toBe(1)
    for (const c of counts) expect(c.failed + c.deferred).toBe(0)
    for (const c of counts)
      expect(c.succeeded + c.skipped_busy + c.skipped_unchanged).toBeGreaterThanOrEqual(3)
    await expectHistoryCounted()
  })

  it('runs as the `tally batch` role: scheduler, health and metrics', async () => {
    const running = await startBatch(config, logger, {
      archive: false,
      hourlyCron: '0 0 1 1 *',
      nightlyCron: '',
      port: 0,
    })
    try {
      const ready = (await (await fetch(`${running.url}/readyz`)).json()) as { jobs: Array<{ kind: string }> }
      expect(ready.jobs.map((j) => j.kind)).toEqual(['hourly'])
      // A tick now: the last two closed hours hold no new segments since their last rebuild, or none.
      const outcome = await running.scheduler.runNow(running.scheduler.jobs[0]!)
      expect(['succeeded', 'skipped_unchanged']).toContain(outcome)
      const metrics = await (await fetch(`${running.url}/metrics`)).text()
      expect(metrics).toMatch(
        /tally_batch_jobs_total\{kind="hourly",outcome="(succeeded|skipped_unchanged)"\} 1/,
      )
    } finally {
      await running.close()
    }
    await expect(
      startBatch(config, logger, { archive: false, hourlyCron: 'every minute', port: 0 }),
    ).rejects.toThrow(/invalid cron expression/)
  })

  it('a rebuild killed halfway leaves the previous numbers intact, and the next run completes', async () => {
    // More history arrives: the next rebuild changes the numbers of the history windows.
    const more = await importMoreHistory(10, 1200, 'more-history.ndjson')
    const before = await snapshot(['history.test'], WIDE_FROM, WIDE_TO)
    const killedAt = await rebuildKilledWhen(
      ['--throttle-ms', '40'],
      (p) => p.phase === 'aggregate' && p.done >= p.total / 2,
    )
    expect(killedAt?.total).toBeGreaterThan(10)
    expect(await snapshot(['history.test'], WIDE_FROM, WIDE_TO)).toEqual(before)
    // Its run is recorded; once its lease has expired it shows as abandoned.
    const name = rangeName(undefined, WIDE_FROM, WIDE_TO)
    await eventually(
      async () =>
        (await listJobs(config, logger)).some((r) => r.leaseName === name && r.status === 'abandoned')
          ? true
          : undefined,
      30_000,
      'the killed run to show as abandoned',
    )

    await rebuildCountsHistory(more)
  })

  it('a rebuild killed while writing switches each site-day whole or not at all; the next run completes', async () => {
    const more = await importMoreHistory(11, 1500, 'even-more-history.ndjson')
    const sites = ['history.test', 'late.test']
    const before = await snapshot(sites, WIDE_FROM, WIDE_TO)
    // Small write rounds with a pause before each (and before each commit): the kill lands after
    // the first round of rows is written, well before the commit of that round's site-day.
    const killedAt = await rebuildKilledWhen(
      ['--throttle-ms', '40', '--write-chunk-rows', '100'],
      (p) => p.phase === 'write' && p.rowsWritten > 0,
    )
    expect(killedAt?.rowsWritten).toBeGreaterThan(0)
    const mid = await snapshot(sites, WIDE_FROM, WIDE_TO)

    await rebuildCountsHistory(more)
    const after = await snapshot(sites, WIDE_FROM, WIDE_TO)

    // Every site-day read after the kill is wholly its numbers from before or wholly the new ones.
    const siteDay = (key: string) => {
      const [site, , ws] = key.split('|') as [string, string, string]
      return `${site}|${new Date(dayStart(Number(ws))).toISOString().slice(0, 10)}`
    }
    const groups = new Map<string, string[]>()
    for (const key of new Set([...before.keys(), ...mid.keys(), ...after.keys()])) {
      const g = siteDay(key)
      groups.set(g, [...(groups.get(g) ?? []), key])
    }
    const state = new Map<string, 'before' | 'after' | 'mixed'>()
    const changed: string[] = []
    for (const [g, keys] of groups) {
      const same = (a: Map<string, Cell>, b: Map<string, Cell>) =>
        keys.every((k) => JSON.stringify(a.get(k)) === JSON.stringify(b.get(k)))
      if (!same(before, after)) changed.push(g)
      state.set(g, same(mid, before) ? 'before' : same(mid, after) ? 'after' : 'mixed')
    }
    expect([...state].filter(([, s]) => s === 'mixed')).toEqual([])
    // The new history changed some site-day, and the kill left it with its previous numbers.
    expect(changed.length).toBeGreaterThan(0)
    expect(changed.some((g) => state.get(g) === 'before')).toBe(true)
  })
})

/** Imports more history for history.test (the next rebuild changes its numbers); archived. */
async function importMoreHistory(seed: number, events: number, name: string): Promise<GeneratedEvent[]> {
  const more = generateWorkload({
    seed,
    sites: ['history.test'],
    events,
    start: new Date(HISTORY_FROM),
    spanMs: HISTORY_TO - HISTORY_FROM,
    lateShare: 0,
  })
  const file = await writeNdjson(name, more.events)
  const imported = await importFile(config, logger, {
    file,
    siteId: 'history.test',
    normalize: normalizer('history.test'),
  })
  expect(imported.accepted).toBe(more.events.length)
  await waitCaughtUp(config, cassandra)
  await waitArchived()
  return more.events
}

/** The next rebuild of the wide range succeeds and counts the history with `more` added. */
async function rebuildCountsHistory(more: readonly GeneratedEvent[]): Promise<void> {
  const next = await rebuild(config, logger, { from: WIDE_FROM, to: WIDE_TO, waitForLeaseMs: 15_000 })
  expect(next.status).toBe('succeeded')
  history.push(...more)
  await expectHistoryCounted()
}

/** The stored numbers of history.test over the wide range are the truth of all its history. */
async function expectHistoryCounted(): Promise<void> {
  expect(
    await compareWithTruth(
      cassandra,
      config.stream.hllPrecision,
      truthOf(history, ['history.test']),
      ['history.test'],
      WIDE_FROM,
      WIDE_TO,
    ),
  ).toEqual([])
}

/** Runs `tally rebuild` over the wide range and kills it (SIGKILL) at the first progress `when` accepts. */
async function rebuildKilledWhen(
  extraArgs: string[],
  when: (p: RebuildProgress) => boolean,
): Promise<RebuildProgress | undefined> {
  const child = spawnRebuild([
    '--from',
    new Date(WIDE_FROM).toISOString(),
    '--to',
    new Date(WIDE_TO).toISOString(),
    '--lease-ttl-ms',
    '3000',
    ...extraArgs,
  ])
  let killedAt: RebuildProgress | undefined
  for await (const line of createInterface({ input: child.process.stdout! })) {
    const p = (JSON.parse(line) as { progress?: RebuildProgress }).progress
    if (p && when(p)) {
      child.process.kill('SIGKILL')
      killedAt = p
      break
    }
  }
  expect((await child.exited).signal).toBe('SIGKILL')
  return killedAt
}

let spawnedRebuilds = 0

/** `node dist/app/run-rebuild.js …` (what `tally rebuild` runs); its stderr goes to test-artifacts/. */
function spawnRebuild(args: string[]): {
  process: ChildProcess
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
} {
  mkdirSync('test-artifacts', { recursive: true })
  const log = createWriteStream(
    join('test-artifacts', `rebuild-kill-${process.pid}-${++spawnedRebuilds}.log`),
  )
  const child = spawn(process.execPath, ['dist/app/run-rebuild.js', ...args], {
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      LOG_LEVEL: 'info',
      ...envOf(config),
      TALLY_DATA_DIR: dataDir,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  child.stderr?.pipe(log)
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  )
  return { process: child, exited }
}
