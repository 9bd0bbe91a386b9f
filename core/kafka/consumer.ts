import type { Admin, Consumer, Kafka } from 'kafkajs'
import { once } from '../lifecycle.js'
import type { Logger } from '../log.js'
import type { ConsumedRecord, ConsumerHandlers, EventLogConsumer, LogOffsets } from '../ports/event-log.js'

export interface KafkaGroupConsumerOptions {
  groupId: string
  topic: string
  /** Partitions processed at the same time by this member. Default 3. */
  partitionsConsumedConcurrently?: number
  /**
   * A member silent for longer is removed from the group (a crashed member's partitions wait this
   * long); also the rebalance timeout. Heartbeats every third of it, at most 3 s. Default 10000 ms.
   */
  sessionTimeoutMs?: number
  /** Largest fetch per partition. Default 4 MiB. */
  maxBytesPerPartition?: number
  logger?: Logger
}

/** A kafkajs consumer group member behind the event-log consumer port. */
export class KafkaGroupConsumer implements EventLogConsumer {
  private readonly consumer: Consumer
  readonly close: () => Promise<void>

  constructor(
    kafka: Kafka,
    private readonly options: KafkaGroupConsumerOptions,
  ) {
    const sessionTimeoutMs = options.sessionTimeoutMs ?? 10_000
    this.consumer = kafka.consumer({
      groupId: options.groupId,
      sessionTimeout: sessionTimeoutMs,
      // How long the coordinator waits for members to rejoin during a rebalance.
      rebalanceTimeout: sessionTimeoutMs,
      // A third of the session or less: two heartbeats may be lost before the member is removed.
      heartbeatInterval: Math.min(3000, Math.floor(sessionTimeoutMs / 3)),
      maxBytesPerPartition: options.maxBytesPerPartition ?? 4 * 1024 * 1024,
      allowAutoTopicCreation: false,
      retry: { retries: Number.MAX_SAFE_INTEGER, initialRetryTime: 200, maxRetryTime: 5000 },
    })
    this.close = once(async () => {
      await this.consumer.disconnect()
    })
  }

  async start(handlers: ConsumerHandlers): Promise<void> {
    const { topic } = this.options
    this.consumer.on(this.consumer.events.GROUP_JOIN, (e) => {
      const assigned = e.payload.memberAssignment[topic] ?? []
      this.options.logger?.info(
        { partitions: assigned, groupId: this.options.groupId },
        'partitions assigned',
      )
      handlers.onAssignment?.([...assigned].sort((a, b) => a - b))
    })
    await this.consumer.connect()
    await this.consumer.subscribe({ topic, fromBeginning: true })
    await this.consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: this.options.partitionsConsumedConcurrently ?? 3,
      eachBatch: async ({ batch, heartbeat, isStale, isRunning, resolveOffset }) => {
        if (!isRunning() || isStale()) return
        const records: ConsumedRecord[] = batch.messages.map((m) => {
          const headers: Record<string, string> = {}
          const raw = m.headers
          if (raw) {
            for (const k in raw) {
              const v = raw[k]
              if (v !== undefined) headers[k] = Array.isArray(v) ? String(v[0]) : String(v)
            }
          }
          return {
            offset: Number(m.offset),
            key: m.key ? m.key.toString() : undefined,
            value: m.value ?? undefined,
            headers,
            timestampMs: Number(m.timestamp),
          }
        })
        await handlers.onBatch(
          {
            topic: batch.topic,
            partition: batch.partition,
            records,
            highWatermark: Number(batch.highWatermark),
          },
          { heartbeat, isStale: () => isStale() || !isRunning() },
        )
        // Moves this member's fetch position past the batch; the durable position is the
        // handler's own checkpoint (and commit()).
        if (batch.messages.length > 0 && !isStale()) resolveOffset(batch.lastOffset())
      },
    })
  }

  async commit(partition: number, nextOffset: number): Promise<void> {
    await this.consumer.commitOffsets([{ topic: this.options.topic, partition, offset: String(nextOffset) }])
  }
}

/** End offsets through the admin API (for lag metrics while a partition is idle). */
export class KafkaOffsets implements LogOffsets {
  private admin: Admin | undefined
  private connecting: Promise<void> | undefined

  constructor(private readonly kafka: Kafka) {}

  async endOffsets(topic: string): Promise<Map<number, number>> {
    if (!this.admin) {
      const admin = this.kafka.admin()
      this.connecting ??= admin.connect().then(() => {
        this.admin = admin
      })
      await this.connecting
    }
    const offsets = await this.admin!.fetchTopicOffsets(topic)
    return new Map(offsets.map((o) => [o.partition, Number(o.high)]))
  }

  async close(): Promise<void> {
    await this.admin?.disconnect()
  }
}
