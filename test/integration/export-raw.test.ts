import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { tableFromIPC } from 'apache-arrow'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startArchiver } from '../../app/start.js'
import type { RunningArchiver } from '../../batch/archive-role.js'
import { type GeneratedEvent, generateWorkload } from '../../bench/workload.js'
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
import { archiveRawEventSource, type RawExportMeta } from '../../query/export-raw.js'
import { CheckpointFreshness } from '../../query/freshness.js'
import { cleanup, eventually, readTopic, testConfig } from '../helpers/context.js'
import { feed, ingestApp } from '../helpers/stream.js'

/**
 * Raw-event export end to end: a generated workload (with client retries) posted through ingest
 * into the real raw topic, archived by the real archiver into Arrow segments, then exported through
 * the query API and compared with what was sent and with what the log holds.
 */

const HOUR = 3_600_000
const logger = createLogger('silent')

let dataDir: string
let config: ReturnType<typeof testConfig>
let cassandra: ReturnType<typeof createCassandraClient>
let producer: KafkaBatchingProducer
let archiver: RunningArchiver
let offsets: KafkaOffsets
let query: FastifyInstance
const sites: Site[] = []
const tokens = new Map<string, string>()
let events: GeneratedEvent[] = []
let start = 0
/** What the log holds, by `partition:offset`. */
const log = new Map<string, string>()
/** The first copy the log received of each `site|messageId`: lowest (partition, offset). */
const firstCopy = new Map<string, [number, number]>()

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'tally-export-raw-test-'))
  config = testConfig({ KAFKA_PARTITIONS: '3', TALLY_DATA_DIR: dataDir, PORT: '0' })
  await migrate(config)
  cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await cassandra.connect()
  producer = new KafkaBatchingProducer(createKafka(config.kafka))
  const store = new CassandraSiteStore(cassandra)
  for (const id of ['raw-a.test', 'raw-b.test']) {
    const created = await store.create({ siteId: id, domain: id, origins: [] })
    sites.push(created.site)
    tokens.set(id, created.readToken)
  }
  archiver = await startArchiver(config, logger, { flushIntervalMs: 200, port: 0 })

  start = Math.floor(Date.now() / HOUR) * HOUR - 3 * HOUR
  const workload = generateWorkload({
    seed: 11,
    sites: sites.map((s) => s.siteId),
    events: 1500,
    start: new Date(start),
    spanMs: 3 * HOUR,
    lateShare: 0,
    duplicateShare: 0.08,
  })
  events = workload.events
  const ingest = await ingestApp(config, producer, sites, logger)
  await feed(ingest, events, (id) => sites.find((s) => s.siteId === id)!.writeKey)
  await ingest.close()

  // The archive holds the whole raw topic.
  offsets = new KafkaOffsets(createKafka(config.kafka))
  const archiveState = new CassandraArchiveStateStore(cassandra)
  const key = archiveKey(config.archive.group, config.kafka.topicRaw)
  const ends = await offsets.endOffsets(config.kafka.topicRaw)
  expect([...ends.values()].reduce((a, b) => a + b, 0)).toBe(events.length)
  await eventually(
    async () => {
      const progress = await archiveState.progress(key, ends.size)
      for (const [p, end] of ends)
        if ((progress.find((x) => x.partition === p)?.nextOffset ?? 0) < end) return undefined
      return true
    },
    90_000,
    'the archive to hold the whole raw topic',
  )
  for (const m of await readTopic(config, config.kafka.topicRaw, events.length)) {
    log.set(`${m.partition}:${m.offset}`, m.value)
    const v = JSON.parse(m.value) as { siteId: string; messageId: string }
    const at: [number, number] = [m.partition, Number(m.offset)]
    const k = `${v.siteId}|${v.messageId}`
    const f = firstCopy.get(k)
    if (!f || at[0] < f[0] || (at[0] === f[0] && at[1] < f[1])) firstCopy.set(k, at)
  }

  const reader = new CassandraAggregateReader(cassandra, config.stream.hllPrecision)
  query = await buildQueryApp({
    reader,
    auth: new ReadAccessCache(new CassandraSiteStore(cassandra)),
    freshness: new CheckpointFreshness(reader, {
      group: config.stream.group,
      topic: config.kafka.topicRaw,
      partitions: config.kafka.partitions,
      graceMs: config.stream.graceMs,
      cacheMs: 0,
    }),
    logger,
    rawEvents: archiveRawEventSource(config, { archive: archiveState, offsets }),
  })
})

afterAll(async () => {
  await query?.close()
  await archiver?.close()
  await offsets?.close()
  await producer?.close()
  await cassandra?.shutdown()
  await cleanup(config)
  await rm(dataDir, { recursive: true, force: true })
})

const A = () => sites[0]!.siteId
const B = () => sites[1]!.siteId
const tsOf = (e: GeneratedEvent) => Date.parse(e.payload.timestamp)

/** The sent events of `site` with timestamp in [from, to), one per messageId (retries are copies). */
function sent(site: string, fromMs: number, toMs: number): Map<string, GeneratedEvent> {
  const out = new Map<string, GeneratedEvent>()
  for (const e of events) {
    if (e.siteId !== site || tsOf(e) < fromMs || tsOf(e) >= toMs) continue
    if (!out.has(e.payload.messageId)) out.set(e.payload.messageId, e)
  }
  return out
}

async function exportEvents(params: Record<string, string>, site = String(params.site)) {
  return query.inject({
    method: 'GET',
    url: `/v1/export/events?${new URLSearchParams(params)}`,
    headers: { authorization: `Bearer ${tokens.get(site)}` },
  })
}

interface EventLine {
  type: 'event'
  partition: number
  offset: number
  traceparent: string | null
  request_id: string | null
  event: Record<string, unknown> & { messageId: string; siteId: string; timestamp: string }
}

describe('raw-event export from the real archive', () => {
  it('streams as NDJSON every event sent for the site and range, once, as the log holds it', async () => {
    // Not aligned to hours: the range cuts through the first and the last hour read.
    const fromMs = start + 40 * 60_000 + 17_000
    const toMs = start + 2 * HOUR + 5 * 60_000
    const want = sent(A(), fromMs, toMs)
    const retried = events.filter((e) => e.isDuplicate && want.has(e.payload.messageId))
    expect(retried.length, 'client retries inside the range').toBeGreaterThan(3)
    const asked = Date.now()
    const res = await exportEvents({
      site: A(),
      from: new Date(fromMs).toISOString(),
      to: new Date(toMs).toISOString(),
    })
    expect(res.statusCode, res.body).toBe(200)
    const lines = res.body
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>)
    const meta = lines[0] as unknown as RawExportMeta & { type: string }
    expect(lines[lines.length - 1]).toEqual({ type: 'end', events: want.size })
    const got = lines.slice(1, -1) as unknown as EventLine[]
    expect(got.map((l) => l.event.messageId).sort()).toEqual([...want.keys()].sort())
    for (const line of got) {
      const e = want.get(line.event.messageId)!
      // As the log holds it, byte for byte; each retry left out is a later copy in the same partition.
      expect(line.event).toEqual(JSON.parse(log.get(`${line.partition}:${line.offset}`)!))
      expect(line.event.siteId).toBe(A())
      expect(line.event.timestamp).toBe(new Date(tsOf(e)).toISOString())
      expect(line.event.anonymousId).toBe(e.payload.anonymousId)
      expect(line.event.type).toBe(e.payload.type)
      expect(line.request_id).toMatch(/\S/)
      const first = firstCopy.get(`${A()}|${line.event.messageId}`)!
      expect([line.partition, line.offset]).toEqual(first)
    }
    expect(meta).toMatchObject({
      type: 'meta',
      site: A(),
      from: new Date(fromMs).toISOString(),
      to: new Date(toMs).toISOString(),
      format: 'ndjson',
      archive: { partitions_expected: 3, partitions_reporting: 3 },
    })
    expect(meta.duplicates).toBeGreaterThanOrEqual(retried.length)
    // Every partition has archived the whole log: complete through the moment of the request.
    expect(Date.parse(meta.complete_through!)).toBeGreaterThanOrEqual(asked)
    expect(meta.archive.partitions.every((p) => p.next_offset === p.end_offset)).toBe(true)
    const received = Math.max(...[...log.values()].map((v) => Date.parse(JSON.parse(v).receivedAt)))
    expect(Date.parse(meta.archive.received_through!)).toBe(received)
  })

  it('streams the same events as Arrow IPC, and keeps sites apart', async () => {
    const fromMs = start
    const toMs = start + 3 * HOUR
    for (const site of [A(), B()]) {
      const want = sent(site, fromMs, toMs)
      const res = await exportEvents({
        site,
        from: new Date(fromMs).toISOString(),
        to: new Date(toMs).toISOString(),
        format: 'arrow',
      })
      expect(res.statusCode).toBe(200)
      const table = tableFromIPC(res.rawPayload)
      expect(JSON.parse(table.schema.metadata.get('tally.meta')!)).toMatchObject({ site, format: 'arrow' })
      const rows = table.toArray().map((r) => r.toJSON() as Record<string, unknown>)
      expect(rows.map((r) => r.message_id).sort()).toEqual([...want.keys()].sort())
      for (const r of rows) {
        const e = want.get(r.message_id as string)!
        expect(r.site).toBe(site)
        expect(r.timestamp).toBe(tsOf(e))
        expect(r.bot).toBe(e.isBot)
        expect(r.visitor_id).toBe(String(e.payload.anonymousId ?? e.payload.userId ?? e.payload.messageId))
        expect(JSON.parse(r.json as string)).toEqual(
          JSON.parse(log.get(`${r.partition}:${Number(r.offset)}`)!),
        )
      }
    }
  })

  it('answers 403 for another site’s token and 400 naming the parameter', async () => {
    const range = { from: new Date(start).toISOString(), to: new Date(start + HOUR).toISOString() }
    const other = await exportEvents({ site: A(), ...range }, B())
    expect(other.statusCode).toBe(403)
    const bad = await exportEvents({
      site: A(),
      from: range.from,
      to: new Date(start + 800 * HOUR).toISOString(),
    })
    expect(bad.statusCode).toBe(400)
    expect(bad.json()).toMatchObject({ code: 'TALLY_ERR_RANGE_TOO_LARGE', where: 'to' })
  })
})
