import type { AddressInfo } from 'node:net'
import type { Registry } from 'prom-client'
import type { TallyConfig } from '../core/config.js'
import { once } from '../core/lifecycle.js'
import type { Logger } from '../core/log.js'
import type { Ports } from '../core/ports/backend.js'
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
  /** The backend (built by app/); closed by its owner after the role. */
  ports: Pick<Ports, 'reader' | 'sites' | 'batch' | 'offsets' | 'progress'>
  /** The process registry (core/metrics.ts), when the process runs several roles; default: its own. */
  registry?: Registry
}

/** Starts the query role: the stores of the ports (read only), site/token cache, HTTP server (port 8081 unless PORT). */
export async function startQuery(
  config: TallyConfig,
  logger: Logger,
  options: QueryRoleOptions,
): Promise<RunningQuery> {
  const { ports } = options
  const { reader, sites, offsets } = ports
  const archive = ports.batch.archive
  // The stream's progress notices: heard only when data versions are reused at all.
  const listener =
    config.query.versionMaxAgeMs > 0
      ? ports.progress.listener({ group: config.stream.group, topic: config.kafka.topicRaw, logger })
      : undefined
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
  // The ports' owner closes the stores after the role.
  const release = async () => {
    await listener?.close()
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
      propValuesMax: config.stream.propValuesMax,
      dimensionValuesMax: config.stream.dimensionValuesMax,
      breakdowns: config.stream.breakdowns,
      retentionSeconds: config.stream.ttlSeconds,
      metrics,
      // Raw events come from the Arrow archive (core/archive/), read-only, deduplicated like a rebuild.
      rawEvents: archiveRawEventSource(
        config,
        { archive, offsets },
        { onEvent: () => metrics.exportRows.inc() },
      ),
      requestTimeoutMs: options.requestTimeoutMs ?? config.ingest.requestTimeoutMs,
      maxConnections: config.ingest.maxConnections,
      sites,
      siteCacheTtlMs: options.siteCacheTtlMs ?? config.ingest.siteCacheTtlMs,
      answerCache: { maxBytes: config.query.answerCacheBytes, maxAgeMs: config.query.answerCacheMaxAgeMs },
      ...(options.limits ? { limits: options.limits } : {}),
    })
    await app.listen({ host: config.host, port: options.port ?? config.port ?? QUERY_DEFAULT_PORT })
    const addr = app.server.address() as AddressInfo
    const url = `http://${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}`
    logger.info({ url }, 'query listening')
    return {
      url,
      // Order: stop taking requests and let in-flight ones (exports too) finish, then stop hearing notices.
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
