import { afterAll, describe, expect, it } from 'vitest'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { migrateCassandra } from '../../core/cassandra/migrate.js'
import { createKafka } from '../../core/kafka/client.js'
import { KafkaBatchingProducer } from '../../core/kafka/producer.js'
import { migrate } from '../../core/migrate.js'
import { cleanup, eventually, testConfig, uniqueName } from '../helpers/context.js'
import { assertServicesAnswer } from '../helpers/services.js'

const config = testConfig()
afterAll(() => cleanup(config))

describe('foundation against real Kafka and Cassandra', () => {
  it('migrate creates the keyspace, tables and topics, and a second run is a no-op', async () => {
    const first = await migrate(config)
    expect(first.cassandra.keyspaceCreated).toBe(true)
    expect(first.cassandra.applied.length).toBeGreaterThan(0)
    expect(first.topicsCreated.sort()).toEqual(
      [config.kafka.topicDeadLetter, config.kafka.topicProgress, config.kafka.topicRaw].sort(),
    )

    const second = await migrate(config)
    expect(second.cassandra.keyspaceCreated).toBe(false)
    expect(second.cassandra.applied).toEqual([])
    expect(second.cassandra.alreadyApplied).toBe(first.cassandra.applied.length)
    expect(second.topicsCreated).toEqual([])

    const admin = createKafka(config.kafka).admin()
    await admin.connect()
    const meta = await admin.fetchTopicMetadata({ topics: [config.kafka.topicRaw] })
    await admin.disconnect()
    expect(meta.topics[0]?.partitions.length).toBe(config.kafka.partitions)
  })

  it('refuses a migration whose file changed after it was applied', async () => {
    const migrations = [
      {
        version: 9001,
        name: 'probe',
        checksum: 'aaaa',
        statements: ['CREATE TABLE IF NOT EXISTS probe (k int PRIMARY KEY)'],
      },
    ]
    await migrateCassandra(config.cassandra, migrations)
    await expect(
      migrateCassandra(config.cassandra, [{ ...migrations[0]!, checksum: 'bbbb' }]),
    ).rejects.toMatchObject({ code: 'TALLY_ERR_MIGRATION_CHANGED' })
  })

  it('writes and reads a row with a prepared statement', async () => {
    await migrate(config)
    const client = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
    try {
      await client.execute(
        'INSERT INTO sites (site_id, domain, origins, created_at) VALUES (?, ?, ?, ?)',
        ['site-1', 'example.com', ['https://example.com'], new Date('2026-01-01T00:00:00Z')],
        { prepare: true },
      )
      const rs = await client.execute(
        'SELECT domain, origins, created_at FROM sites WHERE site_id = ?',
        ['site-1'],
        { prepare: true },
      )
      const row = rs.first()
      expect(row.get('domain')).toBe('example.com')
      expect(row.get('origins')).toEqual(['https://example.com'])
      expect((row.get('created_at') as Date).toISOString()).toBe('2026-01-01T00:00:00.000Z')
    } finally {
      await client.shutdown()
    }
  })

  it('round-trips messages through Kafka with a consumer group and committed offsets', async () => {
    await migrate(config)
    const kafka = createKafka(config.kafka)
    const producer = new KafkaBatchingProducer(kafka, { lingerMs: 5 })
    const topic = config.kafka.topicRaw
    const sent = Array.from({ length: 200 }, (_, i) => ({
      key: `visitor-${i % 17}`,
      value: Buffer.from(JSON.stringify({ i })),
      headers: { traceparent: `t-${i}` },
    }))
    // Concurrent appends share batches; each resolves only after acks=all.
    await Promise.all(sent.map((r) => producer.append(topic, [r])))
    await producer.close()

    const groupId = uniqueName('group')
    const received = new Map<number, string>()
    const consumer = kafka.consumer({ groupId, sessionTimeout: 10_000, heartbeatInterval: 1000 })
    await consumer.connect()
    await consumer.subscribe({ topic, fromBeginning: true })
    await consumer.run({
      autoCommit: false,
      eachBatch: async ({ batch, resolveOffset, commitOffsetsIfNecessary }) => {
        for (const m of batch.messages) {
          const body = JSON.parse(m.value!.toString()) as { i: number }
          received.set(body.i, m.headers?.traceparent?.toString() ?? '')
          resolveOffset(m.offset)
        }
        await consumer.commitOffsets([
          { topic, partition: batch.partition, offset: String(Number(batch.lastOffset()) + 1) },
        ])
        await commitOffsetsIfNecessary()
      },
    })
    await eventually(
      async () => (received.size === sent.length ? true : undefined),
      30_000,
      'all messages consumed',
    )
    await consumer.disconnect()
    for (let i = 0; i < sent.length; i++) expect(received.get(i)).toBe(`t-${i}`)

    const admin = kafka.admin()
    await admin.connect()
    const [offsets] = await admin.fetchOffsets({ groupId, topics: [topic] })
    await admin.disconnect()
    const committed = offsets!.partitions.reduce((sum, p) => sum + Number(p.offset), 0)
    expect(committed).toBe(sent.length)
  })

  it('fails loudly, naming the server, when a service does not answer', async () => {
    await expect(
      assertServicesAnswer({ kafkaBrokers: ['127.0.0.1:1'], cassandraContactPoints: ['127.0.0.1:2'] }, 1000),
    ).rejects.toThrow(/cassandra: no answer from 127\.0\.0\.1:2[\s\S]*|kafka: no answer from 127\.0\.0\.1:1/)
  })
})
