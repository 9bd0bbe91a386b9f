import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateWorkload, truthOf } from '../../bench/workload.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { createKafka } from '../../core/kafka/client.js'
import { KafkaBatchingProducer } from '../../core/kafka/producer.js'
import { createLogger } from '../../core/log.js'
import { migrate } from '../../core/migrate.js'
import type { Site } from '../../core/ports/site-store.js'
import { startStream } from '../../stream/role.js'
import { cleanup, testConfig } from '../helpers/context.js'
import { compareWithTruth, feed, ingestApp, lateInRealTime, waitCaughtUp } from '../helpers/stream.js'

const config = testConfig({ TALLY_FLUSH_INTERVAL_MS: '200', TALLY_GRACE_MS: '300000', PORT: '0' })
const logger = createLogger('silent')
const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
const producer = new KafkaBatchingProducer(createKafka(config.kafka))
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
    )
    expect(mismatches).toEqual([])
    const total = sites.reduce((n, s) => n + (onTime.sites[s.siteId]?.events ?? 0), 0)
    expect(total).toBeGreaterThan(1000)
  })
})
