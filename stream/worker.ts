import { hostname } from 'node:os'
import { visitorId, windowMs } from '../core/aggregate/definition.js'
import { RowAccumulator, rowKeysFor } from '../core/aggregate/rows.js'
import type { StreamConfig } from '../core/config.js'
import { errorMessage } from '../core/errors.js'
import { hash64 } from '../core/hll.js'
import type { Logger } from '../core/log.js'
import type { PartitionRef, RowKey, StreamStore } from '../core/ports/aggregate-store.js'
import { rowId } from '../core/ports/aggregate-store.js'
import type {
  BatchControl,
  EventLogConsumer,
  EventLogWriter,
  LogOffsets,
  RecordBatch,
} from '../core/ports/event-log.js'
import { backoffDelayMs, sleep } from '../core/retry.js'
import { DedupSet } from './dedup.js'
import type { StreamMetrics } from './metrics.js'
import { classify, type Decoded, decode, dedup, validate } from './pipeline.js'

interface Row {
  key: RowKey
  acc: RowAccumulator
  /** Last source offset counted in this row (−1: none). Events at or below it are skipped on replay. */
  throughOffset: number
  dirty: boolean
  /** End of the row's window (ms): once the grace line passes it, the row is evicted. */
  windowEnd: number
}

/** Everything a worker holds for one source partition it owns. */
class PartitionState {
  readonly rows = new Map<string, Row>()
  readonly dedup = new DedupSet()
  /** Records below this offset are already in the aggregates (skipped on replay). */
  nextOffset = 0
  /** Offset after the last record processed. */
  processedNext = 0
  watermarkMs = 0
  lastFlushMs = Date.now()
  lastCheckpointMs = Date.now()
  dirty = false
  private chain: Promise<void> = Promise.resolve()

  constructor(
    readonly ref: PartitionRef,
    readonly epoch: number,
  ) {}

  /** Runs work for this partition one piece at a time (batches and timer flushes). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn)
    this.chain = run.then(
      () => undefined,
      () => undefined,
    )
    return run
  }
}

export interface StreamWorkerDeps {
  config: StreamConfig
  topic: string
  deadLetterTopic: string
  consumer: EventLogConsumer
  store: StreamStore
  /** Where poison records go. */
  deadLetters: EventLogWriter
  offsets?: LogOffsets
  metrics: StreamMetrics
  logger: Logger
  /** Overrides the owner name recorded with epochs. */
  owner?: string
}

/**
 * Reads the raw topic in a consumer group and keeps per-window aggregates in the store with an
 * exactly-once effect: absolute row values with the last counted offset, a checkpoint written
 * after the rows, epochs that fence stale owners, and dedup by messageId within a horizon.
 */
export class StreamWorker {
  private readonly states = new Map<number, PartitionState>()
  private readonly restoring = new Map<number, Promise<PartitionState>>()
  private assigned = new Set<number>()
  private timer: NodeJS.Timeout | undefined
  private lagTimer: NodeJS.Timeout | undefined
  private stopping = false
  private closing: Promise<void> | undefined
  private readonly owner: string

  constructor(private readonly deps: StreamWorkerDeps) {
    this.owner = deps.owner ?? `${hostname()}:${process.pid}`
  }

  async start(): Promise<void> {
    await this.deps.consumer.start({
      onBatch: (batch, control) => this.onBatch(batch, control),
      onAssignment: (partitions) => this.onAssignment(partitions),
    })
    // Flush partitions that went quiet, so their last events become visible within the interval.
    this.timer = setInterval(() => void this.flushIdle(), this.deps.config.flushIntervalMs)
    this.timer.unref()
    if (this.deps.offsets) {
      this.lagTimer = setInterval(() => void this.reportLag(), 5000)
      this.lagTimer.unref()
    }
  }

  /** Partitions currently owned (tests and metrics). */
  ownedPartitions(): number[] {
    return [...this.states.keys()].sort((a, b) => a - b)
  }

  private onAssignment(partitions: number[]): void {
    this.assigned = new Set(partitions)
    // A partition taken away is dropped without flushing: its new owner replays from the last
    // checkpoint, and this worker's late writes would lose to the new owner's epoch anyway.
    for (const p of [...this.states.keys()]) {
      if (!this.assigned.has(p)) {
        this.states.delete(p)
        this.deps.metrics.lag.remove({ partition: String(p) })
        this.deps.metrics.checkpointAge.remove({ partition: String(p) })
      }
    }
  }

  private async stateFor(partition: number): Promise<PartitionState> {
    const existing = this.states.get(partition)
    if (existing) return existing
    let pending = this.restoring.get(partition)
    if (!pending) {
      pending = this.restore(partition).finally(() => this.restoring.delete(partition))
      this.restoring.set(partition, pending)
    }
    return pending
  }

  /** Takes ownership: new epoch, fence the checkpoint, reload the dedup set. */
  private async restore(partition: number): Promise<PartitionState> {
    const { config, store, logger } = this.deps
    const ref: PartitionRef = { group: config.group, topic: this.deps.topic, partition }
    const epoch = await this.withStoreRetry(() => store.acquireEpoch(ref, this.owner), 'acquire epoch')
    const cp = await this.withStoreRetry(() => store.readCheckpoint(ref), 'read checkpoint')
    const state = new PartitionState(ref, epoch)
    state.nextOffset = cp?.nextOffset ?? 0
    state.processedNext = state.nextOffset
    state.watermarkMs = cp?.watermarkMs ?? 0
    // Writing the checkpoint under the new epoch first means a stale owner can never move it again.
    await this.withStoreRetry(
      () =>
        store.writeCheckpoint(ref, { nextOffset: state.nextOffset, watermarkMs: state.watermarkMs, epoch }),
      'fence checkpoint',
    )
    if (state.watermarkMs > 0 && config.dedupHorizonMs > 0) {
      const since = state.watermarkMs - config.dedupHorizonMs
      const chunks = await this.withStoreRetry(
        () => store.loadDedup(ref, state.nextOffset, since),
        'load dedup',
      )
      for (const c of chunks) state.dedup.load(c.entries, since)
    }
    logger.info(
      { partition, epoch, nextOffset: state.nextOffset, dedupIds: state.dedup.size },
      'partition restored',
    )
    this.states.set(partition, state)
    return state
  }

  private async onBatch(batch: RecordBatch, control: BatchControl): Promise<void> {
    // Once closing, new batches are left for the next owner (it replays from the checkpoint).
    if (this.closing || control.isStale()) return
    const state = await this.stateFor(batch.partition)
    await state.exclusive(() => this.process(state, batch, control))
  }

  private async process(state: PartitionState, batch: RecordBatch, control: BatchControl): Promise<void> {
    const { metrics, config } = this.deps
    if (this.states.get(state.ref.partition) !== state || control.isStale()) return
    const t0 = process.hrtime.bigint()
    const accepted: Array<{ d: Decoded; offset: number; keys: RowKey[]; ids: string[] }> = []
    const deadLetters: Array<{
      offset: number
      code: string
      reason: string
      value: Buffer | undefined
      headers: Record<string, string>
    }> = []
    let lastOffset = -1
    for (const record of batch.records) {
      lastOffset = record.offset
      // Below processedNext: already in memory (or, below the checkpoint, already stored).
      if (record.offset < state.processedNext) {
        metrics.records.inc({ outcome: 'replayed' })
        continue
      }
      const decoded = decode(record)
      const valid = decoded.kind === 'ok' ? validate(decoded.value) : decoded
      if (valid.kind === 'dlq') {
        deadLetters.push({
          offset: record.offset,
          code: valid.code,
          reason: valid.reason,
          value: record.value,
          headers: record.headers,
        })
        continue
      }
      if (valid.kind !== 'ok') continue
      const d = valid.value
      if (d.receivedMs > state.watermarkMs) state.watermarkMs = d.receivedMs
      const unique = dedup(d, state.dedup)
      if (unique.kind !== 'ok') {
        metrics.records.inc({ outcome: 'duplicate' })
        continue
      }
      const counted = classify(d, state.watermarkMs - config.graceMs)
      if (counted.kind !== 'ok') {
        metrics.records.inc({ outcome: counted.kind === 'drop' ? counted.reason : 'dead_letter' })
        if (counted.kind === 'drop' && counted.reason === 'late') {
          this.deps.logger.debug(
            {
              partition: state.ref.partition,
              offset: record.offset,
              traceparent: record.headers.traceparent,
            },
            'late event left to batch',
          )
        }
        continue
      }
      const keys = rowKeysFor(d.event, d.timestampMs, state.ref.partition)
      // Row ids are built once per event and reused by the load and aggregate steps.
      accepted.push({ d, offset: record.offset, keys, ids: keys.map(rowId) })
    }
    const t1 = process.hrtime.bigint()
    metrics.stepSeconds.observe({ step: 'decode_validate_dedup' }, Number(t1 - t0) / 1e9)

    // Load, once, the rows this batch touches that are not in memory (after a restart they hold
    // the values written before it, with the offset they count through).
    const missing = new Map<string, RowKey>()
    for (const a of accepted) {
      a.ids.forEach((id, i) => {
        if (!state.rows.has(id) && !missing.has(id)) missing.set(id, a.keys[i]!)
      })
    }
    if (missing.size > 0) {
      const loaded = await this.withStoreRetry(
        () => this.deps.store.loadRows([...missing.values()]),
        'load rows',
        control,
      )
      for (const [id, k] of missing) {
        const stored = loaded.get(id)
        state.rows.set(id, {
          key: k,
          acc: new RowAccumulator(config.hllPrecision, stored),
          throughOffset: stored?.throughOffset ?? -1,
          dirty: false,
          windowEnd: k.windowStart + windowMs(k.granularity),
        })
      }
    }
    const t2 = process.hrtime.bigint()
    metrics.stepSeconds.observe({ step: 'load' }, Number(t2 - t1) / 1e9)

    for (const a of accepted) {
      const vHash = hash64(visitorId(a.d.event))
      for (const id of a.ids) {
        const row = state.rows.get(id)!
        // Already counted before a restart: the row's stored value includes this event.
        if (a.offset <= row.throughOffset) continue
        row.acc.add(a.d.event, vHash)
        row.throughOffset = a.offset
        row.dirty = true
      }
    }
    metrics.records.inc({ outcome: 'counted' }, accepted.length)
    metrics.stepSeconds.observe({ step: 'aggregate' }, Number(process.hrtime.bigint() - t2) / 1e9)

    if (deadLetters.length > 0) await this.sendDeadLetters(state, deadLetters, control)
    if (lastOffset >= state.processedNext) state.processedNext = lastOffset + 1
    state.dirty = true
    metrics.lag.set(
      { partition: String(state.ref.partition) },
      Math.max(0, batch.highWatermark - state.processedNext),
    )
    if (Date.now() - state.lastFlushMs >= config.flushIntervalMs) await this.flush(state, control)
  }

  private async sendDeadLetters(
    state: PartitionState,
    items: Array<{
      offset: number
      code: string
      reason: string
      value: Buffer | undefined
      headers: Record<string, string>
    }>,
    control: BatchControl,
  ): Promise<void> {
    const records = items.map((i) => ({
      key: `${this.deps.topic}:${state.ref.partition}:${i.offset}`,
      value: Buffer.from(
        JSON.stringify({
          code: i.code,
          reason: i.reason,
          sourceTopic: this.deps.topic,
          sourcePartition: state.ref.partition,
          sourceOffset: i.offset,
          traceparent: i.headers.traceparent ?? null,
          requestId: i.headers['x-request-id'] ?? null,
          consumerGroup: this.deps.config.group,
          at: new Date().toISOString(),
          original: i.value ? i.value.toString('base64') : null,
        }),
      ),
      headers: { ...i.headers, 'tally-dlq-code': i.code },
    }))
    await this.withStoreRetry(
      () => this.deps.deadLetters.append(this.deps.deadLetterTopic, records),
      'dead-letter',
      control,
    )
    for (const i of items) {
      this.deps.metrics.records.inc({ outcome: 'dead_letter' })
      this.deps.logger.warn(
        {
          partition: state.ref.partition,
          offset: i.offset,
          code: i.code,
          traceparent: i.headers.traceparent,
        },
        `dead letter: ${i.reason}`,
      )
    }
  }

  /** Writes dirty rows, then the new dedup entries, then the checkpoint; evicts closed windows. */
  private async flush(state: PartitionState, control?: BatchControl): Promise<void> {
    if (!state.dirty) return
    const { store, metrics, config } = this.deps
    const started = process.hrtime.bigint()
    const dirtyRows = [...state.rows.values()].filter((r) => r.dirty)
    const writes = dirtyRows.map((r) => ({
      key: r.key,
      values: r.acc.values(),
      throughOffset: r.throughOffset,
    }))
    await this.withStoreRetry(() => store.writeRows(writes, state.epoch), 'write rows', control)
    for (const r of dirtyRows) r.dirty = false
    metrics.rowsWritten.inc(writes.length)
    const fresh = state.dedup.drainNew()
    if (fresh) {
      const chunk = {
        firstOffset: state.nextOffset,
        lastOffset: state.processedNext - 1,
        maxReceivedMs: fresh.maxReceivedMs,
        entries: fresh.entries,
      }
      await this.withStoreRetry(() => store.writeDedup(state.ref, chunk, state.epoch), 'write dedup', control)
    }
    const checkpoint = { nextOffset: state.processedNext, watermarkMs: state.watermarkMs, epoch: state.epoch }
    await this.withStoreRetry(() => store.writeCheckpoint(state.ref, checkpoint), 'write checkpoint', control)
    state.nextOffset = checkpoint.nextOffset
    state.dirty = false
    state.lastFlushMs = Date.now()
    state.lastCheckpointMs = state.lastFlushMs
    // Progress in Kafka's own offsets is for lag tools only; a failure here changes nothing.
    this.deps.consumer.commit(state.ref.partition, state.nextOffset).catch((err: unknown) => {
      this.deps.logger.debug({ err: errorMessage(err) }, 'offset commit failed')
    })
    const graceLine = state.watermarkMs - config.graceMs
    for (const [id, r] of state.rows) if (!r.dirty && r.windowEnd <= graceLine) state.rows.delete(id)
    state.dedup.expire(state.watermarkMs - config.dedupHorizonMs)
    metrics.flushSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9)
    metrics.openRows.set([...this.states.values()].reduce((n, s) => n + s.rows.size, 0))
  }

  private async flushIdle(): Promise<void> {
    const now = Date.now()
    for (const state of this.states.values()) {
      this.deps.metrics.checkpointAge.set(
        { partition: String(state.ref.partition) },
        (now - state.lastCheckpointMs) / 1000,
      )
      if (!state.dirty || now - state.lastFlushMs < this.deps.config.flushIntervalMs) continue
      await state
        .exclusive(async () => {
          if (this.states.get(state.ref.partition) === state) await this.flush(state)
        })
        .catch((err: unknown) =>
          this.deps.logger.error({ err: errorMessage(err), partition: state.ref.partition }, 'flush failed'),
        )
    }
  }

  private async reportLag(): Promise<void> {
    try {
      const ends = await this.deps.offsets!.endOffsets(this.deps.topic)
      for (const state of this.states.values()) {
        const end = ends.get(state.ref.partition)
        if (end !== undefined)
          this.deps.metrics.lag.set(
            { partition: String(state.ref.partition) },
            Math.max(0, end - state.processedNext),
          )
      }
    } catch (err) {
      this.deps.logger.debug({ err: errorMessage(err) }, 'lag poll failed')
    }
  }

  /**
   * Retries a store operation with capped backoff for as long as it takes (consumption of this
   * partition waits meanwhile, heartbeats keep the membership); gives up only when stopping.
   */
  private async withStoreRetry<T>(fn: () => Promise<T>, what: string, control?: BatchControl): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn()
      } catch (err) {
        if (err instanceof TypeError || err instanceof RangeError || this.stopping) throw err
        this.deps.metrics.storeRetries.inc()
        const delay = backoffDelayMs(attempt, 200, 5000)
        this.deps.logger.warn({ err: errorMessage(err), attempt, delayMs: delay }, `${what} failed; retrying`)
        await sleep(delay)
        if (control) await control.heartbeat().catch(() => undefined)
      }
    }
  }

  /** SIGTERM: flush and checkpoint every partition, then leave the group. Repeat-safe. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.timer)
      clearInterval(this.lagTimer)
      // In-flight batches finish first: each flush queues behind them on its partition.
      for (const state of this.states.values()) {
        await state
          .exclusive(() => this.flush(state))
          .catch((err: unknown) => {
            this.deps.logger.error(
              { err: errorMessage(err), partition: state.ref.partition },
              'final flush failed',
            )
          })
      }
      this.stopping = true
      await this.deps.consumer.close()
    })()
    return this.closing
  }
}
