import { isIP } from 'node:net'
import { homedir, tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { BREAKDOWN_DIMENSIONS, type BreakdownDimension, parseBreakdowns } from './aggregate/breakdowns.js'
import { ConfigError } from './errors.js'
import type { PackOptions } from './ports/event-log.js'

/**
 * The only module that reads `process.env`. Everything else receives the frozen object built here
 * (or the slice of it that it needs).
 */

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'

export interface KafkaConfig {
  /** True when KAFKA_BROKERS was set; otherwise the local `tally services` broker is used. */
  configured: boolean
  brokers: readonly string[]
  clientId: string
  topicRaw: string
  topicDeadLetter: string
  /**
   * Where stream workers announce each checkpoint they write (progress notices), so query roles
   * re-read a data version when the data changed instead of polling for it. Default
   * tally.stream.progress.
   */
  topicProgress: string
  /** Partitions of the raw topic created by `tally migrate`. */
  partitions: number
  /** How long the raw log keeps records (Kafka retention.ms of the raw topic; embedded log retention). Default 7 days. */
  retentionMs: number
  replicationFactor: number
}

export interface CassandraReplication {
  class: 'SimpleStrategy' | 'NetworkTopologyStrategy'
  /** SimpleStrategy: {replication_factor: n}; NetworkTopologyStrategy: {dc: n, …}. */
  factors: Readonly<Record<string, number>>
}

export type Consistency = 'ONE' | 'LOCAL_ONE' | 'QUORUM' | 'LOCAL_QUORUM' | 'ALL'

export interface CassandraConfig {
  configured: boolean
  contactPoints: readonly string[]
  localDataCenter: string
  keyspace: string
  replication: CassandraReplication
  consistency: Consistency
  username: string | undefined
  password: string | undefined
  /** How long a long-running role waits at start for Cassandra to answer (TALLY_CONNECT_WAIT_MS). */
  connectWaitMs: number
}

export interface ServicesConfig {
  /** Where the Kafka and Cassandra jars are cached (outside the repo, kept between runs). */
  cacheDir: string
  /** Data, logs and PID files of the local servers (a temporary folder). */
  runDir: string
  kafkaVersion: string
  cassandraVersion: string
  kafkaPort: number
  kafkaControllerPort: number
  cassandraPort: number
  cassandraStoragePort: number
  cassandraJmxPort: number
  /** How long `up` waits for each server to answer. */
  startTimeoutMs: number
  /** The java launcher (Cassandra 5.0 needs JDK 11 or 17). */
  java: string
}

export interface IngestConfig {
  /** Largest request body, after decompression. Default 500 KB. */
  maxBodyBytes: number
  /** Largest single event (serialized JSON). Default 32 KB. */
  maxEventBytes: number
  /** Most events in one batch request. Default 2000. */
  maxBatchEvents: number
  /** Deepest nesting of objects/arrays in an event. Default 16. */
  maxDepth: number
  /** Events per second per site and ingest process; 0 turns the limit off. Default 20000. */
  rateLimitSitePerSec: number
  /**
   * Events per second per site and client IP, for browser-style requests (key in the body or URL;
   * HTTP Basic is limited per site only); 0 turns the limit off. Default 1000.
   */
  rateLimitClientPerSec: number
  /** How long a site (write key, origins) is cached. Default 10000 ms. */
  siteCacheTtlMs: number
  /** A request waits at most this long for the log's acknowledgement, then gets 503. Default 5000 ms. */
  appendTimeoutMs: number
  /** How long a write waits for company before the producer sends a batch. Default 2 ms. */
  lingerMs: number
  /**
   * Compression of the producer's batches to the raw topic. Default `none`: gzip in kafkajs costs
   * the ingest process about as much CPU as the rest of producing; a topic whose `compression.type`
   * is gzip is compressed by the broker instead.
   */
  compression: 'none' | 'gzip'
  /**
   * Producer batches in flight at once, each from its own idempotent producer, so a batch need not
   * wait for the previous one's acknowledgement. Default 2.
   */
  inFlightBatches: number
  /**
   * How ingest and `tally import` write the raw log (TALLY_LOG_FORMAT): format 2 (default) packs
   * each producer flush's events per partition into one Kafka record, bounded by `maxEvents`
   * (TALLY_PACK_MAX_EVENTS, 1000) and `maxBytes` (TALLY_PACK_MAX_BYTES, 900000: under Kafka's
   * default max.message.bytes of 1 MiB); undefined: format 1, one record per event. Every reader
   * reads both. The embedded log writes format 1 either way.
   */
  pack?: PackOptions
  /** Time allowed to receive a whole request, headers and body (ingest and query). Default 10000 ms. */
  requestTimeoutMs: number
  /**
   * Most connections an ingest or query server holds at once (each role's own); from 90 % of it,
   * idle keep-alive connections are closed first. Default 10000.
   */
  maxConnections: number
  /**
   * An event whose corrected timestamp is more than this ahead of its receivedAt takes receivedAt
   * and is flagged `timestampClamped` (TALLY_MAX_FUTURE_MS). Default 23 h.
   */
  maxFutureMs: number
  /**
   * A live event whose corrected timestamp is more than this before its receivedAt is rejected:
   * TALLY_MAX_PAST_DAYS (default 7), never more than the raw log's retention.
   */
  maxPastMs: number
  /** The same for imports (/v1/import, `tally import`): TALLY_IMPORT_MAX_PAST_DAYS, default 1830 days. */
  importMaxPastMs: number
  /**
   * First-party path prefix (TALLY_TRACKER_PREFIX, e.g. `/stats`): ingest also serves `/t.js` and
   * `/v1/…` under it, for sites that proxy it on their own domain. Default '' (none).
   */
  trackerPrefix?: string
  /**
   * TALLY_TRUST_PROXY: whose X-Forwarded-For gives the visitor's IP (for its country): a hop count
   * or a comma-separated list of proxy addresses/CIDRs. Undefined: the socket's address.
   */
  trustProxy?: number | string[]
}

export interface QueryConfig {
  /** Bytes of stats answers the query role keeps until their data changes; 0 = no cache. */
  answerCacheBytes: number
  /** Longest time a stats answer is served from that cache, ms. */
  answerCacheMaxAgeMs: number
  /**
   * A site's data version read at most this long ago (ms, from the start of its read) serves new
   * requests without a read of their own, and is read again in the background once half as old:
   * answers may miss writes of that last stretch. Default 100. 0: every request waits for a read of
   * the version (one read shared by the requests that arrive while it runs).
   */
  versionMaxAgeMs: number
  /**
   * While the query role hears the stream's progress notices, a data version is re-read when a
   * notice arrives and at least this often (ms): notices can be lost, and rebuilds send none.
   * Default 1000.
   */
  notifiedVersionMaxAgeMs: number
}

export interface StreamConfig {
  /** Consumer group of the aggregate workers. Default tally-aggregate. */
  group: string
  /** Event-time grace: events whose minute closed longer ago than this (by the partition's latest receivedAt) are left to the batch path. Default 5 min. */
  graceMs: number
  /** Events timed more than this ahead of the partition's latest receivedAt are left to the batch path (TALLY_MAX_FUTURE_MS). Default 23 h. */
  maxFutureMs: number
  /**
   * A gap of at least this much event time between two counted events of a visitor ends a visit
   * (TALLY_VISIT_GAP_MS); stream and rebuild read the same value (stream = batch). Default 30 min.
   */
  visitGapMs: number
  /**
   * Distinct values per window kept for each custom property (TALLY_PROP_VALUES_MAX,
   * core/aggregate/props.ts); stream, rebuild and query read the same value. Default 1000.
   */
  propValuesMax: number
  /**
   * Distinct values per window kept for each of path, referrer, source and the UTM set
   * (TALLY_DIMENSION_VALUES_MAX, core/aggregate/props.ts CAPPED_DIMENSIONS), and through the day's
   * kept paths for entry and exit pages (DAY_PATH_CAPPED); stream, rebuild and query read the same
   * value. Default 10000.
   */
  dimensionValuesMax: number
  /**
   * The breakdown dimensions aggregated (TALLY_BREAKDOWNS, core/aggregate/breakdowns.ts), in
   * BREAKDOWN_DIMENSIONS order; stream, rebuild and query read the same list. Default all.
   */
  breakdowns: readonly BreakdownDimension[]
  /**
   * Count visits (TALLY_STREAM_VISITS, default on). Off only to measure what visits cost (the bench's
   * stream scenario): rows are then written without visit data and show none until a rebuild.
   */
  countsVisits: boolean
  /**
   * Open visits one partition keeps (TALLY_STREAM_OPEN_VISITS_MAX, default 100000). Beyond it, at a
   * flush, the least recently active end early: their rows keep what they counted, but a visitor who
   * comes back within the gap starts a new visit, so the visits of those days are approximate until
   * rebuilt. Bounds the worker's memory and the visit state written (one Cassandra mutation).
   */
  openVisitsMax: number
  /**
   * Bytes of a partition's serialized visit state (TALLY_STREAM_VISIT_STATE_MAX_BYTES, default
   * 12 MiB: one Cassandra mutation, 16 MiB by default). Above it visits end early as above.
   */
  visitStateMaxBytes: number
  /** Open windows (all granularities and sites) one partition holds in memory; beyond it the oldest are written and dropped. Default 20000. */
  maxOpenWindows: number
  /** messageIds are remembered this long (by receivedAt) to drop client retries. Default 1 h, at most 24 h. */
  dedupHorizonMs: number
  /** How often open windows are written to the store (freshness). Default 500 ms. */
  flushIntervalMs: number
  /** HyperLogLog precision of `visitors` (4–18). Default 14 (≈0.81 % standard error). */
  hllPrecision: number
  /** Partitions this worker processes at once. Default 3. */
  partitionsConcurrently: number
  /**
   * A stream worker or archiver silent this long is removed from its group and its partitions
   * move: about the recovery time after a crash. Heartbeats go every third of it (at most 3 s).
   * Default 10000 ms (broker minimum 6000).
   */
  sessionTimeoutMs: number
  /** Row TTLs in seconds per granularity (0 = forever). */
  ttlSeconds: { minute: number; hour: number; day: number }
}

export interface ArchiveConfig {
  /**
   * Consumer group of the archivers (TALLY_ARCHIVE_GROUP), also the key of the archive's progress
   * that rebuilds and raw exports read. Default tally-archive.
   */
  group: string
  /**
   * Event hours one archiver partition buffers at once (TALLY_ARCHIVE_MAX_OPEN_HOURS): a record of
   * a further hour first closes the buffers into segments, so one flush writes at most this many
   * segments and hour folders. Default 64.
   */
  maxOpenHours: number
}

export interface BatchConfig {
  /**
   * How long `tally rebuild` waits for the archive to hold every record the log had when it started
   * before it fails (TALLY_ERR_ARCHIVE_BEHIND); `--wait-archive-ms` overrides it. Default 300000.
   */
  rebuildWaitArchiveMs: number
  /**
   * Count visits in the rebuild (TALLY_REBUILD_VISITS, default on). Off only to measure what visits
   * cost (the bench's batch scenario): the final rows are then written without visit data and show
   * no visits until a rebuild with visits on.
   */
  countsVisits: boolean
}

/**
 * Where Tally keeps its log and aggregates. `embedded`: SQLite files under TALLY_DATA_DIR, one
 * process (`tally all` only). `kafka-cassandra`: Kafka and Cassandra, any number of processes.
 */
export type BackendKind = 'embedded' | 'kafka-cassandra'

export interface TallyConfig {
  /** TALLY_BACKEND; `auto` = embedded unless KAFKA_BROKERS or CASSANDRA_CONTACT_POINTS is set. */
  backend: BackendKind | 'auto'
  host: string
  /** PORT, when set, overrides the role's own default port. */
  port: number | undefined
  logLevel: LogLevel
  dataDir: string
  kafka: KafkaConfig
  cassandra: CassandraConfig
  services: ServicesConfig
  ingest: IngestConfig
  stream: StreamConfig
  query: QueryConfig
  archive: ArchiveConfig
  batch: BatchConfig
  /** Deadline for an ordered shutdown before the process gives up waiting. Default 15000 ms. */
  shutdownTimeoutMs: number
}

type Env = Readonly<Record<string, string | undefined>>

/**
 * One configuration variable: how it is parsed and checked, and how the README's table and
 * `--help` describe it. Every variable is declared once, in {@link VARIABLES}; loadConfig, the
 * help text and the README table are derived from that one list.
 */
export interface Variable<T> {
  /** The accepted values as documented, e.g. `integer 0–600000`. */
  readonly values: string
  /** The default as documented; '' when there is none. */
  readonly default: string
  /** What it does (one line; README and --help). */
  readonly doc: string
  /** Parses the raw value (undefined when unset), throwing ConfigError naming `name`. */
  parse(raw: string | undefined, name: string): T
}

const unset = (raw: string | undefined): raw is undefined => raw === undefined || raw === ''

function integer(fallback: number, min: number, max: number, doc: string): Variable<number> {
  return {
    values: `integer ${min}–${max}`,
    default: String(fallback),
    doc,
    parse(raw, name) {
      if (unset(raw)) return fallback
      if (!/^\d+$/.test(raw.trim())) throw new ConfigError(name, raw, `an integer from ${min} to ${max}`)
      const n = Number(raw.trim())
      if (n < min || n > max) throw new ConfigError(name, raw, `an integer from ${min} to ${max}`)
      return n
    },
  }
}

function port(fallback: number, doc: string): Variable<number> {
  return integer(fallback, 1, 65535, doc)
}

function text(
  fallback: string,
  doc: string,
  check?: { pattern: RegExp; expected: string; values: string },
  shownDefault = fallback,
): Variable<string> {
  return {
    values: check?.values ?? 'text',
    default: shownDefault,
    doc,
    parse(raw, name) {
      const value = unset(raw) ? fallback : raw
      if (check && !check.pattern.test(value)) throw new ConfigError(name, value, check.expected)
      return value
    },
  }
}

function choice<T extends string>(allowed: readonly T[], fallback: T, doc: string): Variable<T> {
  return {
    values: allowed.join(', '),
    default: fallback,
    doc,
    parse(raw, name) {
      if (unset(raw)) return fallback
      if (!(allowed as readonly string[]).includes(raw))
        throw new ConfigError(name, raw, `one of ${allowed.join(', ')}`)
      return raw as T
    },
  }
}

function custom<T>(
  values: string,
  shownDefault: string,
  doc: string,
  parse: Variable<T>['parse'],
): Variable<T> {
  return { values, default: shownDefault, doc, parse }
}

const HOST_PORT = /^(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?$/

function hostList(defaultPort: number, doc: string): Variable<string[] | undefined> {
  return custom(`host:port list (port ${defaultPort} if left out)`, '', doc, (raw, name) => {
    if (raw === undefined || raw.trim() === '') return undefined
    const items = raw
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s !== '')
    if (items.length === 0 || items.some((s) => !HOST_PORT.test(s))) {
      throw new ConfigError(
        name,
        raw,
        'a comma-separated list of host:port, e.g. 127.0.0.1:9092,kafka-2:9092',
      )
    }
    return items.map((s) => (/:\d+$/.test(s) ? s : `${s}:${defaultPort}`))
  })
}

const IDENT = /^[a-z][a-z0-9_]{0,47}$/
const TOPIC = {
  pattern: /^[A-Za-z0-9._-]{1,200}$/,
  expected: 'a Kafka topic name: letters, digits, ".", "_" or "-"',
  values: 'Kafka topic name',
}

function parseReplication(raw: string | undefined, name: string): CassandraReplication {
  if (raw === undefined || raw.trim() === '')
    return { class: 'SimpleStrategy', factors: { replication_factor: 1 } }
  const expected =
    'SimpleStrategy:N or NetworkTopologyStrategy:dc1=N[,dc2=N…], e.g. NetworkTopologyStrategy:datacenter1=3'
  const [cls, spec] = raw.split(':', 2)
  if (cls === 'SimpleStrategy' && spec !== undefined && /^[1-9]\d?$/.test(spec)) {
    return { class: cls, factors: { replication_factor: Number(spec) } }
  }
  if (cls === 'NetworkTopologyStrategy' && spec !== undefined) {
    const factors: Record<string, number> = {}
    for (const part of spec.split(',')) {
      const m = /^([A-Za-z0-9_-]+)=([1-9]\d?)$/.exec(part.trim())
      if (!m) throw new ConfigError(name, raw, expected)
      factors[m[1]!] = Number(m[2])
    }
    return { class: cls, factors }
  }
  throw new ConfigError(name, raw, expected)
}

/** A URL path prefix like `/stats` or `/a/b` (no trailing slash); '' when unset. */
function parseTrustProxy(raw: string | undefined, name: string): number | string[] | undefined {
  if (raw === undefined || raw.trim() === '') return undefined
  const t = raw.trim()
  if (/^\d+$/.test(t)) {
    const hops = Number(t)
    if (hops < 1 || hops > 32) throw new ConfigError(name, raw, 'a hop count from 1 to 32')
    return hops
  }
  const list = t.split(',').map((x) => x.trim())
  for (const item of list) {
    const [addr, prefix, extra] = item.split('/')
    const version = isIP(addr ?? '')
    const max = version === 4 ? 32 : 128
    if (
      version === 0 ||
      extra !== undefined ||
      (prefix !== undefined && (!/^\d{1,3}$/.test(prefix) || Number(prefix) > max))
    )
      throw new ConfigError(name, raw, 'a hop count, or a comma-separated list of IP addresses or CIDRs')
  }
  return list
}

function parsePathPrefix(raw: string | undefined, name: string): string {
  if (raw === undefined || raw === '' || raw === '/') return ''
  const trimmed = raw.replace(/\/+$/, '')
  if (!/^(?:\/[A-Za-z0-9._~-]+)+$/.test(trimmed) || /^\/v1(?:\/|$)/.test(trimmed)) {
    throw new ConfigError(
      name,
      raw,
      'a path prefix such as /stats: segments of letters, digits, ".", "_", "~" or "-", not /v1',
    )
  }
  return trimmed
}

/**
 * Every variable `loadConfig` reads, in the order of `--help` and the README's table. Add a
 * variable here (and use it in loadConfig); `npm run docs:config` then rewrites the README table.
 */
export const VARIABLES = {
  HOST: text('127.0.0.1', 'address the HTTP servers bind to'),
  PORT: custom<number | undefined>(
    'integer 0–65535',
    '',
    "overrides the role's default port (ingest 8080, query 8081, stream 9464, batch 9465, archive 9466); 0 = any free port",
    // PORT=0 asks the OS for a free port (tests, several roles on one machine).
    (raw, name) => (unset(raw) ? undefined : integer(0, 0, 65535, '').parse(raw, name)),
  ),
  LOG_LEVEL: choice(
    ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const,
    'info',
    'level of the log lines on stderr (JSON, or readable on a terminal)',
  ),
  TALLY_BACKEND: choice(
    ['auto', 'embedded', 'kafka-cassandra'] as const,
    'auto',
    '`auto`: every command uses the embedded backend unless `KAFKA_BROKERS` or `CASSANDRA_CONTACT_POINTS` is set; `kafka-cassandra` with neither set: the local servers of `tally services up`. A role run in a process of its own (`tally ingest`, `stream`, …) refuses the embedded backend, which lives inside `tally all`',
  ),
  TALLY_DATA_DIR: text(
    './data',
    "local state: embedded log and store, archive segments, the quick start's keys",
  ),
  KAFKA_BROKERS: hostList(9092, 'Kafka brokers; unset = the local broker of `tally services up`'),
  KAFKA_CLIENT_ID: text('tally', 'client id sent to Kafka'),
  KAFKA_PARTITIONS: integer(6, 1, 10_000, 'partitions of the raw topic created by `tally migrate`'),
  KAFKA_REPLICATION_FACTOR: integer(
    1,
    1,
    32,
    'replication of the topics (with 3, `min.insync.replicas` is 2)',
  ),
  TALLY_TOPIC_RAW: text('tally.events.raw', 'raw event topic', TOPIC),
  TALLY_TOPIC_DEAD_LETTER: text('tally.events.dlq', 'dead-letter topic', TOPIC),
  TALLY_TOPIC_PROGRESS: text(
    'tally.stream.progress',
    'topic where stream workers announce each checkpoint to query roles (1 partition, 10 minutes of retention)',
    TOPIC,
  ),
  TALLY_LOG_RETENTION_HOURS: integer(
    168,
    1,
    87_600,
    "how long the raw log keeps records: the raw topic's `retention.ms`; the embedded log deletes only what the stream and the archiver have read",
  ),
  CASSANDRA_CONTACT_POINTS: hostList(9042, 'Cassandra nodes; unset = the local node of `tally services up`'),
  CASSANDRA_LOCAL_DC: text('datacenter1', 'local data center'),
  CASSANDRA_KEYSPACE: text('tally', 'keyspace', {
    pattern: IDENT,
    expected: 'a lower-case identifier: a letter, then letters, digits or _',
    values: 'lower-case identifier',
  }),
  CASSANDRA_REPLICATION: custom(
    '`SimpleStrategy:N` or `NetworkTopologyStrategy:dc1=N,dc2=N`',
    'SimpleStrategy:1',
    'replication of the keyspace created by `tally migrate`',
    parseReplication,
  ),
  CASSANDRA_CONSISTENCY: choice(
    ['ONE', 'LOCAL_ONE', 'QUORUM', 'LOCAL_QUORUM', 'ALL'] as const,
    'LOCAL_QUORUM',
    'consistency of reads and writes',
  ),
  CASSANDRA_USERNAME: custom(
    'text',
    '',
    'user name, when the cluster requires credentials',
    (raw) => raw || undefined,
  ),
  CASSANDRA_PASSWORD: custom(
    'text',
    '',
    'password, when the cluster requires credentials',
    (raw) => raw || undefined,
  ),
  TALLY_CONNECT_WAIT_MS: integer(
    30_000,
    0,
    3_600_000,
    'how long a long-running role (`ingest`, `stream`, `query`, `archive`, `batch`) waits at start for Cassandra to answer, retrying, before it exits (0: exit at once); one-shot commands do not wait',
  ),
  TALLY_MAX_BODY_BYTES: integer(
    500 * 1024,
    1024,
    64 * 1024 * 1024,
    'largest request body after decompression',
  ),
  TALLY_MAX_EVENT_BYTES: integer(32 * 1024, 256, 16 * 1024 * 1024, 'largest single event (serialized JSON)'),
  TALLY_MAX_BATCH_EVENTS: integer(2000, 1, 100_000, 'most events in one batch request'),
  TALLY_MAX_DEPTH: integer(16, 2, 256, 'deepest nesting of objects and arrays inside an event'),
  TALLY_RATE_LIMIT_SITE: integer(20_000, 0, 100_000_000, 'events/s per site and ingest process; 0 = off'),
  TALLY_RATE_LIMIT_CLIENT: integer(
    1000,
    0,
    100_000_000,
    'events/s per site and client IP for browser-style requests (HTTP Basic is limited per site only), per ingest process; 0 = off',
  ),
  TALLY_SITE_CACHE_TTL_MS: integer(
    10_000,
    0,
    3_600_000,
    'how long ingest and query cache a site and its keys; a rotated key or revoked read token works at most this long',
  ),
  TALLY_APPEND_TIMEOUT_MS: integer(5000, 100, 600_000, 'wait for the log before answering 503'),
  TALLY_LINGER_MS: integer(2, 0, 1000, 'producer linger that lets requests share a Kafka batch'),
  TALLY_INGEST_IN_FLIGHT_BATCHES: integer(
    2,
    1,
    16,
    'producer batches in flight at once, each from its own idempotent producer',
  ),
  TALLY_INGEST_COMPRESSION: choice(
    ['none', 'gzip'] as const,
    'none',
    'compression of the batches ingest writes to Kafka; gzip costs ingest CPU, a topic with `compression.type=gzip` is compressed by the broker instead',
  ),
  TALLY_LOG_FORMAT: choice(
    ['1', '2'] as const,
    '2',
    "raw log record format ingest and `tally import` write to Kafka: 2 packs a flush's events per partition into one record (readers read both), 1 writes one record per event",
  ),
  TALLY_PACK_MAX_EVENTS: integer(1000, 1, 65_535, 'most events in one packed (format 2) raw log record'),
  TALLY_PACK_MAX_BYTES: integer(
    900_000,
    1024,
    16 * 1024 * 1024,
    "most bytes of one packed (format 2) raw log record; keep it under the raw topic's `max.message.bytes` (Kafka default 1048588); a larger event goes alone",
  ),
  TALLY_REQUEST_TIMEOUT_MS: integer(
    10_000,
    100,
    600_000,
    'time to receive a whole request, headers and body, on ingest and query; then `408` `TALLY_ERR_REQUEST_TIMEOUT` and the connection is closed',
  ),
  TALLY_MAX_CONNECTIONS: integer(
    10_000,
    1,
    1_000_000,
    'connections each ingest or query server holds at once: over it new ones are closed as they are accepted; from 90 % of it idle keep-alive connections are closed first (the /metrics servers hold 1000)',
  ),
  TALLY_MAX_FUTURE_MS: integer(
    23 * 3_600_000,
    0,
    7 * 86_400_000,
    'an event timed further ahead of its receipt takes the receive time (flagged `timestampClamped`); the stream leaves events further ahead of its watermark to batch (82800000 ms = 23 h)',
  ),
  TALLY_MAX_PAST_DAYS: integer(
    7,
    1,
    3650,
    'live events timed more days before their receipt are rejected (`TALLY_ERR_TIMESTAMP_TOO_OLD`); never more than the log retention',
  ),
  TALLY_IMPORT_MAX_PAST_DAYS: integer(
    1830,
    1,
    36_500,
    'the same limit for /v1/import and `tally import` (5 years)',
  ),
  TALLY_TRACKER_PREFIX: custom(
    'path prefix such as `/stats`, not `/v1`',
    '',
    'first-party path prefix: ingest also serves `<prefix>/t.js` and `<prefix>/v1/…`',
    parsePathPrefix,
  ),
  TALLY_TRUST_PROXY: custom(
    'hop count, or comma-separated proxy addresses/CIDRs',
    '',
    "whose `X-Forwarded-For` ingest believes for the visitor's IP (its country, Plausible's cookieless visitor id): the last N hops, or the listed proxies; unset: the socket's address",
    parseTrustProxy,
  ),
  TALLY_STREAM_GROUP: text('tally-aggregate', 'consumer group of the stream workers'),
  TALLY_ARCHIVE_GROUP: text(
    'tally-archive',
    "consumer group of the archivers (`tally archive`, `tally batch`); rebuilds and raw exports read the archive's progress under it, so every role of one installation needs the same value",
  ),
  TALLY_GRACE_MS: integer(
    300_000,
    0,
    7 * 86_400_000,
    'event-time grace; later events are left to the batch rebuild',
  ),
  TALLY_VISIT_GAP_MS: integer(
    1_800_000,
    60_000,
    86_400_000,
    'a gap of at least this much event time between two events of a visitor ends a visit (a visit also ends at midnight UTC); stream and rebuild need the same value',
  ),
  TALLY_PROP_VALUES_MAX: integer(
    1000,
    10,
    100_000,
    'distinct values per window kept for each custom property (prop:KEY); the others count under `(other)`, chosen by the hash of the value so stream and rebuild keep the same (stream, rebuild and query need the same value)',
  ),
  TALLY_DIMENSION_VALUES_MAX: integer(
    10_000,
    10,
    100_000,
    'distinct values per hour or day window kept for each of `path`, `referrer`, `source` and `utm_*` (the rest count under `(other)`, chosen by the hash of the value as for custom properties; stream, rebuild and query need the same value); `entry_page` and `exit_page` keep the pages among the kept `path` values of their UTC day: a rebuilt window holds at most this + 1 rows per dimension, a stream worker about this × (1 + ln(distinct / this)) per partition',
  ),
  TALLY_BREAKDOWNS: custom<readonly BreakdownDimension[]>(
    `comma-separated list of ${BREAKDOWN_DIMENSIONS.join(', ')}`,
    'all',
    'the breakdown dimensions aggregated: each adds a row per event to every hour and day window (its values count in rows of their own), so leaving out unneeded ones (e.g. country, utm_content, utm_term) saves rows; stream, rebuild and query need the same list, and the query answers a breakdown or filter on another with 400 TALLY_ERR_BREAKDOWN_NOT_KEPT; totals, custom properties and goals are always kept',
    (raw, name) => {
      const parsed = parseBreakdowns(raw)
      if (parsed.ok) return parsed.dimensions
      const err = new ConfigError(name, raw ?? '', 'a list of breakdown dimensions')
      err.message = `${name}=${JSON.stringify(raw)} is not valid: ${JSON.stringify(parsed.bad)} is not a breakdown dimension; expected a comma-separated list of ${BREAKDOWN_DIMENSIONS.join(', ')}`
      throw err
    },
  ),
  TALLY_STREAM_VISITS: choice(
    ['on', 'off'] as const,
    'on',
    'count visits in the stream; `off` only to measure what they cost (the bench does): rows are then written without visit data and show no visits until a rebuild',
  ),
  TALLY_STREAM_OPEN_VISITS_MAX: integer(
    100_000,
    1_000,
    1_000_000,
    "open visits a stream partition keeps (typically about 0.7 KB of heap and 60–150 bytes of written state each; TALLY_STREAM_VISIT_STATE_MAX_BYTES bounds the state's bytes); beyond it the least recently active end early at a flush (`tally_stream_visits_ended_early_total`, a warning): a visitor who returns within the gap then starts a new visit, so those days' visits and conversions by visit values (source, UTM, entry and exit page) are approximate until rebuilt",
  ),
  TALLY_STREAM_VISIT_STATE_MAX_BYTES: integer(
    12 * 1024 * 1024,
    64 * 1024,
    256 * 1024 * 1024,
    "bytes of a partition's visit state as written with each checkpoint (one Cassandra mutation: keep it under the cluster's max_mutation_size, 16 MiB by default); visits with long ids, paths or UTM values take up to a few KB each, so beyond it the least recently active end early as for TALLY_STREAM_OPEN_VISITS_MAX",
  ),
  TALLY_STREAM_MAX_OPEN_WINDOWS: integer(
    20_000,
    100,
    10_000_000,
    'open windows a stream partition holds in memory; beyond it the oldest are written and dropped, and read back if touched again',
  ),
  TALLY_ARCHIVE_MAX_OPEN_HOURS: integer(
    64,
    1,
    10_000,
    'event hours an archiver partition buffers; an event of a further hour first closes the buffers into segments',
  ),
  TALLY_DEDUP_HORIZON_MS: integer(3_600_000, 0, 86_400_000, 'how long the stream remembers messageIds'),
  TALLY_FLUSH_INTERVAL_MS: integer(500, 10, 600_000, 'how often workers write open windows'),
  TALLY_HLL_PRECISION: integer(14, 4, 18, 'HyperLogLog precision of `visitors` (14: about 0.81 % error)'),
  TALLY_STREAM_CONCURRENCY: integer(3, 1, 1000, 'partitions a worker processes at once'),
  TALLY_STREAM_SESSION_TIMEOUT_MS: integer(
    10_000,
    6000,
    300_000,
    "consumer session timeout of stream workers and archivers; heartbeats every third of it (at most 3 s). A crashed (SIGKILLed) process's partitions move after about this plus a rebalance",
  ),
  TALLY_TTL_MINUTE_DAYS: integer(7, 0, 36_500, 'TTL of minute aggregates in days; 0 = keep'),
  TALLY_TTL_HOUR_DAYS: integer(90, 0, 36_500, 'TTL of hour aggregates in days; 0 = keep'),
  TALLY_TTL_DAY_DAYS: integer(0, 0, 36_500, 'TTL of day aggregates in days; 0 = keep'),
  TALLY_QUERY_CACHE_MB: integer(
    64,
    0,
    65_536,
    "stats answers the query role keeps until the stream's checkpoints or a rebuild change the site's data; 0 = off",
  ),
  TALLY_QUERY_CACHE_MAX_AGE_MS: integer(
    10_000,
    0,
    3_600_000,
    'longest a stats answer is served from that cache',
  ),
  TALLY_QUERY_VERSION_MAX_AGE_MS: integer(
    100,
    0,
    10_000,
    "reuse a site's data version read at most this long ago instead of reading it for each request (read again in the background at half that age): answers may miss the writes of that last stretch; 0 = read per request",
  ),
  TALLY_QUERY_NOTIFIED_VERSION_MAX_AGE_MS: integer(
    1000,
    0,
    600_000,
    "while the query role hears the stream's progress notices: re-read a data version after each notice and otherwise at least this often (never less than TALLY_QUERY_VERSION_MAX_AGE_MS; unused when that is 0)",
  ),
  TALLY_REBUILD_WAIT_ARCHIVE_MS: integer(
    300_000,
    0,
    86_400_000,
    'how long `tally rebuild` waits for the archive to hold the log before failing (the embedded backend does not wait)',
  ),
  TALLY_REBUILD_VISITS: choice(
    ['on', 'off'] as const,
    'on',
    'count visits in the rebuild; `off` only to measure what they cost (the bench does): its final rows are then written without visit data and show no visits until a rebuild with visits on',
  ),
  TALLY_SHUTDOWN_TIMEOUT_MS: integer(15_000, 100, 600_000, 'deadline of the ordered shutdown'),
  TALLY_SERVICES_CACHE: text(
    join(homedir(), '.cache', 'tally', 'services'),
    'jar cache of `tally services`',
    undefined,
    '~/.cache/tally/services',
  ),
  TALLY_SERVICES_RUN_DIR: text(
    join(tmpdir(), 'tally-services'),
    'data, logs and PID files of `tally services`',
    undefined,
    '$TMPDIR/tally-services',
  ),
  TALLY_SERVICES_KAFKA_PORT: port(9092, 'port of the local Kafka broker'),
  TALLY_SERVICES_KAFKA_CONTROLLER_PORT: port(9093, 'controller port of the local Kafka broker'),
  TALLY_SERVICES_CASSANDRA_PORT: port(9042, 'CQL port of the local Cassandra node'),
  TALLY_SERVICES_CASSANDRA_STORAGE_PORT: port(7000, 'storage port of the local Cassandra node'),
  TALLY_SERVICES_CASSANDRA_JMX_PORT: port(7199, 'JMX port of the local Cassandra node'),
  TALLY_SERVICES_START_TIMEOUT_MS: integer(
    180_000,
    1000,
    3_600_000,
    'how long `services up` waits for each server',
  ),
  TALLY_JAVA: text('java', 'JDK 11 or 17 launcher for the local servers'),
} satisfies Record<string, Variable<unknown>>

export type VariableName = keyof typeof VARIABLES
type Values = { [K in VariableName]: (typeof VARIABLES)[K] extends Variable<infer T> ? T : never }

/**
 * TALLY_* variables read outside the configuration, so not unknown: TALLY_DEBUG (the CLI prints
 * stack traces), TALLY_TEST_KEEP_SERVICES (the integration tests leave the services running),
 * TALLY_BENCH_CPU_PROF (the bench profiles its children), TALLY_BENCH_NODE_FLAGS (more Node flags for
 * them), TALLY_BENCH_STEADY (the ingest-steady scenario's intervals), TALLY_SOAK, TALLY_SOAK_SECONDS,
 * TALLY_SOAK_SEED and TALLY_SOAK_KEEP (the soak test, `npm run test:soak`, whose child processes
 * inherit them).
 */
export const NON_CONFIG_VARIABLES: ReadonlySet<string> = new Set([
  'TALLY_DEBUG',
  'TALLY_TEST_KEEP_SERVICES',
  'TALLY_BENCH_CPU_PROF',
  'TALLY_BENCH_NODE_FLAGS',
  'TALLY_BENCH_STEADY',
  'TALLY_SOAK',
  'TALLY_SOAK_SECONDS',
  'TALLY_SOAK_SEED',
  'TALLY_SOAK_KEEP',
])

/** Edit distance (insertions, deletions, substitutions), for "did you mean". */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const current = [i]
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1)
      current.push(Math.min(previous[j]! + 1, current[j - 1]! + 1, substitution))
    }
    previous = current
  }
  return previous[b.length]!
}

/** The known variable closest to `name`, when it is close enough to be a typo. */
export function closestVariable(name: string): VariableName | undefined {
  let best: { name: VariableName; distance: number } | undefined
  for (const known of Object.keys(VARIABLES) as VariableName[]) {
    const distance = editDistance(name, known)
    if (best === undefined || distance < best.distance) best = { name: known, distance }
  }
  return best && best.distance <= Math.max(3, Math.floor(name.length / 3)) ? best.name : undefined
}

/** TALLY_ERR_CONFIG for a TALLY_* variable no part of Tally reads, naming the closest known one. */
export class UnknownVariableError extends ConfigError {
  constructor(variable: string, value: string, closest: string | undefined) {
    super(variable, value, 'a known variable')
    this.name = 'UnknownVariableError'
    this.message =
      closest === undefined
        ? `unknown variable ${variable} (\`tally --help\` lists the variables)`
        : `unknown variable ${variable}; did you mean ${closest}?`
  }
}

/** A TALLY_* variable that no part of Tally reads: a typo that would otherwise be ignored. */
function checkUnknown(env: Env): void {
  for (const name of Object.keys(env)) {
    if (!name.startsWith('TALLY_') || name in VARIABLES || NON_CONFIG_VARIABLES.has(name)) continue
    throw new UnknownVariableError(name, env[name] ?? '', closestVariable(name))
  }
}

function parseAll(env: Env): Values {
  const values: Record<string, unknown> = {}
  for (const [name, variable] of Object.entries(VARIABLES) as Array<[string, Variable<unknown>]>) {
    values[name] = variable.parse(env[name], name)
  }
  return values as Values
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const v of Object.values(value)) deepFreeze(v)
  }
  return value
}

/**
 * The backend every command talks to: TALLY_BACKEND when set, else embedded unless Kafka or
 * Cassandra is configured. A role run in a process of its own (`tally ingest`, …) refuses the
 * embedded backend, whose log and stores live inside one process (`tally all`).
 */
export function backendOf(config: Pick<TallyConfig, 'backend' | 'kafka' | 'cassandra'>): BackendKind {
  if (config.backend !== 'auto') return config.backend
  return config.kafka.configured || config.cassandra.configured ? 'kafka-cassandra' : 'embedded'
}

/**
 * Reads, validates and freezes the configuration. Throws ConfigError naming the variable, or a
 * TALLY_ERR_CONFIG error for a TALLY_* variable that is not one of {@link VARIABLES}.
 */
export function loadConfig(env: Env = process.env): TallyConfig {
  checkUnknown(env)
  const v = parseAll(env)
  const retentionMs = v.TALLY_LOG_RETENTION_HOURS * 3_600_000
  const services: ServicesConfig = {
    cacheDir: resolve(v.TALLY_SERVICES_CACHE),
    runDir: resolve(v.TALLY_SERVICES_RUN_DIR),
    kafkaVersion: '3.9.2',
    cassandraVersion: '5.0.8',
    kafkaPort: v.TALLY_SERVICES_KAFKA_PORT,
    kafkaControllerPort: v.TALLY_SERVICES_KAFKA_CONTROLLER_PORT,
    cassandraPort: v.TALLY_SERVICES_CASSANDRA_PORT,
    cassandraStoragePort: v.TALLY_SERVICES_CASSANDRA_STORAGE_PORT,
    cassandraJmxPort: v.TALLY_SERVICES_CASSANDRA_JMX_PORT,
    startTimeoutMs: v.TALLY_SERVICES_START_TIMEOUT_MS,
    java: v.TALLY_JAVA,
  }
  const config: TallyConfig = {
    backend: v.TALLY_BACKEND,
    host: v.HOST,
    port: v.PORT,
    logLevel: v.LOG_LEVEL,
    dataDir: resolve(v.TALLY_DATA_DIR),
    kafka: {
      configured: v.KAFKA_BROKERS !== undefined,
      brokers: v.KAFKA_BROKERS ?? [`127.0.0.1:${services.kafkaPort}`],
      clientId: v.KAFKA_CLIENT_ID,
      topicRaw: v.TALLY_TOPIC_RAW,
      topicDeadLetter: v.TALLY_TOPIC_DEAD_LETTER,
      topicProgress: v.TALLY_TOPIC_PROGRESS,
      partitions: v.KAFKA_PARTITIONS,
      retentionMs,
      replicationFactor: v.KAFKA_REPLICATION_FACTOR,
    },
    cassandra: {
      configured: v.CASSANDRA_CONTACT_POINTS !== undefined,
      contactPoints: v.CASSANDRA_CONTACT_POINTS ?? [`127.0.0.1:${services.cassandraPort}`],
      localDataCenter: v.CASSANDRA_LOCAL_DC,
      keyspace: v.CASSANDRA_KEYSPACE,
      replication: v.CASSANDRA_REPLICATION,
      consistency: v.CASSANDRA_CONSISTENCY,
      username: v.CASSANDRA_USERNAME,
      password: v.CASSANDRA_PASSWORD,
      connectWaitMs: v.TALLY_CONNECT_WAIT_MS,
    },
    services,
    ingest: {
      maxBodyBytes: v.TALLY_MAX_BODY_BYTES,
      maxEventBytes: v.TALLY_MAX_EVENT_BYTES,
      maxBatchEvents: v.TALLY_MAX_BATCH_EVENTS,
      maxDepth: v.TALLY_MAX_DEPTH,
      rateLimitSitePerSec: v.TALLY_RATE_LIMIT_SITE,
      rateLimitClientPerSec: v.TALLY_RATE_LIMIT_CLIENT,
      siteCacheTtlMs: v.TALLY_SITE_CACHE_TTL_MS,
      appendTimeoutMs: v.TALLY_APPEND_TIMEOUT_MS,
      lingerMs: v.TALLY_LINGER_MS,
      compression: v.TALLY_INGEST_COMPRESSION,
      inFlightBatches: v.TALLY_INGEST_IN_FLIGHT_BATCHES,
      requestTimeoutMs: v.TALLY_REQUEST_TIMEOUT_MS,
      maxConnections: v.TALLY_MAX_CONNECTIONS,
      trackerPrefix: v.TALLY_TRACKER_PREFIX,
      ...(v.TALLY_TRUST_PROXY !== undefined ? { trustProxy: v.TALLY_TRUST_PROXY } : {}),
      ...(v.TALLY_LOG_FORMAT === '2'
        ? { pack: { maxEvents: v.TALLY_PACK_MAX_EVENTS, maxBytes: v.TALLY_PACK_MAX_BYTES } }
        : {}),
      // One value for ingest (clamp) and the stream (what it leaves to batch), so they agree.
      maxFutureMs: v.TALLY_MAX_FUTURE_MS,
      // Older live events could leave the raw log before the archiver read them.
      maxPastMs: Math.min(v.TALLY_MAX_PAST_DAYS * 86_400_000, retentionMs),
      importMaxPastMs: v.TALLY_IMPORT_MAX_PAST_DAYS * 86_400_000,
    },
    stream: {
      group: v.TALLY_STREAM_GROUP,
      graceMs: v.TALLY_GRACE_MS,
      maxFutureMs: v.TALLY_MAX_FUTURE_MS,
      visitGapMs: v.TALLY_VISIT_GAP_MS,
      propValuesMax: v.TALLY_PROP_VALUES_MAX,
      dimensionValuesMax: v.TALLY_DIMENSION_VALUES_MAX,
      breakdowns: v.TALLY_BREAKDOWNS,
      countsVisits: v.TALLY_STREAM_VISITS === 'on',
      openVisitsMax: v.TALLY_STREAM_OPEN_VISITS_MAX,
      visitStateMaxBytes: v.TALLY_STREAM_VISIT_STATE_MAX_BYTES,
      maxOpenWindows: v.TALLY_STREAM_MAX_OPEN_WINDOWS,
      dedupHorizonMs: v.TALLY_DEDUP_HORIZON_MS,
      flushIntervalMs: v.TALLY_FLUSH_INTERVAL_MS,
      hllPrecision: v.TALLY_HLL_PRECISION,
      partitionsConcurrently: v.TALLY_STREAM_CONCURRENCY,
      sessionTimeoutMs: v.TALLY_STREAM_SESSION_TIMEOUT_MS,
      ttlSeconds: {
        minute: v.TALLY_TTL_MINUTE_DAYS * 86_400,
        hour: v.TALLY_TTL_HOUR_DAYS * 86_400,
        day: v.TALLY_TTL_DAY_DAYS * 86_400,
      },
    },
    query: {
      answerCacheBytes: v.TALLY_QUERY_CACHE_MB * 1024 * 1024,
      answerCacheMaxAgeMs: v.TALLY_QUERY_CACHE_MAX_AGE_MS,
      versionMaxAgeMs: v.TALLY_QUERY_VERSION_MAX_AGE_MS,
      notifiedVersionMaxAgeMs: v.TALLY_QUERY_NOTIFIED_VERSION_MAX_AGE_MS,
    },
    archive: {
      group: v.TALLY_ARCHIVE_GROUP,
      maxOpenHours: v.TALLY_ARCHIVE_MAX_OPEN_HOURS,
    },
    batch: {
      rebuildWaitArchiveMs: v.TALLY_REBUILD_WAIT_ARCHIVE_MS,
      countsVisits: v.TALLY_REBUILD_VISITS === 'on',
    },
    shutdownTimeoutMs: v.TALLY_SHUTDOWN_TIMEOUT_MS,
  }
  return deepFreeze(config)
}

function helpLine(variable: Variable<unknown>): string {
  const values = variable.values === 'text' ? '' : variable.values
  const shownDefault = variable.default === '' ? '' : `default ${variable.default}`
  const notes = [values, shownDefault].filter((s) => s !== '').join('; ')
  return notes === '' ? variable.doc : `${variable.doc} (${notes})`
}

/** The variables `loadConfig` reads, for `--help` texts: [name, meaning (values; default)]. */
export const CONFIG_VARIABLES: ReadonlyArray<readonly [name: string, meaning: string]> = Object.entries(
  VARIABLES as Record<string, Variable<unknown>>,
).map(([name, variable]) => [name, helpLine(variable)] as const)

const cell = (s: string) => s.replaceAll('|', '\\|')

/** The README's configuration table (between its `config-table` markers), generated from {@link VARIABLES}. */
export function configTableMarkdown(): string {
  const rows = Object.entries(VARIABLES as Record<string, Variable<unknown>>).map(
    ([name, v]) =>
      `| \`${name}\` | ${cell(v.values)} | ${v.default === '' ? '(none)' : cell(v.default)} | ${cell(v.doc)} |`,
  )
  return ['| variable | values | default | meaning |', '|---|---|---|---|', ...rows].join('\n')
}
