import { errorMessage } from './errors.js'
import type { Logger } from './log.js'
import type { BatchControl, EventLogConsumer, LogOffsets, RecordBatch } from './ports/event-log.js'
import { isProgrammingError, retry } from './retry.js'

/** A per-partition gauge (a prom-client `Gauge<'partition'>` is one). */
export interface PartitionGauge {
  set(labels: { partition: string }, value: number): void
  remove(labels: { partition: string }): void
}

/** What an owner holds for one partition it owns; subclasses add their own state. */
export class OwnedPartition {
  private chain: Promise<void> = Promise.resolve()

  constructor(readonly partition: number) {}

  /** Runs work for this partition one piece at a time (batches, idle and final flushes). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn)
    this.chain = run.then(
      () => undefined,
      () => undefined,
    )
    return run
  }
}

export interface PartitionOwnerDeps {
  consumer: EventLogConsumer
  /** Polled every 5 s for the lag gauge; without it lag is reported per batch only. */
  offsets?: LogOffsets
  logger: Logger
  /** Records of each owned partition not done yet (end offset − `position`). */
  lag: PartitionGauge
  /** Counts every failure that is retried. Optional. */
  retries?: { inc(): void }
}

export interface PartitionOwnerOptions {
  /** The topic the consumer reads (its end offsets give the lag). */
  topic: string
  /** How often partitions are checked for an idle flush (`idleFlushDue`), in ms. */
  idleCheckMs: number
  /**
   * Take each assigned partition at once instead of at its first batch (the archiver does, so that
   * a commit a crash interrupted is rolled forward even when no new record arrives). Default false.
   */
  takeOnAssignment?: boolean
  /** Put before the owner's log messages: `'archive '` → "archive flush failed". Default ''. */
  logPrefix?: string
}

/**
 * A member of a consumer group that owns partitions: the scaffolding the stream worker and the
 * archiver share, so each keeps only its own logic.
 *
 * - Assignment: a partition is taken (`restore`: new epoch, stored position) at its first batch, or
 *   at once with `takeOnAssignment`; concurrent takes of one partition share one restore. A state is
 *   kept only while the partition is assigned and the owner is not closing; a partition taken away
 *   is dropped without a flush (its new owner resumes from the last commit, and this owner's late
 *   writes lose to the new epoch).
 * - Per partition, batches and flushes run one at a time (`OwnedPartition.exclusive`), each after
 *   checking that the state is still the owned one and the batch not stale.
 * - Idle flush: every `idleCheckMs` a partition whose `idleFlushDue` says so is flushed.
 * - Lag: `end offset − position(state)`, per batch and every 5 s from `offsets`.
 * - Store work is retried until it succeeds or the owner stops (`untilStopped`, through
 *   core/retry.ts); programming errors are never retried.
 * - `close()` flushes every partition after its in-flight batch, then leaves the group; `abort()`
 *   leaves at once. Both are repeat-safe and return the same promise.
 */
export abstract class PartitionOwner<S extends OwnedPartition> {
  protected readonly states = new Map<number, S>()
  private readonly restoring = new Map<number, Promise<S>>()
  /** The partitions the group gave this member (undefined until the first assignment: all). */
  private assigned: Set<number> | undefined
  private idleTimer: NodeJS.Timeout | undefined
  private lagTimer: NodeJS.Timeout | undefined
  private closing: Promise<void> | undefined
  /** Set once the final flushes are done (or at once on abort): retries give up from then on. */
  private stopping = false
  private readonly logPrefix: string

  constructor(
    private readonly ownerDeps: PartitionOwnerDeps,
    private readonly ownerOptions: PartitionOwnerOptions,
  ) {
    this.logPrefix = ownerOptions.logPrefix ?? ''
  }

  /** Takes the partition in the store (a new epoch, the stored position) and returns its state. */
  protected abstract restore(partition: number): Promise<S>
  /** Handles one batch of an owned partition (runs inside its exclusive chain). */
  protected abstract process(state: S, batch: RecordBatch, control: BatchControl): Promise<void>
  /** Makes what the partition holds durable (runs inside its exclusive chain). */
  protected abstract flush(state: S, control?: BatchControl): Promise<void>
  /** True when the idle check should flush the partition. */
  protected abstract idleFlushDue(state: S, nowMs: number): boolean
  /** The offset the partition's lag is counted from. */
  protected abstract position(state: S): number

  /** Called for every owned partition at each idle check, before `idleFlushDue` (gauges). */
  protected onIdleCheck(_state: S, _nowMs: number): void {}
  /** Called when a partition's state is dropped (after revocation, or by the subclass). */
  protected onDropped(_state: S): void {}

  async start(): Promise<void> {
    const { consumer, offsets } = this.ownerDeps
    await consumer.start({
      onBatch: (batch, control) => this.onBatch(batch, control),
      onAssignment: (partitions) => this.onAssignment(partitions),
    })
    // Flush partitions that went quiet, so what they hold is written within the interval.
    this.idleTimer = setInterval(() => void this.flushIdle(), this.ownerOptions.idleCheckMs)
    this.idleTimer.unref()
    if (offsets) {
      this.lagTimer = setInterval(() => void this.pollLag(offsets), 5000)
      this.lagTimer.unref()
    }
  }

  /** Partitions currently owned (tests and metrics). */
  ownedPartitions(): number[] {
    return [...this.states.keys()].sort((a, b) => a - b)
  }

  /** True while `state` is the one held for its partition (not dropped, not replaced). */
  protected owns(state: S): boolean {
    return this.states.get(state.partition) === state
  }

  protected isAssigned(partition: number): boolean {
    return this.assigned === undefined || this.assigned.has(partition)
  }

  /** True once `close()` or `abort()` was called. */
  protected get isClosing(): boolean {
    return this.closing !== undefined
  }

  /** Drops a partition's state: its batches are stale from now on. */
  protected drop(partition: number): void {
    const state = this.states.get(partition)
    if (!state) return
    this.states.delete(partition)
    this.ownerDeps.lag.remove({ partition: String(partition) })
    this.onDropped(state)
  }

  /** Sets the partition's lag from the log's end offset. */
  protected setLag(state: S, endOffset: number): void {
    this.ownerDeps.lag.set(
      { partition: String(state.partition) },
      Math.max(0, endOffset - this.position(state)),
    )
  }

  /** Records progress in the log's own offsets: for lag tools only, the store stays the truth. */
  protected commitOffset(partition: number, nextOffset: number): void {
    this.ownerDeps.consumer.commit(partition, nextOffset).catch((err: unknown) => {
      this.ownerDeps.logger.debug({ err: errorMessage(err) }, 'offset commit failed')
    })
  }

  /**
   * Retries `fn` with capped exponential backoff (200 ms to 5 s, jittered) for as long as it takes:
   * consumption of the partition waits meanwhile, and with `control` heartbeats keep the membership.
   * Gives up only on a programming error or once the owner is stopping (the error is thrown as is).
   */
  protected untilStopped<T>(
    fn: () => Promise<T>,
    what: string,
    control?: BatchControl,
    /** Named in the log line when given. */
    partition?: number,
  ): Promise<T> {
    return retry(fn, {
      attempts: Number.POSITIVE_INFINITY,
      initialDelayMs: 200,
      maxDelayMs: 5000,
      retriable: (err) => !isProgrammingError(err) && !this.stopping,
      onRetry: (err, attempt, delayMs) => {
        this.ownerDeps.retries?.inc()
        this.ownerDeps.logger.warn(
          { err: errorMessage(err), ...(partition === undefined ? {} : { partition }), attempt, delayMs },
          `${what} failed; retrying`,
        )
      },
      afterWait: control ? () => control.heartbeat().catch(() => undefined) : undefined,
    })
  }

  private onAssignment(partitions: number[]): void {
    const assigned = new Set(partitions)
    this.assigned = assigned
    for (const p of [...this.states.keys()]) {
      if (!assigned.has(p)) this.drop(p)
    }
    if (!this.ownerOptions.takeOnAssignment) return
    for (const p of assigned) {
      if (this.states.has(p) || this.closing) continue
      this.stateFor(p).catch((err: unknown) =>
        this.ownerDeps.logger.error(
          { err: errorMessage(err), partition: p },
          `cannot take ${this.logPrefix}partition`,
        ),
      )
    }
  }

  private stateFor(partition: number): Promise<S> {
    const existing = this.states.get(partition)
    if (existing) return Promise.resolve(existing)
    let pending = this.restoring.get(partition)
    if (!pending) {
      pending = this.take(partition).finally(() => this.restoring.delete(partition))
      this.restoring.set(partition, pending)
    }
    return pending
  }

  private async take(partition: number): Promise<S> {
    const state = await this.restore(partition)
    // Unassigned meanwhile (a rebalance), or closing: the state is not kept, its batches are stale.
    if (this.isAssigned(partition) && !this.closing) this.states.set(partition, state)
    return state
  }

  private async onBatch(batch: RecordBatch, control: BatchControl): Promise<void> {
    // Once closing, new batches are left for the next owner (it resumes from the last commit).
    if (this.closing || control.isStale() || !this.isAssigned(batch.partition)) return
    const state = await this.stateFor(batch.partition)
    await state.exclusive(async () => {
      if (!this.owns(state) || control.isStale()) return
      await this.process(state, batch, control)
    })
  }

  private async flushIdle(): Promise<void> {
    const now = Date.now()
    for (const state of this.states.values()) {
      this.onIdleCheck(state, now)
      if (!this.idleFlushDue(state, now)) continue
      await state
        .exclusive(async () => {
          if (this.owns(state)) await this.flush(state)
        })
        .catch((err: unknown) =>
          this.ownerDeps.logger.error(
            { err: errorMessage(err), partition: state.partition },
            `${this.logPrefix}flush failed`,
          ),
        )
    }
  }

  private async pollLag(offsets: LogOffsets): Promise<void> {
    try {
      const ends = await offsets.endOffsets(this.ownerOptions.topic)
      for (const state of this.states.values()) {
        const end = ends.get(state.partition)
        if (end !== undefined) this.setLag(state, end)
      }
    } catch (err) {
      this.ownerDeps.logger.debug({ err: errorMessage(err) }, 'lag poll failed')
    }
  }

  private stopTimers(): void {
    clearInterval(this.idleTimer)
    clearInterval(this.lagTimer)
  }

  /**
   * After a crash (an uncaught error in this process): leave the group without the final flush,
   * so the partitions move at once instead of after the session timeout. What is in memory is not
   * trusted then; the next owner resumes from the last commit. Repeat-safe.
   */
  abort(): Promise<void> {
    this.closing ??= (async () => {
      this.stopTimers()
      this.stopping = true
      await this.ownerDeps.consumer.close()
    })()
    return this.closing
  }

  /** SIGTERM: flush every partition, then leave the group. Repeat-safe: the same promise. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.stopTimers()
      // In-flight batches finish first: each final flush queues behind them on its partition.
      for (const state of [...this.states.values()]) {
        await state
          .exclusive(() => this.flush(state))
          .catch((err: unknown) => {
            this.ownerDeps.logger.error(
              { err: errorMessage(err), partition: state.partition },
              `final ${this.logPrefix}flush failed`,
            )
          })
      }
      this.stopping = true
      await this.ownerDeps.consumer.close()
    })()
    return this.closing
  }
}
