import { Kafka, type KafkaConfig as KafkaJsConfig, type LogEntry, logLevel } from 'kafkajs'
import type { KafkaConfig } from '../config.js'
import { ServiceUnavailableError } from '../errors.js'
import type { Logger } from '../log.js'

/**
 * The Kafka adapter. kafkajs is imported only below core/kafka/: it has had no release since
 * 2023, so the rest of the code depends on the event-log port, never on the client.
 */

const LEVELS: Record<number, 'error' | 'warn' | 'info' | 'debug'> = {
  [logLevel.ERROR]: 'error',
  [logLevel.WARN]: 'warn',
  [logLevel.INFO]: 'info',
  [logLevel.DEBUG]: 'debug',
}

/** How long repeats of one kafkajs message are counted instead of logged. */
export const KAFKA_LOG_REPEAT_WINDOW_MS = 10_000
/** Messages tracked for repeats at most (kafkajs has a few dozen distinct ones). */
const TRACKED_MESSAGES = 256

/**
 * kafkajs log lines into the process's logger. While a broker is down, kafkajs logs every
 * reconnect attempt of every client, several a second: a message already logged within
 * `repeatWindowMs` at the same level is counted, and the next line of it says how many were left
 * out (`repeats`).
 */
export function kafkaLogCreator(
  logger: Logger,
  repeatWindowMs = KAFKA_LOG_REPEAT_WINDOW_MS,
  now: () => number = Date.now,
) {
  const lastLogged = new Map<string, { atMs: number; repeats: number }>()
  return () =>
    ({ level, log }: LogEntry) => {
      const { message, ...rest } = log
      const method = LEVELS[level] ?? 'info'
      const key = `${method} ${message}`
      const t = now()
      const last = lastLogged.get(key)
      if (last && t - last.atMs < repeatWindowMs) {
        last.repeats++
        return
      }
      if (!last && lastLogged.size >= TRACKED_MESSAGES) lastLogged.clear()
      lastLogged.set(key, { atMs: t, repeats: 0 })
      logger[method]({ kafka: rest, ...(last && last.repeats > 0 ? { repeats: last.repeats } : {}) }, message)
    }
}

export interface KafkaClientOptions {
  /** Per-connection timeout. Default 3000 ms. */
  connectionTimeoutMs?: number
  /** Per-request timeout. Default 30000 ms. */
  requestTimeoutMs?: number
  /** Retries kafkajs does on its own for retriable errors. Default 5. */
  retries?: number
  logger?: Logger
}

export function createKafka(
  config: Pick<KafkaConfig, 'brokers' | 'clientId'>,
  options: KafkaClientOptions = {},
): Kafka {
  const cfg: KafkaJsConfig = {
    clientId: config.clientId,
    brokers: [...config.brokers],
    connectionTimeout: options.connectionTimeoutMs ?? 3000,
    requestTimeout: options.requestTimeoutMs ?? 30_000,
    retry: { retries: options.retries ?? 5, initialRetryTime: 100, maxRetryTime: 5000 },
    logLevel: options.logger ? logLevel.WARN : logLevel.NOTHING,
  }
  if (options.logger) cfg.logCreator = kafkaLogCreator(options.logger.child({ component: 'kafkajs' }))
  return new Kafka(cfg)
}

export interface ClusterInfo {
  clusterId: string
  brokers: number
  controller: number | null
}

/** Asks the cluster for its metadata once; throws ServiceUnavailableError when it does not answer. */
export async function describeKafka(brokers: readonly string[], timeoutMs = 3000): Promise<ClusterInfo> {
  const kafka = createKafka(
    { brokers, clientId: 'tally-probe' },
    { connectionTimeoutMs: timeoutMs, requestTimeoutMs: timeoutMs, retries: 0 },
  )
  const admin = kafka.admin()
  try {
    await admin.connect()
    const info = await admin.describeCluster()
    return { clusterId: info.clusterId, brokers: info.brokers.length, controller: info.controller }
  } catch (err) {
    throw new ServiceUnavailableError(
      'kafka',
      `no answer from ${brokers.join(',')}: ${(err as Error).message}`,
      err,
    )
  } finally {
    await admin.disconnect().catch(() => undefined)
  }
}

export interface TopicSpec {
  topic: string
  partitions: number
  replicationFactor: number
  config?: Record<string, string>
}

/** Creates the topics that do not exist yet. Returns the names it created. */
export async function ensureTopics(kafka: Kafka, topics: readonly TopicSpec[]): Promise<string[]> {
  const admin = kafka.admin()
  await admin.connect()
  try {
    const existing = new Set(await admin.listTopics())
    const missing = topics.filter((t) => !existing.has(t.topic))
    if (missing.length > 0) {
      await admin.createTopics({
        waitForLeaders: true,
        topics: missing.map((t) => ({
          topic: t.topic,
          numPartitions: t.partitions,
          replicationFactor: t.replicationFactor,
          configEntries: Object.entries(t.config ?? {}).map(([name, value]) => ({ name, value })),
        })),
      })
    }
    return missing.map((t) => t.topic)
  } finally {
    await admin.disconnect()
  }
}
