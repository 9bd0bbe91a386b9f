import type { AddressInfo } from 'node:net'
import type { Registry } from 'prom-client'
import type { SharedPorts } from '../core/backend.js'
import { createCassandraClient } from '../core/cassandra/client.js'
import { CassandraSiteStore } from '../core/cassandra/sites.js'
import type { TallyConfig } from '../core/config.js'
import { createKafka } from '../core/kafka/client.js'
import { KafkaBatchingProducer } from '../core/kafka/producer.js'
import { once } from '../core/lifecycle.js'
import type { Logger } from '../core/log.js'
import type { EventLogWriter } from '../core/ports/event-log.js'
import type { SiteStore } from '../core/ports/site-store.js'
import { buildIngestApp } from './app.js'
import { createIngestKafkaMetrics, createIngestMetrics } from './metrics.js'
import { SiteCache } from './site-cache.js'

export const INGEST_DEFAULT_PORT = 8080

export interface RunningIngest {
  url: string
  close(): Promise<void>
}

export interface IngestRoleOptions {
  /** Ports shared by the roles of this process (embedded backend); default: its own Kafka and Cassandra. */
  ports?: SharedPorts
  /** Port to listen on. Default: PORT, else 8080. */
  port?: number
  /** The process registry (core/metrics.ts), when the process runs several roles; default: its own. */
  registry?: Registry
}

/** Starts the ingest role: a log writer (Kafka producer or embedded log), a site cache, the HTTP server. */
export async function startIngest(
  config: TallyConfig,
  logger: Logger,
  options: IngestRoleOptions = {},
): Promise<RunningIngest> {
  const metrics = createIngestMetrics(options.registry)
  let log: EventLogWriter
  let sites: SiteStore
  let release = async () => {}
  if (options.ports) {
    log = options.ports.writer()
    sites = options.ports.sites
  } else {
    const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
    await cassandra.connect()
    const kafkaMetrics = createIngestKafkaMetrics(metrics.registry)
    const producer = new KafkaBatchingProducer(createKafka(config.kafka, { logger }), {
      lingerMs: config.ingest.lingerMs,
      compression: config.ingest.compression,
      maxInFlightBatches: config.ingest.inFlightBatches,
      appendTimeoutMs: config.ingest.appendTimeoutMs,
      logger,
      onSend: (records, _bytes, seconds, ok) => {
        kafkaMetrics.kafkaSendSeconds.observe({ outcome: ok ? 'ok' : 'error' }, seconds)
        if (ok) kafkaMetrics.kafkaBatchRecords.observe(records)
      },
    })
    try {
      await producer.connect()
    } catch (err) {
      await cassandra.shutdown()
      throw err
    }
    log = producer
    sites = new CassandraSiteStore(cassandra)
    release = () => cassandra.shutdown()
  }
  const app = await buildIngestApp({
    config: config.ingest,
    topic: config.kafka.topicRaw,
    log,
    sites: new SiteCache(sites, { ttlMs: config.ingest.siteCacheTtlMs }),
    metrics,
    logger,
  })
  await app.listen({ host: config.host, port: options.port ?? config.port ?? INGEST_DEFAULT_PORT })
  const addr = app.server.address() as AddressInfo
  const url = `http://${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}`
  logger.info({ url }, 'ingest listening')
  return {
    url,
    // Order: stop taking requests and let in-flight ones finish (they wait for their writes),
    // then flush the producer, then close Cassandra (shared ports are closed by their owner).
    close: once(async () => {
      await app.close()
      await log.close()
      await release()
    }),
  }
}
