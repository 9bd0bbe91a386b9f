import { hostname } from 'node:os'
import {
  DIMENSION_GRANULARITIES,
  DIMENSIONS,
  type Dimension,
  dimensionsOf,
  GRANULARITIES,
  isPageview,
  kindOf,
  visitorId,
  windowMs,
  windowStart,
} from '../core/aggregate/definition.js'
import { RowAccumulator } from '../core/aggregate/rows.js'
import type { StreamConfig } from '../core/config.js'
import { type HashHalves, hashHalves } from '../core/hll.js'
import type { Logger } from '../core/log.js'
import { OwnedPartition, PartitionOwner } from '../core/partition-owner.js'
import type { PartitionRef, RowKey, StoredRow, StreamStore } from '../core/ports/aggregate-store.js'
import { rowId } from '../core/ports/aggregate-store.js'
import type {
  BatchControl,
  EventLogConsumer,
  EventLogWriter,
  LogOffsets,
  RecordBatch,
} from '../core/ports/event-log.js'
import type { ProgressPublisher } from '../core/ports/progress-notices.js'
import { HEADERS, requestIdOf } from '../core/record/headers.js'
import { DedupSet } from './dedup.js'
import type { StreamMetrics } from './metrics.js'
import { classify, decode, dedup, validate } from './pipeline.js'

interface Row {
  key: RowKey
  /** rowId(key): how the store's loadRows answers name it. */
  id: string
  /** Undefined while the row's stored value is being loaded (first touched by the current batch). */
  acc: RowAccumulator | undefined
  /** Last source offset counted in this row (−1: none). Events at or below it are skipped on replay. */
  throughOffset: number
  dirty: boolean
  /**
   * While the row is being loaded: the events of the batch waiting for it, four numbers each
   * (offset, flags, visitor hash high and low halves), in offset order.
   */
  pending: number[] | undefined
}

/** Bits of the flags of a pending event. */
const BOT = 1
const PAGEVIEW = 2

/** The rows of one window of one site: its totals and, for hour and day, one row per dimension value. */
class WindowRows {
  totals: Row | undefined
  /** Per dimension (DIMENSIONS order), the rows by value; empty for minute windows. */
  readonly dims: Array<Map<string, Row>>
  size = 0

  constructor(
    readonly windowEnd: number,
    withDimensions: boolean,
  ) {
    this.dims = withDimensions ? DIMENSIONS.map(() => new Map<string, Row>()) : []
  }
}

/**
 * The rows of open windows of one partition, reached without building a string key per row:
 * granularity → site → window start → rows. Dirty rows are listed as they become dirty, so a flush
 * does not scan the rest.
 */
class RowTable {
  private readonly byGranularity: Array<Map<string, Map<number, WindowRows>>> = GRANULARITIES.map(
    () => new Map(),
  )
  dirty: Row[] = []
  size = 0
  /** Open windows, all granularities and sites. */
  windows = 0

  window(gi: number, siteId: string, windowStart: number): WindowRows {
    const bySite = this.byGranularity[gi]!
    let byStart = bySite.get(siteId)
    if (!byStart) {
      byStart = new Map()
      bySite.set(siteId, byStart)
    }
    let w = byStart.get(windowStart)
    if (!w) {
      const g = GRANULARITIES[gi]!
      w = new WindowRows(windowStart + windowMs(g), DIMENSION_GRANULARITIES.includes(g))
      byStart.set(windowStart, w)
      this.windows++
    }
    return w
  }

  /**
   * Drops the oldest windows (by end) until at most `keep` are left (only clean rows: call right
   * after a flush). Their rows are in the store with the offset they count through, so an event
   * that touches one again loads it back and counts once. Returns how many were dropped.
   */
  evictOldest(keep: number): number {
    const all: Array<{ end: number; byStart: Map<number, WindowRows>; start: number; w: WindowRows }> = []
    for (const bySite of this.byGranularity) {
      for (const byStart of bySite.values()) {
        for (const [start, w] of byStart) all.push({ end: w.windowEnd, byStart, start, w })
      }
    }
    all.sort((a, b) => a.end - b.end)
    const drop = Math.max(0, all.length - keep)
    for (let i = 0; i < drop; i++) {
      const { byStart, start, w } = all[i]!
      byStart.delete(start)
      this.size -= w.size
      this.windows--
    }
    for (const bySite of this.byGranularity) {
      for (const [site, byStart] of bySite) if (byStart.size === 0) bySite.delete(site)
    }
    return drop
  }

  /** Drops the windows that ended at or before `line` (only clean rows: call right after a flush). */
  evict(line: number): void {
    for (const bySite of this.byGranularity) {
      for (const [site, byStart] of bySite) {
        for (const [ws, w] of byStart) {
          if (w.windowEnd <= line) {
            this.size -= w.size
            this.windows--
            byStart.delete(ws)
          }
        }
        if (byStart.size === 0) bySite.delete(site)
      }
    }
  }
}

/** Everything a worker holds for one source partition it owns. */
class PartitionState extends OwnedPartition {
  readonly rows = new RowTable()
  readonly dedup = new DedupSet()
  /** Records below this offset are already in the aggregates (skipped on replay). */
  nextOffset = 0
  /** Offset after the last record processed. */
  processedNext = 0
  watermarkMs = 0
  lastFlushMs = Date.now()
  lastCheckpointMs = Date.now()
  dirty = false

  constructor(
    readonly ref: PartitionRef,
    readonly epoch: number,
  ) {
    super(ref.partition)
  }
}

/** A row waiting for its stored value, and where it goes in the table once loaded. */
interface Loading {
  row: Row
  window: WindowRows
  /** Index in DIMENSIONS, or −1 for the window's totals. */
  dim: number
}

interface DeadLetter {
  offset: number
  code: string
  reason: string
  value: Buffer | undefined
  headers: Record<string, string>
}

/**
 * Counts one event in one row, unless the row already counts it (its stored value was written
 * through this offset before a restart); a row still loading keeps the event for later.
 */
function apply(table: RowTable, row: Row, offset: number, flags: number, hi: number, lo: number): void {
  const acc = row.acc
  if (acc === undefined) {
    row.pending!.push(offset, flags, hi, lo)
    return
  }
  if (offset <= row.throughOffset) return
  acc.addCounted((flags & BOT) !== 0, (flags & PAGEVIEW) !== 0, hi, lo)
  row.throughOffset = offset
  if (!row.dirty) {
    row.dirty = true
    table.dirty.push(row)
  }
}

/** Takes a row that never got its stored value back out of the table. */
function unlink(table: RowTable, { row, window, dim }: Loading): void {
  if (dim < 0) {
    if (window.totals === row) window.totals = undefined
  } else if (window.dims[dim]!.get(row.key.value) === row) window.dims[dim]!.delete(row.key.value)
  else return
  window.size--
  table.size--
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
  /**
   * Told of every checkpoint a flush writes, so query roles re-read the data version at once
   * instead of polling the store for it. Optional: without it they poll.
   */
  progress?: ProgressPublisher
  /** Overrides the owner name recorded with epochs. */
  owner?: string
}

/**
 * Reads the raw topic in a consumer group and keeps per-window aggregates in the store with an
 * exactly-once effect: absolute row values with the last counted offset, a checkpoint written
 * after the rows, epochs that fence stale owners, and dedup by messageId within a horizon.
 *
 * Assignment, the per-partition chain, idle flushes, lag, store retries and close come from
 * PartitionOwner; a partition is taken at its first batch, and flushed by the idle check once
 * `flushIntervalMs` passed since its last flush with counts not yet written.
 */
export class StreamWorker extends PartitionOwner<PartitionState> {
  private readonly owner: string
  /** Scratch for the visitor hash of the event being counted. */
  private readonly visitorHash: HashHalves = { hi: 0, lo: 0 }

  constructor(private readonly deps: StreamWorkerDeps) {
    super(
      {
        consumer: deps.consumer,
        offsets: deps.offsets,
        logger: deps.logger,
        lag: deps.metrics.lag,
        retries: deps.metrics.storeRetries,
      },
      { topic: deps.topic, idleCheckMs: deps.config.flushIntervalMs },
    )
    this.owner = deps.owner ?? `${hostname()}:${process.pid}`
  }

  /** Open windows and rows held in memory per owned partition (tests and metrics). */
  held(): Array<{ partition: number; windows: number; rows: number }> {
    return [...this.states.values()].map((s) => ({
      partition: s.ref.partition,
      windows: s.rows.windows,
      rows: s.rows.size,
    }))
  }

  /**
   * A partition taken away is dropped without flushing: its new owner replays from the last
   * checkpoint, and this worker's late writes would lose to the new owner's epoch anyway.
   */
  protected override onDropped(state: PartitionState): void {
    this.deps.metrics.checkpointAge.remove({ partition: String(state.partition) })
  }

  /** Takes ownership: new epoch, fence the checkpoint, reload the dedup set. */
  protected async restore(partition: number): Promise<PartitionState> {
    const { config, store, logger } = this.deps
    const ref: PartitionRef = { group: config.group, topic: this.deps.topic, partition }
    const epoch = await this.untilStopped(() => store.acquireEpoch(ref, this.owner), 'acquire epoch')
    const cp = await this.untilStopped(() => store.readCheckpoint(ref), 'read checkpoint')
    const state = new PartitionState(ref, epoch)
    state.nextOffset = cp?.nextOffset ?? 0
    state.processedNext = state.nextOffset
    state.watermarkMs = cp?.watermarkMs ?? 0
    // Writing the checkpoint under the new epoch first means a stale owner can never move it again.
    await this.untilStopped(
      () =>
        store.writeCheckpoint(ref, { nextOffset: state.nextOffset, watermarkMs: state.watermarkMs, epoch }),
      'fence checkpoint',
    )
    if (state.watermarkMs > 0 && config.dedupHorizonMs > 0) {
      const since = state.watermarkMs - config.dedupHorizonMs
      const chunks = await this.untilStopped(
        () => store.loadDedup(ref, state.nextOffset, since),
        'load dedup',
      )
      for (const c of chunks) state.dedup.load(c.entries, since)
    }
    logger.info(
      { partition, epoch, nextOffset: state.nextOffset, dedupIds: state.dedup.size },
      'partition restored',
    )
    return state
  }

  protected async process(state: PartitionState, batch: RecordBatch, control: BatchControl): Promise<void> {
    const { config } = this.deps
    // A batch whose events open more windows than the cap allows is counted in parts, with the
    // oldest windows written and dropped in between, so memory stays bounded whatever arrives.
    let from = 0
    while (from < batch.records.length) {
      from = await this.processFrom(state, batch, from, control)
      if (from < batch.records.length) {
        await this.shed(state, control)
        // The partition may have moved meanwhile: its new owner replays from the checkpoint.
        if (!this.owns(state) || control.isStale()) return
      }
    }
    state.dirty = true
    this.setLag(state, batch.highWatermark)
    if (Date.now() - state.lastFlushMs >= config.flushIntervalMs) await this.flush(state, control)
  }

  /**
   * Writes the partition's rows and checkpoint, then drops its oldest windows down to half the
   * cap (not just under it: otherwise each further new window would cost a flush).
   */
  private async shed(state: PartitionState, control: BatchControl): Promise<void> {
    state.dirty = true
    await this.flush(state, control)
    const dropped = state.rows.evictOldest(Math.floor(this.deps.config.maxOpenWindows / 2))
    this.deps.metrics.windowsEvicted.inc(dropped)
    this.deps.logger.debug(
      { partition: state.ref.partition, dropped },
      'open windows over the cap; oldest dropped',
    )
  }

  /**
   * Counts the batch's records from index `from` on, stopping before a record that could take the
   * partition's open windows past the cap (an event opens at most one per granularity). Returns the
   * index of the first record not processed.
   */
  private async processFrom(
    state: PartitionState,
    batch: RecordBatch,
    from: number,
    control: BatchControl,
  ): Promise<number> {
    const { metrics, config } = this.deps
    const t0 = process.hrtime.bigint()
    const deadLetters: DeadLetter[] = []
    const table = state.rows
    const partition = state.ref.partition
    // Rows this batch touches that are not in memory: loaded once, after the loop (after a restart
    // they hold the values written before it, with the offset they count through). The events
    // waiting for them are kept as a few numbers each, not as decoded events.
    const loading: Loading[] = []
    const visitor = this.visitorHash
    let counted = 0
    let replayed = 0
    let lastOffset = -1
    let i = from
    for (; i < batch.records.length; i++) {
      if (i > from && table.windows + GRANULARITIES.length > config.maxOpenWindows) break
      const record = batch.records[i]!
      lastOffset = record.offset
      // Below processedNext: already in memory (or, below the checkpoint, already stored).
      if (record.offset < state.processedNext) {
        replayed++
        continue
      }
      const decoded = decode(record)
      const valid = decoded.ok ? validate(decoded.event) : decoded
      if (!valid.ok) {
        deadLetters.push({
          offset: record.offset,
          code: valid.code,
          reason: valid.reason,
          value: record.value,
          headers: record.headers,
        })
        continue
      }
      const d = valid.event
      if (d.receivedMs > state.watermarkMs) state.watermarkMs = d.receivedMs
      const unique = dedup(d, state.dedup)
      if (!unique.ok) {
        metrics.records.inc({ outcome: 'duplicate' })
        continue
      }
      const counts = classify(d, state.watermarkMs - config.graceMs, state.watermarkMs + config.maxFutureMs)
      if (!counts.ok) {
        metrics.records.inc({ outcome: counts.kind === 'drop' ? counts.reason : 'dead_letter' })
        if (counts.kind === 'drop' && (counts.reason === 'late' || counts.reason === 'future')) {
          this.deps.logger.debug(
            { partition, offset: record.offset, traceparent: record.headers[HEADERS.traceparent] },
            `${counts.reason} event left to batch`,
          )
        }
        continue
      }
      // The event as every row sees it: offset, bot/pageview flags and the visitor hash (once).
      const e = d.event
      const offset = record.offset
      hashHalves(visitorId(e), visitor)
      const flags = (kindOf(e) === 'bot' ? BOT : 0) | (isPageview(e) ? PAGEVIEW : 0)
      let dims: Record<Dimension, string> | undefined
      for (let gi = 0; gi < GRANULARITIES.length; gi++) {
        const granularity = GRANULARITIES[gi]!
        const ws = windowStart(d.timestampMs, granularity)
        const w = table.window(gi, e.siteId, ws)
        const totals =
          w.totals ??
          this.rowToLoad(table, loading, w, -1, {
            siteId: e.siteId,
            granularity,
            windowStart: ws,
            dimension: undefined,
            value: '',
            sourcePartition: partition,
          })
        apply(table, totals, offset, flags, visitor.hi, visitor.lo)
        if (w.dims.length === 0) continue
        dims ??= dimensionsOf(e)
        for (let di = 0; di < DIMENSIONS.length; di++) {
          const dimension = DIMENSIONS[di]!
          const value = dims[dimension]
          const row =
            w.dims[di]!.get(value) ??
            this.rowToLoad(table, loading, w, di, {
              siteId: e.siteId,
              granularity,
              windowStart: ws,
              dimension,
              value,
              sourcePartition: partition,
            })
          apply(table, row, offset, flags, visitor.hi, visitor.lo)
        }
      }
      counted++
    }
    if (replayed > 0) metrics.records.inc({ outcome: 'replayed' }, replayed)
    const t1 = process.hrtime.bigint()
    metrics.stepSeconds.observe({ step: 'decode_validate_dedup' }, Number(t1 - t0) / 1e9)

    if (loading.length > 0) {
      let loaded: Map<string, StoredRow>
      try {
        loaded = await this.untilStopped(
          () => this.deps.store.loadRows(loading.map((l) => l.row.key)),
          'load rows',
          control,
        )
      } catch (err) {
        // Rows without their stored value must not stay in the table.
        for (const l of loading) unlink(table, l)
        throw err
      }
      for (const { row } of loading) {
        const stored = loaded.get(row.id)
        row.acc = new RowAccumulator(config.hllPrecision, stored)
        row.throughOffset = stored?.throughOffset ?? -1
        const waiting = row.pending!
        row.pending = undefined
        for (let i = 0; i < waiting.length; i += 4)
          apply(table, row, waiting[i]!, waiting[i + 1]!, waiting[i + 2]!, waiting[i + 3]!)
      }
    }
    const t2 = process.hrtime.bigint()
    metrics.stepSeconds.observe({ step: 'load' }, Number(t2 - t1) / 1e9)
    metrics.records.inc({ outcome: 'counted' }, counted)

    if (deadLetters.length > 0) await this.sendDeadLetters(state, deadLetters, control)
    if (lastOffset >= state.processedNext) state.processedNext = lastOffset + 1
    return i
  }

  /**
   * Adds a row first touched in this batch to the table, without a value yet: the events that touch
   * it wait in it until the batch's rows are loaded.
   */
  private rowToLoad(table: RowTable, loading: Loading[], window: WindowRows, dim: number, key: RowKey): Row {
    const row: Row = { key, id: rowId(key), acc: undefined, throughOffset: -1, dirty: false, pending: [] }
    if (dim < 0) window.totals = row
    else window.dims[dim]!.set(key.value, row)
    window.size++
    table.size++
    loading.push({ row, window, dim })
    return row
  }

  private async sendDeadLetters(
    state: PartitionState,
    items: readonly DeadLetter[],
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
          traceparent: i.headers[HEADERS.traceparent] ?? null,
          requestId: requestIdOf(i.headers) ?? null,
          consumerGroup: this.deps.config.group,
          at: new Date().toISOString(),
          original: i.value ? i.value.toString('base64') : null,
        }),
      ),
      headers: { ...i.headers, [HEADERS.deadLetterCode]: i.code },
    }))
    await this.untilStopped(
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
          traceparent: i.headers[HEADERS.traceparent],
        },
        `dead letter: ${i.reason}`,
      )
    }
  }

  /** Writes dirty rows, then the new dedup entries, then the checkpoint; evicts closed windows. */
  protected async flush(state: PartitionState, control?: BatchControl): Promise<void> {
    if (!state.dirty) return
    const { store, metrics, config } = this.deps
    const started = process.hrtime.bigint()
    const dirtyRows = state.rows.dirty
    const writes = dirtyRows.map((r) => ({
      key: r.key,
      values: r.acc!.values(),
      throughOffset: r.throughOffset,
    }))
    await this.untilStopped(() => store.writeRows(writes, state.epoch), 'write rows', control)
    for (const r of dirtyRows) r.dirty = false
    state.rows.dirty = []
    metrics.rowsWritten.inc(writes.length)
    const fresh = state.dedup.drainNew()
    if (fresh) {
      const chunk = {
        firstOffset: state.nextOffset,
        lastOffset: state.processedNext - 1,
        maxReceivedMs: fresh.maxReceivedMs,
        entries: fresh.entries,
      }
      await this.untilStopped(() => store.writeDedup(state.ref, chunk, state.epoch), 'write dedup', control)
    }
    const checkpoint = { nextOffset: state.processedNext, watermarkMs: state.watermarkMs, epoch: state.epoch }
    await this.untilStopped(() => store.writeCheckpoint(state.ref, checkpoint), 'write checkpoint', control)
    // After the checkpoint, like the version it changes: a query role that hears the notice and
    // reads the checkpoints finds this one (or a later one) with the rows it covers.
    this.deps.progress?.publish({
      group: state.ref.group,
      topic: state.ref.topic,
      partition: state.ref.partition,
      nextOffset: checkpoint.nextOffset,
      epoch: checkpoint.epoch,
      writtenAtMs: Date.now(),
    })
    state.nextOffset = checkpoint.nextOffset
    state.dirty = false
    state.lastFlushMs = Date.now()
    state.lastCheckpointMs = state.lastFlushMs
    // Progress in Kafka's own offsets is for lag tools only; a failure here changes nothing.
    this.commitOffset(state.ref.partition, state.nextOffset)
    const graceLine = state.watermarkMs - config.graceMs
    state.rows.evict(graceLine)
    state.dedup.expire(state.watermarkMs - config.dedupHorizonMs)
    metrics.flushSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9)
    let open = 0
    let windows = 0
    for (const s of this.states.values()) {
      open += s.rows.size
      windows += s.rows.windows
    }
    metrics.openRows.set(open)
    metrics.openWindows.set(windows)
  }

  /** Every idle check: the checkpoint age of each owned partition. */
  protected override onIdleCheck(state: PartitionState, nowMs: number): void {
    this.deps.metrics.checkpointAge.set(
      { partition: String(state.ref.partition) },
      (nowMs - state.lastCheckpointMs) / 1000,
    )
  }

  /** Flush partitions that went quiet, so their last events become visible within the interval. */
  protected idleFlushDue(state: PartitionState, nowMs: number): boolean {
    return state.dirty && nowMs - state.lastFlushMs >= this.deps.config.flushIntervalMs
  }

  /** Lag counts the records not yet processed. */
  protected position(state: PartitionState): number {
    return state.processedNext
  }
}
