import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { partitionForKey } from '../../core/embedded/partitioner.js'
import type {
  ConsumedRecord,
  EventLogConsumer,
  EventLogWriter,
  LogOffsets,
  LogRecord,
} from '../../core/ports/event-log.js'
import { eventually, uniqueName } from '../helpers/context.js'

/** What the event-log contract needs from one implementation. */
export interface EventLogHarness {
  /** Creates a fresh topic with `partitions` partitions and returns its name. */
  createTopic(partitions: number): Promise<string>
  writer(): EventLogWriter
  consumer(groupId: string, topic: string): EventLogConsumer
  offsets: LogOffsets
  /** Closes everything the harness opened. */
  close(): Promise<void>
}

interface Seen extends ConsumedRecord {
  partition: number
  highWatermark: number
}

/** Starts `consumer` and keeps what it receives. */
async function collect(consumer: EventLogConsumer) {
  const seen: Seen[] = []
  const assignments: number[][] = []
  await consumer.start({
    onBatch: async (batch) => {
      for (const r of batch.records)
        seen.push({ ...r, partition: batch.partition, highWatermark: batch.highWatermark })
    },
    onAssignment: (partitions) => {
      assignments.push(partitions)
    },
  })
  return { seen, assignments }
}

function records(keys: readonly string[], perKey: number, from = 0, timestampMs?: number): LogRecord[] {
  const out: LogRecord[] = []
  for (let i = from; i < from + perKey; i++) {
    for (const key of keys) {
      out.push({
        key,
        value: Buffer.from(JSON.stringify({ key, seq: i })),
        headers: { 'x-seq': String(i), traceparent: `00-${key}-${i}` },
        ...(timestampMs === undefined ? {} : { timestampMs }),
      })
    }
  }
  return out
}

function seqOf(r: ConsumedRecord): { key: string; seq: number } {
  return JSON.parse(String(r.value)) as { key: string; seq: number }
}

const PARTITIONS = 3
const KEYS = Array.from({ length: 10 }, (_, i) => `site-${i % 3}.test:visitor-${i}`)

/**
 * The behaviour every event log (Kafka, embedded) must have: durable appends partitioned by key
 * like Kafka, per-partition offsets, consumer groups with commit and resume, end offsets.
 */
export function eventLogContract(name: string, make: () => Promise<EventLogHarness>): void {
  describe(`event log contract: ${name}`, () => {
    let log: EventLogHarness
    let writer: EventLogWriter
    let topic: string
    const ts = Date.UTC(2024, 4, 1, 12, 0, 0)

    beforeAll(async () => {
      log = await make()
      writer = log.writer()
      topic = await log.createTopic(PARTITIONS)
    })

    afterAll(async () => {
      await writer?.close()
      await log?.close()
    })

    it('starts every partition of a fresh topic at end offset 0', async () => {
      expect(await log.offsets.endOffsets(topic)).toEqual(new Map([0, 1, 2].map((p) => [p, 0])))
    })

    it('stores what an append acknowledged, in the partition Kafka picks for its key, and counts it in the end offsets', async () => {
      // Concurrent appends (as concurrent requests make them) and one with a timestamp hint.
      await Promise.all([
        writer.append(topic, records(KEYS, 2, 0)),
        writer.append(topic, records(KEYS.slice(0, 5), 1, 100, ts)),
      ])
      await writer.append(topic, records(KEYS, 2, 2))
      expect(writer.healthy()).toBe(true)
      const expected = new Map<number, number>([0, 1, 2].map((p) => [p, 0]))
      for (const key of KEYS) {
        const p = partitionForKey(key, PARTITIONS)
        expected.set(p, (expected.get(p) ?? 0) + 4)
      }
      for (const key of KEYS.slice(0, 5)) {
        const p = partitionForKey(key, PARTITIONS)
        expected.set(p, (expected.get(p) ?? 0) + 1)
      }
      expect(await log.offsets.endOffsets(topic)).toEqual(expected)
      expect(await writer.append(topic, [])).toBeUndefined()
    })

    it('delivers every record once to a consumer group, in order per key, with key, value, headers and timestamp', async () => {
      const consumer = log.consumer(uniqueName('g'), topic)
      try {
        const { seen, assignments } = await collect(consumer)
        await eventually(async () => (seen.length >= 45 ? true : undefined), 60_000, '45 records')
        expect(seen).toHaveLength(45)
        expect(assignments.at(-1)).toEqual([0, 1, 2])
        for (const p of [0, 1, 2]) {
          const offsets = seen.filter((r) => r.partition === p).map((r) => r.offset)
          expect(offsets).toEqual(offsets.map((_, i) => i))
        }
        for (const key of KEYS) {
          const mine = seen.filter((r) => r.key === key)
          expect(new Set(mine.map((r) => r.partition))).toEqual(new Set([partitionForKey(key, PARTITIONS)]))
          // Appended: seq 0, 1 and (first five keys) 100 concurrently, then 2, 3.
          const seqs = mine.map((r) => seqOf(r).seq).filter((s) => s !== 100)
          expect(seqs).toEqual([0, 1, 2, 3])
          for (const r of mine) {
            expect(r.headers['x-seq']).toBe(String(seqOf(r).seq))
            expect(r.headers.traceparent).toBe(`00-${key}-${seqOf(r).seq}`)
            expect(r.highWatermark).toBeGreaterThan(r.offset)
            if (seqOf(r).seq === 100) expect(r.timestampMs).toBe(ts)
            else expect(Math.abs(r.timestampMs - Date.now())).toBeLessThan(120_000)
          }
        }
      } finally {
        await consumer.close()
      }
    })

    it('resumes a group from its committed offsets; another group starts from the beginning', async () => {
      const group = uniqueName('g')
      const first = log.consumer(group, topic)
      const ends = await log.offsets.endOffsets(topic)
      const committed = new Map<number, number>()
      try {
        const { seen } = await collect(first)
        await eventually(async () => (seen.length >= 45 ? true : undefined), 60_000, '45 records')
        for (const [p, end] of ends) {
          const at = Math.floor(end / 2)
          committed.set(p, at)
          await first.commit(p, at)
        }
      } finally {
        await first.close()
      }
      await writer.append(topic, records(KEYS, 1, 4))
      const after = await log.offsets.endOffsets(topic)
      const expectedCount = [...after].reduce((n, [p, end]) => n + end - (committed.get(p) ?? 0), 0)
      const second = log.consumer(group, topic)
      try {
        const { seen } = await collect(second)
        await eventually(
          async () => (seen.length >= expectedCount ? true : undefined),
          60_000,
          `${expectedCount} records after the committed offsets`,
        )
        for (const [p, end] of after) {
          const offsets = seen.filter((r) => r.partition === p).map((r) => r.offset)
          const from = committed.get(p) ?? 0
          expect(offsets).toEqual(Array.from({ length: end - from }, (_, i) => from + i))
        }
      } finally {
        await second.close()
      }
      const other = log.consumer(uniqueName('g'), topic)
      try {
        const { seen } = await collect(other)
        await eventually(async () => (seen.length >= 55 ? true : undefined), 60_000, 'all 55 records')
        expect(seen).toHaveLength(55)
      } finally {
        await other.close()
      }
    })

    it('closes repeat-safely: close() twice is one promise, and a closed writer rejects appends as retriable', async () => {
      const w = log.writer()
      await w.append(topic, records(KEYS.slice(0, 1), 1, 200))
      const a = w.close()
      const b = w.close()
      expect(a).toBe(b)
      await a
      await expect(w.append(topic, records(KEYS.slice(0, 1), 1, 201))).rejects.toMatchObject({
        retriable: true,
        statusCode: 503,
      })
      expect(w.healthy()).toBe(false)
      const c = log.consumer(uniqueName('g'), topic)
      expect(c.close()).toBe(c.close())
      await c.close()
    })
  })
}
