import type { AddressInfo } from 'node:net'
import type { Registry } from 'prom-client'
import type { SharedPorts } from '../core/backend.js'
import { CassandraAggregateReader } from '../core/cassandra/aggregate-reader.js'
import { CassandraArchiveStateStore } from '../core/cassandra/batch-store.js'
import { createCassandraClient } from '../core/cassandra/client.js'
import { CassandraSiteStore } from '../core/cassandra/sites.js'
import type { TallyConfig } from '../core/config.js'
import { createKafka } from '../core/kafka/client.js'
import { KafkaOffsets } from '../core/kafka/consumer.js'
import { KafkaProgressListener } from '../core/kafka/progress.js'
import { once } from '../core/lifecycle.js'
import type { Logger } from '../core/log.js'
import type { AggregateReader } from '../core/ports/aggregate-store.js'
import type { ArchiveStateStore } from '../core/ports/batch-store.js'
import type { LogOffsets } from '../core/ports/event-log.js'
import type { ProgressListener } from '../core/ports/progress-notices.js'
import type { SiteStore } from '../core/ports/site-store.js'
import { buildQueryApp, type QueryAppDeps } from './app.js'
import { ReadAccessCache } from './auth.js'
import { archiveRawEventSource } from './export-raw.js'
import { CheckpointFreshness } from './freshness.js'
import { createQueryMetrics } from './metrics.js'
import { TokenUseRecorder } from './token-use.js'

export const QUERY_DEFAULT_PORT = 8081

export interface RunningQuery {
  url: string
  close(): Promise<void>
}

export interface QueryRoleOptions {
  /** How long a site and its read-token hashes are cached. Default: the ingest site cache TTL (TALLY_SITE_CACHE_TTL_MS). */
  siteCacheTtlMs?: number
  /** How often the stream checkpoints are re-read for `complete_through`. Default 1000 ms. */
  freshnessCacheMs?: number
  /** Limits of the API (see DEFAULT_QUERY_LIMITS). */
  limits?: QueryAppDeps['limits']
  /** Time allowed to receive a whole request. Default: TALLY_REQUEST_TIMEOUT_MS. */
  requestTimeoutMs?: number
  /** Port to listen on. Default: PORT, else 8081. */
  port?: number
  /** Ports shared by the roles of this process (embedded backend); default: its own Cassandra connection. */
  ports?: SharedPorts
  /** The process registry (core/metrics.ts), when the process runs several roles; default: its own. */
  registry?: Registry
}

/** Starts the query role: Cassandra (read only), site/token cache, HTTP server (port 8081 unless PORT). */
export async function startQuery(
  config: TallyConfig,
  logger: Logger,
  options: QueryRoleOptions = {},
): Promise<RunningQuery> {
  let reader: AggregateReader
  let sites: SiteStore
  let archive: Pick<ArchiveStateStore, 'progress'>
  let offsets: LogOffsets
  /** The stream's progress notices: heard only when data versions are reused at all. */
  let notices: ProgressListener | undefined
  const reuseVersions = config.query.versionMaxAgeMs > 0
  const noticeRequest = { group: config.stream.group, topic: config.kafka.topicRaw, logger }
  let release = async () => {}
  if (options.ports) {
    reader = options.ports.reader
    sites = options.ports.sites
    archive = options.ports.batch.archive
    offsets = options.ports.offsets
    if (reuseVersions) notices = options.ports.progress.listener(noticeRequest)
  } else {
    const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
    await cassandra.connect()
    const kafka = createKafka(config.kafka, { logger })
    const kafkaOffsets = new KafkaOffsets(kafka)
    reader = new CassandraAggregateReader(cassandra, config.stream.hllPrecision)
    sites = new CassandraSiteStore(cassandra)
    archive = new CassandraArchiveStateStore(cassandra)
    offsets = kafkaOffsets
    if (reuseVersions)
      notices = new KafkaProgressListener(kafka, {
        ...noticeRequest,
        topic: config.kafka.topicProgress,
        streamTopic: config.kafka.topicRaw,
      })
    release = async () => {
      await kafkaOffsets.close().catch(() => undefined)
      await cassandra.shutdown()
    }
  }
  const listener = notices
  const metrics = createQueryMetrics({
    noticesLive: () => listener?.live() ?? false,
    ...(options.registry ? { registry: options.registry } : {}),
  })
  const freshness = new CheckpointFreshness(reader, {
    group: config.stream.group,
    topic: config.kafka.topicRaw,
    partitions: config.kafka.partitions,
    graceMs: config.stream.graceMs,
    cacheMs: options.freshnessCacheMs ?? 1000,
    snapshotMaxAgeMs: config.query.versionMaxAgeMs,
    notifiedMaxAgeMs: config.query.notifiedVersionMaxAgeMs,
    ...(listener ? { notices: listener } : {}),
  })
  // Until the listener hears the bus (joining takes a moment; Kafka may be away), versions are
  // polled every TALLY_QUERY_VERSION_MAX_AGE_MS; the role serves meanwhile.
  listener?.start(() => {
    metrics.notices.inc()
    freshness.notify()
  })
  const releaseStores = release
  release = async () => {
    await listener?.close()
    await releaseStores()
  }
  // "Last used" of read tokens (tally sites tokens), written in the background.
  const tokenUses = new TokenUseRecorder(sites, {
    onOutcome: (outcome, err) => {
      metrics.tokenUses.inc({ outcome })
      if (err !== undefined) logger.warn({ err }, 'cannot record the last use of a read token')
    },
  })
  try {
    const app = await buildQueryApp({
      reader,
      auth: new ReadAccessCache(sites, {
        ttlMs: options.siteCacheTtlMs ?? config.ingest.siteCacheTtlMs,
        onUse: (siteId, hash) => tokenUses.used(siteId, hash),
      }),
      freshness,
      logger,
      hllPrecision: config.stream.hllPrecision,
      retentionSeconds: config.stream.ttlSeconds,
      metrics,
      // Raw events come from the Arrow archive (batch/), read-only, deduplicated like a rebuild.
      rawEvents: archiveRawEventSource(
        config,
        { archive, offsets },
        { onEvent: () => metrics.exportRows.inc() },
      ),
      requestTimeoutMs: options.requestTimeoutMs ?? config.ingest.requestTimeoutMs,
      maxConnections: config.ingest.maxConnections,
      answerCache: { maxBytes: config.query.answerCacheBytes, maxAgeMs: config.query.answerCacheMaxAgeMs },
      ...(options.limits ? { limits: options.limits } : {}),
    })
    await app.listen({ host: config.host, port: options.port ?? config.port ?? QUERY_DEFAULT_PORT })
    const addr = app.server.address() as AddressInfo
    const url = `http://${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}`
    logger.info({ url }, 'query listening')
    return {
      url,
      // Order: stop taking requests and let in-flight ones (exports too) finish, then close Cassandra.
      close: once(async () => {
        await app.close()
        await tokenUses.settled()
        await release()
      }),
    }
  } catch (err) {
    await release()
    throw err
  }
}
