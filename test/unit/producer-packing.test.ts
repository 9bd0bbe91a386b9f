import { Partitioners } from 'kafkajs'
import { describe, expect, it } from 'vitest'
import { partitionForKey } from '../../core/embedded/partitioner.js'
import { KafkaBatchingProducer } from '../../core/kafka/producer.js'
import type { LogRecord } from '../../core/ports/event-log.js'
import { entriesOf, FORMAT_HEADER } from '../../core/record/packed.js'

type KafkaLike = ConstructorParameters<typeof KafkaBatchingProducer>[0]

interface Sent {
  partition: number
  key: unknown
  value: Buffer
  headers: Record<string, string>
}

const PARTITIONS = 6

/** A Kafka that acknowledges every send at once and keeps what was sent. */
function recordingKafka(): { kafka: KafkaLike; sent: Sent[]; sends: number } {
  const out = { sent: [] as Sent[], sends: 0 }
  const kafka = {
    producer: () => ({
      connect: async () => undefined,
      disconnect: async () => undefined,
      sendBatch: async (req: { acks: number; topicMessages: Array<{ messages: Sent[] }> }) => {
        expect(req.acks).toBe(-1)
        out.sends++
        for (const t of req.topicMessages) out.sent.push(...t.messages)
      },
    }),
    admin: () => ({
      connect: async () => undefined,
      disconnect: async () => undefined,
      fetchTopicMetadata: async () => ({
        topics: [
          {
            name: 'raw',
            partitions: Array.from({ length: PARTITIONS }, (_, i) => ({ partitionId: i, leader: 0 })),
          },
        ],
      }),
    }),
  }
  return {
    kafka: kafka as unknown as KafkaLike,
    ...out,
    get sent() {
      return out.sent
    },
    get sends() {
      return out.sends
    },
  }
}

const headersOf = (r: number) => ({ traceparent: `00-${String(r).padStart(32, '1')}-00f067aa0ba902b7-01` })

function records(n: number, valueBytes = 100): LogRecord[] {
  const sets = [headersOf(1), headersOf(2)]
  return Array.from({ length: n }, (_, i) => ({
    key: `site:visitor-${i % 17}`,
    value: Buffer.from(JSON.stringify({ i, pad: 'x'.repeat(valueBytes) })),
    headers: sets[i % 2]!,
    timestampMs: 1_700_000_000_000 + i,
  }))
}

/** Reads what was sent back as the consumer would: (partition, events in order). */
function unpacked(sent: Sent[]) {
  const byPartition = new Map<number, LogRecord[]>()
  sent.forEach((m, offset) => {
    expect(m.headers[FORMAT_HEADER]).toBe('2')
    for (const e of entriesOf([
      { offset, key: undefined, value: m.value, headers: m.headers, timestampMs: 0 },
    ])) {
      expect(e.problem).toBeUndefined()
      const list = byPartition.get(m.partition) ?? []
      list.push({ key: e.key!, value: e.value!, headers: e.headers, timestampMs: e.timestampMs })
      byPartition.set(m.partition, list)
    }
  })
  return byPartition
}

describe('KafkaBatchingProducer with packing (format 2)', () => {
  it('puts each event in the partition its key picks, in order, one record per flush and partition', async () => {
    const k = recordingKafka()
    const producer = new KafkaBatchingProducer(k.kafka, {
      lingerMs: 5,
      pack: { maxEvents: 1000, maxBytes: 900_000 },
    })
    const written = records(200)
    await Promise.all([
      producer.append('raw', written.slice(0, 120)),
      producer.append('raw', written.slice(120)),
    ])
    await producer.close()
    // One flush: at most one record per partition.
    expect(k.sends).toBe(1)
    expect(new Set(k.sent.map((m) => m.partition)).size).toBe(k.sent.length)
    const partitioner = Partitioners.DefaultPartitioner()
    const partitionMetadata = Array.from({ length: PARTITIONS }, (_, i) => ({
      partitionId: i,
      leader: 0,
      partitionErrorCode: 0,
      replicas: [0],
      isr: [0],
    }))
    const expected = new Map<number, LogRecord[]>()
    for (const r of written) {
      // The partition kafkajs would pick for a format-1 record of this key, and the embedded log's.
      const p = partitioner({ topic: 'raw', partitionMetadata, message: { key: r.key, value: null } })
      expect(p).toBe(partitionForKey(r.key, PARTITIONS))
      expected.set(p, [...(expected.get(p) ?? []), r])
    }
    expect(unpacked(k.sent)).toEqual(expected)
  })

  it("cuts a partition's events into records of at most maxEvents events and maxBytes bytes", async () => {
    for (const pack of [
      { maxEvents: 7, maxBytes: 900_000 },
      { maxEvents: 1000, maxBytes: 2000 },
    ]) {
      const k = recordingKafka()
      const producer = new KafkaBatchingProducer(k.kafka, { lingerMs: 5, pack })
      const written = records(300, 150)
      await producer.append('raw', written)
      await producer.close()
      for (const m of k.sent) {
        expect(m.value.length).toBeLessThanOrEqual(pack.maxBytes)
        expect(
          entriesOf([{ offset: 0, key: undefined, value: m.value, headers: m.headers, timestampMs: 0 }])
            .length,
        ).toBeLessThanOrEqual(pack.maxEvents)
      }
      const all = [...unpacked(k.sent).values()].flat()
      expect(all.length).toBe(written.length)
    }
    // An event larger than the byte bound goes alone.
    const k = recordingKafka()
    const producer = new KafkaBatchingProducer(k.kafka, {
      lingerMs: 5,
      pack: { maxEvents: 10, maxBytes: 1024 },
    })
    await producer.append(
      'raw',
      [...records(1, 3000), ...records(1, 3000)].map((r, i) => ({ ...r, key: 'same', timestampMs: i })),
    )
    await producer.close()
    expect(k.sent).toHaveLength(2)
  })

  it('refuses bounds outside 1..65535 events', () => {
    const k = recordingKafka()
    expect(() => new KafkaBatchingProducer(k.kafka, { pack: { maxEvents: 0, maxBytes: 1000 } })).toThrow(
      RangeError,
    )
    expect(() => new KafkaBatchingProducer(k.kafka, { pack: { maxEvents: 70_000, maxBytes: 1000 } })).toThrow(
      RangeError,
    )
  })
})
