import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startArchiver, startStream } from '../../app/start.js'
import { generateWorkload, truthOf } from '../../bench/workload.js'
import { archiveKey, batchPaths } from '../../core/archive/paths.js'
import { listSegments } from '../../core/archive/segment-file.js'
import { readRawSegment, readSegment } from '../../core/archive/segment-reader.js'
import { CassandraAggregateReader } from '../../core/cassandra/aggregate-reader.js'
import { CassandraArchiveStateStore } from '../../core/cassandra/batch-store.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { createKafka } from '../../core/kafka/client.js'
import { KafkaBatchingProducer } from '../../core/kafka/producer.js'
import { createLogger } from '../../core/log.js'
import { migrate } from '../../core/migrate.js'
import type { LogRecord } from '../../core/ports/event-log.js'
import type { Site } from '../../core/ports/site-store.js'
import { toLogRecord } from '../../core/record/codec.js'
import { recordHeaders } from '../../core/record/headers.js'
import { FORMAT_HEADER, packedHeaders } from '../../core/record/packed.js'
import { COLUMNS } from '../../schemas/arrow.js'
import type { RawEventV1 } from '../../schemas/events.js'
import { cleanup, eventually, readTopic, testConfig } from '../helpers/context.js'
import { compareWithTruth, feed, ingestApp, waitCaughtUp } from '../helpers/stream.js'

/**
 * Format 2 (packed records) next to format 1 in one raw topic: the stream and the archiver read both
 * exactly, and one bad event of a packed record is dead-lettered alone with its position.
 */

const logger = createLogger('silent')
let dataDir: string
let config: ReturnType<typeof testConfig>
let cassandra: ReturnType<typeof createCassandraClient>
/** Format 1: one record per event, as ingest wrote before packing. */
let v1: KafkaBatchingProducer
/** Format 2, with the configured bounds (TALLY_PACK_MAX_*). */
let v2: KafkaBatchingProducer
const sites: Site[] = []

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'tally-packed-test-'))
  config = testConfig({
    KAFKA_PARTITIONS: '4',
    TALLY_DATA_DIR: dataDir,
    TALLY_FLUSH_INTERVAL_MS: '200',
    TALLY_GRACE_MS: '300000',
  })
  expect(config.ingest.pack).toBeDefined()
  await migrate(config)
  cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await cassandra.connect()
  v1 = new KafkaBatchingProducer(createKafka(config.kafka))
  v2 = new KafkaBatchingProducer(createKafka(config.kafka), { pack: config.ingest.pack! })
  const store = new CassandraSiteStore(cassandra)
  for (const id of ['packed-one.test', 'packed-two.test'])
    sites.push((await store.create({ siteId: id, domain: id, origins: [] })).site)
})

afterAll(async () => {
  await v1?.close()
  await v2?.close()
  await cassandra?.shutdown()
  await cleanup(config)
  await rm(dataDir, { recursive: true, force: true })
})

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

describe('packed raw records (format 2) beside format 1', () => {
  it('a mixed topic is counted by the stream and archived by the archiver exactly', async () => {
    const now = Date.now()
    const workload = generateWorkload({
      seed: 22,
      sites: sites.map((s) => s.siteId),
      events: 3000,
      start: new Date(now - 4 * 60_000),
      spanMs: 3 * 60_000,
      lateShare: 0,
    })
    expect(workload.events.some((e) => e.isDuplicate)).toBe(true)
    const keyOf = (siteId: string) => sites.find((s) => s.siteId === siteId)!.writeKey
    const old = await ingestApp(config, v1, sites, logger)
    const packed = await ingestApp(config, v2, sites, logger)
    // Alternating runs of the workload through the old and the new writer: a visitor's events and a
    // duplicate's copies end up in records of both formats, in order.
    const events = workload.events
    const run = 250
    for (let i = 0; i < events.length; i += run)
      expect(await feed((i / run) % 2 === 0 ? old : packed, events.slice(i, i + run), keyOf)).toBe(
        Math.min(run, events.length - i),
      )
    await old.close()
    await packed.close()
    const ends = await endOffsets()
    const records = [...ends.values()].reduce((a, b) => a + b, 0)
    // Half the events went one record each; the other half shared records.
    expect(records).toBeGreaterThan(events.length / 2)
    expect(records).toBeLessThan(events.length)
    const formats = await readTopic(config, config.kafka.topicRaw, records)
    expect(formats.filter((m) => m.headers[FORMAT_HEADER] === '2').length).toBeGreaterThan(0)

    const stream = await startStream(config, logger)
    const archiver = await startArchiver(config, logger, { flushIntervalMs: 200 })
    try {
      await waitCaughtUp(config, cassandra)
      const archive = new CassandraArchiveStateStore(cassandra)
      const key = archiveKey(config.archive.group, config.kafka.topicRaw)
      await eventually(
        async () => {
          const progress = await archive.progress(key, ends.size)
          return [...ends].every(
            ([p, end]) => (progress.find((x) => x.partition === p)?.nextOffset ?? 0) >= end,
          )
            ? true
            : undefined
        },
        90_000,
        'the archive to reach the end of the raw topic',
      )
    } finally {
      await archiver.close()
      await stream.close()
    }

    // The stream: every number equals the truth computed from the events posted.
    const truth = truthOf(
      events,
      sites.map((s) => s.siteId),
    )
    const mismatches = await compareWithTruth(
      cassandra,
      config.stream.hllPrecision,
      truth,
      sites.map((s) => s.siteId),
      now - 2 * 86_400_000,
      now + 86_400_000,
      events,
    )
    expect(mismatches).toEqual([])

    // The archive: every posted event once (duplicates are copies the rebuild drops), byte for byte
    // what the log holds for it.
    const posted = new Map<string, number>()
    for (const e of events) {
      const k = `${e.siteId}|${e.payload.messageId}`
      posted.set(k, (posted.get(k) ?? 0) + 1)
    }
    const archived = new Map<string, number>()
    const topicDir = batchPaths(config).topicDir
    for (const day of await readdir(topicDir)) {
      if (day.startsWith('_')) continue
      for (const hour of await readdir(join(topicDir, day))) {
        const start = Date.parse(`${day}T${hour}:00:00Z`)
        for (const ref of (await listSegments(topicDir, start, start + 1)).segments) {
          const cols = await readSegment(ref)
          const raw = (await readRawSegment(cols)).getChild(COLUMNS.raw)!
          for (let i = 0; i < cols.rows; i++) {
            const e = JSON.parse(Buffer.from(raw.get(i) as Uint8Array).toString()) as RawEventV1
            const k = `${e.siteId}|${e.messageId}`
            archived.set(k, (archived.get(k) ?? 0) + 1)
          }
        }
      }
    }
    expect(archived).toEqual(posted)
  })

  it('dead-letters one bad event of a packed record alone, with its position; a corrupt frame whole', async () => {
    const site = sites[0]!
    const at = new Date().toISOString()
    const traceOf = (n: number) => `00-${String(n).padStart(32, 'a')}-00f067aa0ba902b7-01`
    const event = (id: string, path: string): RawEventV1 => ({
      v: 1,
      siteId: site.siteId,
      messageId: id,
      messageIdAssigned: false,
      type: 'page',
      anonymousId: 'packed-visitor',
      properties: { path },
      context: {},
      timestamp: at,
      receivedAt: at,
      ua: { browser: 'Firefox', os: 'Linux', device: 'desktop' },
      bot: false,
    })
    const withTrace = (n: number, e: RawEventV1): LogRecord =>
      toLogRecord(
        e,
        recordHeaders(site.siteId, { traceparent: traceOf(n), traceId: traceOf(n).slice(3, 35) }, 'r'),
        Date.now(),
      )
    const bad = withTrace(2, { ...event('p-bad', '/bad'), ua: 'not an object' } as unknown as RawEventV1)
    const before = await endOffsets()
    // One append, one visitor: one packed record of three events, the bad one in the middle.
    await v2.append(config.kafka.topicRaw, [
      withTrace(1, event('p-1', '/packed-good')),
      bad,
      withTrace(3, event('p-3', '/packed-good')),
    ])
    // A record that says format 2 but whose frame is cut.
    await v1.append(config.kafka.topicRaw, [
      { key: `${site.siteId}:packed-visitor`, value: Buffer.from([2, 0, 1, 0]), headers: packedHeaders() },
    ])
    const after = await endOffsets()
    const grown = [...after].filter(([p, end]) => end > (before.get(p) ?? 0))
    // Both records in the visitor's partition, one record each.
    expect(grown).toHaveLength(1)
    const [partition, end] = grown[0]!
    expect(end - before.get(partition)!).toBe(2)
    const packedOffset = before.get(partition)!

    const stream = await startStream(config, logger)
    try {
      await waitCaughtUp(config, cassandra)
    } finally {
      await stream.close()
    }
    const dead = await readTopic(config, config.kafka.topicDeadLetter, 2)
    const bodies = dead.map(
      (m) =>
        ({ ...JSON.parse(m.value), headers: m.headers }) as Record<string, unknown> & {
          headers: Record<string, string>
        },
    )
    const badOne = bodies.find((b) => b.code === 'TALLY_ERR_SCHEMA_INVALID')!
    expect(badOne).toMatchObject({
      sourcePartition: partition,
      sourceOffset: packedOffset,
      sourceIndex: 1,
      traceparent: traceOf(2),
      requestId: 'r',
    })
    expect(Buffer.from(String(badOne.original), 'base64').equals(bad.value)).toBe(true)
    expect(badOne.headers[FORMAT_HEADER]).toBeUndefined()
    const cut = bodies.find((b) => b.code === 'TALLY_ERR_CORRUPT_FRAME')!
    expect(cut).toMatchObject({ sourcePartition: partition, sourceOffset: packedOffset + 1, sourceIndex: 0 })
    expect(String(cut.reason)).toMatch(/runs past the end/)
    expect(bodies).toHaveLength(2)
    // The good events around the bad one were counted, once each.
    const reader = new CassandraAggregateReader(cassandra, config.stream.hllPrecision)
    const now = Date.now()
    const paths = await reader.breakdown(site.siteId, 'day', 'path', now - 2 * 86_400_000, now + 86_400_000)
    expect(paths.get('/packed-good')?.events).toBe(2)
    expect(paths.get('/bad')).toBeUndefined()
  })
})
