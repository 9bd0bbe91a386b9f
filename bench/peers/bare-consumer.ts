import { Kafka, logLevel } from 'kafkajs'
import { entriesOf, FORMAT_HEADER } from '../../core/record/packed.js'

/**
 * The peer of the stream throughput benchmark: a bare kafkajs consumer group member that reads the
 * same topic with the same fetch settings as a Tally stream worker and does the least any consumer
 * of the raw log must do: decode every record (kafkajs) and parse its JSON value. No validation, no
 * dedup, no aggregation, no writes. Its events/s is the ceiling the library and this machine put on
 * one Node process, so Tally's figure is read against it.
 *
 * Run as a job by the bench (environment: KAFKA_BROKERS, TOPIC, GROUP, EXPECT = events in the
 * topic, TIMEOUT_MS); prints one line when it has read EXPECT records:
 * `{"records":…,"pageviews":…,"firstRecordMs":…,"doneMs":…}` (times from performance.now()).
 */

const brokers = (process.env.KAFKA_BROKERS ?? '127.0.0.1:9092').split(',')
const topic = process.env.TOPIC
const groupId = process.env.GROUP
const expect = Number(process.env.EXPECT)
const timeoutMs = Number(process.env.TIMEOUT_MS ?? 300_000)
if (!topic || !groupId || !Number.isInteger(expect) || expect <= 0) {
  process.stderr.write('bare-consumer: set TOPIC, GROUP and EXPECT (a positive integer)\n')
  process.exit(2)
}

const kafka = new Kafka({ clientId: 'tally-bench-bare-consumer', brokers, logLevel: logLevel.ERROR })
// The settings of core/kafka/consumer.ts, so the difference is the work done per record.
const consumer = kafka.consumer({ groupId, maxBytesPerPartition: 4 * 1024 * 1024 })

let records = 0
let pageviews = 0
let firstRecordMs: number | undefined
let finished = false
let reachedEnd: (line: Record<string, unknown>) => void = () => {}
const result = new Promise<Record<string, unknown>>((resolve) => {
  reachedEnd = resolve
})

const timer = setTimeout(() => {
  process.stderr.write(`bare-consumer: read ${records} of ${expect} records within ${timeoutMs} ms\n`)
  process.exit(1)
}, timeoutMs)

await consumer.connect()
await consumer.subscribe({ topic, fromBeginning: true })
await consumer.run({
  autoCommit: false,
  eachBatchAutoResolve: false,
  partitionsConsumedConcurrently: 3,
  eachBatch: async ({ batch, resolveOffset }) => {
    if (finished) return
    firstRecordMs ??= performance.now()
    for (const m of batch.messages) {
      const headers: Record<string, string> = {}
      for (const k in m.headers) headers[k] = String(m.headers[k])
      // A packed record (format 2) is read as its events, as the worker reads it.
      const values =
        headers[FORMAT_HEADER] === undefined
          ? [m.value]
          : entriesOf([
              {
                offset: Number(m.offset),
                key: undefined,
                value: m.value ?? undefined,
                headers,
                timestampMs: 0,
              },
            ]).map((e) => e.value)
      for (const value of values) {
        // The parsed value is used, so the parse cannot be skipped as dead code.
        const event = value ? (JSON.parse(value.toString('utf8')) as { type?: unknown }) : undefined
        if (event?.type === 'page') pageviews++
        records++
      }
    }
    if (batch.messages.length > 0) resolveOffset(batch.lastOffset())
    if (records >= expect) {
      finished = true
      reachedEnd({ records, pageviews, firstRecordMs, doneMs: performance.now() })
    }
  },
})
// Outside eachBatch, so disconnecting (leaving the group, which the bench then deletes) does not
// wait for the batch that is waiting for it.
const line = await result
clearTimeout(timer)
await consumer.disconnect()
process.stdout.write(`${JSON.stringify(line)}\n`)
process.exit(0)
