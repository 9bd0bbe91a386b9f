import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startQuery, startStream } from '../../app/start.js'
import { generateWorkload } from '../../bench/workload.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { createKafka } from '../../core/kafka/client.js'
import { KafkaBatchingProducer } from '../../core/kafka/producer.js'
import { createLogger } from '../../core/log.js'
import { migrate } from '../../core/migrate.js'
import type { Site } from '../../core/ports/site-store.js'
import type { RunningQuery } from '../../query/role.js'
import type { RunningStream } from '../../stream/role.js'
import { cleanup, eventually, testConfig } from '../helpers/context.js'
import { feed, ingestApp } from '../helpers/stream.js'

/**
 * Progress notices end to end on real Kafka and Cassandra: the stream worker announces each
 * checkpoint it writes, and a query role that hears them re-reads the data version then. Here
 * the role would otherwise keep a version, and an answer, for 10 minutes
 * (TALLY_QUERY_NOTIFIED_VERSION_MAX_AGE_MS, TALLY_QUERY_CACHE_MAX_AGE_MS), so an answer that follows
 * a flush within seconds was refreshed by a notice.
 */

const config = testConfig({
  KAFKA_PARTITIONS: '2',
  TALLY_QUERY_VERSION_MAX_AGE_MS: '100',
  TALLY_QUERY_NOTIFIED_VERSION_MAX_AGE_MS: '600000',
  // Nor is an answer dropped for its age meanwhile: only a new version can change it.
  TALLY_QUERY_CACHE_MAX_AGE_MS: '600000',
  TALLY_FLUSH_INTERVAL_MS: '200',
})
const logger = createLogger('silent')
const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
const producer = new KafkaBatchingProducer(createKafka(config.kafka), { lingerMs: 1 })
let site: Site
let readToken: string
let stream: RunningStream | undefined
let query: RunningQuery | undefined

beforeAll(async () => {
  await migrate(config)
  await cassandra.connect()
  const created = await new CassandraSiteStore(cassandra).create({
    siteId: 'notices.test',
    domain: 'notices.test',
    origins: [],
  })
  site = created.site
  readToken = created.readToken
  stream = await startStream(config, logger, { port: 0 })
  query = await startQuery(config, logger, { port: 0 })
})

afterAll(async () => {
  await query?.close()
  await stream?.close()
  await producer.close()
  await cassandra.shutdown()
  await cleanup(config)
})

async function metric(name: string): Promise<number> {
  const text = await (await fetch(`${query!.url}/metrics`)).text()
  const line = text.split('\n').find((l) => l.startsWith(`${name} `))
  return line === undefined ? Number.NaN : Number(line.slice(name.length + 1))
}

async function eventsCounted(): Promise<number> {
  const res = await fetch(`${query!.url}/v1/stats/aggregate?site=${site.siteId}&period=2d&metrics=events`, {
    headers: { authorization: `Bearer ${readToken}` },
  })
  expect(res.status).toBe(200)
  return ((await res.json()) as { results: { events: { value: number } } }).results.events.value
}

describe('progress notices: stream worker → query role', () => {
  it('a role hearing notices shows each flush within seconds, though it would keep a version for 10 minutes', async () => {
    await eventually(
      async () => ((await metric('tally_query_progress_notices_live')) === 1 ? true : undefined),
      30_000,
      'the query role to hear the progress topic',
    )
    const ingest = await ingestApp(config, producer, [site], logger)
    const now = Date.now()
    const { events } = generateWorkload({
      seed: 11,
      sites: [site.siteId],
      events: 40,
      start: new Date(now - 60_000),
      spanMs: 50_000,
      lateShare: 0,
      duplicateShare: 0,
      botShare: 0,
      outOfOrderShare: 0,
    })
    // Nothing counted yet: this version is now the one the role keeps.
    expect(await eventsCounted()).toBe(0)
    expect(await eventsCounted()).toBe(0)
    const heardBefore = await metric('tally_query_progress_notices_total')

    let sent = 0
    for (const half of [events.slice(0, 20), events.slice(20)]) {
      sent += await feed(ingest, half, () => site.writeKey)
      const seen = await eventually(
        async () => {
          const n = await eventsCounted()
          return n >= sent ? n : undefined
        },
        15_000,
        `${sent} events in the answer`,
      )
      expect(seen).toBe(sent)
    }
    expect(await metric('tally_query_progress_notices_total')).toBeGreaterThan(heardBefore)
    // The bus was heard throughout, so no answer came from the 100 ms polling fallback.
    expect(await metric('tally_query_progress_notices_live')).toBe(1)
    await ingest.close()
  })
})
