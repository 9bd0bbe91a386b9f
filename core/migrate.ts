import { type MigrateResult, migrateCassandra } from './cassandra/migrate.js'
import type { TallyConfig } from './config.js'
import { createKafka, ensureTopics, type TopicSpec } from './kafka/client.js'

export interface FullMigrateResult {
  cassandra: MigrateResult
  topicsCreated: string[]
  topics: TopicSpec[]
}

const DAY_MS = 24 * 60 * 60 * 1000
const MINUTE_MS = 60 * 1000

/** The topics Tally needs, sized from the configuration. */
export function topicSpecs(config: Pick<TallyConfig, 'kafka'>): TopicSpec[] {
  const { kafka } = config
  // With three or more replicas an acks=all write survives one broker loss only if two must ack.
  const minIsr = String(kafka.replicationFactor >= 3 ? 2 : 1)
  return [
    {
      topic: kafka.topicRaw,
      partitions: kafka.partitions,
      replicationFactor: kafka.replicationFactor,
      config: {
        'retention.ms': String(kafka.retentionMs),
        'min.insync.replicas': minIsr,
        'compression.type': 'producer',
      },
    },
    {
      topic: kafka.topicDeadLetter,
      partitions: Math.min(kafka.partitions, 3),
      replicationFactor: kafka.replicationFactor,
      config: { 'retention.ms': String(30 * DAY_MS), 'min.insync.replicas': minIsr },
    },
    {
      // Progress notices are read from the end by every query role and matter only for a moment:
      // one partition keeps them in order, and short segments let the retention actually delete
      // them (a segment goes only once it is closed).
      topic: kafka.topicProgress,
      partitions: 1,
      replicationFactor: kafka.replicationFactor,
      config: {
        'retention.ms': String(10 * MINUTE_MS),
        'segment.ms': String(10 * MINUTE_MS),
        'min.insync.replicas': minIsr,
      },
    },
  ]
}

/** `tally migrate`: Cassandra keyspace and tables, then Kafka topics. Idempotent. */
export async function migrate(config: Pick<TallyConfig, 'kafka' | 'cassandra'>): Promise<FullMigrateResult> {
  const cassandra = await migrateCassandra(config.cassandra)
  const topics = topicSpecs(config)
  const topicsCreated = await ensureTopics(createKafka(config.kafka), topics)
  return { cassandra, topicsCreated, topics }
}
