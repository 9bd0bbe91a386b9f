import { homedir, tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { ConfigError } from './errors.js'

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

function str(env: Env, name: string, fallback: string): string {
  const v = env[name]
  return v === undefined || v === '' ? fallback : v
}

function int(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name]
  if (raw === undefined || raw === '') return fallback
  if (!/^\d+$/.test(raw.trim())) throw new ConfigError(name, raw, `an integer from ${min} to ${max}`)
  const n = Number(raw.trim())
  if (n < min || n > max) throw new ConfigError(name, raw, `an integer from ${min} to ${max}`)
  return n
}

function port(env: Env, name: string, fallback: number): number {
  return int(env, name, fallback, 1, 65535)
}

function oneOf<T extends string>(env: Env, name: string, fallback: T, allowed: readonly T[]): T {
  const raw = env[name]
  if (raw === undefined || raw === '') return fallback
  if (!(allowed as readonly string[]).includes(raw))
    throw new ConfigError(name, raw, `one of ${allowed.join(', ')}`)
  return raw as T
}

const HOST_PORT = /^(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?$/

function hostList(env: Env, name: string, defaultPort: number): string[] | undefined {
  const raw = env[name]
  if (raw === undefined || raw.trim() === '') return undefined
  const items = raw
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
  if (items.length === 0 || items.some((s) => !HOST_PORT.test(s))) {
    throw new ConfigError(name, raw, 'a comma-separated list of host:port, e.g. 127.0.0.1:9092,kafka-2:9092')
  }
  return items.map((s) => (/:\d+$/.test(s) ? s : `${s}:${defaultPort}`))
}

const IDENT = /^[a-z][a-z0-9_]{0,47}$/
const TOPIC = /^[A-Za-z0-9._-]{1,200}$/

function parseReplication(raw: string | undefined): CassandraReplication {
  const name = 'CASSANDRA_REPLICATION'
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
function pathPrefix(env: Env, name: string): string {
  const raw = env[name]
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

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const v of Object.values(value)) deepFreeze(v)
  }
  return value
}

/**
 * The backend `tally all` runs on: TALLY_BACKEND when set, else embedded unless Kafka or Cassandra
 * is configured. Roles run one by one (`tally ingest`, …) always use Kafka and Cassandra.
 */
export function backendOf(config: Pick<TallyConfig, 'backend' | 'kafka' | 'cassandra'>): BackendKind {
  if (config.backend !== 'auto') return config.backend
  return config.kafka.configured || config.cassandra.configured ? 'kafka-cassandra' : 'embedded'
}

/** Reads, validates and freezes the configuration. Throws ConfigError naming the variable. */
export function loadConfig(env: Env = process.env): TallyConfig {
  const brokers = hostList(env, 'KAFKA_BROKERS', 9092)
  const contactPoints = hostList(env, 'CASSANDRA_CONTACT_POINTS', 9042)
  const keyspace = str(env, 'CASSANDRA_KEYSPACE', 'tally')
  if (!IDENT.test(keyspace)) {
    throw new ConfigError(
      'CASSANDRA_KEYSPACE',
      keyspace,
      'a lower-case identifier: a letter, then letters, digits or _',
    )
  }
  const topicRaw = str(env, 'TALLY_TOPIC_RAW', 'tally.events.raw')
  const topicDeadLetter = str(env, 'TALLY_TOPIC_DEAD_LETTER', 'tally.events.dlq')
  const topicProgress = str(env, 'TALLY_TOPIC_PROGRESS', 'tally.stream.progress')
  for (const [name, value] of [
    ['TALLY_TOPIC_RAW', topicRaw],
    ['TALLY_TOPIC_DEAD_LETTER', topicDeadLetter],
    ['TALLY_TOPIC_PROGRESS', topicProgress],
  ] as const) {
    if (!TOPIC.test(value))
      throw new ConfigError(name, value, 'a Kafka topic name: letters, digits, ".", "_" or "-"')
  }
  const rawPort = env.PORT
  const retentionMs = int(env, 'TALLY_LOG_RETENTION_HOURS', 168, 1, 87_600) * 3_600_000
  // One value for ingest (clamp) and the stream (what it leaves to batch), so they agree.
  const maxFutureMs = int(env, 'TALLY_MAX_FUTURE_MS', 23 * 3_600_000, 0, 7 * 86_400_000)
  const services: ServicesConfig = {
    cacheDir: resolve(str(env, 'TALLY_SERVICES_CACHE', join(homedir(), '.cache', 'tally', 'services'))),
    runDir: resolve(str(env, 'TALLY_SERVICES_RUN_DIR', join(tmpdir(), 'tally-services'))),
    kafkaVersion: '3.9.2',
    cassandraVersion: '5.0.8',
    kafkaPort: port(env, 'TALLY_SERVICES_KAFKA_PORT', 9092),
    kafkaControllerPort: port(env, 'TALLY_SERVICES_KAFKA_CONTROLLER_PORT', 9093),
    cassandraPort: port(env, 'TALLY_SERVICES_CASSANDRA_PORT', 9042),
    cassandraStoragePort: port(env, 'TALLY_SERVICES_CASSANDRA_STORAGE_PORT', 7000),
    cassandraJmxPort: port(env, 'TALLY_SERVICES_CASSANDRA_JMX_PORT', 7199),
    startTimeoutMs: int(env, 'TALLY_SERVICES_START_TIMEOUT_MS', 180_000, 1000, 3_600_000),
    java: str(env, 'TALLY_JAVA', 'java'),
  }
  const config: TallyConfig = {
    backend: oneOf(env, 'TALLY_BACKEND', 'auto', ['auto', 'embedded', 'kafka-cassandra']),
    host: str(env, 'HOST', '127.0.0.1'),
    // PORT=0 asks the OS for a free port (tests, several roles on one machine).
    port: rawPort === undefined || rawPort === '' ? undefined : int(env, 'PORT', 0, 0, 65535),
    logLevel: oneOf(env, 'LOG_LEVEL', 'info', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
    dataDir: resolve(str(env, 'TALLY_DATA_DIR', './data')),
    kafka: {
      configured: brokers !== undefined,
      brokers: brokers ?? [`127.0.0.1:${services.kafkaPort}`],
      clientId: str(env, 'KAFKA_CLIENT_ID', 'tally'),
      topicRaw,
      topicDeadLetter,
      topicProgress,
      partitions: int(env, 'KAFKA_PARTITIONS', 6, 1, 10_000),
      retentionMs,
      replicationFactor: int(env, 'KAFKA_REPLICATION_FACTOR', 1, 1, 32),
    },
    cassandra: {
      configured: contactPoints !== undefined,
      contactPoints: contactPoints ?? [`127.0.0.1:${services.cassandraPort}`],
      localDataCenter: str(env, 'CASSANDRA_LOCAL_DC', 'datacenter1'),
      keyspace,
      replication: parseReplication(env.CASSANDRA_REPLICATION),
      consistency: oneOf(env, 'CASSANDRA_CONSISTENCY', 'LOCAL_QUORUM', [
        'ONE',
        'LOCAL_ONE',
        'QUORUM',
        'LOCAL_QUORUM',
        'ALL',
      ]),
      username: env.CASSANDRA_USERNAME || undefined,
      password: env.CASSANDRA_PASSWORD || undefined,
    },
    services,
    ingest: {
      maxBodyBytes: int(env, 'TALLY_MAX_BODY_BYTES', 500 * 1024, 1024, 64 * 1024 * 1024),
      maxEventBytes: int(env, 'TALLY_MAX_EVENT_BYTES', 32 * 1024, 256, 16 * 1024 * 1024),
      maxBatchEvents: int(env, 'TALLY_MAX_BATCH_EVENTS', 2000, 1, 100_000),
      maxDepth: int(env, 'TALLY_MAX_DEPTH', 16, 2, 256),
      rateLimitSitePerSec: int(env, 'TALLY_RATE_LIMIT_SITE', 20_000, 0, 100_000_000),
      rateLimitClientPerSec: int(env, 'TALLY_RATE_LIMIT_CLIENT', 1000, 0, 100_000_000),
      siteCacheTtlMs: int(env, 'TALLY_SITE_CACHE_TTL_MS', 10_000, 0, 3_600_000),
      appendTimeoutMs: int(env, 'TALLY_APPEND_TIMEOUT_MS', 5000, 100, 600_000),
      lingerMs: int(env, 'TALLY_LINGER_MS', 2, 0, 1000),
      compression: oneOf(env, 'TALLY_INGEST_COMPRESSION', 'none', ['none', 'gzip'] as const),
      inFlightBatches: int(env, 'TALLY_INGEST_IN_FLIGHT_BATCHES', 2, 1, 16),
      requestTimeoutMs: int(env, 'TALLY_REQUEST_TIMEOUT_MS', 10_000, 100, 600_000),
      maxConnections: int(env, 'TALLY_MAX_CONNECTIONS', 10_000, 1, 1_000_000),
      trackerPrefix: pathPrefix(env, 'TALLY_TRACKER_PREFIX'),
      maxFutureMs,
      // Older live events could leave the raw log before the archiver read them.
      maxPastMs: Math.min(int(env, 'TALLY_MAX_PAST_DAYS', 7, 1, 3650) * 86_400_000, retentionMs),
      importMaxPastMs: int(env, 'TALLY_IMPORT_MAX_PAST_DAYS', 1830, 1, 36_500) * 86_400_000,
    },
    stream: {
      group: str(env, 'TALLY_STREAM_GROUP', 'tally-aggregate'),
      graceMs: int(env, 'TALLY_GRACE_MS', 300_000, 0, 7 * 86_400_000),
      maxFutureMs,
      maxOpenWindows: int(env, 'TALLY_STREAM_MAX_OPEN_WINDOWS', 20_000, 100, 10_000_000),
      dedupHorizonMs: int(env, 'TALLY_DEDUP_HORIZON_MS', 3_600_000, 0, 86_400_000),
      flushIntervalMs: int(env, 'TALLY_FLUSH_INTERVAL_MS', 500, 10, 600_000),
      hllPrecision: int(env, 'TALLY_HLL_PRECISION', 14, 4, 18),
      partitionsConcurrently: int(env, 'TALLY_STREAM_CONCURRENCY', 3, 1, 1000),
      sessionTimeoutMs: int(env, 'TALLY_STREAM_SESSION_TIMEOUT_MS', 10_000, 6000, 300_000),
      ttlSeconds: {
        minute: int(env, 'TALLY_TTL_MINUTE_DAYS', 7, 0, 36_500) * 86_400,
        hour: int(env, 'TALLY_TTL_HOUR_DAYS', 90, 0, 36_500) * 86_400,
        day: int(env, 'TALLY_TTL_DAY_DAYS', 0, 0, 36_500) * 86_400,
      },
    },
    query: {
      answerCacheBytes: int(env, 'TALLY_QUERY_CACHE_MB', 64, 0, 65_536) * 1024 * 1024,
      answerCacheMaxAgeMs: int(env, 'TALLY_QUERY_CACHE_MAX_AGE_MS', 10_000, 0, 3_600_000),
      versionMaxAgeMs: int(env, 'TALLY_QUERY_VERSION_MAX_AGE_MS', 100, 0, 10_000),
      notifiedVersionMaxAgeMs: int(env, 'TALLY_QUERY_NOTIFIED_VERSION_MAX_AGE_MS', 1000, 0, 600_000),
    },
    archive: {
      group: str(env, 'TALLY_ARCHIVE_GROUP', 'tally-archive'),
      maxOpenHours: int(env, 'TALLY_ARCHIVE_MAX_OPEN_HOURS', 64, 1, 10_000),
    },
    batch: {
      rebuildWaitArchiveMs: int(env, 'TALLY_REBUILD_WAIT_ARCHIVE_MS', 300_000, 0, 86_400_000),
    },
    shutdownTimeoutMs: int(env, 'TALLY_SHUTDOWN_TIMEOUT_MS', 15_000, 100, 600_000),
  }
  return deepFreeze(config)
}

/** The variables `loadConfig` reads, for `--help` texts and the README. */
export const CONFIG_VARIABLES: ReadonlyArray<readonly [name: string, meaning: string]> = [
  [
    'TALLY_BACKEND',
    'auto|embedded|kafka-cassandra; auto (default): `tally all` runs embedded unless KAFKA_BROKERS or CASSANDRA_CONTACT_POINTS is set',
  ],
  ['HOST', 'address the HTTP servers bind to (default 127.0.0.1)'],
  [
    'PORT',
    "overrides the role's default port (ingest 8080, query 8081, stream 9464, batch 9465, archive 9466); 0 = any free port",
  ],
  ['LOG_LEVEL', 'fatal|error|warn|info|debug|trace|silent (default info)'],
  ['TALLY_DATA_DIR', 'local state: archive segments, embedded stores (default ./data)'],
  ['KAFKA_BROKERS', 'host:port list; unset means the local broker of `tally services up`'],
  ['KAFKA_CLIENT_ID', 'client id sent to Kafka (default tally)'],
  ['KAFKA_PARTITIONS', 'partitions of the raw topic created by `tally migrate` (default 6)'],
  ['KAFKA_REPLICATION_FACTOR', 'replication factor of the topics (default 1)'],
  ['TALLY_TOPIC_RAW', 'raw event topic (default tally.events.raw)'],
  [
    'TALLY_LOG_RETENTION_HOURS',
    'how long the raw log keeps records (raw topic retention.ms; the embedded log deletes only what the stream and archiver have read) (default 168)',
  ],
  ['TALLY_TOPIC_DEAD_LETTER', 'dead-letter topic (default tally.events.dlq)'],
  [
    'TALLY_TOPIC_PROGRESS',
    'topic where stream workers announce their checkpoints to query roles (default tally.stream.progress)',
  ],
  ['CASSANDRA_CONTACT_POINTS', 'host:port list; unset means the local node of `tally services up`'],
  ['CASSANDRA_LOCAL_DC', 'local data center (default datacenter1)'],
  ['CASSANDRA_KEYSPACE', 'keyspace (default tally)'],
  ['CASSANDRA_REPLICATION', 'SimpleStrategy:N or NetworkTopologyStrategy:dc=N,… (default SimpleStrategy:1)'],
  ['CASSANDRA_CONSISTENCY', 'ONE|LOCAL_ONE|QUORUM|LOCAL_QUORUM|ALL (default LOCAL_QUORUM)'],
  ['CASSANDRA_USERNAME / CASSANDRA_PASSWORD', 'credentials, when the cluster requires them'],
  ['TALLY_MAX_BODY_BYTES', 'largest request body after decompression (default 512000)'],
  ['TALLY_MAX_EVENT_BYTES', 'largest single event (default 32768)'],
  ['TALLY_MAX_BATCH_EVENTS', 'most events in one batch request (default 2000)'],
  ['TALLY_MAX_DEPTH', 'deepest nesting inside an event (default 16)'],
  ['TALLY_RATE_LIMIT_SITE', 'events/s per site and ingest process, 0 = off (default 20000)'],
  [
    'TALLY_RATE_LIMIT_CLIENT',
    'events/s per site and client IP of browser-style requests (HTTP Basic: per site only), 0 = off (default 1000)',
  ],
  ['TALLY_SITE_CACHE_TTL_MS', 'how long ingest and query cache a site and its keys (default 10000)'],
  ['TALLY_APPEND_TIMEOUT_MS', 'wait for the log before answering 503 (default 5000)'],
  ['TALLY_LINGER_MS', 'producer linger that lets requests share a Kafka batch (default 2)'],
  [
    'TALLY_INGEST_IN_FLIGHT_BATCHES',
    'producer batches in flight at once, each from its own idempotent producer (default 2)',
  ],
  [
    'TALLY_INGEST_COMPRESSION',
    'none|gzip: compression of the batches ingest writes to Kafka (default none; gzip costs ingest CPU)',
  ],
  [
    'TALLY_REQUEST_TIMEOUT_MS',
    'time to receive a whole request, headers and body, on ingest and query; later: 408 (default 10000)',
  ],
  [
    'TALLY_MAX_CONNECTIONS',
    'connections each ingest or query server holds at once; near it idle keep-alive ones are closed first, over it new ones are refused (default 10000)',
  ],
  [
    'TALLY_MAX_FUTURE_MS',
    'an event timed more than this ahead of its receipt takes the receive time, flagged timestampClamped; the stream leaves such events to batch (default 82800000, 23 h)',
  ],
  [
    'TALLY_MAX_PAST_DAYS',
    'live events timed more than this many days before their receipt are rejected (TALLY_ERR_TIMESTAMP_TOO_OLD); never more than the log retention (default 7)',
  ],
  ['TALLY_IMPORT_MAX_PAST_DAYS', 'the same limit for /v1/import and `tally import` (default 1830, 5 years)'],
  [
    'TALLY_TRACKER_PREFIX',
    'first-party path prefix, e.g. /stats: ingest also serves <prefix>/t.js and <prefix>/v1/… (default none)',
  ],
  ['TALLY_STREAM_GROUP', 'consumer group of the stream workers (default tally-aggregate)'],
  [
    'TALLY_ARCHIVE_GROUP',
    'consumer group of the archivers; rebuilds and raw exports read its progress (default tally-archive)',
  ],
  ['TALLY_GRACE_MS', 'event-time grace before a window closes; later events go to batch (default 300000)'],
  [
    'TALLY_STREAM_MAX_OPEN_WINDOWS',
    'open windows a stream partition holds in memory; beyond it the oldest are written and dropped (default 20000)',
  ],
  [
    'TALLY_ARCHIVE_MAX_OPEN_HOURS',
    'event hours an archiver partition buffers at once; a further hour closes them into segments first (default 64)',
  ],
  ['TALLY_DEDUP_HORIZON_MS', 'how long messageIds are remembered by the stream, max 1 day (default 3600000)'],
  ['TALLY_FLUSH_INTERVAL_MS', 'how often workers write open windows (default 500)'],
  ['TALLY_HLL_PRECISION', 'HyperLogLog precision of visitors, 4-18 (default 14, ~0.81% error)'],
  ['TALLY_STREAM_CONCURRENCY', 'partitions a worker processes at once (default 3)'],
  [
    'TALLY_STREAM_SESSION_TIMEOUT_MS',
    "consumer session timeout of stream workers and archivers, 6000-300000: a crashed process's partitions move after about this plus a rebalance (default 10000)",
  ],
  [
    'TALLY_TTL_MINUTE_DAYS / _HOUR_DAYS / _DAY_DAYS',
    'aggregate row TTL per granularity, 0 = keep (default 7 / 90 / 0)',
  ],
  [
    'TALLY_QUERY_CACHE_MB',
    'stats answers the query role keeps until the data under them changes, 0 = off (default 64)',
  ],
  ['TALLY_QUERY_CACHE_MAX_AGE_MS', 'longest a stats answer is served from that cache (default 10000)'],
  [
    'TALLY_QUERY_VERSION_MAX_AGE_MS',
    "reuse a site's data version read this recently instead of reading it per request: answers may miss the last N ms of writes; 0 = read per request (default 100)",
  ],
  [
    'TALLY_QUERY_NOTIFIED_VERSION_MAX_AGE_MS',
    "while the query role hears the stream's progress notices, a data version is re-read after a notice and otherwise at least this often (never less than TALLY_QUERY_VERSION_MAX_AGE_MS; unused when that is 0) (default 1000)",
  ],
  [
    'TALLY_REBUILD_WAIT_ARCHIVE_MS',
    '`tally rebuild` waits this long for the archive to hold the log before failing, 0-86400000 (default 300000)',
  ],
  ['TALLY_SHUTDOWN_TIMEOUT_MS', 'deadline of the ordered shutdown (default 15000)'],
  ['TALLY_SERVICES_CACHE', 'jar cache of `tally services` (default ~/.cache/tally/services)'],
  [
    'TALLY_SERVICES_*_PORT',
    'ports of the local servers: KAFKA (9092), KAFKA_CONTROLLER (9093), CASSANDRA (9042), CASSANDRA_STORAGE (7000), CASSANDRA_JMX (7199)',
  ],
  ['TALLY_SERVICES_START_TIMEOUT_MS', 'how long `services up` waits for each server (default 180000)'],
  ['TALLY_JAVA', 'java launcher for the local servers, JDK 11 or 17 (default java on PATH)'],
  ['TALLY_SERVICES_RUN_DIR', 'data, logs and PID files of `tally services` (default $TMPDIR/tally-services)'],
]
