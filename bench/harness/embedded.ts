import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { embeddedPorts, openEmbeddedBackend } from '../../app/backend.js'
import { importFile } from '../../app/start.js'
import { loadConfig, type TallyConfig } from '../../core/config.js'
import type { EmbeddedBackend } from '../../core/embedded/index.js'
import { createLogger } from '../../core/log.js'
import { projectRoot } from '../../core/paths.js'
import { normalizeEvent } from '../../ingest/normalize.js'
import { UserAgentParser } from '../../ingest/user-agent.js'
import type { GeneratedEvent } from '../workload.js'
import type { ScenarioContext } from './context.js'
import type { SiteKeys } from './environment.js'
import { type Child, logLine, spawnNode } from './proc.js'
import { metricSum, scrape } from './prometheus.js'

/**
 * The embedded all-in-one backend under test: `node bin/tally.js all` with TALLY_BACKEND=embedded on
 * a data folder of its own under the run folder, no Kafka or Cassandra in its environment. The data
 * folder is locked by one process at a time, so the bench opens it itself (sites, a preloaded log,
 * the checks) only while `tally all` is stopped.
 */

export interface EmbeddedSetup {
  name: string
  dir: string
  /** Environment of `tally all` (nothing else: no KAFKA_BROKERS or CASSANDRA_CONTACT_POINTS). */
  env: Record<string, string>
  config: TallyConfig
}

export function embeddedSetup(
  ctx: ScenarioContext,
  name: string,
  extraEnv: Record<string, string> = {},
): EmbeddedSetup {
  const dir = join(ctx.env.dir, 'embedded', name)
  const env: Record<string, string> = {
    TALLY_BACKEND: 'embedded',
    TALLY_DATA_DIR: dir,
    // The bench measures the pipeline, not the per-site and per-client limits (as on Kafka/Cassandra).
    TALLY_RATE_LIMIT_SITE: '0',
    TALLY_RATE_LIMIT_CLIENT: '0',
    ...extraEnv,
  }
  return { name, dir, env, config: loadConfig(env) }
}

/** Opens the data folder in the bench process (it must not be in use), runs `fn`, closes it. */
export async function withBackend<T>(
  setup: EmbeddedSetup,
  fn: (backend: EmbeddedBackend) => Promise<T>,
): Promise<T> {
  await mkdir(setup.dir, { recursive: true })
  const backend = openEmbeddedBackend(setup.config)
  try {
    return await fn(backend)
  } finally {
    await backend.close()
  }
}

export async function createEmbeddedSites(
  backend: EmbeddedBackend,
  siteIds: readonly string[],
): Promise<Map<string, SiteKeys>> {
  const out = new Map<string, SiteKeys>()
  for (const siteId of siteIds) {
    const { site, readToken } = await backend.sites.create({
      siteId,
      domain: `${siteId}.example`,
      origins: [],
    })
    out.set(siteId, { siteId, writeKey: site.writeKey, readToken })
  }
  return out
}

/**
 * Appends workload events to the embedded raw log as `tally import` does (ingest's normalization
 * with original timestamps, keyed by site and visitor, one NDJSON file per site, in send order).
 * Returns the number appended; a rejection throws.
 */
export async function appendEvents(
  setup: EmbeddedSetup,
  backend: EmbeddedBackend,
  events: readonly GeneratedEvent[],
): Promise<number> {
  const bySite = new Map<string, string[]>()
  for (const e of events) {
    let lines = bySite.get(e.siteId)
    if (!lines) {
      lines = []
      bySite.set(e.siteId, lines)
    }
    lines.push(JSON.stringify(e.payload))
  }
  const folder = join(setup.dir, '..', `${setup.name}-import`)
  await mkdir(folder, { recursive: true })
  const ua = new UserAgentParser()
  const { config } = setup
  const limits = config.ingest
  const writer = backend.log.writer()
  let appended = 0
  try {
    for (const [siteId, lines] of bySite) {
      const file = join(folder, `${siteId}.ndjson`)
      await writeFile(file, `${lines.join('\n')}\n`)
      const result = await importFile(config, createLogger('silent'), {
        file,
        siteId,
        // The data folder is this process's: the import writes through its ports.
        ports: embeddedPorts(backend),
        log: writer,
        checkSite: false,
        batchSize: 1000,
        normalize: (payload, receivedAtMs) =>
          normalizeEvent(
            payload,
            {
              siteId,
              userAgent: undefined,
              receivedAtMs,
              batchSentAt: undefined,
              routeType: undefined,
              imported: true,
            },
            limits,
            ua,
          ),
      })
      if (result.rejected > 0)
        throw new Error(
          `${result.rejected} events of ${siteId} rejected, e.g. ${JSON.stringify(result.rejections[0])}`,
        )
      appended += result.accepted
    }
  } finally {
    await writer.close()
  }
  return appended
}

/** Records in the embedded raw log (the sum of its partitions' end offsets). */
export async function logRecords(setup: EmbeddedSetup, backend: EmbeddedBackend): Promise<number> {
  const ends = await backend.log.endOffsets(setup.config.kafka.topicRaw)
  return [...ends.values()].reduce((a, b) => a + b, 0)
}

export interface RunningAll {
  child: Child
  ingest: string
  query: string
  /** The stream worker's /metrics. */
  stream: string
  /** The archiver's and scheduler's /metrics. */
  batch: string
  /** When the stream worker took its partitions (epoch ms, from its log line), if it logged it before ready. */
  streamAssignedAtMs: number | undefined
}

const READY: Record<string, 'ingest' | 'stream' | 'batch' | 'query'> = {
  'ingest listening': 'ingest',
  'stream worker running': 'stream',
  'batch role running': 'batch',
  'query listening': 'query',
}

/** Starts `tally all` on the setup's data folder and waits until every role listens. */
export async function spawnAll(
  ctx: ScenarioContext,
  setup: EmbeddedSetup,
  name: string,
): Promise<RunningAll> {
  const urls: Record<string, string> = {}
  let streamAssignedAtMs: number | undefined
  const assigned = logLine('partitions assigned')
  const parse = (line: string) => {
    const a = assigned(line)
    if (a && a.groupId === setup.config.stream.group && streamAssignedAtMs === undefined)
      streamAssignedAtMs = Date.parse(String(a.time))
    for (const [msg, role] of Object.entries(READY)) {
      const fields = logLine(msg)(line)
      if (fields && typeof fields.url === 'string') urls[role] = fields.url
    }
    return Object.values(READY).every((role) => urls[role] !== undefined) ? { ...urls } : undefined
  }
  const child = await spawnNode({
    name,
    args: [
      join(projectRoot(), 'bin', 'tally.js'),
      'all',
      '--query-port',
      '0',
      '--stream-port',
      '0',
      '--batch-port',
      '0',
    ],
    env: { LOG_LEVEL: 'info', PORT: '0', ...setup.env },
    logDir: ctx.env.logDir,
    isReady: parse,
  })
  const r = child.ready as Record<string, string>
  return {
    child,
    ingest: r.ingest!,
    query: r.query!,
    stream: r.stream!,
    batch: r.batch!,
    streamAssignedAtMs,
  }
}

/**
 * SIGTERM, and an error unless it exited cleanly (a clean stop flushes the stream and the archiver and
 * releases the data folder). Returns its peak RSS, read just before.
 */
export async function stopAll(all: RunningAll): Promise<number | undefined> {
  const rss = all.child.peakRssBytes()
  await all.child.stop()
  const exit = await all.child.exited
  if (exit.code !== 0)
    throw new Error(`tally all exited with ${exit.code ?? exit.signal} (log ${all.child.logFile})`)
  return rss
}

/** GET with a read token; throws on anything but a 2xx. */
export async function getJson<T>(url: string, token: string): Promise<T> {
  const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } })
  const text = await res.text()
  if (!res.ok) throw new Error(`GET ${url}: ${res.status} ${text.slice(0, 300)}`)
  return JSON.parse(text) as T
}

/** Events and bot events of a site over whole UTC days [fromMs, toMs], through the query API. */
export async function siteCounts(
  queryUrl: string,
  siteId: string,
  token: string,
  fromMs: number,
  toMs: number,
): Promise<{ events: number; bots: number }> {
  const day = (ms: number) => new Date(ms).toISOString().slice(0, 10)
  const body = await getJson<{ results: { events: { value: number }; bot_events: { value: number } } }>(
    `${queryUrl}/v1/stats/aggregate?site=${siteId}&from=${day(fromMs)}&to=${day(toMs)}&metrics=events,bot_events`,
    token,
  )
  return { events: body.results.events.value, bots: body.results.bot_events.value }
}

/** Events the archiver of `tally all` has read: in closed segments plus those still buffered for the next one. */
export function archiverRead(metrics: string): number {
  return (
    metricSum(metrics, 'tally_archive_records_total', { outcome: 'archived' }) +
    metricSum(metrics, 'tally_archive_buffered_events')
  )
}

/**
 * Waits until the stream worker and the archiver of `tally all` have taken in every record of the
 * log, at most `timeoutMs`: the stream's consumer lag is 0 and the archiver read nothing more, on
 * two readings in a row. (The archiver's own lag counts records not yet in a closed segment, which
 * it closes only every 30 s: not work left to do.) Returns the time waited and whether they got there.
 */
export async function waitIdle(all: RunningAll, timeoutMs: number): Promise<{ ms: number; idle: boolean }> {
  const started = performance.now()
  let calm = 0
  let lastRead = -1
  while (performance.now() - started < timeoutMs) {
    const [stream, batch] = await Promise.all([scrape(all.stream), scrape(all.batch)])
    const read = archiverRead(batch)
    calm = metricSum(stream, 'tally_stream_consumer_lag') === 0 && read === lastRead ? calm + 1 : 0
    lastRead = read
    if (calm >= 2) return { ms: performance.now() - started, idle: true }
    await new Promise((r) => setTimeout(r, 150))
  }
  return { ms: performance.now() - started, idle: false }
}
