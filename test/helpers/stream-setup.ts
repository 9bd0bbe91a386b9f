import { afterAll } from 'vitest'
import { type GeneratedEvent, generateWorkload } from '../../bench/workload.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import type { TallyConfig } from '../../core/config.js'
import { createKafka } from '../../core/kafka/client.js'
import { KafkaBatchingProducer } from '../../core/kafka/producer.js'
import { createLogger } from '../../core/log.js'
import { migrate } from '../../core/migrate.js'
import type { Site } from '../../core/ports/site-store.js'
import { cleanup, testConfig } from './context.js'
import { feed, ingestApp, lateInRealTime } from './stream.js'

/**
 * What the stream's fault tests (SIGKILLs, rebalances) share: a migrated keyspace and topic of
 * their own with two sites and a producer, closed after the file, a workload of the last minutes
 * with late events that arrive late in real time, and a feed in chunks with pauses.
 */

export interface StreamSetup {
  config: TallyConfig
  sites: Site[]
  /** Each site's read token, by site id. */
  readTokens: Map<string, string>
  cassandra: ReturnType<typeof createCassandraClient>
  producer: KafkaBatchingProducer
}

/** A `setUp` whose setups (with `env`, `partitions`, `siteIds`) are all closed after the calling file. */
export function streamSetups(
  env: Record<string, string>,
  partitions: number,
  siteIds: readonly string[] = ['one.test', 'two.test'],
): () => Promise<StreamSetup> {
  const setups: StreamSetup[] = []
  afterAll(async () => {
    for (const s of setups) {
      await s.producer.close()
      await s.cassandra.shutdown()
      await cleanup(s.config)
    }
  })
  return async () => {
    const config = testConfig({ ...env, KAFKA_PARTITIONS: String(partitions) })
    await migrate(config)
    const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
    await cassandra.connect()
    const store = new CassandraSiteStore(cassandra)
    const sites: Site[] = []
    const readTokens = new Map<string, string>()
    for (const id of siteIds) {
      const created = await store.create({ siteId: id, domain: id, origins: [] })
      sites.push(created.site)
      readTokens.set(id, created.readToken)
    }
    const s: StreamSetup = {
      config,
      sites,
      readTokens,
      cassandra,
      producer: new KafkaBatchingProducer(createKafka(config.kafka), {
        ...(config.ingest.pack ? { pack: config.ingest.pack } : {}),
      }),
    }
    setups.push(s)
    return s
  }
}

/** `events` over the last 4 minutes of the sites, 2 % of them 20 minutes late in real time. */
export function recentWorkload(sites: readonly Site[], seed: number, events: number): GeneratedEvent[] {
  const now = Date.now()
  const w = generateWorkload({
    seed,
    sites: sites.map((s) => s.siteId),
    events,
    start: new Date(now - 4 * 60_000),
    spanMs: 3 * 60_000,
    lateShare: 0.02,
    lateByMs: 20 * 60_000,
  })
  return lateInRealTime(w.events, 20 * 60_000)
}

/**
 * Feeds the events through an ingest app in `chunks` with `pauseMs` between them (`batchSize`
 * events per request), so workers are busy while a test disturbs them.
 */
export async function feedSlowly(
  s: StreamSetup,
  events: readonly GeneratedEvent[],
  chunks: number,
  pauseMs: number,
  batchSize?: number,
): Promise<void> {
  const app = await ingestApp(s.config, s.producer, s.sites, createLogger('silent'))
  const keyOf = (id: string) => s.sites.find((x) => x.siteId === id)!.writeKey
  const size = Math.ceil(events.length / chunks)
  for (let i = 0; i < events.length; i += size) {
    await feed(app, events.slice(i, i + size), keyOf, batchSize)
    await new Promise((r) => setTimeout(r, pauseMs))
  }
  await app.close()
}
