import { readFileSync } from 'node:fs'
import { Kafka, logLevel, type Message } from 'kafkajs'

/**
 * The Kafka peer of the ingest batch benchmark: the durable write alone, with nothing of HTTP or of
 * Tally's work. One kafkajs producer (idempotent, acks=all, as ingest's) sends the events of the
 * bench's /v1/batch bodies, one send per body, CONCURRENCY sends at a time, each event a record
 * keyed site:anonymousId with the three headers ingest writes. Its events/s is the ceiling kafkajs
 * and this machine put on one process that must wait for Kafka's acknowledgement.
 *
 * Run as a job by the bench (environment: KAFKA_BROKERS, TOPIC, BODIES = a file with one /v1/batch
 * body per line, SITE, SENDS = bodies to send in all, CONCURRENCY); prints
 * `{"events":…,"sends":…,"seconds":…}` when every send was acknowledged.
 */

const brokers = (process.env.KAFKA_BROKERS ?? '127.0.0.1:9092').split(',')
const topic = process.env.TOPIC
const site = process.env.SITE ?? 'bench'
const sends = Number(process.env.SENDS)
const concurrency = Number(process.env.CONCURRENCY ?? 8)
if (!topic || !process.env.BODIES || !Number.isInteger(sends) || sends <= 0) {
  process.stderr.write('bare-producer: set TOPIC, BODIES and SENDS (a positive integer)\n')
  process.exit(2)
}

interface Payload {
  anonymousId?: string
  userId?: string
  messageId?: string
}

const headers = {
  traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
  'tally-schema-version': '1',
  'tally-site-id': site,
}
// Messages are made per send, as a server would from each body it receives.
const bodies = readFileSync(process.env.BODIES, 'utf8').split('\n').filter(Boolean)
const toMessages = (body: string): Message[] =>
  (JSON.parse(body) as { batch: Payload[] }).batch.map((e) => ({
    key: `${site}:${e.anonymousId ?? e.userId ?? e.messageId}`,
    value: JSON.stringify(e),
    headers,
  }))

const kafka = new Kafka({ clientId: 'tally-bench-bare-producer', brokers, logLevel: logLevel.ERROR })
const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false })
await producer.connect()
// A first send opens the connections and fetches the metadata; it is not timed.
await producer.send({ topic, acks: -1, messages: toMessages(bodies[0]!) })

let next = 0
let events = 0
const started = performance.now()
await Promise.all(
  Array.from({ length: concurrency }, async () => {
    while (next < sends) {
      const messages = toMessages(bodies[next++ % bodies.length]!)
      await producer.send({ topic, acks: -1, messages })
      events += messages.length
    }
  }),
)
const seconds = (performance.now() - started) / 1000
process.stdout.write(`${JSON.stringify({ events, sends, seconds })}\n`)
await producer.disconnect()
