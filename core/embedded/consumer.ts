import { ERR } from '../error-codes.js'
import { errorMessage, TallyError } from '../errors.js'
import { once } from '../lifecycle.js'
import type { Logger } from '../log.js'
import type { ConsumedRecord, ConsumerHandlers, EventLogConsumer } from '../ports/event-log.js'

/** What a group member needs of the embedded log (EmbeddedEventLog), named here so the two modules do not import each other. */
export interface ConsumableLog {
  partitionsOf(topic: string): number | undefined
  endOffset(topic: string, partition: number): number
  read(topic: string, partition: number, fromOffset: number, maxRecords: number): ConsumedRecord[]
  waitFor(
    topic: string,
    partition: number,
    position: number,
    timeoutMs: number,
    abort: AbortSignal,
  ): Promise<void>
  commitOffset(groupId: string, topic: string, partition: number, nextOffset: number): void
  committedOffsets(groupId: string, topic: string): Map<number, number>
}

export interface EmbeddedGroupConsumerOptions {
  groupId: string
  topic: string
  /** Partitions whose batches are handled at the same time by this member. Default 3. */
  partitionsConsumedConcurrently?: number
  /** Most records in one batch. Default 1000. */
  maxBatchRecords?: number
  /** An idle partition re-reads after this long even without a wake-up from an append. Default 1000 ms. */
  idleWaitMs?: number
  /** Wait before a batch whose handler threw is delivered again. Default 1000 ms. */
  retryDelayMs?: number
  logger?: Logger
}

/**
 * Members of one consumer group on one topic, in this process. Partitions are spread round-robin
 * over the members in join order, and reassigned whenever one joins or leaves. A partition handed
 * from one member to another starts on its new member only after the old one's batch in flight has
 * finished, from the group's committed offset (like a Kafka rebalance).
 */
export class GroupCoordinator {
  private readonly members: EmbeddedGroupConsumer[] = []
  /** Per partition, settles when its current run has stopped. */
  private readonly runs = new Map<number, Promise<void>>()

  join(member: EmbeddedGroupConsumer, partitions: number): void {
    this.members.push(member)
    this.rebalance(partitions)
  }

  leave(member: EmbeddedGroupConsumer, partitions: number): void {
    const i = this.members.indexOf(member)
    if (i < 0) return
    this.members.splice(i, 1)
    this.rebalance(partitions)
  }

  private rebalance(partitions: number): void {
    const n = this.members.length
    const assignment = this.members.map(() => [] as number[])
    for (let p = 0; p < partitions; p++) assignment[p % n]?.push(p)
    this.members.forEach((m, i) => {
      m.assign(assignment[i] ?? [])
    })
  }

  /** The run of `partition` that must stop before a new one starts. */
  previousRun(partition: number): Promise<void> {
    return this.runs.get(partition) ?? Promise.resolve()
  }

  setRun(partition: number, done: Promise<void>): void {
    this.runs.set(partition, done)
  }
}

interface PartitionRun {
  abort: AbortController
  /** Set once the partition was taken away from this member. */
  stale: boolean
  done: Promise<void>
}

/**
 * A member of a consumer group of the embedded log (EventLogConsumer). With one member (the usual
 * case: one process) it owns every partition. Delivery is at least once: the position moves past a
 * batch only after its handler resolved; a handler that throws gets the same batch again.
 */
export class EmbeddedGroupConsumer implements EventLogConsumer {
  private handlers: ConsumerHandlers | undefined
  private readonly owned = new Map<number, PartitionRun>()
  private stopping = false
  private joined = false
  private busy = 0
  private readonly slotWaiters: Array<() => void> = []
  private readonly concurrency: number
  private readonly maxBatchRecords: number
  private readonly idleWaitMs: number
  private readonly retryDelayMs: number
  readonly close: () => Promise<void>

  constructor(
    private readonly log: ConsumableLog,
    private readonly group: GroupCoordinator,
    private readonly options: EmbeddedGroupConsumerOptions,
  ) {
    this.concurrency = Math.max(1, options.partitionsConsumedConcurrently ?? 3)
    this.maxBatchRecords = Math.max(1, options.maxBatchRecords ?? 1000)
    this.idleWaitMs = options.idleWaitMs ?? 1000
    this.retryDelayMs = options.retryDelayMs ?? 1000
    this.close = once(async () => {
      this.stopping = true
      const runs = [...this.owned.values()]
      // Aborting also takes the runs out of the slot queue.
      for (const run of runs) run.abort.abort()
      // In-flight batches finish first (their partitions then move to the remaining members).
      await Promise.all(runs.map((r) => r.done))
      if (this.joined) this.group.leave(this, this.partitions())
    })
  }

  private partitions(): number {
    const n = this.log.partitionsOf(this.options.topic)
    if (n === undefined) {
      throw new TallyError(ERR.UNKNOWN_TOPIC, `the embedded log has no topic ${this.options.topic}`, {
        where: this.options.topic,
      })
    }
    return n
  }

  async start(handlers: ConsumerHandlers): Promise<void> {
    if (this.handlers) throw new Error('this consumer was already started')
    if (this.stopping) throw new TallyError(ERR.SHUTTING_DOWN, 'the consumer is closed')
    const partitions = this.partitions()
    this.handlers = handlers
    this.joined = true
    this.group.join(this, partitions)
  }

  /** Called by the group on every rebalance. */
  assign(partitions: number[]): void {
    if (this.stopping || !this.handlers) return
    const next = new Set(partitions)
    for (const [p, run] of this.owned) {
      if (next.has(p)) continue
      run.stale = true
      run.abort.abort()
      this.owned.delete(p)
    }
    const sorted = [...partitions].sort((a, b) => a - b)
    this.options.logger?.info({ partitions: sorted, groupId: this.options.groupId }, 'partitions assigned')
    this.handlers.onAssignment?.(sorted)
    for (const p of sorted) {
      if (this.owned.has(p)) continue
      const previous = this.group.previousRun(p)
      const run: PartitionRun = { abort: new AbortController(), stale: false, done: Promise.resolve() }
      run.done = this.runPartition(p, run, previous)
      this.group.setRun(p, run.done)
      this.owned.set(p, run)
    }
  }

  private async runPartition(partition: number, run: PartitionRun, previous: Promise<void>): Promise<void> {
    const { topic, groupId, logger } = this.options
    const signal = run.abort.signal
    await previous
    if (signal.aborted) return
    let position = this.log.committedOffsets(groupId, topic).get(partition) ?? 0
    const control = {
      heartbeat: async () => undefined,
      isStale: () => run.stale || this.stopping,
    }
    while (!signal.aborted) {
      try {
        const records = this.log.read(topic, partition, position, this.maxBatchRecords)
        if (records.length === 0) {
          await this.log.waitFor(topic, partition, position, this.idleWaitMs, signal)
          continue
        }
        if (!(await this.takeSlot(signal))) break
        if (signal.aborted) {
          this.releaseSlot()
          break
        }
        try {
          await this.handlers!.onBatch(
            { topic, partition, records, highWatermark: this.log.endOffset(topic, partition) },
            control,
          )
          if (!control.isStale()) position = records[records.length - 1]!.offset + 1
        } finally {
          this.releaseSlot()
        }
      } catch (err) {
        if (signal.aborted) break
        logger?.warn(
          { err: errorMessage(err), partition, position, groupId },
          'batch failed; delivering it again',
        )
        await abortableSleep(this.retryDelayMs, signal)
      }
    }
  }

  /**
   * Waits for one of the `partitionsConsumedConcurrently` slots, first come first served (a
   * partition that just finished a batch queues behind the waiting ones). False when aborted.
   */
  private takeSlot(signal: AbortSignal): Promise<boolean> {
    if (signal.aborted) return Promise.resolve(false)
    if (this.busy < this.concurrency && this.slotWaiters.length === 0) {
      this.busy++
      return Promise.resolve(true)
    }
    return new Promise<boolean>((resolve) => {
      const onAbort = () => {
        const i = this.slotWaiters.indexOf(grant)
        if (i >= 0) this.slotWaiters.splice(i, 1)
        resolve(false)
      }
      const grant = () => {
        signal.removeEventListener('abort', onAbort)
        this.busy++
        resolve(true)
      }
      this.slotWaiters.push(grant)
      signal.addEventListener('abort', onAbort, { once: true })
    })
  }

  private releaseSlot(): void {
    this.busy--
    if (this.busy < this.concurrency) this.slotWaiters.shift()?.()
  }

  async commit(partition: number, nextOffset: number): Promise<void> {
    this.log.commitOffset(this.options.groupId, this.options.topic, partition, nextOffset)
  }
}

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve()
    const done = () => {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    signal.addEventListener('abort', done)
  })
}
