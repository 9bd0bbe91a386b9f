/**
 * The event-log port: what ingest, stream and batch need from the raw log. Implemented by Kafka
 * (core/kafka/) and by the embedded log.
 */

/** One record to append. `key` decides the partition: records with the same key stay in order. */
export interface LogRecord {
  key: string
  value: Buffer
  headers: Readonly<Record<string, string>>
  /** Event time hint for the log's own timestamp (ms since epoch); defaults to append time. */
  timestampMs?: number
}

/** Bounds of one packed (format 2) record of the raw log (core/record/packed.ts). */
export interface PackOptions {
  /** Events in one record, 1..65535. */
  maxEvents: number
  /** Bytes of one record's value (under the topic's max.message.bytes); an event larger goes alone. */
  maxBytes: number
}

export interface EventLogWriter {
  /**
   * Appends records to `topic`. Resolves only once the log has durably stored every record
   * (Kafka: acks=all). Rejects with a retriable TallyError (503) when the log cannot take the write
   * in time; records of a rejected call may still be stored later, so callers dedup by messageId.
   */
  append(topic: string, records: readonly LogRecord[]): Promise<void>
  /** True while recent appends succeed (drives /readyz). */
  healthy(): boolean
  /** Flushes what is pending and disconnects. Calling it twice returns the same promise. */
  close(): Promise<void>
}

/** A record read back from the log. Offsets are numbers (safe up to 2^53). */
export interface ConsumedRecord {
  offset: number
  key: string | undefined
  value: Buffer | undefined
  headers: Record<string, string>
  timestampMs: number
}

export interface RecordBatch {
  topic: string
  partition: number
  records: ConsumedRecord[]
  /** Offset of the next record the log will write in this partition (lag = highWatermark − next offset). */
  highWatermark: number
}

export interface BatchControl {
  /** Keeps the group membership alive during long work on a batch. */
  heartbeat(): Promise<void>
  /** True once a rebalance took this partition away: stop and drop the work. */
  isStale(): boolean
}

export interface ConsumerHandlers {
  onBatch(batch: RecordBatch, control: BatchControl): Promise<void>
  /** The partitions this member now owns (after every rebalance). */
  onAssignment?(partitions: number[]): void
}

/** A member of a consumer group on one topic. Delivery is at least once. */
export interface EventLogConsumer {
  start(handlers: ConsumerHandlers): Promise<void>
  /** Records progress in the log's own offsets (for lag tools); the checkpoint store stays the truth. */
  commit(partition: number, nextOffset: number): Promise<void>
  /** Leaves the group cleanly. Calling it twice returns the same promise. */
  close(): Promise<void>
}

/** Per-partition end offsets of a topic (the queue depth is end offset − consumer position). */
export interface LogOffsets {
  endOffsets(topic: string): Promise<Map<number, number>>
}
