import { describe, expect, it } from 'vitest'
import { KafkaBatchingProducer } from '../../core/kafka/producer.js'
import type { LogRecord } from '../../core/ports/event-log.js'
import { eventually } from '../helpers/context.js'

type KafkaLike = ConstructorParameters<typeof KafkaBatchingProducer>[0]

/** A Kafka whose sends never come back (a broker that stopped answering), counting producers made. */
function silentKafka(): { kafka: KafkaLike; sends: number[]; producers: () => number } {
  const sends: number[] = []
  let producers = 0
  const kafka = {
    producer: () => {
      producers++
      return {
        connect: async () => undefined,
        disconnect: async () => undefined,
        sendBatch: (req: { topicMessages: Array<{ messages: unknown[] }> }) => {
          sends.push(req.topicMessages.reduce((n, t) => n + t.messages.length, 0))
          return new Promise(() => undefined)
        },
      }
    },
    admin: () => ({
      connect: async () => {
        throw new Error('no broker')
      },
      disconnect: async () => undefined,
    }),
  }
  return { kafka: kafka as unknown as KafkaLike, sends, producers: () => producers }
}

const record = (i: number): LogRecord => ({
  key: `k${i}`,
  value: Buffer.alloc(900, 0x61),
  headers: { 'tally-site-id': 's' },
})

describe('KafkaBatchingProducer while Kafka does not answer', () => {
  it('bounds memory: appends beyond the pending-bytes cap fail at once, queued ones fail after the append timeout', async () => {
    const { kafka, sends } = silentKafka()
    const producer = new KafkaBatchingProducer(kafka, {
      lingerMs: 1,
      appendTimeoutMs: 300,
      maxPendingBytes: 10_000,
    })
    const results: Array<Promise<string>> = []
    const started = Date.now()
    for (let i = 0; i < 40; i++) {
      results.push(
        producer.append('raw', [record(i)]).then(
          () => 'ok',
          (err: Error & { code?: string }) => `${err.code}: ${err.message}`,
        ),
      )
      // The first record goes out (and hangs); the others wait behind it.
      if (i === 0)
        await eventually(async () => (sends.length === 1 ? true : undefined), 5000, 'the first send')
    }
    const outcomes = await Promise.all(results)
    expect(outcomes.filter((o) => o === 'ok')).toEqual([])
    const full = outcomes.filter((o) => o.includes('write queue full'))
    const timedOut = outcomes.filter((o) => o.includes('did not acknowledge'))
    // About 10 records of ~1 KB fit in 10 KB; the rest were refused without being kept.
    expect(full.length).toBeGreaterThan(20)
    expect(timedOut.length).toBeGreaterThan(5)
    expect(full.length + timedOut.length).toBe(40)
    for (const o of outcomes) expect(o).toMatch(/^TALLY_ERR_SERVICE_UNAVAILABLE: /)
    expect(Date.now() - started).toBeLessThan(3000)
    expect(producer.healthy()).toBe(false)
    // The queue drained: room again for new appends (which wait, and time out, like the others).
    const later = await producer.append('raw', [record(99)]).catch((err: Error) => err.message)
    expect(later).toMatch(/did not acknowledge the write within 300 ms/)
  })
})

/** A Kafka whose sends the test acknowledges by hand, recording the records of each send. */
function manualKafka(): {
  kafka: KafkaLike
  sends: Array<{ keys: string[]; producer: number; ack: () => void }>
} {
  const sends: Array<{ keys: string[]; producer: number; ack: () => void }> = []
  let producers = 0
  const kafka = {
    producer: () => {
      const id = ++producers
      return {
        connect: async () => undefined,
        disconnect: async () => undefined,
        sendBatch: (req: { topicMessages: Array<{ messages: Array<{ key: string }> }> }) =>
          new Promise<void>((resolve) => {
            const keys = req.topicMessages.flatMap((t) => t.messages.map((m) => m.key))
            sends.push({ keys, producer: id, ack: resolve })
          }),
      }
    },
  }
  return { kafka: kafka as unknown as KafkaLike, sends }
}

describe('KafkaBatchingProducer batches in flight', () => {
  const settled = (p: Promise<void>) => {
    let done = false
    void p.then(() => {
      done = true
    })
    return () => done
  }

  it('with one, sends the next batch only after the previous one was acknowledged', async () => {
    const { kafka, sends } = manualKafka()
    const producer = new KafkaBatchingProducer(kafka, { lingerMs: 1 })
    const first = settled(producer.append('raw', [record(1)]))
    await eventually(async () => (sends.length === 1 ? true : undefined), 5000, 'the first send')
    const second = settled(producer.append('raw', [record(2), record(3)]))
    await new Promise((r) => setTimeout(r, 50))
    expect(sends).toHaveLength(1)
    sends[0]!.ack()
    await eventually(async () => (sends.length === 2 ? true : undefined), 5000, 'the second send')
    expect([first(), second()]).toEqual([true, false])
    expect(sends[1]!.keys).toEqual(['k2', 'k3'])
    sends[1]!.ack()
    await eventually(async () => (second() ? true : undefined), 5000, 'the second acknowledgement')
  })

  it('with two, sends a batch from a second producer while the first waits, and answers each append after its own batch', async () => {
    const { kafka, sends } = manualKafka()
    const producer = new KafkaBatchingProducer(kafka, { lingerMs: 1, maxInFlightBatches: 2 })
    const first = settled(producer.append('raw', [record(1)]))
    await eventually(async () => (sends.length === 1 ? true : undefined), 5000, 'the first send')
    const second = settled(producer.append('raw', [record(2), record(3)]))
    await eventually(async () => (sends.length === 2 ? true : undefined), 5000, 'the second send')
    // One append's records stay together, in order, in one batch of one producer.
    expect(sends.map((s) => s.keys)).toEqual([['k1'], ['k2', 'k3']])
    expect(sends[0]!.producer).not.toBe(sends[1]!.producer)
    // A third append waits: both producers have a batch in flight.
    const third = settled(producer.append('raw', [record(4)]))
    await new Promise((r) => setTimeout(r, 50))
    expect(sends).toHaveLength(2)
    sends[1]!.ack()
    await eventually(async () => (second() ? true : undefined), 5000, 'the second acknowledgement')
    expect(first()).toBe(false)
    await eventually(async () => (sends.length === 3 ? true : undefined), 5000, 'the third send')
    expect(sends[2]!.keys).toEqual(['k4'])
    sends[0]!.ack()
    sends[2]!.ack()
    await eventually(async () => (first() && third() ? true : undefined), 5000, 'every acknowledgement')
    await producer.close()
  })
})
