import type { AddressInfo } from 'node:net'
import { createCassandraClient } from '../core/cassandra/client.js'
import { CassandraSiteStore } from '../core/cassandra/sites.js'
import type { TallyConfig } from '../core/config.js'
import { createKafka } from '../core/kafka/client.js'
import { KafkaBatchingProducer } from '../core/kafka/producer.js'
import { once } from '../core/lifecycle.js'
import type { Logger } from '../core/log.js'
import { buildIngestApp } from './app.js'
import { createIngestMetrics } from './metrics.js'
import { SiteCache } from './site-cache.js'

export const INGEST_DEFAULT_PORT = 8080

export interface RunningIngest {
  url: string
  close(): Promise<void>
}

/** Starts the ingest role: Kafka producer, site cache over Cassandra, HTTP server. */
export async function startIngest(config: TallyConfig, logger: Logger): Promise<RunningIngest> {
  const metrics = createIngestMetrics()
  const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await cassandra.connect()
  const producer = new KafkaBatchingProducer(createKafka(config.kafka, { logger }), {
    lingerMs: config.ingest.lingerMs,
    appendTimeoutMs: config.ingest.appendTimeoutMs,
    logger,
    onSend: (records, _bytes, seconds, ok) => {
      metrics.kafkaSendSeconds.observe({ outcome: ok ? 'ok' : 'error' }, seconds)
      if (ok) metrics.kafkaBatchRecords.observe(records)
    },
  })
  await producer.connect()
  const app = await buildIngestApp({
    config: config.ingest,
    topic: config.kafka.topicRaw,
    log: producer,
    sites: new SiteCache(new CassandraSiteStore(cassandra), { ttlMs: config.ingest.siteCacheTtlMs }),
    metrics,
    logger,
  })
  await app.listen({ host: config.host, port: config.port ?? INGEST_DEFAULT_PORT })
  const addr = app.server.address() as AddressInfo
  const url = `http://${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}`
  logger.info({ url }, 'ingest listening')
  return {
    url,
    // Order: stop taking requests and let in-flight ones finish (they wait for their writes),
    // then flush the producer, then close Cassandra.
    close: once(async () => {
      await app.close()
      await producer.close()
      await cassandra.shutdown()
    }),
  }
}
