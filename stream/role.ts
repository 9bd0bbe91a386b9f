import type { Registry } from 'prom-client'
import type { SharedPorts } from '../core/backend.js'
import { createCassandraClient } from '../core/cassandra/client.js'
import { CassandraStreamStore } from '../core/cassandra/stream-store.js'
import type { TallyConfig } from '../core/config.js'
import { createHttpServer, listenOrExplain } from '../core/http.js'
import { createKafka } from '../core/kafka/client.js'
import { KafkaGroupConsumer, KafkaOffsets } from '../core/kafka/consumer.js'
import { KafkaBatchingProducer } from '../core/kafka/producer.js'
import { KafkaProgressPublisher } from '../core/kafka/progress.js'
import { once } from '../core/lifecycle.js'
import type { Logger } from '../core/log.js'
import type { StreamStore } from '../core/ports/aggregate-store.js'
import type { EventLogConsumer, EventLogWriter, LogOffsets } from '../core/ports/event-log.js'
import type { ProgressPublisher } from '../core/ports/progress-notices.js'
import { createStreamMetrics } from './metrics.js'
import { StreamWorker } from './worker.js'

export const STREAM_DEFAULT_PORT = 9464

export interface RunningStream {
  url: string
  registryText(): Promise<string>
  worker: StreamWorker
  close(): Promise<void>
  /** After a crash: leave the consumer group without the final flush (see Closable.abort). */
  abort(): Promise<void>
}

/**
 * Starts a stream worker and its small HTTP server for /metrics, /healthz and /readyz. The server
 * is bound first: a worker that cannot bind (port taken) fails before it joins the consumer group,
 * so it never leaves a dead member behind that would stall the running workers for a session.
 */
export async function startStream(
  config: TallyConfig,
  logger: Logger,
  /** registry: the process registry (core/metrics.ts) when the process runs several roles; default: its own. */
  options: { port?: number; ports?: SharedPorts; registry?: Registry } = {},
): Promise<RunningStream> {
  const metrics = createStreamMetrics(options.registry)
  let worker: StreamWorker | undefined
  const app = createHttpServer({
    logger,
    bodyLimit: 1024,
    requestTimeoutMs: 10_000,
    registry: metrics.registry,
  })
  app.get('/healthz', async () => ({ status: 'ok' }))
  app.get('/readyz', async (_req, reply) =>
    worker
      ? { status: 'ready', partitions: worker.ownedPartitions() }
      : reply.status(503).send({ status: 'starting' }),
  )
  app.get('/metrics', async (_req, reply) =>
    reply.header('content-type', metrics.registry.contentType).send(await metrics.registry.metrics()),
  )
  const url = await listenOrExplain(
    app,
    config.host,
    options.port ?? config.port ?? STREAM_DEFAULT_PORT,
    "the stream worker's /metrics",
    options.port === undefined ? 'PORT' : '--stream-port',
  )
  const consumerRequest = {
    groupId: config.stream.group,
    topic: config.kafka.topicRaw,
    partitionsConsumedConcurrently: config.stream.partitionsConcurrently,
    sessionTimeoutMs: config.stream.sessionTimeoutMs,
    logger,
  }
  let consumer: EventLogConsumer
  let store: StreamStore
  let deadLetters: EventLogWriter
  let offsets: LogOffsets
  let progress: ProgressPublisher
  let release = async () => {}
  const onSend = (ok: boolean) => metrics.progressNotices.inc({ outcome: ok ? 'sent' : 'failed' })
  try {
    if (options.ports) {
      consumer = options.ports.consumer(consumerRequest)
      store = options.ports.streamStore
      deadLetters = options.ports.writer()
      offsets = options.ports.offsets
      progress = options.ports.progress.publisher({ onSend })
    } else {
      const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
      await cassandra.connect()
      const kafka = createKafka(config.kafka, { logger })
      const producer = new KafkaBatchingProducer(kafka, { logger, appendTimeoutMs: 30_000 })
      try {
        await producer.connect()
      } catch (err) {
        await cassandra.shutdown()
        throw err
      }
      const kafkaOffsets = new KafkaOffsets(kafka)
      consumer = new KafkaGroupConsumer(kafka, consumerRequest)
      store = new CassandraStreamStore(cassandra, config.stream.ttlSeconds)
      deadLetters = producer
      offsets = kafkaOffsets
      progress = new KafkaProgressPublisher(kafka, { topic: config.kafka.topicProgress, logger, onSend })
      release = async () => {
        await kafkaOffsets.close()
        await cassandra.shutdown()
      }
    }
  } catch (err) {
    await app.close()
    throw err
  }
  const started = new StreamWorker({
    config: config.stream,
    topic: config.kafka.topicRaw,
    deadLetterTopic: config.kafka.topicDeadLetter,
    consumer,
    store,
    deadLetters,
    offsets,
    metrics,
    logger,
    progress,
  })
  // Order: stop metrics HTTP, flush + checkpoint + leave the group, send the last progress
  // notices, flush dead letters, close Cassandra.
  const close = once(async () => {
    await app.close()
    await started.close()
    await progress.close()
    await deadLetters.close()
    await release()
  })
  try {
    await started.start()
  } catch (err) {
    // The consumer may have joined before the start failed: closing leaves the group.
    await close().catch((closeErr: unknown) =>
      logger.error({ err: closeErr }, 'closing after a failed start failed'),
    )
    throw err
  }
  worker = started
  logger.info({ url, group: config.stream.group }, 'stream worker running')
  return {
    url,
    worker: started,
    registryText: () => metrics.registry.metrics(),
    close,
    abort: () => started.abort(),
  }
}
