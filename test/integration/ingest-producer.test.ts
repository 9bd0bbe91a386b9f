import { randomUUID } from 'node:crypto'
import { createRequire } from 'node:module'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Site } from '../../core/ports/site-store.js'
import { cleanup, testConfig } from '../helpers/context.js'
import { basic, buildTestIngest, migrateForIngest, type TestIngest } from '../helpers/ingest.js'
import { RawTopicReader } from '../helpers/raw-topic.js'

/*
 * Fault injection below the Kafka adapter: the broker writes a produce request but its answer never
 * reaches the client (what happens when a broker stops or a connection drops mid-request). Only this
 * test reaches into kafkajs; it patches the class every kafkajs connection uses (this file runs in
 * its own worker, so no other test sees the patch).
 */
interface BrokerClass {
  prototype: { produce: (this: unknown, request: unknown) => Promise<unknown> }
}
const kafkajsRequire = createRequire(createRequire(import.meta.url).resolve('kafkajs'))
const Broker = kafkajsRequire('./src/broker/index.js') as BrokerClass
const { KafkaJSNonRetriableError } = kafkajsRequire('./index.js') as {
  KafkaJSNonRetriableError: new (message: string) => Error
}
const realProduce = Broker.prototype.produce
let loseNextAnswer = false
Broker.prototype.produce = async function produce(request: unknown) {
  const answer = await realProduce.call(this, request)
  if (loseNextAnswer) {
    loseNextAnswer = false
    throw new KafkaJSNonRetriableError('answer lost (injected by the test)')
  }
  return answer
}

const config = testConfig()
let ingest: TestIngest
let reader: RawTopicReader
let site: Site

beforeAll(async () => {
  await migrateForIngest(config)
  ingest = await buildTestIngest(config)
  site = await ingest.addSite()
  reader = await RawTopicReader.start(config.kafka, config.kafka.topicRaw)
})

afterAll(async () => {
  Broker.prototype.produce = realProduce
  await reader?.close()
  await ingest?.close()
  await cleanup(config)
})

function track(messageId: string) {
  return ingest.app.inject({
    method: 'POST',
    url: '/v1/track',
    headers: { 'content-type': 'application/json', authorization: basic(site.writeKey) },
    // One visitor: same key, same partition, one record each, as a retry of the lost batch would be.
    payload: { event: 'Seq', anonymousId: 'one-visitor', messageId },
  })
}

describe('idempotent producer after a lost answer', () => {
  it('never acknowledges a later event that the broker took for a retry of the lost batch', async () => {
    const first = `seq-${randomUUID()}`
    expect((await track(first)).statusCode).toBe(200)

    const lost = `seq-${randomUUID()}`
    loseNextAnswer = true
    const refused = await track(lost)
    expect(refused.statusCode).toBe(503)
    expect(refused.headers['retry-after']).toBeDefined()

    const after = [`seq-${randomUUID()}`, `seq-${randomUUID()}`, `seq-${randomUUID()}`]
    for (const id of after) expect((await track(id)).statusCode).toBe(200)

    // Every 2xx is in the log. The refused one may be there too (it was written): downstream
    // dedups by messageId.
    await reader.catchUp()
    for (const id of [first, ...after]) expect(reader.byMessageId(id), id).toHaveLength(1)
    expect(reader.byMessageId(lost).length).toBeLessThanOrEqual(1)
  })
})
