import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ServicesManager } from '../../app/services/manager.js'
import { generateWorkload, truthOf } from '../../bench/workload.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { loadConfig } from '../../core/config.js'
import { createKafka } from '../../core/kafka/client.js'
import { KafkaBatchingProducer } from '../../core/kafka/producer.js'
import { createLogger } from '../../core/log.js'
import { migrate } from '../../core/migrate.js'
import type { Site } from '../../core/ports/site-store.js'
import { cleanup, envOf, testConfig } from '../helpers/context.js'
import { spawnRole, waitForLog } from '../helpers/processes.js'
import { compareWithTruth, feed, ingestApp, lateInRealTime, waitCaughtUp } from '../helpers/stream.js'

// A private Cassandra node (own ports and data folder), so stopping it disturbs no other test.
const runDir = await mkdtemp(join(tmpdir(), 'tally-outage-'))
const privateServices = loadConfig({
  TALLY_SERVICES_RUN_DIR: runDir,
  TALLY_SERVICES_CASSANDRA_PORT: '19042',
  TALLY_SERVICES_CASSANDRA_STORAGE_PORT: '17000',
  TALLY_SERVICES_CASSANDRA_JMX_PORT: '17199',
}).services
const manager = new ServicesManager(privateServices, (line) => process.stdout.write(`[outage] ${line}\n`))
const STREAM_ENV = {
  TALLY_FLUSH_INTERVAL_MS: '150',
  TALLY_GRACE_MS: '300000',
  TALLY_STREAM_SESSION_TIMEOUT_MS: '10000',
}
const config = testConfig({
  ...STREAM_ENV,
  CASSANDRA_CONTACT_POINTS: '127.0.0.1:19042',
  KAFKA_PARTITIONS: '3',
})
const logger = createLogger('silent')
const producer = new KafkaBatchingProducer(createKafka(config.kafka))
const sites: Site[] = []

beforeAll(async () => {
  await manager.up(['cassandra'])
  await migrate(config)
  const client = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await client.connect()
  for (const id of ['outage.test'])
    sites.push((await new CassandraSiteStore(client).create({ siteId: id, domain: id, origins: [] })).site)
  await client.shutdown()
}, 300_000)

/** The worker of the test, stopped here if the test failed before it stopped it. */
let running: ReturnType<typeof spawnRole> | undefined

afterAll(async () => {
  if (running && running.child.exitCode === null && running.child.signalCode === null)
    running.child.kill('SIGKILL')
  await producer.close()
  await manager.up(['cassandra'])
  await cleanup(config)
  await manager.down(['cassandra'], { purge: true, graceMs: 5000 })
  await rm(runDir, { recursive: true, force: true })
}, 300_000)

describe('stream worker while Cassandra stops and restarts', () => {
  it('pauses, retries with backoff, resumes, and every number stays exact', async () => {
    const now = Date.now()
    const w = generateWorkload({
      seed: 99,
      sites: sites.map((s) => s.siteId),
      events: 3000,
      start: new Date(now - 4 * 60_000),
      spanMs: 3 * 60_000,
    })
    const events = lateInRealTime(w.events, 20 * 60_000)
    const worker = spawnRole('stream', { ...envOf(config), ...STREAM_ENV }, 'stream-outage')
    running = worker
    await waitForLog(worker, /partitions assigned/)
    const app = await ingestApp(config, producer, sites, logger)
    const half = Math.floor(events.length / 2)
    await feed(app, events.slice(0, half), () => sites[0]!.writeKey)
    await manager.down(['cassandra'], { graceMs: 20_000 })
    // Events keep arriving in Kafka while the store is down.
    await feed(app, events.slice(half), () => sites[0]!.writeKey)
    await waitForLog(worker, /failed; retrying/, 60_000)
    await manager.up(['cassandra'])
    const client = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
    await client.connect()
    try {
      await waitCaughtUp(config, client, 180_000)
      worker.child.kill('SIGTERM')
      expect((await worker.exited).code).toBe(0)
      const truth = truthOf(
        events.filter((e) => !e.isLate),
        sites.map((s) => s.siteId),
      )
      const mismatches = await compareWithTruth(
        client,
        config.stream.hllPrecision,
        truth,
        sites.map((s) => s.siteId),
        now - 2 * 86_400_000,
        now + 86_400_000,
        events.filter((e) => !e.isLate),
      )
      expect(mismatches).toEqual([])
    } finally {
      await client.shutdown()
      await app.close()
    }
  })
})
