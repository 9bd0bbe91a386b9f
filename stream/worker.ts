import { hostname } from 'node:os'
import { KeptBreakdowns } from '../core/aggregate/breakdowns.js'
import { type EndedVisit, oldestAcceptableMs, VisitState } from '../core/aggregate/visits.js'
import type { StreamConfig } from '../core/config.js'
import type { Logger } from '../core/log.js'
import { OwnedPartition, PartitionOwner } from '../core/partition-owner.js'
import type { PartitionRef, StoredRow, StreamStore } from '../core/ports/aggregate-store.js'
import type {
  BatchControl,
  EventLogConsumer,
  EventLogWriter,
  LogOffsets,
  RecordBatch,
} from '../core/ports/event-log.js'
import type { ProgressPublisher } from '../core/ports/progress-notices.js'
import { HEADERS, requestIdOf } from '../core/record/headers.js'
import { entriesOf, FORMAT_HEADER, type RawEntry } from '../core/record/packed.js'
import { DedupSet } from './dedup.js'
import { type StreamMetrics, type StreamStep, timed } from './metrics.js'
import {
  type BatchPass,
  countEndedGoals,
  countRecords,
  type DeadLetterRecord,
  type PartitionVisits,
  type PipelineProps,
  type PipelineState,
} from './pipeline.js'
import type { PropKeyCache } from './prop-keys.js'
import { fillLoaded, type Loading, RowTable, unlink } from './rows.js'

/**
 * Everything a worker holds for one source partition it owns: what the pipeline's steps read and
 * change (PipelineState: rows, dedup set, open visits, watermark), and the offsets of its checkpoint.
 */
class PartitionState extends OwnedPartition implements PipelineState {
  readonly rows: RowTable
  readonly dedup = new DedupSet()
  visits: PartitionVisits | undefined
  props: PipelineProps | undefined
  /** Records below this offset are already in the aggregates (skipped on replay). */
  nextOffset = 0
  /** Offset after the last record processed. */
  processedNext = 0
  watermarkMs = 0
  lastFlushMs = Date.now()
  lastCheckpointMs = Date.now()
  dirty = false
  /** The visit bounds' bookkeeping: serialized bytes per open visit of the last state written. */
  visitBytesPerVisit: number | undefined
  /** Visits with goals ended early after the last rows were written: their converters go with the next. */
  pendingEnded: EndedVisit[] = []
  /** When visits ending early was last logged for this partition. */
  warnedEarlyAtMs: number | undefined

  constructor(
    readonly ref: PartitionRef,
    readonly epoch: number,
    /** Values kept per capped dimension and window (TALLY_DIMENSION_VALUES_MAX). */
    dimensionValuesMax: number,
    /** The breakdown dimensions whose rows are written (TALLY_BREAKDOWNS). */
    kept: KeptBreakdowns,
    /** Values kept per custom property and window (TALLY_PROP_VALUES_MAX). */
    propValuesMax?: number,
  ) {
    super(ref.partition)
    this.rows = new RowTable(dimensionValuesMax, kept, propValuesMax)
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
  /**
   * Told of every checkpoint a flush writes, so query roles re-read the data version at once
   * instead of polling the store for it. Optional: without it they poll.
   */
  progress?: ProgressPublisher
  /** Overrides the owner name recorded with epochs. */
  owner?: string
  /**
   * The sites' declared custom property keys (core/aggregate/props.ts), refreshed before each
   * batch. Optional: without it no property is counted.
   */
  propKeys?: PropKeyCache
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
    this.countsVisits = deps.config.countsVisits
    this.kept = new KeptBreakdowns(deps.config.breakdowns)
  }

  /** The breakdowns kept (TALLY_BREAKDOWNS), their indexes computed once for every partition. */
  private readonly kept: KeptBreakdowns

  private readonly countsVisits: boolean

  /** Open windows, rows and visits held in memory per owned partition (tests and metrics). */
  held(): Array<{ partition: number; windows: number; rows: number; visits: number }> {
    return [...this.states.values()].map((s) => ({
      partition: s.ref.partition,
      windows: s.rows.windows,
      rows: s.rows.size,
      visits: s.visits?.state.openVisits ?? 0,
    }))
  }

  /**
   * A partition taken away is dropped without flushing: its new owner replays from the last
   * checkpoint, and this worker's late writes would lose to the new owner's epoch anyway.
   */
  protected override onDropped(state: PartitionState): void {
    this.deps.metrics.checkpointAge.remove({ partition: String(state.partition) })
    this.deps.metrics.openVisits.remove({ partition: String(state.partition) })
    this.deps.metrics.visitStateBytes.remove({ partition: String(state.partition) })
  }

  /** Takes ownership: new epoch, fence the checkpoint and the visit state, reload the dedup set. */
  protected async restore(partition: number): Promise<PartitionState> {
    const { config, store, logger } = this.deps
    const ref: PartitionRef = { group: config.group, topic: this.deps.topic, partition }
    const epoch = await this.untilStopped(() => store.acquireEpoch(ref, this.owner), 'acquire epoch')
    const cp = await this.untilStopped(() => store.readCheckpoint(ref), 'read checkpoint')
    const state = new PartitionState(ref, epoch, config.dimensionValuesMax, this.kept, config.propValuesMax)
    const propKeys = this.deps.propKeys
    if (propKeys) {
      state.props = {
        keysOf: (siteId) => propKeys.keysOf(siteId),
        known: (siteId) => propKeys.known(siteId),
        goalsOf: (siteId) => propKeys.goalsOf(siteId),
        maxValues: config.propValuesMax,
      }
    }
    state.nextOffset = cp?.nextOffset ?? 0
    state.processedNext = state.nextOffset
    state.watermarkMs = cp?.watermarkMs ?? 0
    // Writing the checkpoint under the new epoch first means a stale owner can never move it again.
    await this.untilStopped(
      () =>
        store.writeCheckpoint(ref, { nextOffset: state.nextOffset, watermarkMs: state.watermarkMs, epoch }),
      'fence checkpoint',
    )
    if (this.countsVisits) {
      const snapshot = await this.untilStopped(() => store.loadVisitState(ref), 'load visit state')
      const visitState = VisitState.deserialize(snapshot?.state ?? new Uint8Array(0), config.visitGapMs)
      const nextOffset = snapshot?.nextOffset ?? 0
      // Like the checkpoint: rewritten under the new epoch, so a stale owner's state can never
      // replace it (it might be ahead of rows this owner writes first).
      const fenced = { nextOffset, state: snapshot?.state ?? new Uint8Array(0) }
      await this.untilStopped(() => store.writeVisitState(ref, fenced, epoch), 'fence visit state')
      state.visits = { state: visitState, nextOffset, changed: false }
    }
    if (state.watermarkMs > 0 && config.dedupHorizonMs > 0) {
      const since = state.watermarkMs - config.dedupHorizonMs
      const chunks = await this.untilStopped(
        () => store.loadDedup(ref, state.nextOffset, since),
        'load dedup',
      )
      for (const c of chunks) state.dedup.load(c.entries, since)
    }
    logger.info(
      {
        partition,
        epoch,
        nextOffset: state.nextOffset,
        dedupIds: state.dedup.size,
        openVisits: state.visits?.state.openVisits,
      },
      'partition restored',
    )
    return state
  }

  protected async process(state: PartitionState, batch: RecordBatch, control: BatchControl): Promise<void> {
    const { config } = this.deps
    // A batch whose events open more windows than the cap allows is counted in parts, with the
    // oldest windows written and dropped in between, so memory stays bounded whatever arrives.
    // Records of both framings, as events: a packed record (format 2) gives one per event, at its offset.
    const events = { ...batch, records: entriesOf(batch.records) }
    let from = 0
    const propKeys = this.deps.propKeys
    // The property keys of the batch's sites (by the header ingest writes on each event), read once before it.
    if (propKeys) await propKeys.refresh(siteIdsOf(events))
    while (from < events.records.length) {
      const pass = await this.processFrom(state, events, from, control)
      from = pass.next
      if (pass.unknownSite !== undefined && propKeys) {
        // An event without the site header, of a site not read yet: read it, then go on from it.
        await propKeys.refresh([pass.unknownSite])
        continue
      }
      if (from < events.records.length) {
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
   * Runs the batch's records from index `from` on through the pipeline (stream/pipeline.ts), which
   * stops before a record that could take the partition's open windows past the cap; then loads the
   * rows the batch touched for the first time and sends its poison records to the dead-letter topic.
   * Returns the index of the first record not processed.
   */
  private async processFrom(
    state: PartitionState,
    batch: { records: readonly RawEntry[] },
    from: number,
    control: BatchControl,
  ): Promise<BatchPass> {
    const { metrics, config, logger } = this.deps
    const pass = await this.timed('decode_validate_dedup', async () =>
      countRecords(state, batch, from, config, logger),
    )
    for (const [outcome, n] of pass.outcomes) metrics.records.inc({ outcome }, n)
    await this.timed('load', () => this.loadRows(state.rows, pass.loading, control))
    metrics.records.inc({ outcome: 'counted' }, pass.counted)
    if (pass.deadLetters.length > 0) await this.sendDeadLetters(state, pass.deadLetters, control)
    if (pass.lastOffset >= state.processedNext) state.processedNext = pass.lastOffset + 1
    return pass
  }

  /**
   * Rows the batch touched that were not in memory, loaded once (after a restart they hold the
   * values written before it, with the offset they count through); the events waiting in them are
   * counted then.
   */
  private async loadRows(
    table: RowTable,
    loading: readonly Loading[],
    control: BatchControl | undefined,
  ): Promise<void> {
    if (loading.length === 0) return
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
    fillLoaded(table, loading, loaded, this.deps.config.hllPrecision, this.countsVisits)
  }

  /** Runs one step of a batch and records its time in tally_stream_step_seconds. */
  private timed<T>(step: StreamStep, fn: () => Promise<T>): Promise<T> {
    return timed((seconds) => this.deps.metrics.stepSeconds.observe({ step }, seconds), fn)
  }

  private async sendDeadLetters(
    state: PartitionState,
    items: readonly DeadLetterRecord[],
    control: BatchControl,
  ): Promise<void> {
    const records = items.map((i) => {
      // The event's own headers (a packed record's events carry theirs); a whole record refused for
      // its framing keeps its own but the format's: this record's value is the JSON below.
      const { [FORMAT_HEADER]: _format, ...headers } = i.headers
      return {
        key: `${this.deps.topic}:${state.ref.partition}:${i.offset}${i.index > 0 ? `:${i.index}` : ''}`,
        value: Buffer.from(
          JSON.stringify({
            code: i.code,
            reason: i.reason,
            sourceTopic: this.deps.topic,
            sourcePartition: state.ref.partition,
            sourceOffset: i.offset,
            // With sourceOffset, the event's position: its index inside a packed record (0 otherwise).
            sourceIndex: i.index,
            traceparent: i.headers[HEADERS.traceparent] ?? null,
            requestId: requestIdOf(i.headers) ?? null,
            consumerGroup: this.deps.config.group,
            at: new Date().toISOString(),
            original: i.value ? i.value.toString('base64') : null,
          }),
        ),
        headers: { ...headers, [HEADERS.deadLetterCode]: i.code },
      }
    })
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
          index: i.index,
          code: i.code,
          traceparent: i.headers[HEADERS.traceparent],
        },
        `dead letter: ${i.reason}`,
      )
    }
  }

  /**
   * Writes dirty rows, then the new dedup entries, then the visit state, then the checkpoint;
   * evicts closed windows.
   */
  protected async flush(state: PartitionState, control?: BatchControl): Promise<void> {
    if (!state.dirty) return
    const { metrics } = this.deps
    await timed(
      (seconds) => metrics.flushSeconds.observe(seconds),
      () => this.checkpoint(state, control),
    )
    let open = 0
    let windows = 0
    for (const s of this.states.values()) {
      open += s.rows.size
      windows += s.rows.windows
    }
    metrics.openRows.set(open)
    metrics.openWindows.set(windows)
  }

  /** The flush's writes, in their order, then the evictions they allow. */
  private async checkpoint(state: PartitionState, control: BatchControl | undefined): Promise<void> {
    const { store, metrics, config } = this.deps
    const visits = state.visits
    if (visits) {
      // Visits no event the stream may still accept can change are dropped before the writes; those
      // that reached goals add their converters to their exit page's rows first (the rows are
      // written before the state that no longer holds the visits).
      const ended: EndedVisit[] = []
      if (visits.state.evict(oldestAcceptableMs(state.watermarkMs, config.graceMs), ended) > 0)
        visits.changed = true
      // The memory bound: beyond it the least recently active visits end now (approximate visits
      // for their days until a rebuild, said in the log and a metric). In count, and in bytes by the
      // last state's bytes per visit, so the state stays one write (TALLY_STREAM_VISIT_STATE_MAX_BYTES).
      ended.push(...state.pendingEnded)
      state.pendingEnded = []
      const byBytes = state.visitBytesPerVisit
        ? Math.floor((0.9 * config.visitStateMaxBytes) / state.visitBytesPerVisit)
        : Number.POSITIVE_INFINITY
      this.endEarly(state, visits.state.evictLeastRecent(Math.min(config.openVisitsMax, byBytes), ended))
      if (ended.length > 0) await this.countEnded(state, ended, control)
    }
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
    if (visits) {
      // The state written holds every counted event below processedNext, after the rows with their changes.
      if (visits.changed) {
        // The state holds every event below processedNext and, restored, every one below its own
        // nextOffset: during a replay (processedNext still below it) a state written for an
        // eviction must keep saying so, or a crash then would add the events between twice.
        const nextOffset = Math.max(state.processedNext, visits.nextOffset)
        let bytes = visits.state.serialize()
        // Visits larger than the last ones (long ids, paths, UTM values) can outgrow the estimate:
        // end more until the state fits; converters of those with goals go with the next rows.
        while (bytes.byteLength > config.visitStateMaxBytes && visits.state.openVisits > 0) {
          const keep = Math.floor(
            (0.9 * visits.state.openVisits * config.visitStateMaxBytes) / bytes.byteLength,
          )
          this.endEarly(state, visits.state.evictLeastRecent(keep, state.pendingEnded))
          bytes = visits.state.serialize()
        }
        const open = visits.state.openVisits
        state.visitBytesPerVisit = open > 0 ? bytes.byteLength / open : undefined
        const snapshot = { nextOffset, state: bytes }
        await this.untilStopped(
          () => store.writeVisitState(state.ref, snapshot, state.epoch),
          'write visit state',
          control,
        )
        visits.changed = false
        metrics.visitStateBytes.set({ partition: String(state.ref.partition) }, snapshot.state.byteLength)
      }
      metrics.openVisits.set({ partition: String(state.ref.partition) }, visits.state.openVisits)
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
  }

  /** Counts visits ended early by the bound, and warns at most once a minute per partition. */
  private endEarly(state: PartitionState, early: number): void {
    const visits = state.visits
    if (early === 0 || !visits) return
    visits.changed = true
    const { metrics, config } = this.deps
    metrics.visitsEndedEarly.inc({ partition: String(state.ref.partition) }, early)
    const now = Date.now()
    if (state.warnedEarlyAtMs !== undefined && now - state.warnedEarlyAtMs < 60_000) return
    state.warnedEarlyAtMs = now
    this.deps.logger.warn(
      {
        partition: state.ref.partition,
        endedEarly: early,
        openVisitsMax: config.openVisitsMax,
        visitStateMaxBytes: config.visitStateMaxBytes,
      },
      "open visits above TALLY_STREAM_OPEN_VISITS_MAX or TALLY_STREAM_VISIT_STATE_MAX_BYTES: the least recently active ended early (counted in tally_stream_visits_ended_early_total; warned at most once a minute); their days' visits and conversions by visit are approximate until rebuilt",
    )
  }

  /**
   * The conversions by exit page of visits evicted as ended (stream/pipeline.ts countEndedGoals),
   * their rows loaded when not held. Registers only: an eviction replayed after a crash adds the
   * same converters again, which changes nothing.
   */
  private async countEnded(
    state: PartitionState,
    ended: readonly EndedVisit[],
    control: BatchControl | undefined,
  ): Promise<void> {
    const loading: Loading[] = []
    countEndedGoals(ended, state.rows, state.ref.partition, loading)
    await this.loadRows(state.rows, loading, control)
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

/** The sites a batch's records name in their site header (ingest writes it on every record). */
function siteIdsOf(batch: { records: readonly { headers: Record<string, string> }[] }): Set<string> {
  const sites = new Set<string>()
  for (const r of batch.records) {
    const site = r.headers[HEADERS.siteId]
    if (site !== undefined) sites.add(site)
  }
  return sites
}
