import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startStream } from '../../app/start.js'
import { generateWorkload, truthOf } from '../../bench/workload.js'
import { CassandraAggregateReader } from '../../core/cassandra/aggregate-reader.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { createKafka } from '../../core/kafka/client.js'
import { KafkaBatchingProducer } from '../../core/kafka/producer.js'
import { KafkaProgressListener } from '../../core/kafka/progress.js'
import { createLogger } from '../../core/log.js'
import { migrate } from '../../core/migrate.js'
import type { ProgressNotice } from '../../core/ports/progress-notices.js'
import type { Site } from '../../core/ports/site-store.js'
import { cleanup, eventually, readTopic, testConfig } from '../helpers/context.js'
import { compareWithTruth, feed, ingestApp, lateInRealTime, waitCaughtUp } from '../helpers/stream.js'

const config = testConfig({ TALLY_FLUSH_INTERVAL_MS: '200', TALLY_GRACE_MS: '300000', PORT: '0' })
const logger = createLogger('silent')
const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
const producer = new KafkaBatchingProducer(createKafka(config.kafka), {
  ...(config.ingest.pack ? { pack: config.ingest.pack } : {}),
})
const sites: Site[] = []

beforeAll(async () => {
  await migrate(config)
  await cassandra.connect()
  const store = new CassandraSiteStore(cassandra)
  for (const id of ['alpha.test', 'beta.test'])
    sites.push((await store.create({ siteId: id, domain: id, origins: [] })).site)
})

afterAll(async () => {
  await producer.close()
  await cassandra.shutdown()
  await cleanup(config)
})

describe('stream workers against real Kafka and Cassandra', () => {
  it('aggregates a generated workload exactly: duplicates once, bots apart, late events left to batch', async () => {
    const now = Date.now()
    const workload = generateWorkload({
      seed: 42,
      sites: sites.map((s) => s.siteId),
      events: 4000,
      start: new Date(now - 4 * 60_000),
      spanMs: 3 * 60_000,
      lateShare: 0.03,
      lateByMs: 20 * 60_000,
    })
    expect(workload.events.some((e) => e.isDuplicate)).toBe(true)
    expect(workload.events.some((e) => e.isBot)).toBe(true)
    expect(workload.events.some((e) => e.isLate)).toBe(true)
    const events = lateInRealTime(workload.events, 20 * 60_000)
    const app = await ingestApp(config, producer, sites, logger)
    const keyOf = (siteId: string) => sites.find((s) => s.siteId === siteId)!.writeKey
    const accepted = await feed(app, events, keyOf)
    expect(accepted).toBe(events.length)

    const stream = await startStream(config, logger)
    try {
      await waitCaughtUp(config, cassandra)
      const metrics = await stream.registryText()
      expect(metrics).toMatch(/tally_stream_records_total\{outcome="late"\} [1-9]/)
      expect(metrics).toMatch(/tally_stream_records_total\{outcome="duplicate"\} [1-9]/)
      expect(metrics).toMatch(/tally_stream_consumer_lag\{partition="\d+"\} 0/)
    } finally {
      await stream.close()
    }
    // The stream counts what was on time; late events wait for the batch rebuild.
    const onTime = truthOf(
      events.filter((e) => !e.isLate),
      sites.map((s) => s.siteId),
    )
    const from = now - 2 * 86_400_000
    const to = now + 86_400_000
    const mismatches = await compareWithTruth(
      cassandra,
      config.stream.hllPrecision,
      onTime,
      sites.map((s) => s.siteId),
      from,
      to,
      events.filter((e) => !e.isLate),
    )
    expect(mismatches).toEqual([])
    const total = sites.reduce((n, s) => n + (onTime.sites[s.siteId]?.events ?? 0), 0)
    expect(total).toBeGreaterThan(1000)
  })

  it('sends poison records to the dead-letter topic with reason, bytes, offset and trace id, and keeps the partition moving', async () => {
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
    const site = sites[0]!
    // Same key, so poison and good events share a partition.
    const key = `${site.siteId}:poison-visitor`
    const good = (id: string) => ({
      key,
      value: Buffer.from(
        JSON.stringify({
          v: 1,
          siteId: site.siteId,
          messageId: id,
          messageIdAssigned: false,
          type: 'page',
          anonymousId: 'poison-visitor',
          properties: { path: '/after-poison' },
          context: {},
          timestamp: new Date().toISOString(),
          receivedAt: new Date().toISOString(),
          ua: { browser: 'Firefox', os: 'Linux', device: 'desktop' },
          bot: false,
        }),
      ),
      headers: { traceparent, 'tally-schema-version': '1' },
    })
    await producer.append(config.kafka.topicRaw, [
      { key, value: Buffer.from('{not json'), headers: { traceparent, 'tally-schema-version': '1' } },
      { key, value: Buffer.from(JSON.stringify({ v: 1, siteId: site.siteId })), headers: { traceparent } },
      good('after-poison-1'),
      good('after-poison-2'),
    ])
    const stream = await startStream(config, logger)
    try {
      await waitCaughtUp(config, cassandra)
    } finally {
      await stream.close()
    }
    const dead = await readTopic(config, config.kafka.topicDeadLetter, 2)
    const bodies = dead.map((m) => JSON.parse(m.value) as Record<string, unknown>)
    expect(bodies.map((b) => b.code).sort()).toEqual(['TALLY_ERR_SCHEMA_INVALID', 'TALLY_ERR_UNDECODABLE'])
    for (const b of bodies) {
      expect(b.traceparent).toBe(traceparent)
      expect(b.sourceTopic).toBe(config.kafka.topicRaw)
      expect(typeof b.sourceOffset).toBe('number')
      expect(typeof b.reason).toBe('string')
    }
    const undecodable = bodies.find((b) => b.code === 'TALLY_ERR_UNDECODABLE')!
    expect(Buffer.from(String(undecodable.original), 'base64').toString()).toBe('{not json')
    // The good events behind the poison were counted.
    const reader = new CassandraAggregateReader(cassandra, config.stream.hllPrecision)
    // From two days back: the events may have been stamped just before midnight (a day window is
    // read when its start is in the range).
    const now = Date.now()
    const paths = await reader.breakdown(site.siteId, 'day', 'path', now - 2 * 86_400_000, now + 86_400_000)
    expect(paths.get('/after-poison')?.events).toBe(2)
  })

  it('announces each checkpoint it writes: the last notice of a partition is its stored checkpoint', async () => {
    const listener = new KafkaProgressListener(createKafka(config.kafka), {
      topic: config.kafka.topicProgress,
      group: config.stream.group,
      streamTopic: config.kafka.topicRaw,
      logger,
    })
    const heard: ProgressNotice[] = []
    listener.start((n) => heard.push(n))
    try {
      await eventually(async () => (listener.live() ? true : undefined), 15_000, 'the listener to be live')
      const workload = generateWorkload({
        seed: 11,
        sites: sites.map((s) => s.siteId),
        events: 300,
        start: new Date(Date.now() - 60_000),
        spanMs: 30_000,
        lateShare: 0,
      })
      const app = await ingestApp(config, producer, sites, logger)
      const keyOf = (siteId: string) => sites.find((s) => s.siteId === siteId)!.writeKey
      expect(await feed(app, workload.events, keyOf)).toBe(workload.events.length)
      const startedMs = Date.now()
      const stream = await startStream(config, logger)
      let metrics: string
      try {
        await waitCaughtUp(config, cassandra)
      } finally {
        // Closing flushes what is left and sends its notices before the publisher disconnects.
        await stream.close()
        metrics = await stream.registryText()
      }
      expect(metrics).toMatch(/tally_stream_progress_notices_total\{outcome="sent"\} [1-9]/)
      expect(metrics).not.toMatch(/tally_stream_progress_notices_total\{outcome="failed"\}/)
      const rs = await cassandra.execute(
        'SELECT partition, next_offset, epoch FROM stream_group_checkpoints WHERE consumer_group = ? AND topic = ?',
        [config.stream.group, config.kafka.topicRaw],
        { prepare: true },
      )
      const stored = rs.rows.map((r) => ({
        partition: Number(r.get('partition')),
        nextOffset: Number(r.get('next_offset')),
        epoch: Number(r.get('epoch')),
      }))
      expect(stored.length).toBe(config.kafka.partitions)
      // Every partition got new events, so every one was flushed and announced under this run's epoch.
      const last = await eventually(
        async () => {
          const byPartition = new Map<number, ProgressNotice>()
          for (const n of heard) byPartition.set(n.partition, n)
          const caughtUp = stored.every((cp) => byPartition.get(cp.partition)?.nextOffset === cp.nextOffset)
          return caughtUp ? byPartition : undefined
        },
        15_000,
        'a notice of the last checkpoint of every partition',
      )
      for (const cp of stored) {
        const n = last.get(cp.partition)!
        expect(n).toMatchObject({
          group: config.stream.group,
          topic: config.kafka.topicRaw,
          partition: cp.partition,
          nextOffset: cp.nextOffset,
          epoch: cp.epoch,
        })
        expect(n.writtenAtMs).toBeGreaterThanOrEqual(startedMs)
        expect(n.writtenAtMs).toBeLessThanOrEqual(Date.now())
      }
      // Notices follow the checkpoints of each partition: offsets never go back within an epoch.
      for (const cp of stored) {
        const offsets = heard.filter((n) => n.partition === cp.partition).map((n) => n.nextOffset)
        expect(offsets).toEqual([...offsets].sort((a, b) => a - b))
      }
    } finally {
      await listener.close()
    }
  })
})
