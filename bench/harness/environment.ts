import { randomBytes } from 'node:crypto'
import { mkdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Client } from 'cassandra-driver'
import { type ServiceName, ServicesManager } from '../../app/services/manager.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { loadConfig, type TallyConfig } from '../../core/config.js'
import { createKafka } from '../../core/kafka/client.js'
import { migrate } from '../../core/migrate.js'
import { entriesOf } from '../../core/record/packed.js'

/**
 * What one bench run owns: a keyspace `tally_bench_<run>`, topics and consumer groups named
 * `tally_bench_<run>_<scenario>…`, a temporary folder for logs and files, and the local servers it
 * had to start. `close()` removes all of it.
 */

const BENCH_NAME = /^tally_bench_[a-z0-9_][a-z0-9_-]*$/

/** Refuses to drop anything whose name is not a bench name (a typo must not drop `tally`). Hyphens: internal topics of the Kafka Streams peer. */
export function assertBenchName(name: string): void {
  if (!BENCH_NAME.test(name))
    throw new Error(`refusing to remove ${name}: only tally_bench_* names are the bench's`)
}

export interface SiteKeys {
  siteId: string
  writeKey: string
  readToken: string
}

export interface Scenario {
  /** Environment for `tally <role>` child processes of this scenario. */
  env: Record<string, string>
  /** The same, parsed: what the bench uses to read Kafka and Cassandra itself. */
  config: TallyConfig
}

export class BenchEnvironment {
  readonly runId: string
  readonly keyspace: string
  readonly dir: string
  readonly logDir: string
  private readonly base: TallyConfig
  private readonly manager: ServicesManager
  private startedServices: ServiceName[] = []
  private readonly topics = new Set<string>()
  private readonly groups = new Set<string>()
  private migrated = false
  private cassandra: Client | undefined

  constructor(private readonly say: (line: string) => void) {
    this.runId = `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`
    this.keyspace = `tally_bench_${this.runId}`
    this.dir = join(tmpdir(), `tally-bench-${this.runId}`)
    this.logDir = join(this.dir, 'logs')
    // KAFKA_BROKERS / CASSANDRA_CONTACT_POINTS from the environment are honoured, as everywhere.
    this.base = loadConfig(process.env)
    this.manager = new ServicesManager(this.base.services, (line) => say(`[services] ${line}`))
  }

  async init(): Promise<void> {
    await mkdir(this.logDir, { recursive: true })
  }

  /**
   * Starts the local Kafka/Cassandra that are needed, not configured and not running (as the
   * integration tests' global setup does); `close()` stops only those.
   */
  async ensureServices(): Promise<void> {
    const wanted: ServiceName[] = []
    if (!this.base.kafka.configured) wanted.push('kafka')
    if (!this.base.cassandra.configured) wanted.push('cassandra')
    if (wanted.length === 0) return
    const before = await this.manager.status()
    const down = wanted.filter((name) => before.find((s) => s.name === name)?.state === 'down')
    await this.manager.up(wanted)
    this.startedServices.push(...down.filter((n) => !this.startedServices.includes(n)))
  }

  /** Versions of the servers (for the report). */
  async serviceVersions(): Promise<Record<string, string>> {
    const out: Record<string, string> = {}
    for (const s of await this.manager.status()) if (s.version) out[s.name] = s.version
    if (this.base.kafka.configured) out.kafka = `configured (${this.base.kafka.brokers.join(',')})`
    if (this.base.cassandra.configured)
      out.cassandra = `configured (${this.base.cassandra.contactPoints.join(',')})`
    return out
  }

  /** Keyspace (migrated once per run), topics and consumer group of one scenario. */
  async scenario(name: string, extraEnv: Record<string, string> = {}): Promise<Scenario> {
    const prefix = `${this.keyspace}_${name}`
    const env: Record<string, string> = {
      KAFKA_BROKERS: this.base.kafka.brokers.join(','),
      CASSANDRA_CONTACT_POINTS: this.base.cassandra.contactPoints.join(','),
      CASSANDRA_LOCAL_DC: this.base.cassandra.localDataCenter,
      CASSANDRA_KEYSPACE: this.keyspace,
      TALLY_TOPIC_RAW: `${prefix}_raw`,
      TALLY_TOPIC_DEAD_LETTER: `${prefix}_dlq`,
      TALLY_TOPIC_PROGRESS: `${prefix}_progress`,
      TALLY_STREAM_GROUP: `${prefix}_aggregate`,
      TALLY_DATA_DIR: join(this.dir, 'data', name),
      // The bench measures the pipeline, not the per-site and per-client limits.
      TALLY_RATE_LIMIT_SITE: '0',
      TALLY_RATE_LIMIT_CLIENT: '0',
      ...extraEnv,
    }
    for (const key of ['CASSANDRA_USERNAME', 'CASSANDRA_PASSWORD', 'TALLY_JAVA'] as const) {
      const v = process.env[key]
      if (v) env[key] = v
    }
    const config = loadConfig(env)
    this.topics.add(config.kafka.topicRaw)
    this.topics.add(config.kafka.topicDeadLetter)
    this.topics.add(config.kafka.topicProgress)
    this.groups.add(config.stream.group)
    // The first call creates the keyspace and tables; later ones only add topics.
    const result = await migrate(config)
    if (!this.migrated) {
      this.migrated = true
      this.say(`keyspace ${this.keyspace}: ${result.cassandra.applied.length} migrations applied`)
    }
    return { env, config }
  }

  /** A consumer group a scenario's process joins (deleted by `close()`); must be a bench name. */
  trackGroup(name: string): string {
    assertBenchName(name)
    this.groups.add(name)
    return name
  }

  /** A topic a scenario's process created (deleted by `close()`); must be a bench name. */
  trackTopic(name: string): string {
    assertBenchName(name)
    this.topics.add(name)
    return name
  }

  /** The names of the topics on the brokers that start with `prefix` (internal topics of a peer). */
  async topicsStartingWith(config: TallyConfig, prefix: string): Promise<string[]> {
    const admin = createKafka(config.kafka).admin()
    await admin.connect()
    try {
      return (await admin.listTopics()).filter((t) => t.startsWith(prefix))
    } finally {
      await admin.disconnect()
    }
  }

  /** One Cassandra session on the bench keyspace (closed by `close()`). */
  async client(config: TallyConfig): Promise<Client> {
    if (!this.cassandra) {
      this.cassandra = createCassandraClient(config.cassandra, { keyspace: this.keyspace })
      await this.cassandra.connect()
    }
    return this.cassandra
  }

  async createSites(config: TallyConfig, siteIds: readonly string[]): Promise<Map<string, SiteKeys>> {
    const store = new CassandraSiteStore(await this.client(config))
    const out = new Map<string, SiteKeys>()
    for (const siteId of siteIds) {
      const { site, readToken } = await store.create({ siteId, domain: `${siteId}.example`, origins: [] })
      out.set(siteId, { siteId, writeKey: site.writeKey, readToken })
    }
    return out
  }

  /** Records in a topic: the sum of its partitions' end offsets (the topics are the run's own, never compacted). */
  async topicRecords(config: TallyConfig): Promise<number> {
    const admin = createKafka(config.kafka).admin()
    await admin.connect()
    try {
      const offsets = await admin.fetchTopicOffsets(config.kafka.topicRaw)
      return offsets.reduce((n, o) => n + Number(o.high) - Number(o.low), 0)
    } finally {
      await admin.disconnect()
    }
  }

  /**
   * Events in the raw topic, read from its start: a packed record (format 2) counts its events
   * (core/record/packed.ts), a format-1 record one.
   */
  async topicEvents(config: TallyConfig): Promise<number> {
    const ends = await this.topicEnds(config)
    const left = new Map([...ends].filter(([, end]) => end > 0))
    if (left.size === 0) return 0
    const kafka = createKafka(config.kafka)
    const groupId = `tally_bench_count_${randomBytes(4).toString('hex')}`
    const consumer = kafka.consumer({ groupId })
    let events = 0
    await consumer.connect()
    try {
      await consumer.subscribe({ topic: config.kafka.topicRaw, fromBeginning: true })
      await new Promise<void>((resolve, reject) => {
        consumer
          .run({
            eachBatch: async ({ batch }) => {
              const records = batch.messages.map((m) => {
                const headers: Record<string, string> = {}
                for (const k in m.headers) headers[k] = String(m.headers[k])
                return {
                  offset: Number(m.offset),
                  key: undefined,
                  value: m.value ?? undefined,
                  headers,
                  timestampMs: 0,
                }
              })
              events += entriesOf(records).length
              const last = records.at(-1)
              if (last && last.offset + 1 >= (left.get(batch.partition) ?? 0)) left.delete(batch.partition)
              if (left.size === 0) resolve()
            },
          })
          .catch(reject)
      })
    } finally {
      await consumer.disconnect()
      const admin = kafka.admin()
      await admin.connect()
      await admin.deleteGroups([groupId]).catch(() => undefined)
      await admin.disconnect()
    }
    return events
  }

  /** End offset of each partition of the scenario's raw topic. */
  async topicEnds(config: TallyConfig): Promise<Map<number, number>> {
    const admin = createKafka(config.kafka).admin()
    await admin.connect()
    try {
      return new Map(
        (await admin.fetchTopicOffsets(config.kafka.topicRaw)).map((o) => [o.partition, Number(o.high)]),
      )
    } finally {
      await admin.disconnect()
    }
  }

  /** Drops the keyspace, deletes topics and consumer groups, stops the servers this run started. */
  async close(options: { keepServices: boolean; keepFiles: boolean }): Promise<void> {
    const problems: string[] = []
    if (this.cassandra) {
      await this.cassandra
        .shutdown()
        .catch((err: Error) => problems.push(`cassandra session: ${err.message}`))
      this.cassandra = undefined
    }
    if (this.migrated) {
      try {
        assertBenchName(this.keyspace)
        const client = createCassandraClient(this.base.cassandra, { readTimeoutMs: 60_000 })
        try {
          await client.execute(`DROP KEYSPACE IF EXISTS ${this.keyspace}`)
        } finally {
          await client.shutdown()
        }
      } catch (err) {
        problems.push(`keyspace ${this.keyspace}: ${(err as Error).message}`)
      }
    }
    if (this.topics.size > 0) {
      const admin = createKafka(this.base.kafka).admin()
      try {
        await admin.connect()
        const existing = new Set(await admin.listTopics())
        const mine = [...this.topics].filter((t) => existing.has(t))
        for (const t of mine) assertBenchName(t)
        if (mine.length > 0) await admin.deleteTopics({ topics: mine })
        const groups = new Set((await admin.listGroups()).groups.map((g) => g.groupId))
        for (const g of [...this.groups].filter((g) => groups.has(g))) {
          assertBenchName(g)
          // A group left moments ago may still be settling; an empty group is harmless and expires
          // with the broker's offsets retention, so a refusal here is only worth a line.
          await admin
            .deleteGroups([g])
            .catch((err: Error) => this.say(`consumer group ${g} not deleted: ${err.message}`))
        }
      } catch (err) {
        problems.push(`kafka topics/groups: ${(err as Error).message}`)
      } finally {
        await admin.disconnect().catch(() => undefined)
      }
    }
    if (!options.keepFiles) await rm(this.dir, { recursive: true, force: true })
    if (this.startedServices.length > 0 && !options.keepServices) {
      this.say(`stopping the servers this run started: ${this.startedServices.join(', ')}`)
      await this.manager.down(this.startedServices)
    }
    if (problems.length > 0) throw new Error(`cleanup incomplete:\n  ${problems.join('\n  ')}`)
  }
}
