import { describe, expect, it } from 'vitest'
import { TallyError } from '../../core/errors.js'
import { createLogger } from '../../core/log.js'
import { OwnedPartition, PartitionOwner } from '../../core/partition-owner.js'
import type {
  BatchControl,
  ConsumerHandlers,
  EventLogConsumer,
  RecordBatch,
} from '../../core/ports/event-log.js'

const logger = createLogger('silent')

/** A consumer-group member driven by the test: it delivers batches and assignments by hand. */
class HandConsumer implements EventLogConsumer {
  handlers: ConsumerHandlers | undefined
  closes = 0
  async start(handlers: ConsumerHandlers): Promise<void> {
    this.handlers = handlers
  }
  async commit(): Promise<void> {}
  async close(): Promise<void> {
    this.closes++
  }
  deliver(partition: number, offsets: number[], control: Partial<BatchControl> = {}): Promise<void> {
    const batch: RecordBatch = {
      topic: 't',
      partition,
      highWatermark: (offsets.at(-1) ?? -1) + 1,
      records: offsets.map((offset) => ({
        offset,
        key: undefined,
        value: undefined,
        headers: {},
        timestampMs: 0,
      })),
    }
    return this.handlers!.onBatch(batch, {
      heartbeat: control.heartbeat ?? (async () => undefined),
      isStale: control.isStale ?? (() => false),
    })
  }
}

class Gauge {
  readonly values = new Map<string, number>()
  set(labels: { partition: string }, value: number): void {
    this.values.set(labels.partition, value)
  }
  remove(labels: { partition: string }): void {
    this.values.delete(labels.partition)
  }
}

class Held extends OwnedPartition {
  next = 0
  flushed = -1
}

/** The smallest owner: it remembers the offsets it saw and "flushes" by recording them. */
class TestOwner extends PartitionOwner<Held> {
  readonly log: string[] = []
  restores = 0
  restoreGate: Promise<void> = Promise.resolve()
  processGate: Promise<void> = Promise.resolve()

  constructor(
    readonly consumer: HandConsumer,
    readonly lag: Gauge,
    readonly retries = { n: 0 },
  ) {
    super(
      { consumer, logger, lag, retries: { inc: () => void retries.n++ } },
      { topic: 't', idleCheckMs: 60_000 },
    )
  }

  protected async restore(partition: number): Promise<Held> {
    this.restores++
    await this.restoreGate
    return new Held(partition)
  }
  protected async process(state: Held, batch: RecordBatch): Promise<void> {
    this.log.push(`process ${state.partition} start`)
    await this.processGate
    state.next = batch.records.at(-1)!.offset + 1
    this.setLag(state, batch.highWatermark + 5)
    this.log.push(`process ${state.partition} end`)
  }
  protected async flush(state: Held): Promise<void> {
    state.flushed = state.next
    this.log.push(`flush ${state.partition}`)
  }
  protected idleFlushDue(): boolean {
    return false
  }
  protected position(state: Held): number {
    return state.next
  }

  /** Exposes the protected retry for the tests. */
  retry<T>(fn: () => Promise<T>, control?: BatchControl): Promise<T> {
    return this.untilStopped(fn, 'test step', control)
  }
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void
  const promise = new Promise<void>((r) => (resolve = r))
  return { promise, resolve }
}

describe('OwnedPartition.exclusive', () => {
  it('runs work one piece at a time, in order, and a failure does not stop the chain', async () => {
    const p = new OwnedPartition(0)
    const seen: string[] = []
    const gate = deferred()
    const first = p.exclusive(async () => {
      seen.push('a start')
      await gate.promise
      seen.push('a end')
      throw new Error('a failed')
    })
    const second = p.exclusive(async () => {
      seen.push('b')
      return 2
    })
    await Promise.resolve()
    expect(seen).toEqual(['a start'])
    gate.resolve()
    await expect(first).rejects.toThrow('a failed')
    await expect(second).resolves.toBe(2)
    expect(seen).toEqual(['a start', 'a end', 'b'])
  })
})

describe('PartitionOwner', () => {
  it('takes a partition once for concurrent batches and processes them one at a time', async () => {
    const consumer = new HandConsumer()
    const owner = new TestOwner(consumer, new Gauge())
    await owner.start()
    const restoring = deferred()
    owner.restoreGate = restoring.promise
    const a = consumer.deliver(3, [0, 1])
    const b = consumer.deliver(3, [2])
    restoring.resolve()
    await Promise.all([a, b])
    expect(owner.restores).toBe(1)
    expect(owner.log).toEqual(['process 3 start', 'process 3 end', 'process 3 start', 'process 3 end'])
    expect(owner.ownedPartitions()).toEqual([3])
    await owner.close()
  })

  it('drops a revoked partition with its lag, and ignores batches of partitions not assigned', async () => {
    const consumer = new HandConsumer()
    const lag = new Gauge()
    const owner = new TestOwner(consumer, lag)
    await owner.start()
    consumer.handlers!.onAssignment!([1, 2])
    await consumer.deliver(1, [0])
    await consumer.deliver(2, [0, 1])
    expect(lag.values).toEqual(
      new Map([
        ['1', 5],
        ['2', 5],
      ]),
    )
    consumer.handlers!.onAssignment!([2])
    expect(owner.ownedPartitions()).toEqual([2])
    expect([...lag.values.keys()]).toEqual(['2'])
    await consumer.deliver(1, [1])
    await consumer.deliver(2, [2], { isStale: () => true })
    expect(owner.restores).toBe(2)
    expect(owner.log.filter((l) => l.endsWith('start'))).toEqual(['process 1 start', 'process 2 start'])
    await owner.close()
  })

  it('close() twice returns the same promise, flushes after the in-flight batch, then leaves once', async () => {
    const consumer = new HandConsumer()
    const owner = new TestOwner(consumer, new Gauge())
    await owner.start()
    await consumer.deliver(0, [0])
    const gate = deferred()
    owner.processGate = gate.promise
    const inFlight = consumer.deliver(0, [1, 2])
    await new Promise((r) => setImmediate(r))
    const first = owner.close()
    const second = owner.close()
    expect(second).toBe(first)
    expect(owner.abort()).toBe(first)
    gate.resolve()
    await Promise.all([first, inFlight])
    expect(owner.log.slice(-3)).toEqual(['process 0 start', 'process 0 end', 'flush 0'])
    expect(consumer.closes).toBe(1)
    // Batches after close are left for the next owner.
    await consumer.deliver(0, [3])
    expect(owner.log.at(-1)).toBe('flush 0')
  })

  it('retries until success with heartbeats between attempts, counting each retry', async () => {
    const owner = new TestOwner(new HandConsumer(), new Gauge())
    let calls = 0
    let heartbeats = 0
    const v = await owner.retry(
      async () => {
        calls++
        if (calls < 3) throw new TallyError('TALLY_ERR_X', 'down', { retriable: false })
        return 'ok'
      },
      { heartbeat: async () => void heartbeats++, isStale: () => false },
    )
    expect(v).toBe('ok')
    expect(calls).toBe(3)
    expect(heartbeats).toBe(2)
    expect(owner.retries.n).toBe(2)
  })

  it.each([new TypeError('bug'), new RangeError('bug')])(
    'never retries a programming error (%s)',
    async (bug) => {
      const owner = new TestOwner(new HandConsumer(), new Gauge())
      let calls = 0
      const err = await owner
        .retry(async () => {
          calls++
          throw bug
        })
        .catch((e: unknown) => e)
      expect(err).toBe(bug)
      expect(calls).toBe(1)
      expect(owner.retries.n).toBe(0)
    },
  )

  it('stops retrying once closed, throwing the last error as is', async () => {
    const consumer = new HandConsumer()
    const owner = new TestOwner(consumer, new Gauge())
    await owner.start()
    const down = new Error('store down')
    let calls = 0
    const retrying = owner
      .retry(async () => {
        calls++
        throw down
      })
      .catch((e: unknown) => e)
    await new Promise((r) => setTimeout(r, 50))
    expect(calls).toBe(1)
    await owner.close()
    expect(await retrying).toBe(down)
    // The attempt after the first wait failed and was not retried.
    expect(calls).toBe(2)
  })
})
