import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { loadConfig } from '../../core/config.js'
import { cleanup, envOf, eventually, testConfig, uniqueName } from '../helpers/context.js'
import {
  basic,
  buildTestIngest,
  freePort,
  metricValue,
  migrateForIngest,
  type TestIngest,
} from '../helpers/ingest.js'
import { RawTopicReader } from '../helpers/raw-topic.js'

const config = testConfig()
let reader: RawTopicReader

beforeAll(async () => {
  await migrateForIngest(config)
  reader = await RawTopicReader.start(config.kafka, config.kafka.topicRaw)
})

afterAll(async () => {
  await reader?.close()
  await cleanup(config)
})

function baseEnv(): Record<string, string> {
  return { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...envOf(config) }
}

function tally(args: string[]) {
  const res = spawnSync(process.execPath, ['bin/tally.js', ...args], {
    encoding: 'utf8',
    env: baseEnv(),
    timeout: 60_000,
  })
  return { code: res.status, stdout: res.stdout, stderr: res.stderr }
}

describe('tally sites (CLI) and ingest', () => {
  let ingest: TestIngest

  beforeAll(async () => {
    // A short cache TTL so key rotation and removal show within a test.
    ingest = await buildTestIngest(
      loadConfig({ ...envOf(config), LOG_LEVEL: 'silent', TALLY_SITE_CACHE_TTL_MS: '300' }),
    )
  })
  afterAll(async () => {
    await ingest?.close()
  })

  async function track(writeKey: string): Promise<{ status: number; messageId: string }> {
    const messageId = `cli-${randomUUID()}`
    const res = await ingest.app.inject({
      method: 'POST',
      url: '/v1/track',
      headers: { 'content-type': 'application/json', authorization: basic(writeKey) },
      payload: { event: 'Key Test', anonymousId: 'k', messageId },
    })
    return { status: res.statusCode, messageId }
  }

  it('add --json prints {siteId, writeKey, readToken}; list shows it; rotate-key retires the old key after the cache TTL; remove retires the site', async () => {
    const domain = `${uniqueName('shop').replace(/_/g, '-')}.test`
    const added = tally(['sites', 'add', domain, '--origin', `https://www.${domain}`, '--json'])
    expect(added.stderr).toBe('')
    expect(added.code).toBe(0)
    const created = JSON.parse(added.stdout) as Record<string, string>
    expect(Object.keys(created).sort()).toEqual(['readToken', 'siteId', 'writeKey'])
    expect(created.siteId).toBe(domain)
    expect(created.writeKey).toMatch(/^wk_\w{20,}$/)
    expect(created.readToken).toMatch(/^rt_\w{20,}$/)

    const listed = tally(['sites', 'list', '--json'])
    expect(listed.code).toBe(0)
    const rows = JSON.parse(listed.stdout) as Array<Record<string, unknown>>
    expect(rows.find((r) => r.siteId === domain)).toMatchObject({
      domain,
      writeKey: created.writeKey,
      origins: [`https://www.${domain}`],
      readTokens: 1,
    })
    // The read token is secret: only its hash is stored.
    expect(listed.stdout).not.toContain(created.readToken)

    const first = await track(created.writeKey!)
    expect(first.status).toBe(200)
    expect((await reader.one(first.messageId)).event.siteId).toBe(domain)

    const rotated = tally(['sites', 'rotate-key', domain, '--json'])
    expect(rotated.code).toBe(0)
    const { writeKey: newKey } = JSON.parse(rotated.stdout) as { writeKey: string }
    expect(newKey).toMatch(/^wk_/)
    expect(newKey).not.toBe(created.writeKey)
    const rotatedAt = Date.now()
    await eventually(
      async () => ((await track(created.writeKey!)).status === 401 ? true : undefined),
      10_000,
      'old key refused',
    )
    // Bounded staleness: the TTL (300 ms) plus a store read.
    expect(Date.now() - rotatedAt).toBeLessThan(5000)
    const withNew = await track(newKey)
    expect(withNew.status).toBe(200)
    expect((await reader.one(withNew.messageId)).event.siteId).toBe(domain)

    const removed = tally(['sites', 'remove', domain])
    expect(removed.code).toBe(0)
    expect(removed.stdout).toContain(`site ${domain} removed`)
    await eventually(
      async () => ((await track(newKey)).status === 401 ? true : undefined),
      10_000,
      'key of removed site refused',
    )
    const after = JSON.parse(tally(['sites', 'list', '--json']).stdout) as Array<{ siteId: string }>
    expect(after.map((r) => r.siteId)).not.toContain(domain)
    const again = tally(['sites', 'remove', domain])
    expect(again.code).toBe(1)
    expect(again.stderr).toContain('TALLY_ERR_SITE_NOT_FOUND')
  })
})

describe('tally ingest process', () => {
  it('on SIGTERM under load: finishes in-flight requests, flushes, exits 0, and every event answered 2xx is in the topic', async () => {
    const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
    await cassandra.connect()
    const siteId = uniqueName('sigterm').replace(/_/g, '-')
    const { site } = await new CassandraSiteStore(cassandra).create({
      siteId,
      domain: `${siteId}.test`,
      origins: [],
    })
    await cassandra.shutdown()

    const port = await freePort()
    const url = `http://127.0.0.1:${port}`
    const child: ChildProcess = spawn(process.execPath, ['bin/tally.js', 'ingest'], {
      env: {
        ...baseEnv(),
        PORT: String(port),
        LOG_LEVEL: 'info',
        TALLY_RATE_LIMIT_CLIENT: '0',
        TALLY_RATE_LIMIT_SITE: '0',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let output = ''
    child.stdout?.on('data', (d: Buffer) => {
      output += d.toString()
    })
    child.stderr?.on('data', (d: Buffer) => {
      output += d.toString()
    })
    const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
    try {
      await eventually(
        async () => ((await fetch(`${url}/readyz`)).ok ? true : undefined),
        30_000,
        `ingest on ${url}`,
      )

      const acked = new Set<string>()
      const refused: Array<number | string> = []
      let sigtermAt = Number.POSITIVE_INFINITY
      let answeredAfterSignal = 0
      const workers = 12
      const eventsPerRequest = 5
      const maxRequestsPerWorker = 400
      const worker = async (w: number) => {
        for (let i = 0; i < maxRequestsPerWorker; i++) {
          const batch = Array.from({ length: eventsPerRequest }, (_, j) => ({
            type: 'track',
            event: 'Load',
            anonymousId: `w${w}`,
            messageId: `sig-${w}-${i}-${j}-${randomUUID()}`,
          }))
          try {
            const res = await fetch(`${url}/v1/batch`, {
              method: 'POST',
              headers: { 'content-type': 'application/json', authorization: basic(site.writeKey) },
              body: JSON.stringify({ batch }),
            })
            await res.arrayBuffer()
            if (res.status >= 200 && res.status < 300) {
              for (const e of batch) acked.add(e.messageId)
              if (Date.now() > sigtermAt) answeredAfterSignal++
            } else {
              refused.push(res.status)
              if (Date.now() > sigtermAt) return
            }
          } catch (err) {
            // Connection refused or closed once the server stopped listening.
            refused.push((err as Error).message)
            if (Date.now() > sigtermAt) return
            throw err
          }
        }
      }
      const load = Promise.all(Array.from({ length: workers }, (_, w) => worker(w)))
      // Awaited below; a failure before that must not surface as an unhandled rejection.
      load.catch(() => undefined)
      await eventually(
        async () => (acked.size >= 1000 ? true : undefined),
        30_000,
        '1000 acknowledged events',
      )
      const metrics = await (await fetch(`${url}/metrics`)).text()
      sigtermAt = Date.now()
      child.kill('SIGTERM')
      const [code, signal] = await Promise.race([
        exited,
        new Promise<never>((_, reject) =>
          setTimeout(() => reject(new Error(`no exit after SIGTERM:\n${output}`)), 30_000),
        ),
      ])
      await load
      expect({ code, signal }, output.slice(-4000)).toEqual({ code: 0, signal: null })
      expect(output).toContain('shutting down')
      expect(output).toContain('"msg":"stopped"')
      // Concurrent requests share Kafka sends: a send carries more records than one request has.
      const sends = metricValue(metrics, 'tally_ingest_kafka_batch_records_count', {})
      const records = metricValue(metrics, 'tally_ingest_kafka_batch_records_sum', {})
      expect(sends).toBeGreaterThan(0)
      expect(records / sends).toBeGreaterThan(eventsPerRequest)
      // Requests in flight at the signal were finished, not dropped.
      expect(answeredAfterSignal).toBeGreaterThan(0)
      // Refusals after shutdown began are 503 or connection errors, nothing else.
      for (const r of refused) if (typeof r === 'number') expect(r).toBe(503)

      const found = await reader.waitFor(acked, 60_000)
      expect(found.size).toBe(acked.size)
      for (const [id, list] of found) {
        expect(list.length, id).toBeGreaterThanOrEqual(1)
        expect(list[0]!.headers['tally-site-id']).toBe(site.siteId)
      }
    } finally {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL')
        await exited
      }
    }
  })
})
