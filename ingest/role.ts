import type { AddressInfo } from 'node:net'
import type { Registry } from 'prom-client'
import type { TallyConfig } from '../core/config.js'
import { once } from '../core/lifecycle.js'
import type { Logger } from '../core/log.js'
import type { Ports } from '../core/ports/backend.js'
import { buildIngestApp } from './app.js'
import { DailySalt } from './daily-salt.js'
import { createIngestKafkaMetrics, createIngestMetrics } from './metrics.js'
import { SiteCache } from './site-cache.js'

export const INGEST_DEFAULT_PORT = 8080

export interface RunningIngest {
  url: string
  close(): Promise<void>
}

export interface IngestRoleOptions {
  /** The backend (built by app/); closed by its owner after the role. */
  ports: Pick<Ports, 'kind' | 'writer' | 'sites'>
  /** Port to listen on. Default: PORT, else 8080. */
  port?: number
  /** The process registry (core/metrics.ts), when the process runs several roles; default: its own. */
  registry?: Registry
}

/** Starts the ingest role: a log writer from the ports, a site cache, the HTTP server. */
export async function startIngest(
  config: TallyConfig,
  logger: Logger,
  options: IngestRoleOptions,
): Promise<RunningIngest> {
  const metrics = createIngestMetrics(options.registry)
  const { ports } = options
  // Kafka's producer metrics only where ingest writes to Kafka.
  const kafkaMetrics =
    ports.kind === 'kafka-cassandra' ? createIngestKafkaMetrics(metrics.registry) : undefined
  const log = await ports.writer({
    lingerMs: config.ingest.lingerMs,
    compression: config.ingest.compression,
    maxInFlightBatches: config.ingest.inFlightBatches,
    appendTimeoutMs: config.ingest.appendTimeoutMs,
    ...(config.ingest.pack ? { pack: config.ingest.pack } : {}),
    onSend: (records, _bytes, seconds, ok) => {
      if (!kafkaMetrics) return
      kafkaMetrics.kafkaSendSeconds.observe({ outcome: ok ? 'ok' : 'error' }, seconds)
      if (ok) kafkaMetrics.kafkaBatchRecords.observe(records)
    },
  })
  const sites = new SiteCache(ports.sites, { ttlMs: config.ingest.siteCacheTtlMs })
  const app = await buildIngestApp({
    config: config.ingest,
    topic: config.kafka.topicRaw,
    log,
    sites,
    metrics,
    logger,
    plausible: { sites, salt: new DailySalt(ports.sites) },
  })
  await app.listen({ host: config.host, port: options.port ?? config.port ?? INGEST_DEFAULT_PORT })
  const addr = app.server.address() as AddressInfo
  const url = `http://${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}`
  logger.info({ url }, 'ingest listening')
  return {
    url,
    // Order: stop taking requests and let in-flight ones finish (they wait for their writes),
    // then flush the producer (the ports' owner closes Cassandra after).
    close: once(async () => {
      await app.close()
      await log.close()
    }),
  }
}
