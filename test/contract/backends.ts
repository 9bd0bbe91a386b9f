import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { embeddedPorts } from '../../app/backend.js'
import { CassandraAggregateReader } from '../../core/cassandra/aggregate-reader.js'
import {
  CassandraArchiveStateStore,
  CassandraFinalRowStore,
  CassandraJobStore,
  CassandraLeaseStore,
} from '../../core/cassandra/batch-store.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { CassandraStreamStore } from '../../core/cassandra/stream-store.js'
import type { TallyConfig } from '../../core/config.js'
import { type EmbeddedBackend, openEmbedded } from '../../core/embedded/index.js'
import { createKafka, ensureTopics } from '../../core/kafka/client.js'
import { KafkaGroupConsumer, KafkaOffsets } from '../../core/kafka/consumer.js'
import { KafkaBatchingProducer } from '../../core/kafka/producer.js'
import { KafkaProgressListener, KafkaProgressPublisher } from '../../core/kafka/progress.js'
import { createLogger } from '../../core/log.js'
import { migrate, topicSpecs } from '../../core/migrate.js'
import type { EventLogConsumer } from '../../core/ports/event-log.js'
import type { ProgressListener, ProgressPublisher } from '../../core/ports/progress-notices.js'
import { cleanup, testConfig, uniqueName } from '../helpers/context.js'
import type { AggregateStoreHarness } from './aggregate-store.js'
import type { BatchStoreHarness } from './batch-store.js'
import type { EventLogHarness } from './event-log.js'
import type { ProgressHarness } from './progress-notices.js'
import type { SiteStoreHarness } from './site-store.js'

/** A fresh temporary data folder, removed by the returned function. */
export function tempDataDir(prefix = 'tally-embedded-'): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) }
}

/**
 * Keyspace, tables and topics of a test configuration: the whole `tally migrate`. A migration that
 * fails fails the test, as it would fail an operator's `tally migrate`.
 */
export async function prepareServices(config: TallyConfig): Promise<void> {
  await migrate(config)
}

/** Kafka behind the event-log port: the real broker, topics of their own. */
export async function kafkaLogHarness(): Promise<EventLogHarness> {
  const config = testConfig()
  const kafka = createKafka(config.kafka)
  const topics: string[] = []
  const offsets = new KafkaOffsets(kafka)
  const writers: KafkaBatchingProducer[] = []
  const consumers: EventLogConsumer[] = []
  return {
    async createTopic(partitions) {
      const topic = `test.${uniqueName('contract')}`
      await ensureTopics(kafka, [{ topic, partitions, replicationFactor: 1 }])
      topics.push(topic)
      return topic
    },
    writer() {
      const w = new KafkaBatchingProducer(kafka, { appendTimeoutMs: 30_000 })
      writers.push(w)
      return w
    },
    consumer(groupId, topic) {
      const c = new KafkaGroupConsumer(kafka, { groupId, topic, sessionTimeoutMs: 10_000 })
      consumers.push(c)
      return c
    },
    offsets,
    async close() {
      for (const c of consumers) await c.close()
      for (const w of writers) await w.close()
      await offsets.close()
      const admin = kafka.admin()
      await admin.connect()
      try {
        if (topics.length > 0) await admin.deleteTopics({ topics })
      } finally {
        await admin.disconnect()
      }
    },
  }
}

export interface OpenedEmbedded {
  backend: EmbeddedBackend
  dir: string
  /** Closes the backend and removes the folder. */
  close(): Promise<void>
}

/** An embedded backend on a temporary folder. */
export function openTempEmbedded(precision = 14): OpenedEmbedded {
  const { dir, remove } = tempDataDir()
  const backend = openEmbedded({ dataDir: dir, hllPrecision: precision, purgeIntervalMs: 0 })
  return {
    backend,
    dir,
    async close() {
      try {
        await backend.close()
      } finally {
        remove()
      }
    },
  }
}

export async function embeddedLogHarness(): Promise<EventLogHarness> {
  const { backend, close } = openTempEmbedded()
  return {
    async createTopic(partitions) {
      const topic = `test.${uniqueName('contract')}`
      backend.log.ensureTopics([{ topic, partitions }])
      return topic
    },
    writer: () => backend.log.writer(),
    consumer: (groupId, topic) => backend.log.consumer({ groupId, topic }),
    offsets: backend.log,
    close,
  }
}

/** Progress notices on the real broker: a progress topic of their own, made like `tally migrate` makes it. */
export async function kafkaProgressHarness(): Promise<ProgressHarness> {
  const config = testConfig()
  const kafka = createKafka(config.kafka)
  const logger = createLogger('silent')
  const topic = config.kafka.topicProgress
  const spec = topicSpecs(config).find((t) => t.topic === topic)
  if (!spec) throw new Error('topicSpecs has no progress topic')
  await ensureTopics(kafka, [spec])
  const opened: Array<ProgressPublisher | ProgressListener> = []
  const junk = kafka.producer({ allowAutoTopicCreation: false })
  let junkConnected = false
  return {
    publisher(onSend) {
      const p = new KafkaProgressPublisher(kafka, { topic, logger, ...(onSend ? { onSend } : {}) })
      opened.push(p)
      return p
    },
    listener(group, streamTopic) {
      const l = new KafkaProgressListener(kafka, { topic, group, streamTopic, logger })
      opened.push(l)
      return l
    },
    unreachablePublisher(onSend) {
      const nowhere = createKafka(
        { brokers: ['127.0.0.1:1'], clientId: 'tally-test' },
        { connectionTimeoutMs: 300, requestTimeoutMs: 300, retries: 0 },
      )
      const p = new KafkaProgressPublisher(nowhere, { topic, logger, onSend })
      opened.push(p)
      return p
    },
    async writeJunk(value) {
      if (!junkConnected) {
        await junk.connect()
        junkConnected = true
      }
      await junk.send({ topic, messages: [{ value }] })
    },
    // A group join: find the coordinator, join, sync, then the first fetch.
    liveWithinMs: 15_000,
    async close() {
      for (const o of opened) await o.close()
      if (junkConnected) await junk.disconnect()
      const admin = kafka.admin()
      await admin.connect()
      try {
        await admin.deleteTopics({ topics: [topic] })
      } finally {
        await admin.disconnect()
      }
    },
  }
}

/** Progress notices on the embedded backend, reached through its shared ports like `tally all` does. */
export async function embeddedProgressHarness(): Promise<ProgressHarness> {
  const { backend, close } = openTempEmbedded()
  const ports = embeddedPorts(backend)
  return {
    publisher: (onSend) => ports.progress.publisher(onSend ? { onSend } : {}),
    listener: (group, topic) => ports.progress.listener({ group, topic }),
    liveWithinMs: 1000,
    close,
  }
}

/** Cassandra store, reader, sites and batch stores on a keyspace of their own. */
export async function cassandraHarness(): Promise<
  AggregateStoreHarness & SiteStoreHarness & BatchStoreHarness
> {
  const config = testConfig()
  await prepareServices(config)
  const client = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await client.connect()
  const reader = new CassandraAggregateReader(client, config.stream.hllPrecision)
  return {
    store: new CassandraStreamStore(client, config.stream.ttlSeconds),
    reader,
    sites: new CassandraSiteStore(client),
    batch: {
      leases: new CassandraLeaseStore(client),
      jobs: new CassandraJobStore(client),
      rows: new CassandraFinalRowStore(client, config.stream.ttlSeconds),
      archive: new CassandraArchiveStateStore(client),
    },
    async finalRowsWithTtl(ttl) {
      return { rows: new CassandraFinalRowStore(client, ttl), reader, close: async () => {} }
    },
    precision: config.stream.hllPrecision,
    async close() {
      await client.shutdown()
      await cleanup(config)
    },
  }
}

export async function embeddedHarness(): Promise<
  AggregateStoreHarness & SiteStoreHarness & BatchStoreHarness
> {
  const { backend, close } = openTempEmbedded(14)
  return {
    store: backend.streamStore,
    reader: backend.reader,
    sites: backend.sites,
    batch: backend.batch,
    async finalRowsWithTtl(ttl) {
      // Row lifetimes are fixed when a backend opens: another backend on a folder of its own.
      const { dir, remove } = tempDataDir()
      const other = openEmbedded({ dataDir: dir, hllPrecision: 14, purgeIntervalMs: 0, ttlSeconds: ttl })
      return {
        rows: other.batch.rows,
        reader: other.reader,
        async close() {
          try {
            await other.close()
          } finally {
            remove()
          }
        },
      }
    },
    precision: 14,
    close,
  }
}
