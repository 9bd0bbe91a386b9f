import {
  CompressionTypes,
  type Kafka,
  type Message,
  Partitioners,
  type PartitionMetadata,
  type Producer,
} from 'kafkajs'
import { ERR } from '../error-codes.js'
import { errorMessage, ServiceUnavailableError, TallyError } from '../errors.js'
import type { Logger } from '../log.js'
import type { EventLogWriter, LogRecord, PackOptions } from '../ports/event-log.js'
import { MAX_PACKED_EVENTS, packedHeaders, packedOverheadBytes, packRecords } from '../record/packed.js'
import { partitionForKey } from '../record/partition.js'

export interface BatchingProducerOptions {
  /** How long the first pending record waits for company before a batch is sent. Default 2 ms. */
  lingerMs?: number
  /** A batch is sent at once when it reaches this many bytes. Default 1 MiB. */
  maxBatchBytes?: number
  /** Records waiting (not yet sent) may take at most this many bytes; beyond, appends fail fast. Default 64 MiB. */
  maxPendingBytes?: number
  /** An append not acknowledged within this time is rejected (503). Default 5000 ms. */
  appendTimeoutMs?: number
  /** gzip by default: it is what every Kafka client and tool reads. */
  compression?: 'gzip' | 'none'
  /**
   * Batches in flight at once, each from its own idempotent producer (kafkajs keeps one request in
   * flight per idempotent producer). Default 1. With more, a batch need not wait for the previous
   * one's acknowledgement; appends of one call stay together, in order, in one batch.
   */
  maxInFlightBatches?: number
  logger?: Logger
  /** Observes each send: records, bytes, seconds, outcome. */
  onSend?: (records: number, bytes: number, seconds: number, ok: boolean) => void
  /**
   * Pack each flush's records per partition into format-2 records (core/record/packed.ts). The
   * partition is still chosen per record, by its key, with the partitioner kafkajs would use.
   * Left out: one Kafka record per record (format 1).
   */
  pack?: PackOptions
}

/** One idempotent producer and the batch it has in flight. */
interface Lane {
  producer: Producer
  connected: Promise<void> | undefined
  /** Since when its batch is in flight; undefined while idle. */
  inFlightSince: number | undefined
}

interface Pending {
  topic: string
  /** Format 1: the Kafka messages. Packed: empty, `records` are packed at the flush. */
  messages: Message[]
  records: readonly LogRecord[]
  bytes: number
  resolve: () => void
  reject: (err: Error) => void
  /** Set once its batch is handed to Kafka; a timed-out append is then no longer removable. */
  sent: boolean
  settled: boolean
  timer: NodeJS.Timeout | undefined
}

function headerBytes(headers: Readonly<Record<string, string>>): number {
  let n = 0
  for (const k in headers) n += k.length + headers[k]!.length + 8
  return n
}

/**
 * An idempotent, acks=all Kafka producer that lets concurrent requests share batches: appends made
 * while every batch slot (`maxInFlightBatches`) is in flight, or within `lingerMs` of each other,
 * go out together as one request.
 * Memory is bounded by `maxPendingBytes`; an append waits at most `appendTimeoutMs`.
 */
export class KafkaBatchingProducer implements EventLogWriter {
  private readonly lanes: Lane[]
  private readonly lingerMs: number
  private readonly maxBatchBytes: number
  private readonly maxPendingBytes: number
  private readonly appendTimeoutMs: number
  private readonly compression: CompressionTypes
  private queue: Pending[] = []
  private queuedBytes = 0
  private lingerTimer: NodeJS.Timeout | undefined
  private closing: Promise<void> | undefined
  private lastOk = true
  private lastTopic: string | undefined
  private probing = false
  private lastProbeAt = 0
  /** Partitions of each topic written packed, fetched at its first flush and every 5 minutes. */
  private readonly partitionsOf = new Map<string, { at: number; partitions: PartitionMetadata[] }>()

  constructor(
    private readonly kafka: Kafka,
    private readonly options: BatchingProducerOptions = {},
  ) {
    const lanes = Math.max(1, Math.floor(options.maxInFlightBatches ?? 1))
    this.lanes = Array.from({ length: lanes }, () => ({
      producer: this.newProducer(),
      connected: undefined,
      inFlightSince: undefined,
    }))
    this.lingerMs = options.lingerMs ?? 2
    this.maxBatchBytes = options.maxBatchBytes ?? 1024 * 1024
    this.maxPendingBytes = options.maxPendingBytes ?? 64 * 1024 * 1024
    this.appendTimeoutMs = options.appendTimeoutMs ?? 5000
    this.compression = options.compression === 'none' ? CompressionTypes.None : CompressionTypes.GZIP
    const pack = options.pack
    if (
      pack &&
      (!Number.isInteger(pack.maxEvents) ||
        pack.maxEvents < 1 ||
        pack.maxEvents > MAX_PACKED_EVENTS ||
        !Number.isInteger(pack.maxBytes) ||
        pack.maxBytes < 1)
    )
      throw new RangeError(
        `pack: maxEvents 1..${MAX_PACKED_EVENTS} and maxBytes ≥ 1, got ${JSON.stringify(pack)}`,
      )
  }

  private newProducer(): Producer {
    // kafkajs retries an idempotent producer's sends without limit (limiting them can break
    // sequence numbers); the per-append timeout below is what bounds a caller's wait.
    // A short retry cap means a send resumes within a second of Kafka coming back.
    return this.kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: false,
      // Java's murmur2 partitioner, named so kafkajs stops warning: the embedded log places keys
      // the same way (core/record/partition.ts), so a moved log keeps each key's partition.
      createPartitioner: Partitioners.DefaultPartitioner,
      retry: { retries: Number.MAX_SAFE_INTEGER, initialRetryTime: 100, maxRetryTime: 1000 },
    })
  }

  /**
   * A failed send may still have been written (the answer was lost). kafkajs then hands its
   * sequence numbers to the next batch, which the broker takes for a retry of the lost one: it
   * acknowledges that batch without writing it. A new producer gets a new producer id and so a
   * fresh sequence.
   */
  private renewProducer(lane: Lane): void {
    const old = lane.producer
    lane.producer = this.newProducer()
    lane.connected = undefined
    // Not awaited: with Kafka down a disconnect must not hold up the sends queued behind it.
    void old.disconnect().catch((err: unknown) => {
      this.options.logger?.debug({ err: errorMessage(err) }, 'old kafka producer did not disconnect cleanly')
    })
  }

  async connect(): Promise<void> {
    await Promise.all(this.lanes.map((lane) => this.connectLane(lane)))
  }

  private connectLane(lane: Lane): Promise<void> {
    lane.connected ??= lane.producer.connect().catch((err) => {
      lane.connected = undefined
      throw new ServiceUnavailableError('kafka', `producer cannot connect: ${errorMessage(err)}`, err)
    })
    return lane.connected
  }

  private get flushing(): boolean {
    return this.lanes.some((lane) => lane.inFlightSince !== undefined)
  }

  /** False after a failed send, or while a send has waited longer than the append timeout. */
  healthy(): boolean {
    const now = Date.now()
    const stuck = this.lanes.some(
      (lane) => lane.inFlightSince !== undefined && now - lane.inFlightSince > this.appendTimeoutMs,
    )
    // Without traffic no send proves that Kafka is back, and a not-ready instance gets no traffic.
    if (!this.lastOk && !this.flushing && this.closing === undefined) this.probe()
    return this.lastOk && !stuck && this.closing === undefined
  }

  /**
   * After a failed send, asks the cluster (at most once a second, one probe at a time) whether the
   * last written topic has a leader for every partition again; if so the producer counts as
   * healthy until the next send says otherwise.
   */
  private probe(): void {
    if (this.probing || Date.now() - this.lastProbeAt < 1000) return
    this.probing = true
    this.lastProbeAt = Date.now()
    const admin = this.kafka.admin()
    void (async () => {
      try {
        await admin.connect()
        const meta = await admin.fetchTopicMetadata(this.lastTopic ? { topics: [this.lastTopic] } : undefined)
        const led = meta.topics.every((t) => t.partitions.every((p) => p.leader >= 0))
        if (led && !this.flushing) this.lastOk = true
      } catch (err) {
        this.options.logger?.debug({ err: errorMessage(err) }, 'kafka health probe failed')
      } finally {
        await admin.disconnect().catch(() => undefined)
        this.probing = false
      }
    })()
  }

  append(topic: string, records: readonly LogRecord[]): Promise<void> {
    if (this.closing)
      return Promise.reject(
        new TallyError(ERR.SHUTTING_DOWN, 'the producer is closing', {
          retriable: true,
        }),
      )
    if (records.length === 0) return Promise.resolve()
    this.lastTopic = topic
    let bytes = 0
    const pack = this.options.pack !== undefined
    // The records of one request usually share their headers object and timestamp: copy and
    // measure the headers, and format the timestamp, once per distinct value.
    let lastHeaders: LogRecord['headers'] | undefined
    let headersCopy: Record<string, string> = {}
    let headersBytes = 0
    let lastTimestampMs: number | undefined
    let timestamp = ''
    if (pack) {
      // Packed at the flush; the bytes counted are about what the frame takes.
      for (const r of records) {
        if (r.headers !== lastHeaders) {
          lastHeaders = r.headers
          headersBytes = headerBytes(r.headers)
        }
        bytes += r.value.length + packedOverheadBytes(r) + headersBytes
      }
    }
    const messages: Message[] = pack
      ? []
      : records.map((r) => {
          if (r.headers !== lastHeaders) {
            lastHeaders = r.headers
            headersCopy = { ...r.headers }
            headersBytes = headerBytes(r.headers)
          }
          bytes += r.value.length + Buffer.byteLength(r.key) + 64 + headersBytes
          if (r.timestampMs === undefined) return { key: r.key, value: r.value, headers: headersCopy }
          if (r.timestampMs !== lastTimestampMs) {
            lastTimestampMs = r.timestampMs
            timestamp = String(r.timestampMs)
          }
          return { key: r.key, value: r.value, headers: headersCopy, timestamp }
        })
    if (this.queuedBytes + bytes > this.maxPendingBytes) {
      return Promise.reject(
        new ServiceUnavailableError(
          'kafka',
          `write queue full (${this.queuedBytes} bytes waiting for the log)`,
        ),
      )
    }
    return new Promise<void>((resolve, reject) => {
      const p: Pending = {
        topic,
        messages,
        // Copied: the caller may reuse its array once append returns.
        records: pack ? records.slice() : [],
        bytes,
        resolve,
        reject,
        sent: false,
        settled: false,
        timer: undefined,
      }
      p.timer = setTimeout(() => this.expire(p), this.appendTimeoutMs)
      this.queue.push(p)
      this.queuedBytes += bytes
      this.schedule()
    })
  }

  private expire(p: Pending): void {
    if (p.settled) return
    if (!p.sent) {
      // Not handed to Kafka yet: drop it so a long outage cannot grow memory.
      const i = this.queue.indexOf(p)
      if (i >= 0) {
        this.queue.splice(i, 1)
        this.queuedBytes -= p.bytes
      }
    }
    this.settle(
      p,
      new ServiceUnavailableError(
        'kafka',
        `the log did not acknowledge the write within ${this.appendTimeoutMs} ms`,
      ),
    )
  }

  private settle(p: Pending, err?: Error): void {
    if (p.settled) return
    p.settled = true
    clearTimeout(p.timer)
    if (err) p.reject(err)
    else p.resolve()
  }

  private idleLane(): Lane | undefined {
    return this.lanes.find((lane) => lane.inFlightSince === undefined)
  }

  private schedule(): void {
    if (!this.idleLane()) return
    if (this.queuedBytes >= this.maxBatchBytes || this.lingerMs === 0) {
      clearTimeout(this.lingerTimer)
      this.lingerTimer = undefined
      this.startIdleLane()
    } else if (!this.lingerTimer) {
      this.lingerTimer = setTimeout(() => {
        this.lingerTimer = undefined
        this.startIdleLane()
      }, this.lingerMs)
    }
  }

  private startIdleLane(): void {
    const lane = this.idleLane()
    if (lane && this.queue.length > 0) void this.flushLoop(lane)
  }

  private takeBatch(): Pending[] {
    const batch: Pending[] = []
    let bytes = 0
    while (
      this.queue.length > 0 &&
      (batch.length === 0 || bytes + this.queue[0]!.bytes <= this.maxBatchBytes)
    ) {
      const p = this.queue.shift()!
      this.queuedBytes -= p.bytes
      bytes += p.bytes
      p.sent = true
      batch.push(p)
    }
    return batch
  }

  /** Sends what is queued on `lane`, batch after batch, until the queue is empty. */
  private async flushLoop(lane: Lane): Promise<void> {
    if (lane.inFlightSince !== undefined) return
    try {
      while (this.queue.length > 0) {
        // Marked busy before the first await, so no other loop takes this lane.
        lane.inFlightSince = Date.now()
        const batch = this.takeBatch()
        const byTopic = new Map<string, Message[]>()
        const packed = new Map<string, LogRecord[]>()
        let bytes = 0
        let count = 0
        for (const p of batch) {
          bytes += p.bytes
          if (this.options.pack) {
            const list = packed.get(p.topic) ?? []
            for (const r of p.records) list.push(r)
            packed.set(p.topic, list)
            count += p.records.length
            continue
          }
          const list = byTopic.get(p.topic) ?? []
          for (const m of p.messages) list.push(m)
          byTopic.set(p.topic, list)
          count += p.messages.length
        }
        const started = process.hrtime.bigint()
        // With more than one lane, what stayed queued (a batch past maxBatchBytes) may go out now.
        if (this.queue.length > 0 && this.queuedBytes >= this.maxBatchBytes) this.startIdleLane()
        try {
          await this.connectLane(lane)
          for (const [topic, records] of packed) byTopic.set(topic, await this.packedMessages(topic, records))
          await lane.producer.sendBatch({
            acks: -1,
            compression: this.compression,
            topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })),
          })
          this.lastOk = true
          this.options.onSend?.(count, bytes, Number(process.hrtime.bigint() - started) / 1e9, true)
          for (const p of batch) this.settle(p)
        } catch (err) {
          this.lastOk = false
          this.options.onSend?.(count, bytes, Number(process.hrtime.bigint() - started) / 1e9, false)
          this.options.logger?.warn({ err: errorMessage(err), records: count }, 'kafka write failed')
          const wrapped = new ServiceUnavailableError('kafka', `write failed: ${errorMessage(err)}`, err)
          for (const p of batch) this.settle(p, wrapped)
          this.renewProducer(lane)
        }
      }
    } finally {
      lane.inFlightSince = undefined
    }
  }

  /**
   * The Kafka messages of one flush's records to `topic`, packed: grouped by the partition each
   * record's key picks (Kafka's default partitioner, as kafkajs picks it for format 1:
   * core/record/partition.ts, which does it without kafkajs's `Long` arithmetic), in order, cut into records
   * of at most `pack.maxEvents` events and `pack.maxBytes` bytes (an event larger goes alone).
   */
  private async packedMessages(topic: string, records: readonly LogRecord[]): Promise<Message[]> {
    const { maxEvents, maxBytes } = this.options.pack!
    const partitionMetadata = await this.partitions(topic)
    const byPartition = new Map<number, LogRecord[]>()
    const count = partitionMetadata.length
    for (const r of records) {
      const partition = partitionForKey(r.key, count)
      const list = byPartition.get(partition)
      if (list) list.push(r)
      else byPartition.set(partition, [r])
    }
    const messages: Message[] = []
    const headers = packedHeaders()
    for (const [partition, list] of byPartition) {
      let from = 0
      let bytes = 0
      const cut = (to: number): void => {
        const chunk = list.slice(from, to)
        messages.push({
          partition,
          key: null,
          value: packRecords(chunk),
          headers,
          timestamp: String(chunk[0]!.timestampMs ?? Date.now()),
        })
        from = to
        bytes = 0
      }
      for (let i = 0; i < list.length; i++) {
        const r = list[i]!
        // Header sets are counted per event: an upper bound of the value's size.
        const size = r.value.length + packedOverheadBytes(r) + headerBytes(r.headers)
        if (i > from && (i - from >= maxEvents || bytes + size > maxBytes)) cut(i)
        bytes += size
      }
      cut(list.length)
    }
    return messages
  }

  /** The partitions of `topic` (cached 5 minutes, as kafkajs's metadataMaxAge). */
  private async partitions(topic: string): Promise<PartitionMetadata[]> {
    const cached = this.partitionsOf.get(topic)
    if (cached && Date.now() - cached.at < 300_000) return cached.partitions
    const admin = this.kafka.admin()
    try {
      await admin.connect()
      const meta = await admin.fetchTopicMetadata({ topics: [topic] })
      const partitions = meta.topics[0]?.partitions ?? []
      if (partitions.length === 0) throw new Error(`topic ${topic} has no partitions`)
      this.partitionsOf.set(topic, { at: Date.now(), partitions })
      return partitions
    } finally {
      await admin.disconnect().catch(() => undefined)
    }
  }

  /** Sends what is queued, waits for it, then disconnects. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearTimeout(this.lingerTimer)
      while (this.queue.length > 0 || this.flushing) {
        const lane = this.idleLane()
        if (lane && this.queue.length > 0) await this.flushLoop(lane)
        else await new Promise((r) => setTimeout(r, 5))
      }
      await Promise.all(this.lanes.map((lane) => lane.producer.disconnect()))
    })()
    return this.closing
  }
}
