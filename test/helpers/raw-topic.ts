import type { KafkaConfig } from '../../core/config.js'
import { createKafka } from '../../core/kafka/client.js'
import { entriesOf } from '../../core/record/packed.js'
import type { RawEventV1 } from '../../schemas/events.js'
import { eventually, uniqueName } from './context.js'

/**
 * One event of the raw topic as a reader sees it, whatever record carried it: a format-1 record is
 * one event; a packed (format-2) record holds many, each with its own key and headers, at (offset,
 * index) — unpacked by the product's raw-record module, as the stream and the archiver do.
 */
export interface RawMessage {
  partition: number
  offset: string
  /** Index of the event inside its record (0 for format 1). */
  index: number
  key: string
  /** The event's JSON bytes as stored, for checks such as "the client IP is nowhere in it". */
  bytes: Buffer
  /** The whole value of the record that carried it (the same as `bytes` for format 1). */
  recordBytes: Buffer
  event: RawEventV1
  headers: Record<string, string>
}

type Kafka = ReturnType<typeof createKafka>
type Consumer = ReturnType<Kafka['consumer']>

/**
 * Reads a topic from the beginning with a consumer group of its own and keeps every record, so a
 * test can compare what it sent with what is in the log. One reader per file: joining a group costs
 * seconds. `catchUp()` waits until the reader has seen everything written so far, which is what
 * makes "this event is NOT in the log" a sound assertion.
 */
export class RawTopicReader {
  readonly messages: RawMessage[] = []
  private readonly consumed = new Map<number, bigint>()

  private constructor(
    private readonly kafka: Kafka,
    private readonly consumer: Consumer,
    readonly topic: string,
  ) {}

  static async start(kafkaConfig: Pick<KafkaConfig, 'brokers'>, topic: string): Promise<RawTopicReader> {
    const kafka = createKafka({ brokers: kafkaConfig.brokers, clientId: 'tally-test-reader' })
    const consumer = kafka.consumer({
      groupId: uniqueName('reader'),
      sessionTimeout: 10_000,
      heartbeatInterval: 1000,
      maxWaitTimeInMs: 100,
    })
    const reader = new RawTopicReader(kafka, consumer, topic)
    await consumer.connect()
    await consumer.subscribe({ topic, fromBeginning: true })
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        const headers: Record<string, string> = {}
        for (const [k, v] of Object.entries(message.headers ?? {})) {
          if (v !== undefined) headers[k] = Array.isArray(v) ? v.map(String).join(',') : v.toString()
        }
        const recordBytes = message.value ?? Buffer.alloc(0)
        const record = {
          offset: Number(message.offset),
          key: message.key?.toString(),
          value: recordBytes,
          headers,
          timestampMs: Number(message.timestamp),
        }
        for (const e of entriesOf([record])) {
          if (e.problem) throw new Error(`${topic} ${partition}:${message.offset}: ${e.problem.reason}`)
          const bytes = e.value ?? Buffer.alloc(0)
          reader.messages.push({
            partition,
            offset: message.offset,
            index: e.index,
            key: e.key ?? '',
            bytes,
            recordBytes,
            event: JSON.parse(bytes.toString('utf8')) as RawEventV1,
            headers: e.headers,
          })
        }
        reader.consumed.set(partition, BigInt(message.offset) + 1n)
      },
    })
    return reader
  }

  /** Waits until every record written to the topic before this call has been read. */
  async catchUp(timeoutMs = 30_000): Promise<void> {
    const admin = this.kafka.admin()
    await admin.connect()
    let high: Array<{ partition: number; high: string; low: string }>
    try {
      high = await admin.fetchTopicOffsets(this.topic)
    } finally {
      await admin.disconnect()
    }
    await eventually(
      async () =>
        high.every(
          (p) => BigInt(p.high) <= BigInt(p.low) || (this.consumed.get(p.partition) ?? 0n) >= BigInt(p.high),
        )
          ? true
          : undefined,
      timeoutMs,
      `reader of ${this.topic} to catch up`,
    )
  }

  bySite(siteId: string): RawMessage[] {
    return this.messages.filter((m) => m.headers['tally-site-id'] === siteId)
  }

  byMessageId(messageId: string): RawMessage[] {
    return this.messages.filter((m) => m.event.messageId === messageId)
  }

  /** Waits until every messageId has been read at least once; returns the records of each. */
  async waitFor(messageIds: Iterable<string>, timeoutMs = 30_000): Promise<Map<string, RawMessage[]>> {
    const wanted = [...new Set(messageIds)]
    return eventually(
      async () => {
        const found = new Map<string, RawMessage[]>()
        for (const id of wanted) found.set(id, [])
        for (const m of this.messages) found.get(m.event.messageId)?.push(m)
        for (const list of found.values()) if (list.length === 0) return undefined
        return found
      },
      timeoutMs,
      `${wanted.length} messageIds in ${this.topic}`,
    )
  }

  /** Waits for one messageId and returns its only record (fails when it is there twice). */
  async one(messageId: string, timeoutMs = 30_000): Promise<RawMessage> {
    const found = await this.waitFor([messageId], timeoutMs)
    const list = found.get(messageId) ?? []
    if (list.length !== 1) throw new Error(`${messageId} is in ${this.topic} ${list.length} times`)
    return list[0]!
  }

  async close(): Promise<void> {
    await this.consumer.disconnect()
  }
}
