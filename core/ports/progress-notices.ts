/**
 * Progress notices: a stream worker says on the bus that it wrote a checkpoint, so query roles
 * re-read the data version at once instead of polling the store many times a second. A notice
 * carries no truth: a query role that hears one reads the checkpoints from the store (a fenced,
 * stale owner may still send notices; its checkpoint writes lose in the store). Notices only
 * decide when to read.
 */

/** One checkpoint written by a stream worker. */
export interface ProgressNotice {
  /** Consumer group of the stream workers. */
  group: string
  /** The raw topic the checkpoint belongs to. */
  topic: string
  partition: number
  /** The checkpoint's next offset. */
  nextOffset: number
  epoch: number
  /** When the worker wrote the checkpoint (ms since epoch, the worker's clock). */
  writtenAtMs: number
}

/** The stream worker's side. */
export interface ProgressPublisher {
  /**
   * Sends a notice without waiting for it: never throws, never delays the flush that wrote the
   * checkpoint (a failure is logged and counted; query roles fall back to polling).
   */
  publish(notice: ProgressNotice): void
  /** Sends what is pending and disconnects. Calling it twice returns the same promise. */
  close(): Promise<void>
}

/** The query role's side: every notice of the stream group it follows. */
export interface ProgressListener {
  /**
   * Starts listening in the background (returns at once; connecting and joining are retried until
   * close). `onNotice` is called for each notice of the configured group and topic, in order.
   */
  start(onNotice: (notice: ProgressNotice) => void): void
  /**
   * True while the listener hears the bus: its last fetch ended within its liveness window, so
   * notices sent more than that long ago have been delivered. While false, callers poll.
   */
  live(): boolean
  /** Stops listening and leaves. Calling it twice returns the same promise. */
  close(): Promise<void>
}
