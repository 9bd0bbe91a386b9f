import type { Registry } from 'prom-client'
import type { TallyConfig } from '../core/config.js'
import { startOpsServer } from '../core/http.js'
import { once } from '../core/lifecycle.js'
import type { Logger } from '../core/log.js'
import type { Ports } from '../core/ports/backend.js'
import type { EventLogConsumer, EventLogWriter } from '../core/ports/event-log.js'
import type { ProgressPublisher } from '../core/ports/progress-notices.js'
import { createStreamMetrics } from './metrics.js'
import { PropKeyCache } from './prop-keys.js'
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
  options: {
    port?: number
    /** The backend (built by app/); closed by its owner after the role. */
    ports: Pick<Ports, 'consumer' | 'streamStore' | 'writer' | 'offsets' | 'progress'> &
      Partial<Pick<Ports, 'sites'>>
    /** The process registry (core/metrics.ts) when the process runs several roles; default: its own. */
    registry?: Registry
  },
): Promise<RunningStream> {
  const metrics = createStreamMetrics(options.registry)
  let worker: StreamWorker | undefined
  const { app, url } = await startOpsServer({
    logger,
    registry: metrics.registry,
    host: config.host,
    port: options.port ?? config.port ?? STREAM_DEFAULT_PORT,
    what: "the stream worker's /metrics",
    where: options.port === undefined ? 'PORT' : '--stream-port',
    ready: () => (worker ? { partitions: worker.ownedPartitions() } : undefined),
  })
  const consumerRequest = {
    groupId: config.stream.group,
    topic: config.kafka.topicRaw,
    partitionsConsumedConcurrently: config.stream.partitionsConcurrently,
    sessionTimeoutMs: config.stream.sessionTimeoutMs,
    logger,
  }
  const { ports } = options
  let consumer: EventLogConsumer
  let deadLetters: EventLogWriter
  let progress: ProgressPublisher
  const onSend = (ok: boolean) => metrics.progressNotices.inc({ outcome: ok ? 'sent' : 'failed' })
  try {
    deadLetters = await ports.writer({ appendTimeoutMs: 30_000 })
    consumer = ports.consumer(consumerRequest)
    progress = ports.progress.publisher({ onSend })
  } catch (err) {
    await app.close()
    throw err
  }
  const store = ports.streamStore
  const offsets = ports.offsets
  const started = new StreamWorker({
    ...(ports.sites ? { propKeys: new PropKeyCache(ports.sites, config.ingest.siteCacheTtlMs, logger) } : {}),
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
  // notices, flush dead letters (the ports' owner closes Cassandra after).
  const close = once(async () => {
    await app.close()
    await started.close()
    await progress.close()
    await deadLetters.close()
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
