import { randomBytes } from 'node:crypto'
import { inject } from 'vitest'
import { dropTestKeyspace } from '../../core/cassandra/migrate.js'
import { loadConfig, type TallyConfig } from '../../core/config.js'
import { createKafka } from '../../core/kafka/client.js'

/** A unique lower-case suffix for test resource names. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`
}

/**
 * A configuration pointing at the test servers with a keyspace and topics of its own, so tests
 * never see each other's data. `env` adds or overrides variables.
 */
export function testConfig(env: Record<string, string> = {}): TallyConfig {
  const id = uniqueName('t')
  return loadConfig({
    KAFKA_BROKERS: inject('kafkaBrokers').join(','),
    CASSANDRA_CONTACT_POINTS: inject('cassandraContactPoints').join(','),
    CASSANDRA_KEYSPACE: `tally_test_${id.slice(2)}`,
    TALLY_TOPIC_RAW: `test.${id}.raw`,
    TALLY_TOPIC_DEAD_LETTER: `test.${id}.dlq`,
    TALLY_TOPIC_PROGRESS: `test.${id}.progress`,
    // A group of its own: test runs sharing a broker must not share the stream workers' group.
    TALLY_STREAM_GROUP: `test.${id}.aggregate`,
    // And of the archivers: a chaos test's archivers must not join another test's group.
    TALLY_ARCHIVE_GROUP: `test.${id}.archive`,
    KAFKA_PARTITIONS: '3',
    LOG_LEVEL: 'silent',
    ...env,
  })
}

/** The environment a child `tally` process needs to use the same test resources. */
export function envOf(config: TallyConfig): Record<string, string> {
  return {
    KAFKA_BROKERS: config.kafka.brokers.join(','),
    CASSANDRA_CONTACT_POINTS: config.cassandra.contactPoints.join(','),
    CASSANDRA_KEYSPACE: config.cassandra.keyspace,
    TALLY_TOPIC_RAW: config.kafka.topicRaw,
    TALLY_TOPIC_DEAD_LETTER: config.kafka.topicDeadLetter,
    TALLY_TOPIC_PROGRESS: config.kafka.topicProgress,
    TALLY_STREAM_GROUP: config.stream.group,
    TALLY_ARCHIVE_GROUP: config.archive.group,
    KAFKA_PARTITIONS: String(config.kafka.partitions),
  }
}

/** Drops the test keyspace (guarded to tally_test_* names) and deletes the test topics. */
export async function cleanup(config: TallyConfig): Promise<void> {
  await dropTestKeyspace(config.cassandra)
  const admin = createKafka(config.kafka).admin()
  await admin.connect()
  try {
    const existing = new Set(await admin.listTopics())
    const mine = [config.kafka.topicRaw, config.kafka.topicDeadLetter, config.kafka.topicProgress].filter(
      (t) => existing.has(t),
    )
    if (mine.length > 0) await admin.deleteTopics({ topics: mine })
  } finally {
    await admin.disconnect()
  }
}

/** Polls `check` until it returns a value other than undefined, or fails after `timeoutMs`. */
export async function eventually<T>(
  check: () => Promise<T | undefined>,
  timeoutMs = 30_000,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let lastErr: unknown
  while (Date.now() < deadline) {
    try {
      const v = await check()
      if (v !== undefined) return v
    } catch (err) {
      lastErr = err
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? `: ${String(lastErr)}` : ''}`,
  )
}

/** Reads `count` messages of a topic from the beginning (fails after `timeoutMs`). */
export async function readTopic(
  config: TallyConfig,
  topic: string,
  count: number,
  timeoutMs = 30_000,
): Promise<
  Array<{ key: string; value: string; headers: Record<string, string>; partition: number; offset: string }>
> {
  const kafka = createKafka(config.kafka)
  const consumer = kafka.consumer({ groupId: uniqueName('reader') })
  const out: Array<{
    key: string
    value: string
    headers: Record<string, string>
    partition: number
    offset: string
  }> = []
  await consumer.connect()
  try {
    await consumer.subscribe({ topic, fromBeginning: true })
    await consumer.run({
      eachMessage: async ({ message, partition }) => {
        const headers: Record<string, string> = {}
        for (const [k, v] of Object.entries(message.headers ?? {}))
          if (v !== undefined) headers[k] = String(v)
        out.push({
          key: message.key?.toString() ?? '',
          value: message.value?.toString() ?? '',
          headers,
          partition,
          offset: message.offset,
        })
      },
    })
    await eventually(
      async () => (out.length >= count ? true : undefined),
      timeoutMs,
      `${count} messages in ${topic}`,
    )
  } finally {
    await consumer.disconnect()
  }
  return out
}
