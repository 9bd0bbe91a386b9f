import { type ChildProcess, spawn } from 'node:child_process'
import { createWriteStream, mkdirSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startArchiver } from '../../app/start.js'
import { decodeRecord } from '../../batch/decode.js'
import { generateWorkload } from '../../bench/workload.js'
import { archiveKey, batchPaths } from '../../core/archive/paths.js'
import {
  hourRelDir,
  listSegments,
  type SegmentRef,
  segmentFileName,
} from '../../core/archive/segment-file.js'
import { int64At, readRawSegment, readSegment } from '../../core/archive/segment-reader.js'
import { encodeSegment } from '../../core/archive/segment-writer.js'
import { CassandraArchiveStateStore } from '../../core/cassandra/batch-store.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { createKafka } from '../../core/kafka/client.js'
import { KafkaBatchingProducer } from '../../core/kafka/producer.js'
import { createLogger } from '../../core/log.js'
import { migrate } from '../../core/migrate.js'
import type { Site } from '../../core/ports/site-store.js'
import { COLUMNS } from '../../schemas/arrow.js'
import { cleanup, envOf, eventually, readTopic, testConfig } from '../helpers/context.js'
import { seeded } from '../helpers/processes.js'
import { feed, ingestApp } from '../helpers/stream.js'

const logger = createLogger('silent')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

let dataDir: string
let config: ReturnType<typeof testConfig>
let cassandra: ReturnType<typeof createCassandraClient>
let producer: KafkaBatchingProducer
const sites: Site[] = []

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'tally-archive-test-'))
  config = testConfig({
    KAFKA_PARTITIONS: '4',
    TALLY_DATA_DIR: dataDir,
    TALLY_STREAM_SESSION_TIMEOUT_MS: '6000',
  })
  await migrate(config)
  cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await cassandra.connect()
  producer = new KafkaBatchingProducer(createKafka(config.kafka))
  const store = new CassandraSiteStore(cassandra)
  for (const id of ['arch-one.test', 'arch-two.test'])
    sites.push((await store.create({ siteId: id, domain: id, origins: [] })).site)
})

afterAll(async () => {
  await producer?.close()
  await cassandra?.shutdown()
  await cleanup(config)
  await rm(dataDir, { recursive: true, force: true })
})

interface Child {
  child: ChildProcess
  logFile: string
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

let spawned = 0

/** `node dist/app/run-archiver.js` (what `tally archive` runs), logging to test-artifacts/. */
function spawnArchiver(): Child {
  mkdirSync('test-artifacts', { recursive: true })
  const logFile = join('test-artifacts', `archive-kill-${process.pid}-${++spawned}.log`)
  const out = createWriteStream(logFile)
  const child = spawn(
    process.execPath,
    ['dist/app/run-archiver.js', '--flush-interval-ms', '100', '--max-buffered-events', '60'],
    {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '',
        LOG_LEVEL: 'info',
        PORT: '0',
        ...envOf(config),
        TALLY_DATA_DIR: dataDir,
        TALLY_STREAM_SESSION_TIMEOUT_MS: '6000',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  child.stdout?.pipe(out)
  child.stderr?.pipe(out)
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  )
  return { child, logFile, exited }
}

async function waitForLog(p: Child, pattern: RegExp, timeoutMs = 60_000): Promise<void> {
  await eventually(
    async () => {
      if (p.child.exitCode !== null) throw new Error(`${p.logFile}: exited early`)
      return pattern.test(await readFile(p.logFile, 'utf8').catch(() => '')) ? true : undefined
    },
    timeoutMs,
    `${pattern} in ${p.logFile}`,
  )
}

async function endOffsets(): Promise<Map<number, number>> {
  const admin = createKafka(config.kafka).admin()
  await admin.connect()
  try {
    return new Map(
      (await admin.fetchTopicOffsets(config.kafka.topicRaw)).map((o) => [o.partition, Number(o.high)]),
    )
  } finally {
    await admin.disconnect()
  }
}

async function allSegments(topicDir: string): Promise<SegmentRef[]> {
  // Every hour folder that exists, whatever the events' timestamps.
  const out: SegmentRef[] = []
  for (const day of await readdir(topicDir)) {
    if (day.startsWith('_')) continue
    for (const hour of await readdir(join(topicDir, day))) {
      const start = Date.parse(`${day}T${hour}:00:00Z`)
      const listed = await listSegments(topicDir, start, start + 1)
      expect(listed.misnamed).toEqual([])
      out.push(...listed.segments)
    }
  }
  return out
}

describe('archiver (real Kafka, Cassandra, processes)', () => {
  it('keeps every event exactly once in the archive while archivers are SIGKILLed at random points', async () => {
    const seed = Date.now() % 100_000
    const random = seeded(seed)
    const now = Date.now()
    const workload = generateWorkload({
      seed: 3,
      sites: sites.map((s) => s.siteId),
      events: 3500,
      // Several event hours, so flushes write several segments at once.
      start: new Date(now - 3 * 3_600_000),
      spanMs: 3 * 3_600_000,
      lateShare: 0,
    })
    const app = await ingestApp(config, producer, sites, logger)
    const keyOf = (id: string) => sites.find((s) => s.siteId === id)!.writeKey
    let feedingDone = false
    const feeding = (async () => {
      const events = workload.events
      const size = Math.ceil(events.length / 80)
      for (let i = 0; i < events.length; i += size) {
        await feed(app, events.slice(i, i + size), keyOf)
        await sleep(400)
      }
      feedingDone = true
    })()
    // A second archiver runs too (killed once as well): partitions move between them on every kill.
    let steady = spawnArchiver()
    let victim = spawnArchiver()
    let kills = 0
    await waitForLog(victim, /archive partition restored/)
    while (!feedingDone) {
      // Killed once it owns partitions (after the group noticed the previous kill), mid-work.
      await waitForLog(victim, /archive partition restored/, 30_000)
      await sleep(200 + random() * 1500)
      victim.child.kill('SIGKILL')
      expect((await victim.exited).signal).toBe('SIGKILL')
      kills++
      if (kills === 3) {
        steady.child.kill('SIGKILL')
        await steady.exited
        steady = spawnArchiver()
      }
      victim = spawnArchiver()
    }
    await feeding
    await app.close()
    // The last archivers take the partitions over (rolling forward what the killed ones committed).
    await waitForLog(victim, /archive partition restored/)
    await waitForLog(steady, /archive partition restored/)
    const ends = await endOffsets()
    const total = [...ends.values()].reduce((a, b) => a + b, 0)
    expect(total).toBe(workload.events.length)
    const store = new CassandraArchiveStateStore(cassandra)
    const key = archiveKey(config.archive.group, config.kafka.topicRaw)
    await eventually(
      async () => {
        const progress = await store.progress(key, 4)
        return [...ends].every(
          ([p, end]) => (progress.find((x) => x.partition === p)?.nextOffset ?? 0) >= end,
        )
          ? true
          : undefined
      },
      120_000,
      'the archive to reach the end of the raw topic',
    )
    for (const p of [victim, steady]) {
      p.child.kill('SIGTERM')
      expect((await p.exited).code, p.logFile).toBe(0)
    }
    const epochs = await cassandra.execute(
      'SELECT epoch FROM archive_partitions WHERE archive = ? AND partition IN (0, 1, 2, 3)',
      [key],
      {
        prepare: true,
      },
    )
    expect(
      Math.max(...epochs.rows.map((r) => Number(r.get('epoch')))),
      `chaos seed ${seed}`,
    ).toBeGreaterThanOrEqual(4)
    expect(
      Math.min(...epochs.rows.map((r) => Number(r.get('epoch')))),
      `chaos seed ${seed}`,
    ).toBeGreaterThanOrEqual(3)
    // The kills interrupted real work: all of them hit while the log was being written.
    expect(kills, `chaos seed ${seed}`).toBeGreaterThanOrEqual(3)

    // Every record of the log is in exactly one closed segment, byte for byte.
    const topicDir = batchPaths(config).topicDir
    const seen = new Map<string, Buffer>()
    const segments = await allSegments(topicDir)
    expect(segments.length).toBeGreaterThan(20)
    for (const ref of segments) {
      const cols = await readSegment(ref)
      const raw = (await readRawSegment(cols)).getChild(COLUMNS.raw)!
      for (let i = 0; i < cols.rows; i++) {
        const id = `${ref.partition}:${int64At(cols.offset, i)}`
        expect(seen.has(id), `${id} archived twice (seed ${seed})`).toBe(false)
        seen.set(id, Buffer.from(raw.get(i) as Uint8Array))
      }
    }
    expect(seen.size, `chaos seed ${seed}`).toBe(total)
    const log = await readTopic(config, config.kafka.topicRaw, total)
    for (const m of log) expect(seen.get(`${m.partition}:${m.offset}`)?.toString()).toBe(m.value)
    // Nothing is left half-written.
    for (let p = 0; p < 4; p++)
      expect(await readdir(join(topicDir, '_staging', `p${p}`)).catch(() => [])).toEqual([])
  })

  it('rolls forward a commit whose renames a crash interrupted, deletes uncommitted staging files, resumes after the commit', async () => {
    // A topic of its own with one partition, so offsets are known.
    const dir = await mkdtemp(join(tmpdir(), 'tally-archive-rf-'))
    const cfg = testConfig({ KAFKA_PARTITIONS: '1', TALLY_DATA_DIR: dir })
    await migrate(cfg)
    const client = createCassandraClient(cfg.cassandra, { keyspace: cfg.cassandra.keyspace })
    await client.connect()
    const writer = new KafkaBatchingProducer(createKafka(cfg.kafka))
    let running: Awaited<ReturnType<typeof startArchiver>> | undefined
    try {
      const hour = Math.floor(Date.now() / 3_600_000) * 3_600_000
      const recordValue = (i: number) =>
        Buffer.from(
          JSON.stringify({
            v: 1,
            siteId: 'rf.test',
            messageId: `rf-${i}`,
            messageIdAssigned: false,
            type: 'page',
            anonymousId: 'rf-visitor',
            properties: { path: `/rf/${i}` },
            context: {},
            timestamp: new Date(hour + i * 1000).toISOString(),
            receivedAt: new Date(hour + i * 1000).toISOString(),
            ua: { browser: 'Firefox', os: 'Linux', device: 'desktop' },
            bot: false,
          }),
        )
      await writer.append(
        cfg.kafka.topicRaw,
        Array.from({ length: 8 }, (_, i) => ({
          key: 'rf',
          value: recordValue(i),
          headers: { 'tally-schema-version': '1' },
        })),
      )
      // What a crashed archiver left: offsets 0..4 written to staging and committed, not renamed;
      // and a staging file of a flush it never committed.
      const paths = batchPaths(cfg)
      const key = archiveKey(cfg.archive.group, cfg.kafka.topicRaw)
      const store = new CassandraArchiveStateStore(client)
      const crashed = await store.acquire(key, 0, 'crashed')
      const events = Array.from({ length: 5 }, (_, i) => {
        const d = decodeRecord({ offset: i, key: 'rf', value: recordValue(i), headers: {}, timestampMs: 0 })
        if (!d.ok) throw new Error(d.reason)
        return d.event
      })
      const enc = encodeSegment(events, {
        topic: cfg.kafka.topicRaw,
        partition: 0,
        hourStartMs: hour,
        firstOffset: 0,
        lastOffset: 4,
      })
      const final = `${hourRelDir(hour)}/${segmentFileName({ partition: 0, firstOffset: 0, lastOffset: 4, rows: 5, crc32: enc.crc32 })}`
      const staging = '_staging/p0/1-0-4-x.arrow.tmp'
      const rawFinal = final.replace(/\.arrow$/, '.raw.arrow')
      const rawStaging = '_staging/p0/1-0-4-x.raw.arrow.tmp'
      await mkdir(join(paths.topicDir, '_staging', 'p0'), { recursive: true })
      await writeFile(join(paths.topicDir, staging), enc.bytes)
      await writeFile(join(paths.topicDir, rawStaging), enc.raw.bytes)
      await writeFile(join(paths.topicDir, '_staging/p0/1-5-6-y.arrow.tmp'), 'never committed')
      expect(
        await store.commit(key, 0, crashed.epoch, {
          firstOffset: 0,
          nextOffset: 5,
          watermarkMs: hour,
          pending: new Map([
            [final, staging],
            [rawFinal, rawStaging],
          ]),
        }),
      ).toBe(true)

      running = await startArchiver(cfg, logger, { flushIntervalMs: 100, port: 0 })
      await eventually(
        async () => ((await store.read(key, 0))?.nextOffset === 8 ? true : undefined),
        60_000,
        'the archive to reach offset 8',
      )
      expect(await readdir(join(paths.topicDir, '_staging', 'p0'))).toEqual([])
      const offsets: number[] = []
      for (const ref of (await listSegments(paths.topicDir, hour, hour + 3_600_000)).segments) {
        const cols = await readSegment(ref)
        const raw = (await readRawSegment(cols)).getChild(COLUMNS.raw)!
        for (let i = 0; i < cols.rows; i++) {
          offsets.push(int64At(cols.offset, i))
          expect(Buffer.from(raw.get(i) as Uint8Array).equals(recordValue(int64At(cols.offset, i)))).toBe(
            true,
          )
        }
      }
      expect(offsets.sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7])
      // The crashed owner can no longer commit.
      expect(
        await store.commit(key, 0, crashed.epoch, {
          firstOffset: 8,
          nextOffset: 9,
          watermarkMs: 0,
          pending: new Map(),
        }),
      ).toBe(false)
      // Its lag is in the metrics.
      await eventually(
        async () =>
          /tally_archive_consumer_lag\{partition="0"\} 0/.test(await running!.registryText())
            ? true
            : undefined,
        20_000,
        'lag 0 in the metrics',
      )
    } finally {
      await running?.close()
      await writer.close()
      await client.shutdown()
      await cleanup(cfg)
      await rm(dir, { recursive: true, force: true })
    }
  })
})
