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
