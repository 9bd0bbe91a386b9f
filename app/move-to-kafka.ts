import { createCassandraClient } from '../core/cassandra/client.js'
import { CassandraSiteStore } from '../core/cassandra/sites.js'
import type { TallyConfig } from '../core/config.js'
import type { EmbeddedBackend } from '../core/embedded/index.js'
import { ERR } from '../core/error-codes.js'
import { TallyError } from '../core/errors.js'
import { createKafka } from '../core/kafka/client.js'
import { KafkaBatchingProducer } from '../core/kafka/producer.js'
import type { Logger } from '../core/log.js'
import { migrate } from '../core/migrate.js'
import type { LogRecord } from '../core/ports/event-log.js'
import { entriesOf } from '../core/record/packed.js'

/** The embedded log's consumer group that remembers how far the move got (a rerun resumes there). */
export const MOVE_GROUP = 'tally-move-to-kafka'

export interface MoveProgress {
  topic: string
  partition: number
  /** Records of this partition copied so far (this run and earlier ones). */
  copied: number
  /** Records of this partition in all. */
  total: number
}

export interface MoveReport {
  sites: { created: string[]; unchanged: string[] }
  /** Records copied by this run, per topic. */
  records: Record<string, number>
  /** Earliest and latest log timestamps of the raw records copied by this run (ms), when any. */
  rawTimeRange: { fromMs: number; toMs: number } | undefined
}

export interface MoveOptions {
  /** Records per Kafka write (each acknowledged with acks=all before the next). Default 500. */
  batchRecords?: number
  onProgress?(progress: MoveProgress): void
  logger?: Logger
}

/**
 * Moves an embedded installation's data into Kafka and Cassandra: applies the schema there, copies
 * the sites with their keys as they are (clients and read tokens keep working), then copies the raw
 * and dead-letter topics partition by partition with the same keys, values and headers (events of
 * a packed record, format 2, become records of their own with theirs). Kafka's
 * partitioner places each key in the same partition number as the embedded log did, so every
 * key's records stay in order.
 *
 * Resumable: the position reached is committed in the embedded log (group {@link MOVE_GROUP})
 * after each acknowledged write, and a rerun starts from there. A run interrupted between a write
 * and its commit copies those records again on the next run; they carry the same messageIds, which
 * the stream and the rebuild count once.
 *
 * Aggregates are not copied: the stream workers recompute them from the moved log, and a rebuild
 * over the moved range makes every window final.
 */
export async function moveToKafka(
  config: TallyConfig,
  embedded: EmbeddedBackend,
  options: MoveOptions = {},
): Promise<MoveReport> {
  const batchRecords = options.batchRecords ?? 500
  await migrate(config)
  const report: MoveReport = { sites: { created: [], unchanged: [] }, records: {}, rawTimeRange: undefined }

  const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await cassandra.connect()
  try {
    const target = new CassandraSiteStore(cassandra)
    const conflicts: string[] = []
    for (const site of await embedded.sites.list()) {
      const outcome = await target.importSite(site)
      if (outcome === 'conflict') conflicts.push(site.siteId)
      else {
        report.sites[outcome].push(site.siteId)
        // Custom property keys move with the site (adding one it has is a no-op).
        for (const key of await embedded.sites.listPropKeys(site.siteId))
          await target.addPropKey(site.siteId, key)
        // So do its goals.
        for (const goal of await embedded.sites.listGoals(site.siteId))
          await target.addGoal(site.siteId, goal)
      }
    }
    if (conflicts.length > 0) {
      throw new TallyError(
        ERR.SITE_CONFLICT,
        `Cassandra already has sites with these ids but other write keys: ${conflicts.join(', ')}. Remove or rename them there (tally sites remove), then run the move again; no event was copied.`,
        { where: 'sites' },
      )
    }
  } finally {
    await cassandra.shutdown()
  }

  const producer = new KafkaBatchingProducer(
    createKafka(config.kafka, options.logger ? { logger: options.logger } : {}),
    {
      appendTimeoutMs: 60_000,
      ...(options.logger ? { logger: options.logger } : {}),
    },
  )
  await producer.connect()
  try {
    for (const topic of [config.kafka.topicRaw, config.kafka.topicDeadLetter]) {
      if (embedded.log.partitionsOf(topic) === undefined) continue
      report.records[topic] = 0
      const committed = embedded.log.committedOffsets(MOVE_GROUP, topic)
      for (const [partition, end] of await embedded.log.endOffsets(topic)) {
        let next = committed.get(partition) ?? 0
        options.onProgress?.({ topic, partition, copied: next, total: end })
        while (next < end) {
          const records = embedded.log.read(topic, partition, next, Math.min(batchRecords, end - next))
          if (records.length === 0) break
          // One record per event (format 1), keyed by the event's own key, so Kafka's partitioner
          // places it as the embedded log did, whichever format the embedded record had (it writes
          // format 1; a packed record is copied as its events). A record that cannot be unpacked
          // is copied as it is, for the stream's dead-letter topic to keep.
          const out: LogRecord[] = entriesOf(records).map((r) => ({
            key: r.key ?? '',
            value: r.value ?? Buffer.alloc(0),
            headers: r.headers,
          }))
          // The Kafka timestamp is the time of the move, so the topic's retention counts from now.
          await producer.append(topic, out)
          next = (records.at(-1)?.offset ?? next) + 1
          embedded.log.commitOffset(MOVE_GROUP, topic, partition, next)
          report.records[topic] = (report.records[topic] ?? 0) + records.length
          if (topic === config.kafka.topicRaw) {
            for (const r of records) {
              const range = report.rawTimeRange
              report.rawTimeRange = range
                ? { fromMs: Math.min(range.fromMs, r.timestampMs), toMs: Math.max(range.toMs, r.timestampMs) }
                : { fromMs: r.timestampMs, toMs: r.timestampMs }
            }
          }
          options.onProgress?.({ topic, partition, copied: next, total: end })
        }
      }
    }
  } finally {
    await producer.close()
  }
  return report
}
