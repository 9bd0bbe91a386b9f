import { afterAll } from 'vitest'
import { type GeneratedEvent, generateWorkload } from '../../bench/workload.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import type { TallyConfig } from '../../core/config.js'
import { createKafka } from '../../core/kafka/client.js'
import { KafkaBatchingProducer } from '../../core/kafka/producer.js'
import { migrate } from '../../core/migrate.js'
import type { Site } from '../../core/ports/site-store.js'
import { cleanup, testConfig } from './context.js'
import { lateInRealTime } from './stream.js'

/**
 * What the stream's fault tests (SIGKILLs, rebalances) share: a migrated keyspace and topic of
 * their own with two sites and a producer, closed after the file, and a workload of the last
 * minutes with late events that arrive late in real time.
 */

export interface StreamSetup {
  config: TallyConfig
  sites: Site[]
  cassandra: ReturnType<typeof createCassandraClient>
  producer: KafkaBatchingProducer
}

/** A `setUp` whose setups (with `env` and `partitions`) are all closed after the calling file. */
export function streamSetups(env: Record<string, string>, partitions: number): () => Promise<StreamSetup> {
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
    for (const id of ['one.test', 'two.test'])
      sites.push((await store.create({ siteId: id, domain: id, origins: [] })).site)
    const s: StreamSetup = {
      config,
      sites,
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
