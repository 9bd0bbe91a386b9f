import { BATCH_DEFAULT_PORT } from '../../batch/role.js'
import { type BackendKind, backendOf, type TallyConfig } from '../../core/config.js'
import { serveAdmin } from '../../core/embedded/admin.js'
import type { EmbeddedBackend } from '../../core/embedded/index.js'
import { type Closable, once } from '../../core/lifecycle.js'
import type { Logger } from '../../core/log.js'
import { createProcessRegistry } from '../../core/metrics.js'
import type { Ports } from '../../core/ports/backend.js'
import { QUERY_DEFAULT_PORT } from '../../query/role.js'
import { STREAM_DEFAULT_PORT } from '../../stream/role.js'
import { embeddedPorts, openEmbeddedBackend } from '../backend.js'
import { ensureQuickstartSite, prepareQuickstart, type QuickstartSite } from '../quickstart.js'
import { type RunningRolesThread, startRolesThread } from '../roles-host.js'
import { startBatch, startIngest, startQuery, startStream } from '../start.js'

export interface AllOptions {
  quickstart: boolean
  /** Port of the query API. Default 8081. */
  queryPort?: number
  /** Port of the stream worker's /metrics. Default 9464. */
  streamPort?: number
  /** Port of the batch scheduler's (and archiver's) /metrics. Default 9465. */
  batchPort?: number
}

export interface RunningAll extends Closable {
  backend: BackendKind
  ingestUrl: string
  queryUrl: string
  streamUrl: string
  batchUrl: string
  site: QuickstartSite | undefined
}

export const EMBEDDED_NOTICE =
  'embedded backend: the log and the aggregates are SQLite files in TALLY_DATA_DIR, for one process on one machine. To scale out, move to Kafka and Cassandra: `tally embedded move-to-kafka`, then set KAFKA_BROKERS and CASSANDRA_CONTACT_POINTS (README, "Switching to Kafka and Cassandra").'

/**
 * `tally all`: ingest, a stream worker, the query API, an archiver and the rebuild scheduler in one
 * process, on the embedded backend (one set of files; the stream worker, the archiver and the
 * scheduler in a thread of their own, roles-host.ts) or on Kafka and Cassandra. Roles start in data-flow order and stop in the same order (ingest first, so nothing
 * new arrives while the others flush); a role that fails to start closes the ones before it.
 */
export async function startAll(
  config: TallyConfig,
  logger: Logger,
  options: AllOptions,
): Promise<RunningAll> {
  const backend = backendOf(config)
  const started: Closable[] = []
  let ports: Ports | undefined
  let closeBackend = async () => {}
  const closeStarted = async () => {
    for (const part of started) await part.close()
    await closeBackend()
  }
  try {
    let site: QuickstartSite | undefined
    let embedded: EmbeddedBackend | undefined
    // Ingest's commits wake the roles thread's consumers (set once the thread runs).
    let appended: RunningRolesThread['appended'] = () => {}
    if (backend === 'embedded') {
      embedded = openEmbeddedBackend(config, logger, {
        shareWithThreads: true,
        onAppended: (topic, partition, end) => appended(topic, partition, end),
      })
      const opened = embedded
      closeBackend = () => opened.close()
      ports = embeddedPorts(embedded)
      logger.warn({ dataDir: config.dataDir }, EMBEDDED_NOTICE)
      // `tally sites …` reaches the running process here (it cannot open the data folder itself).
      const admin = await serveAdmin(config.dataDir, ports.sites, logger)
      if (admin) started.push(admin)
      if (options.quickstart) site = await ensureQuickstartSite(config, ports.sites)
    } else if (options.quickstart) {
      site = await prepareQuickstart(config, logger)
    }
    // One registry for the process: every role's /metrics serves the same process_*, nodejs_*,
    // http_request_duration_seconds and tally_* metrics.
    const registry = createProcessRegistry()
    const shared = ports ? { ports, registry } : { registry }
    const ingest = await startIngest(config, logger, shared)
    started.push(ingest)
    let streamUrl: string
    let batchUrl: string
    if (embedded) {
      // Off ingest's event loop: the stream worker, the archiver and the rebuild scheduler run in
      // a thread of their own, on connections of their own to the same files (roles-host.ts).
      const roles = await startRolesThread(config, logger, {
        embedded,
        registry,
        streamPort: options.streamPort ?? STREAM_DEFAULT_PORT,
        batchPort: options.batchPort ?? BATCH_DEFAULT_PORT,
      })
      started.push(roles)
      appended = roles.appended
      streamUrl = roles.streamUrl
      batchUrl = roles.batchUrl
    } else {
      const stream = await startStream(config, logger, {
        port: options.streamPort ?? STREAM_DEFAULT_PORT,
        ...shared,
      })
      started.push(stream)
      const batch = await startBatch(config, logger, {
        port: options.batchPort ?? BATCH_DEFAULT_PORT,
        ...shared,
      })
      started.push(batch)
      streamUrl = stream.url
      batchUrl = batch.url
    }
    const query = await startQuery(config, logger, {
      port: options.queryPort ?? QUERY_DEFAULT_PORT,
      ...shared,
    })
    started.push(query)
    return {
      backend,
      ingestUrl: ingest.url,
      queryUrl: query.url,
      streamUrl,
      batchUrl,
      site,
      close: once(closeStarted),
      // After a crash only group memberships matter (stream worker, archiver): leave them.
      abort: once(async () => {
        for (const part of started) await part.abort?.()
      }),
    }
  } catch (err) {
    await closeStarted().catch((closeErr: unknown) =>
      logger.error({ err: closeErr }, 'closing after a failed start failed'),
    )
    throw err
  }
}

/** What `tally all --quickstart` prints once everything answers. */
export function quickstartBanner(all: RunningAll, site: QuickstartSite): string {
  const host = all.ingestUrl
  return [
    '',
    `Tally is running on the ${all.backend === 'embedded' ? 'embedded backend (one machine; see the README to move to Kafka and Cassandra)' : 'Kafka and Cassandra backend'}:`,
    `  ingest      ${host}`,
    `  dashboard   ${all.queryUrl}/ (paste the read token)`,
    `  query       ${all.queryUrl} (API docs ${all.queryUrl}/docs)`,
    `  metrics     ${host}/metrics, ${all.streamUrl}/metrics (stream), ${all.batchUrl}/metrics (batch)`,
    `  site        ${site.siteId}`,
    `  write key   ${site.writeKey}`,
    `  read token  ${site.readToken}`,
    '',
    'Track a web page served from http://localhost:8080 or http://127.0.0.1:8080 (for another origin: `tally sites add <domain> --origin <url>`):',
    `  <script defer src="${host}/t.js" data-key="${site.writeKey}"></script>`,
    'Send an event:',
    `  curl -u ${site.writeKey}: -H 'content-type: application/json' ${host}/v1/track -d '{"event":"Signed Up","anonymousId":"visitor-1"}'`,
    'Read the numbers back (visible within about a second):',
    `  curl -H 'authorization: Bearer ${site.readToken}' '${all.queryUrl}/v1/stats/aggregate?site=${site.siteId}&period=day&metrics=events,visitors'`,
    '',
  ].join('\n')
}
