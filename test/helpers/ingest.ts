import { once } from 'node:events'
import { createServer } from 'node:net'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { loadMigrations, migrateCassandra } from '../../core/cassandra/migrate.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import type { TallyConfig } from '../../core/config.js'
import { createKafka, ensureTopics } from '../../core/kafka/client.js'
import { KafkaBatchingProducer } from '../../core/kafka/producer.js'
import { createLogger } from '../../core/log.js'
import { topicSpecs } from '../../core/migrate.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildIngestApp } from '../../ingest/app.js'
import { createIngestMetrics, type IngestMetrics } from '../../ingest/metrics.js'
import { SiteCache } from '../../ingest/site-cache.js'
import { uniqueName } from './context.js'

/**
 * What ingest needs of `tally migrate`: the sites and read-token tables and the topics. The other services'
 * migrations are tested by their own suites (and the CLI and foundation tests run all of them), so
 * a schema change elsewhere cannot break the ingest tests.
 */
export async function migrateForIngest(config: Pick<TallyConfig, 'kafka' | 'cassandra'>): Promise<void> {
  // The sites table and every migration of the site registry after it (read tokens: a site is
  // created with its first token; domains; time zone; custom properties; goals): `site*`.
  const sites = (await loadMigrations()).filter((m) => m.name === 'sites' || m.name.startsWith('site_'))
  for (const name of ['sites', 'site_tokens', 'site_domains', 'site_timezone'])
    if (!sites.some((m) => m.name === name)) throw new Error(`migration ${name} is not in schemas/cql`)
  await migrateCassandra(config.cassandra, sites)
  await ensureTopics(createKafka(config.kafka), topicSpecs(config))
}

export interface TestIngest {
  app: FastifyInstance
  producer: KafkaBatchingProducer
  sites: CassandraSiteStore
  metrics: IngestMetrics
  /** Creates a site with a unique id; `origins` are allowed besides https://<domain>. */
  addSite(origins?: string[]): Promise<Site>
  close(): Promise<void>
}

/**
 * The ingest app wired as `startIngest` wires it (real Kafka producer, site cache over Cassandra),
 * but not listening, so tests can use `app.inject()`; call `app.listen` for a real socket. The
 * keyspace and topics must exist (`migrateForIngest(config)`).
 */
export async function buildTestIngest(config: TallyConfig): Promise<TestIngest> {
  const logger = createLogger(config.logLevel)
  const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await cassandra.connect()
  const producer = new KafkaBatchingProducer(createKafka(config.kafka), {
    lingerMs: config.ingest.lingerMs,
    appendTimeoutMs: config.ingest.appendTimeoutMs,
    compression: config.ingest.compression,
    maxInFlightBatches: config.ingest.inFlightBatches,
    ...(config.ingest.pack ? { pack: config.ingest.pack } : {}),
    logger,
  })
  await producer.connect()
  const sites = new CassandraSiteStore(cassandra)
  const metrics = createIngestMetrics()
  const app = await buildIngestApp({
    config: config.ingest,
    topic: config.kafka.topicRaw,
    log: producer,
    sites: new SiteCache(sites, { ttlMs: config.ingest.siteCacheTtlMs }),
    metrics,
    logger,
  })
  return {
    app,
    producer,
    sites,
    metrics,
    async addSite(origins = []) {
      const siteId = uniqueName('site').replace(/_/g, '-')
      const { site } = await sites.create({ siteId, domain: `${siteId}.example.test`, origins })
      return site
    },
    async close() {
      await app.close()
      await producer.close()
      await cassandra.shutdown()
    },
  }
}

/** HTTP Basic with the write key as user name, as Segment's server libraries send it. */
export function basic(writeKey: string): string {
  return `Basic ${Buffer.from(`${writeKey}:`).toString('base64')}`
}

/** The parsed JSON body of an inject() answer. */
export function body(res: LightMyRequestResponse): Record<string, unknown> {
  return res.json() as Record<string, unknown>
}

/** A TCP port that was free a moment ago (loopback). */
export async function freePort(): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const address = server.address()
  const port = typeof address === 'object' && address ? address.port : 0
  server.close()
  await once(server, 'close')
  return port
}

/** Value of one sample of a Prometheus text exposition (0 when absent). */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue
    const m = /^([^{\s]+)(?:\{([^}]*)\})?\s+(\S+)/.exec(line)
    if (!m || m[1] !== name) continue
    const have = Object.fromEntries(
      [...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]),
    )
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) total += Number(m[3])
  }
  return total
}
