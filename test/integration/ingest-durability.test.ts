import { randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ServicesManager } from '../../app/services/manager.js'
import { loadConfig, type TallyConfig } from '../../core/config.js'
import type { Site } from '../../core/ports/site-store.js'
import { cleanup, envOf, eventually, testConfig } from '../helpers/context.js'
import { basic, buildTestIngest, freePort, migrateForIngest, type TestIngest } from '../helpers/ingest.js'
import { RawTopicReader } from '../helpers/raw-topic.js'

// Shared Cassandra for the sites; a PRIVATE Kafka broker, so stopping it disturbs nobody.
const shared = testConfig()
let runDir: string
let manager: ServicesManager
let config: TallyConfig
let ingest: TestIngest
let site: Site
const APPEND_TIMEOUT_MS = 2000

beforeAll(async () => {
  runDir = await mkdtemp(join(tmpdir(), 'tally-durability-'))
  const kafkaPort = await freePort()
  const controllerPort = await freePort()
  manager = new ServicesManager(
    loadConfig({
      TALLY_SERVICES_RUN_DIR: runDir,
      TALLY_SERVICES_KAFKA_PORT: String(kafkaPort),
      TALLY_SERVICES_KAFKA_CONTROLLER_PORT: String(controllerPort),
    }).services,
  )
  await manager.up(['kafka'])
  config = loadConfig({
    ...envOf(shared),
    KAFKA_BROKERS: `127.0.0.1:${kafkaPort}`,
    LOG_LEVEL: 'silent',
    TALLY_APPEND_TIMEOUT_MS: String(APPEND_TIMEOUT_MS),
    TALLY_RATE_LIMIT_CLIENT: '0',
    TALLY_RATE_LIMIT_SITE: '0',
  })
  await migrateForIngest(config)
  ingest = await buildTestIngest(config)
  site = await ingest.addSite()
})

afterAll(async () => {
  await ingest?.close()
  await manager?.down(['kafka'], { purge: true })
  if (runDir) await rm(runDir, { recursive: true, force: true })
  await cleanup(shared)
})

interface Outcome {
  ids: string[]
  startedAt: number
  endedAt: number
  status: number
  retryAfter: string | undefined
  code: unknown
}

/** Concurrent single-event and small-batch requests until `stop()`; every answer is recorded. */
function startLoad(workers: number): { outcomes: Outcome[]; stop: () => Promise<void> } {
  const outcomes: Outcome[] = []
  let stopping = false
  const worker = async (w: number) => {
    for (let i = 0; !stopping; i++) {
      const n = 1 + (i % 3)
      const batch = Array.from({ length: n }, (_, j) => ({
        type: 'track',
        event: 'Durable',
        anonymousId: `w${w}`,
        messageId: `dur-${w}-${i}-${j}-${randomUUID()}`,
      }))
      const startedAt = Date.now()
      const res = await ingest.app.inject({
        method: 'POST',
        url: n === 1 ? '/v1/track' : '/v1/batch',
        headers: { 'content-type': 'application/json', authorization: basic(site.writeKey) },
        payload: JSON.stringify(n === 1 ? batch[0] : { batch }),
      })
      const retryAfter = res.headers['retry-after']
      outcomes.push({
        ids: batch.map((e) => e.messageId),
        startedAt,
        endedAt: Date.now(),
        status: res.statusCode,
        retryAfter: retryAfter === undefined ? undefined : String(retryAfter),
        code: res.statusCode === 200 ? undefined : (res.json() as { code?: unknown }).code,
      })
    }
  }
  const all = Promise.all(Array.from({ length: workers }, (_, w) => worker(w)))
  return {
    outcomes,
    stop: async () => {
      stopping = true
      await all
    },
  }
}

const acked = (outcomes: Outcome[]) => outcomes.filter((o) => o.status >= 200 && o.status < 300)

describe('Kafka stopped mid-load', () => {
  it('answers 2xx only for logged events, 503 + Retry-After within a bounded time while down, /readyz follows, and recovers', async () => {
    expect((await ingest.app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200)
    const load = startLoad(8)
    let downAt = 0
    try {
      await eventually(
        async () => (acked(load.outcomes).length >= 300 ? true : undefined),
        30_000,
        '300 acknowledged requests',
      )
      await manager.down(['kafka'])
      downAt = Date.now()
      // While the broker is gone: refusals, each within the append timeout, each with Retry-After.
      await eventually(
        async () =>
          load.outcomes.filter((o) => o.startedAt > downAt && o.status === 503).length >= 20
            ? true
            : undefined,
        30_000,
        '503 answers while Kafka is down',
      )
      await eventually(
        async () =>
          (await ingest.app.inject({ method: 'GET', url: '/readyz' })).statusCode === 503 ? true : undefined,
        30_000,
        '/readyz 503 while Kafka is down',
      )
      expect((await ingest.app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200)
    } finally {
      await load.stop()
    }
    const during = load.outcomes.filter((o) => o.startedAt > downAt)
    expect(during.length).toBeGreaterThan(0)
    for (const o of during) {
      // Nothing can be acknowledged by a broker that is not running.
      expect(o.status).toBe(503)
      expect(o.code).toBe('TALLY_ERR_LOG_UNAVAILABLE')
      expect(Number(o.retryAfter)).toBeGreaterThanOrEqual(1)
      expect(o.endedAt - o.startedAt).toBeLessThan(APPEND_TIMEOUT_MS + 1500)
    }

    // Back up, without traffic: readiness must return by itself, or a balancer would never send
    // this instance traffic again.
    await manager.up(['kafka'])
    await eventually(
      async () =>
        (await ingest.app.inject({ method: 'GET', url: '/readyz' })).statusCode === 200 ? true : undefined,
      30_000,
      '/readyz 200 after Kafka returned',
    )
    const again = startLoad(4)
    try {
      await eventually(
        async () => (acked(again.outcomes).length >= 50 ? true : undefined),
        30_000,
        'writes after recovery',
      ).catch((err: Error) => {
        const seen = new Map<string, number>()
        for (const o of again.outcomes)
          seen.set(`${o.status} ${String(o.code)}`, (seen.get(`${o.status} ${String(o.code)}`) ?? 0) + 1)
        throw new Error(`${err.message}; answers after recovery: ${JSON.stringify([...seen])}`)
      })
    } finally {
      await again.stop()
    }

    const ackedIds = [...load.outcomes, ...again.outcomes].flatMap((o) => (o.status === 200 ? o.ids : []))
    const reader = await RawTopicReader.start(config.kafka, config.kafka.topicRaw)
    try {
      await reader.catchUp(60_000)
      const missing = ackedIds.filter((id) => reader.byMessageId(id).length === 0)
      expect(
        missing,
        `${missing.length} of ${ackedIds.length} acknowledged events are not in the log`,
      ).toEqual([])
      for (const m of reader.messages) expect(m.headers['tally-site-id']).toBe(site.siteId)
    } finally {
      await reader.close()
    }
  })
})
