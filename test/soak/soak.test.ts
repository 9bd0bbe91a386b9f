import { randomUUID } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Analytics } from '@segment/analytics-node'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ServicesManager } from '../../app/services/manager.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { loadConfig } from '../../core/config.js'
import { HyperLogLog, hllErrorBound } from '../../core/hll.js'
import { migrate } from '../../core/migrate.js'
import type { Site } from '../../core/ports/site-store.js'
import { cleanup, envOf, eventually, testConfig } from '../helpers/context.js'
import { basic, freePort } from '../helpers/ingest.js'
import { type RoleProcess, seeded, spawnRole, waitForLog } from '../helpers/processes.js'
import { type SlowClient, slowHeaders, statusOf, trickle } from '../helpers/slow-client.js'
import { waitCaughtUp } from '../helpers/stream.js'

/**
 * Bounded soak (issue 19): `tally ingest`, `tally stream`, `tally archive` and `tally query` as real
 * processes against real Kafka and a Cassandra node of the test's own, under mixed valid and hostile
 * traffic for TALLY_SOAK_SECONDS (default 180), while the stream worker and the archiver are
 * SIGKILLed and restarted and Cassandra is stopped and started again. Afterwards every valid event
 * answered 2xx is counted exactly once by the query API (per minute, per path, in total) and is in
 * the archive's raw export once; the RSS and open file descriptors of ingest and query stay flat.
 *
 * The Cassandra node is private (own ports and data folder, like stream-cassandra-outage.test.ts):
 * restarting it disturbs nothing else, so the soak is safe next to other test runs too.
 */

const SECONDS = Number(process.env.TALLY_SOAK_SECONDS ?? 180)
if (!Number.isInteger(SECONDS) || SECONDS < 30 || SECONDS > 3600)
  throw new Error(
    `TALLY_SOAK_SECONDS="${process.env.TALLY_SOAK_SECONDS}": expected an integer from 30 to 3600`,
  )
const RUN_MS = SECONDS * 1000
const SEED = Number(process.env.TALLY_SOAK_SEED ?? Date.now() % 100_000)
const MINUTE = 60_000
const HOUR = 3_600_000
/** Request timeout of the ingest and query processes: the slow clients must be cut at it. */
const REQUEST_TIMEOUT_MS = 3000
/** Flatness bounds: the last third's peak over the first third's peak. */
const RSS_GROWTH_BOUND = { ratio: 1.25, plusBytes: 48 * 1024 * 1024 }
const FD_GROWTH_BOUND = 24

const BROWSER_UA =
  'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

// A private Cassandra node: the soak stops and starts it.
const runDir = await mkdtemp(join(tmpdir(), 'tally-soak-services-'))
const dataDir = await mkdtemp(join(tmpdir(), 'tally-soak-data-'))
const privateServices = loadConfig({
  TALLY_SERVICES_RUN_DIR: runDir,
  TALLY_SERVICES_CASSANDRA_PORT: '29042',
  TALLY_SERVICES_CASSANDRA_STORAGE_PORT: '27000',
  TALLY_SERVICES_CASSANDRA_JMX_PORT: '27199',
}).services
const manager = new ServicesManager(privateServices, (line) => process.stdout.write(`[soak] ${line}\n`))
const config = testConfig({
  CASSANDRA_CONTACT_POINTS: '127.0.0.1:29042',
  KAFKA_PARTITIONS: '4',
  TALLY_DATA_DIR: dataDir,
})
// An archive group of its own: archivers of other runs on the broker (other topics) stay apart.
const ARCHIVE_GROUP = `${config.stream.group}.archive`
const ROLE_ENV = {
  ...envOf(config),
  TALLY_DATA_DIR: dataDir,
  TALLY_ARCHIVE_GROUP: ARCHIVE_GROUP,
  TALLY_STREAM_SESSION_TIMEOUT_MS: '6000',
  TALLY_REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
  TALLY_SITE_CACHE_TTL_MS: '5000',
}

/** One valid event answered 2xx: what the numbers must hold. */
interface Acked {
  site: string
  messageId: string
  visitor: string
  page: boolean
  path: string
  /** Start of its minute window; undefined when ingest clamped it to its receipt (far future). */
  minute: number | undefined
}

const acked = new Map<string, Acked>()
const sites: Record<'a' | 'b' | 'h', Site> = {} as Record<'a' | 'b' | 'h', Site>
const tokens = new Map<string, string>()
const processes: RoleProcess[] = []
let ingestUrl = ''
let queryUrl = ''
let ingestPort = 0
let queryPort = 0

beforeAll(async () => {
  await manager.up(['cassandra'])
  await migrate(config)
  const client = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await client.connect()
  const store = new CassandraSiteStore(client)
  for (const k of ['a', 'b', 'h'] as const) {
    const id = `soak-${k}-${SEED}.test`
    const created = await store.create({ siteId: id, domain: id, origins: [] })
    sites[k] = created.site
    tokens.set(id, created.readToken)
  }
  await client.shutdown()
}, 600_000)

afterAll(async () => {
  for (const p of processes)
    if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL')
  await Promise.all(processes.map((p) => p.exited))
  if (process.env.TALLY_SOAK_KEEP === '1') {
    // For a post-mortem: the node (and its keyspace), the topics and the archive stay.
    process.stdout.write(
      `[soak] kept: ${config.cassandra.keyspace} on 127.0.0.1:29042, ${runDir}, ${dataDir}\n`,
    )
    return
  }
  await manager.up(['cassandra'])
  await cleanup(config)
  await manager.down(['cassandra'], { purge: true, graceMs: 5000 })
  await rm(runDir, { recursive: true, force: true })
  await rm(dataDir, { recursive: true, force: true })
}, 600_000)

function start(role: string, env: Record<string, string> = {}): RoleProcess {
  const p = spawnRole(role, { ...ROLE_ENV, ...env }, `soak-${role}`)
  processes.push(p)
  return p
}

async function kill(p: RoleProcess): Promise<void> {
  p.child.kill('SIGKILL')
  const { signal } = await p.exited
  expect(signal, p.logFile).toBe('SIGKILL')
}

async function stopCleanly(p: RoleProcess): Promise<void> {
  p.child.kill('SIGTERM')
  const { code } = await Promise.race([p.exited, sleep(30_000).then(() => ({ code: -1 as number | null }))])
  expect(code, `${p.logFile}: exit code after SIGTERM`).toBe(0)
}

async function waitReady(url: string, p: RoleProcess): Promise<void> {
  await eventually(
    async () => {
      if (p.child.exitCode !== null) throw new Error(`${p.logFile}: exited ${p.child.exitCode}`)
      return (await fetch(`${url}/readyz`)).ok ? true : undefined
    },
    60_000,
    `${url}/readyz`,
  )
}

// ---------------------------------------------------------------------------------------------
// Process samples: RSS and open descriptors of ingest and query, from /proc.

interface Sample {
  atMs: number
  rssBytes: number
  fds: number
}

async function sampleOf(pid: number): Promise<Sample | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8')
    const kb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1])
    const fds = (await readdir(`/proc/${pid}/fd`)).length
    return { atMs: Date.now(), rssBytes: kb * 1024, fds }
  } catch {
    return undefined // the process is gone: the caller's exit check says so
  }
}

function thirds(samples: Sample[]): { first: Sample[]; last: Sample[] } {
  const n = Math.floor(samples.length / 3)
  return { first: samples.slice(0, n), last: samples.slice(samples.length - n) }
}

const peak = (xs: Sample[], f: (s: Sample) => number) => Math.max(...xs.map(f))

// ---------------------------------------------------------------------------------------------
// Traffic.

/** The middle of the current minute: a timestamp no clock correction moves to another window. */
function midMinute(now = Date.now()): number {
  return Math.floor(now / MINUTE) * MINUTE + 30_000
}

interface Tally {
  /** Hostile requests by the status they got (or the error). */
  hostile: Map<string, number>
  /** Valid requests that got no 2xx (their events are not in the truth). */
  validRefused: Map<string, number>
  /** Valid raw requests sent, and how many were repeats of an acknowledged one (a client retry). */
  validRequests: number
  repeats: number
  segmentErrors: number
  slow: SlowClient[]
  queries: Array<{ atMs: number; status: number | string }>
}

const tally: Tally = {
  hostile: new Map(),
  validRefused: new Map(),
  validRequests: 0,
  repeats: 0,
  segmentErrors: 0,
  slow: [],
  queries: [],
}

const bump = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1)

async function post(
  path: string,
  body: string | Buffer,
  headers: Record<string, string>,
): Promise<{ status: number; json: Record<string, unknown> | undefined }> {
  const res = await fetch(`${ingestUrl}${path}`, { method: 'POST', headers, body })
  const text = await res.text()
  let json: Record<string, unknown> | undefined
  try {
    json = JSON.parse(text) as Record<string, unknown>
  } catch {
    json = undefined
  }
  return { status: res.status, json }
}

interface RawEvent {
  type: 'track' | 'page'
  event?: string
  anonymousId: string
  messageId: string
  timestamp: string
  properties: { path: string }
}

function rawEvent(random: () => number, site: string, minute: number): RawEvent {
  const page = random() < 0.6
  const e: RawEvent = {
    type: page ? 'page' : 'track',
    anonymousId: `v${Math.floor(random() * 400)}-${site.slice(5, 6)}`,
    messageId: `raw-${randomUUID()}`,
    timestamp: new Date(minute).toISOString(),
    properties: { path: `/p${Math.floor(random() * 12)}` },
  }
  if (!page) e.event = random() < 0.5 ? 'Signed Up' : 'Clicked'
  return e
}

function record(site: string, e: RawEvent, minute: number | undefined): void {
  acked.set(`${site}|${e.messageId}`, {
    site,
    messageId: e.messageId,
    visitor: e.anonymousId,
    page: e.type === 'page',
    path: e.properties.path,
    minute: minute === undefined ? undefined : Math.floor(minute / MINUTE) * MINUTE,
  })
}

/** Raw HTTP posts of valid batches, HTTP Basic or (beacon-style) the key in a text/plain body. */
async function rawValidLoop(random: () => number, until: number): Promise<void> {
  let last: { site: Site; batch: RawEvent[]; minute: number } | undefined
  while (Date.now() < until) {
    const site = random() < 0.5 ? sites.a : sites.b
    let batch: RawEvent[]
    let minute: number
    if (last && random() < 0.05) {
      // A client retry: the same batch again, same messageIds.
      ;({ site: last.site, batch, minute } = last)
      tally.repeats++
    } else {
      minute = midMinute()
      batch = Array.from({ length: 1 + Math.floor(random() * 20) }, () =>
        rawEvent(random, site.siteId, minute),
      )
    }
    const target = last && batch === last.batch ? last.site : site
    const beacon = random() < 0.1
    tally.validRequests++
    try {
      const res = beacon
        ? await post('/v1/b', JSON.stringify({ writeKey: target.writeKey, batch }), {
            'content-type': 'text/plain',
            // A beacon's events take the request's User-Agent: a browser's, not Node's (a bot's).
            'user-agent': BROWSER_UA,
          })
        : await post('/v1/batch', JSON.stringify({ batch }), {
            'content-type': 'application/json',
            authorization: basic(target.writeKey),
          })
      if (res.status === 200) {
        expect(res.json?.rejected, JSON.stringify(res.json)).toEqual([])
        for (const e of batch) record(target.siteId, e, minute)
        last = { site: target, batch, minute }
      } else {
        bump(tally.validRefused, String(res.status))
      }
    } catch (err) {
      bump(tally.validRefused, (err as Error).message)
    }
    await sleep(20 + random() * 40)
  }
}

/** The real Segment server library, one client per site; its callback is the acknowledgement. */
async function segmentLoop(random: () => number, until: number): Promise<void> {
  const clients = [sites.a, sites.b].map(
    (site) =>
      [
        site,
        new Analytics({
          writeKey: site.writeKey,
          host: ingestUrl,
          path: '/v1/batch',
          flushAt: 20,
          flushInterval: 200,
          maxRetries: 6,
        }),
      ] as const,
  )
  const pending: Array<Promise<void>> = []
  while (Date.now() < until) {
    for (const [site, analytics] of clients) {
      const minute = midMinute()
      const e = rawEvent(random, site.siteId, minute)
      e.messageId = `seg-${randomUUID()}`
      pending.push(
        new Promise<void>((resolve) => {
          const done = (err?: unknown) => {
            if (err) tally.segmentErrors++
            else record(site.siteId, e, minute)
            resolve()
          }
          const common = {
            anonymousId: e.anonymousId,
            messageId: e.messageId,
            timestamp: new Date(minute),
            properties: e.properties,
          }
          if (e.type === 'page') analytics.page({ ...common, name: 'Soak' }, done)
          else analytics.track({ ...common, event: e.event ?? 'Clicked' }, done)
        }),
      )
    }
    await sleep(15 + random() * 20)
  }
  await Promise.all(clients.map(([, a]) => a.closeAndFlush({ timeout: 60_000 })))
  await Promise.all(pending)
}

/** What a hostile or careless client sends; each kind with the status it must get. */
async function hostileLoop(random: () => number, until: number): Promise<void> {
  const h = sites.h
  const json = { 'content-type': 'application/json', authorization: basic(h.writeKey) }
  const kinds: Array<() => Promise<void>> = [
    // Malformed JSON.
    async () => expectStatus('malformed', await post('/v1/batch', '{"batch":[{"type":"track",', json), 400),
    // Unknown and malformed keys.
    async () =>
      expectStatus(
        'bad key',
        await post('/v1/track', '{"event":"E","anonymousId":"x"}', {
          'content-type': 'application/json',
          authorization: basic(`wk_${randomUUID().replace(/-/g, '')}`),
        }),
        401,
      ),
    async () =>
      expectStatus(
        'garbage auth',
        await post('/v1/track', '{"event":"E","anonymousId":"x"}', {
          'content-type': 'application/json',
          authorization: 'Basic %%%not-base64%%%',
        }),
        401,
      ),
    // Oversized body (over the 500 KB request limit).
    async () =>
      expectStatus(
        'oversized',
        await post(
          '/v1/batch',
          JSON.stringify({ batch: [{ event: 'E', anonymousId: 'x', p: 'x'.repeat(600_000) }] }),
          json,
        ),
        413,
      ),
    // Unsupported charset.
    async () =>
      expectStatus(
        'charset',
        await post('/v1/track', '{"event":"E","anonymousId":"x"}', {
          'content-type': 'application/json; charset=x-soak-unknown',
          authorization: basic(h.writeKey),
        }),
        415,
      ),
    // A batch mixing valid events with far-past timestamps, impossible dates and a far-future one:
    // the first two are rejected per event, the far-future one counts at its receipt.
    async () => {
      const minute = midMinute()
      const mk = (path: string): RawEvent => ({
        ...rawEvent(random, h.siteId, minute),
        type: 'track',
        event: 'Hostile',
        messageId: `h-${randomUUID()}`,
        properties: { path },
      })
      const valid = mk('/h/valid')
      const past = { ...mk('/h/past'), timestamp: new Date(Date.now() - 30 * 86_400_000).toISOString() }
      const impossible = { ...mk('/h/impossible'), timestamp: '2024-02-30T10:00:00.000Z' }
      const future = { ...mk('/h/future'), timestamp: '2099-01-01T00:00:00.000Z' }
      const res = await post('/v1/batch', JSON.stringify({ batch: [valid, past, impossible, future] }), json)
      if (res.status !== 200) {
        bump(tally.hostile, `mixed batch ${res.status}`)
        return
      }
      const rejected = (res.json?.rejected ?? []) as Array<{ index: number; code: string }>
      expect(rejected.map((r) => [r.index, r.code])).toEqual([
        [1, 'TALLY_ERR_TIMESTAMP_TOO_OLD'],
        [2, 'TALLY_ERR_INVALID_TIMESTAMP'],
      ])
      record(h.siteId, valid, minute)
      record(h.siteId, future, undefined)
      bump(tally.hostile, 'mixed batch 200')
    },
    // A lone surrogate in the path: accepted, stored (and counted) as U+FFFD.
    async () => {
      const minute = midMinute()
      const messageId = `s-${randomUUID()}`
      const anonymousId = `sur-${Math.floor(random() * 20)}`
      const body = `{"event":"Surrogate","anonymousId":"${anonymousId}","messageId":"${messageId}","timestamp":"${new Date(minute).toISOString()}","properties":{"path":"/sur\\ud800"}}`
      const res = await post('/v1/track', body, json)
      expectStatus('lone surrogate', res, 200)
      if (res.status === 200)
        record(
          h.siteId,
          {
            type: 'track',
            anonymousId,
            messageId,
            timestamp: new Date(minute).toISOString(),
            properties: { path: '/sur\uFFFD' },
          },
          minute,
        )
    },
  ]
  let nextFlood = Date.now() + 5000
  while (Date.now() < until) {
    const kind = kinds[Math.floor(random() * kinds.length)]!
    try {
      await kind()
    } catch (err) {
      if ((err as { name?: string }).name === 'AssertionError') throw err
      bump(tally.hostile, `error ${(err as Error).message}`)
    }
    if (Date.now() >= nextFlood) {
      await flood()
      nextFlood = Date.now() + 15_000
    }
    await sleep(30 + random() * 50)
  }
}

function expectStatus(
  what: string,
  res: { status: number; json: Record<string, unknown> | undefined },
  want: number,
): void {
  // While Cassandra restarts, key lookups may fail: 503 is honest then, anything else is not.
  if (res.status === 503) return void bump(tally.hostile, `${what} 503`)
  expect({ what, status: res.status }).toEqual({ what, status: want })
  bump(tally.hostile, `${what} ${res.status}`)
}

/** A burst of rejected requests, 40 at a time. */
async function flood(): Promise<void> {
  const bad = [
    () =>
      post('/v1/batch', 'not json at all', {
        'content-type': 'application/json',
        authorization: basic(sites.a.writeKey),
      }),
    () => post('/v1/track', '{}', { 'content-type': 'application/json', authorization: basic('wk_nope') }),
    () =>
      post('/v1/track', '{}', { 'content-type': 'application/xml', authorization: basic(sites.a.writeKey) }),
  ]
  for (let i = 0; i < 10; i++) {
    const answers = await Promise.allSettled(Array.from({ length: 40 }, (_, j) => bad[j % bad.length]!()))
    for (const a of answers) {
      const key = a.status === 'fulfilled' ? `flood ${a.value.status}` : `flood error ${String(a.reason)}`
      bump(tally.hostile, key)
      if (a.status === 'fulfilled') expect([400, 401, 415, 503]).toContain(a.value.status)
    }
  }
}

/** Keeps `n` connections trickling headers or a body into ingest and query, one byte a second. */
async function slowClientsLoop(until: number): Promise<void> {
  const open = new Set<SlowClient>()
  const add = (i: number) => {
    // Trickling headers to ingest and query; a trickling body to ingest (query takes no bodies).
    const c =
      i % 3 === 0
        ? trickle(queryPort, slowHeaders('/v1/stats/aggregate'), 'x', 1000)
        : i % 3 === 1
          ? trickle(ingestPort, slowHeaders('/v1/track'), 'x', 1000)
          : trickle(
              ingestPort,
              `POST /v1/track HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\ncontent-length: 4000\r\n\r\n{"event":"`,
              'a',
              1000,
            )
    open.add(c)
    tally.slow.push(c)
    void c.closed.then(() => open.delete(c))
  }
  let i = 0
  while (Date.now() < until) {
    while (open.size < 12) add(i++)
    await sleep(250)
  }
}

/** A dashboard-like reader of the query API, plus requests with a wrong token. */
async function queryLoop(random: () => number, until: number): Promise<void> {
  while (Date.now() < until) {
    const site = random() < 0.5 ? sites.a : sites.b
    const wrong = random() < 0.2
    const path =
      random() < 0.5
        ? `/v1/stats/aggregate?site=${site.siteId}&period=day&metrics=events,pageviews,visitors`
        : `/v1/stats/timeseries?site=${site.siteId}&period=day&interval=minute&metrics=events,visitors`
    try {
      const res = await fetch(`${queryUrl}${path}`, {
        headers: { authorization: `Bearer ${wrong ? 'rt_wrong' : tokens.get(site.siteId)}` },
      })
      await res.arrayBuffer()
      tally.queries.push({ atMs: Date.now(), status: wrong ? `wrong ${res.status}` : res.status })
      if (wrong) expect([401, 403, 503]).toContain(res.status)
    } catch (err) {
      tally.queries.push({ atMs: Date.now(), status: (err as Error).message })
    }
    await sleep(150 + random() * 200)
  }
}

// ---------------------------------------------------------------------------------------------
// Truth and the query API.

interface Expected {
  events: number
  pageviews: number
  visitors: Set<string>
}

function expectedBy(site: string, keyOf: (a: Acked) => string | undefined): Map<string, Expected> {
  const out = new Map<string, Expected>()
  for (const a of acked.values()) {
    if (a.site !== site) continue
    const k = keyOf(a)
    if (k === undefined) continue
    const e = out.get(k) ?? { events: 0, pageviews: 0, visitors: new Set<string>() }
    e.events++
    if (a.page) e.pageviews++
    e.visitors.add(a.visitor)
    out.set(k, e)
  }
  return out
}

/** The estimate a sketch of exactly `ids` gives: the stream's registers must be those of the set. */
function sketchOf(ids: Iterable<string>): number {
  const h = new HyperLogLog(config.stream.hllPrecision)
  for (const id of ids) h.add(id)
  return Math.round(h.estimate())
}

async function stats<R>(path: string, params: Record<string, string>): Promise<R> {
  const res = await fetch(`${queryUrl}${path}?${new URLSearchParams(params)}`, {
    headers: { authorization: `Bearer ${tokens.get(params.site!)}` },
  })
  const text = await res.text()
  expect(res.status, text).toBe(200)
  return (JSON.parse(text) as { results: R }).results
}

async function exportEvents(
  site: string,
  from: number,
  to: number,
): Promise<{
  meta: Record<string, unknown>
  events: Array<{ messageId: string; properties: { path?: string } }>
}> {
  const params = new URLSearchParams({
    site,
    from: new Date(from).toISOString(),
    to: new Date(to).toISOString(),
  })
  const res = await fetch(`${queryUrl}/v1/export/events?${params}`, {
    headers: { authorization: `Bearer ${tokens.get(site)}` },
  })
  const text = await res.text()
  expect(res.status, text.slice(0, 500)).toBe(200)
  const lines = text
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>)
  const end = lines[lines.length - 1] as { type: string; events: number }
  expect(end.type, text.slice(-500)).toBe('end')
  const events = lines
    .slice(1, -1)
    .map((l) => (l as { event: { messageId: string; properties: { path?: string } } }).event)
  expect(events.length).toBe(end.events)
  return { meta: lines[0]!, events }
}

describe(`soak: mixed traffic for ${SECONDS} s while workers are SIGKILLed and Cassandra restarts`, () => {
  it('counts every acknowledged event exactly once, in the numbers and the archive; ingest and query stay flat', async () => {
    const random = seeded(SEED)
    process.stdout.write(`[soak] seed ${SEED}, ${SECONDS} s, logs in test-artifacts/soak-*\n`)
    ingestPort = await freePort()
    queryPort = await freePort()
    ingestUrl = `http://127.0.0.1:${ingestPort}`
    queryUrl = `http://127.0.0.1:${queryPort}`
    const ingest = start('ingest', { PORT: String(ingestPort) })
    const query = start('query', { PORT: String(queryPort) })
    let stream = start('stream', { PORT: '0' })
    let archive = start('archive', { PORT: '0' })
    await Promise.all([waitReady(ingestUrl, ingest), waitReady(queryUrl, query)])
    await waitForLog(stream, /partitions assigned/, 120_000)

    const startedMs = Date.now()
    const until = startedMs + RUN_MS
    const samples = new Map<string, Sample[]>([
      ['ingest', []],
      ['query', []],
    ])
    const sampling = (async () => {
      while (Date.now() < until) {
        for (const [name, p] of [
          ['ingest', ingest],
          ['query', query],
        ] as const) {
          const s = await sampleOf(p.child.pid!)
          if (s) samples.get(name)!.push(s)
        }
        await sleep(1000)
      }
    })()

    const traffic = Promise.all([
      rawValidLoop(seeded(SEED + 1), until),
      rawValidLoop(seeded(SEED + 2), until),
      rawValidLoop(seeded(SEED + 3), until),
      segmentLoop(seeded(SEED + 4), until),
      hostileLoop(seeded(SEED + 5), until),
      slowClientsLoop(until),
      queryLoop(seeded(SEED + 6), until),
    ])
    // A failing loop must not leave the others' rejections unhandled before it is awaited.
    traffic.catch(() => undefined)

    // The faults, at fixed fractions of the run (each wait bounded).
    const at = (fraction: number) => sleep(Math.max(0, startedMs + fraction * RUN_MS - Date.now()))
    const faults: string[] = []
    const note = (what: string) => {
      faults.push(`${((Date.now() - startedMs) / 1000).toFixed(1)} s ${what}`)
      process.stdout.write(`[soak] ${faults[faults.length - 1]}\n`)
    }
    await at(0.15)
    await waitForLog(stream, /partition restored/, 60_000)
    await sleep(random() * 2000)
    await kill(stream)
    note('SIGKILL stream')
    stream = start('stream', { PORT: '0' })
    await at(0.3)
    await waitForLog(archive, /archive partition restored/, 60_000)
    await kill(archive)
    note('SIGKILL archive')
    archive = start('archive', { PORT: '0' })
    await at(0.45)
    // A role that starts while Cassandra is unreachable exits at once (a supervisor restarts it):
    // the restarted ones are past their start before the store goes away.
    await waitForLog(archive, /archiver running/, 60_000)
    await waitForLog(stream, /stream worker running/, 60_000)
    note('Cassandra stopping')
    await manager.down(['cassandra'], { graceMs: 20_000 })
    note('Cassandra stopped')
    await sleep(5000)
    await manager.up(['cassandra'])
    note('Cassandra up')
    await at(0.75)
    await waitForLog(stream, /partition restored/, 60_000)
    await sleep(random() * 2000)
    await Promise.all([kill(stream), kill(archive)])
    note('SIGKILL stream and archive')
    stream = start('stream', { PORT: '0' })
    archive = start('archive', { PORT: '0' })

    await traffic
    await sampling
    const endedMs = Date.now()
    note('traffic ended')

    // Every process that was not killed on purpose is alive.
    for (const p of [ingest, query, stream, archive])
      expect({ log: p.logFile, exit: p.child.exitCode, signal: p.child.signalCode }).toEqual({
        log: p.logFile,
        exit: null,
        signal: null,
      })

    const summary = {
      seed: SEED,
      acked: acked.size,
      validRequests: tally.validRequests,
      repeats: tally.repeats,
      validRefused: Object.fromEntries(tally.validRefused),
      segmentErrors: tally.segmentErrors,
      hostile: Object.fromEntries(tally.hostile),
      slowClients: tally.slow.length,
      queries: Object.fromEntries(
        [...new Set(tally.queries.map((q) => String(q.status)))].map((st) => [
          st,
          tally.queries.filter((q) => String(q.status) === st).length,
        ]),
      ),
      faults,
    }
    process.stdout.write(`[soak] ${JSON.stringify(summary)}\n`)
    expect(acked.size).toBeGreaterThan(SECONDS * 20)

    // Hostile: slow clients were cut at the request timeout (408, or closed while refused).
    const slowClosed = tally.slow.filter((c) => c.closedAfterMs() !== undefined)
    expect(slowClosed.length).toBeGreaterThan(SECONDS / 3)
    for (const c of slowClosed) {
      expect(c.closedAfterMs()!).toBeLessThan(REQUEST_TIMEOUT_MS + 3000)
      const status = statusOf(c.text())
      if (status !== undefined) expect(status).toBe(408)
    }
    for (const c of tally.slow) c.socket.destroy()
    // The query role answers again after the Cassandra restart (while the store was away it
    // answered 5xx: counted in the summary above).
    await eventually(
      async () => {
        const res = await fetch(`${queryUrl}/v1/stats/aggregate?site=${sites.a.siteId}&period=day`, {
          headers: { authorization: `Bearer ${tokens.get(sites.a.siteId)}` },
        })
        await res.arrayBuffer()
        return res.status === 200 ? true : undefined
      },
      60_000,
      'the query role to answer 200 after the Cassandra restart',
    )

    // Flat: the last third of the run's samples peak within the bound of the first third's peak.
    for (const [name, list] of samples) {
      expect(list.length, name).toBeGreaterThan(SECONDS / 2)
      const { first, last } = thirds(list)
      const rss = { first: peak(first, (s) => s.rssBytes), last: peak(last, (s) => s.rssBytes) }
      const fds = { first: peak(first, (s) => s.fds), last: peak(last, (s) => s.fds) }
      process.stdout.write(
        `[soak] ${name}: RSS peak ${(rss.first / 2 ** 20).toFixed(0)} → ${(rss.last / 2 ** 20).toFixed(0)} MB, fds ${fds.first} → ${fds.last}\n`,
      )
      expect(rss.last, `${name} RSS`).toBeLessThanOrEqual(
        rss.first * RSS_GROWTH_BOUND.ratio + RSS_GROWTH_BOUND.plusBytes,
      )
      expect(fds.last, `${name} open descriptors`).toBeLessThanOrEqual(fds.first + FD_GROWTH_BOUND)
    }

    // The stream has read the whole log.
    const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
    await cassandra.connect()
    try {
      await waitCaughtUp(config, cassandra, 180_000)
    } finally {
      await cassandra.shutdown()
    }

    // Numbers: per minute (sites with known windows), per path and in total, exactly; visitors
    // register-exact (the sketch of the true set) and within the stated bound of the exact count.
    const from = Math.floor(startedMs / HOUR) * HOUR
    const to = Math.ceil((endedMs + 2 * MINUTE) / HOUR) * HOUR
    const range = { from: new Date(from).toISOString(), to: new Date(to).toISOString() }
    const bound = hllErrorBound(config.stream.hllPrecision)
    for (const site of [sites.a, sites.b, sites.h]) {
      const id = site.siteId
      const total = expectedBy(id, () => 'all').get('all')
      expect(total, id).toBeDefined()
      await eventually(
        async () => {
          const r = await stats<Record<string, { value: number }>>('/v1/stats/aggregate', {
            site: id,
            ...range,
            metrics: 'events,pageviews,visitors',
          })
          return r.events!.value === total!.events ? true : undefined
        },
        60_000,
        `${id}: events in the query API to reach the ${total!.events} acknowledged`,
      ).catch(() => undefined)
      const series = await stats<Array<Record<string, number> & { date: string }>>('/v1/stats/timeseries', {
        site: id,
        ...range,
        interval: 'minute',
        metrics: 'events,pageviews,visitors',
      })
      if (id !== sites.h.siteId) {
        // Site h has events clamped to their receipt: their minute is the server's, not known here.
        const byMinute = expectedBy(id, (a) => (a.minute === undefined ? undefined : String(a.minute)))
        const wrong: string[] = []
        for (const p of series) {
          const want = byMinute.get(String(Date.parse(p.date)))
          const w = want
            ? { events: want.events, pageviews: want.pageviews, visitors: sketchOf(want.visitors) }
            : { events: 0, pageviews: 0, visitors: 0 }
          const got = { events: p.events, pageviews: p.pageviews, visitors: p.visitors }
          if (JSON.stringify(got) !== JSON.stringify(w))
            wrong.push(`${p.date}: got ${JSON.stringify(got)}, want ${JSON.stringify(w)}`)
        }
        if (wrong.length > 0) process.stdout.write(`[soak] ${id} minutes wrong:\n  ${wrong.join('\n  ')}\n`)
        expect(wrong, `${id} minutes`).toEqual([])
      }
      expect(
        series.reduce((n, p) => n + p.events!, 0),
        `${id} minutes summed`,
      ).toBe(total!.events)

      const agg = await stats<Record<string, { value: number }>>('/v1/stats/aggregate', {
        site: id,
        ...range,
        metrics: 'events,pageviews,visitors',
      })
      expect({ site: id, events: agg.events!.value, pageviews: agg.pageviews!.value }).toEqual({
        site: id,
        events: total!.events,
        pageviews: total!.pageviews,
      })
      expect(agg.visitors!.value, `${id} visitors`).toBe(sketchOf(total!.visitors))
      expect(Math.abs(agg.visitors!.value - total!.visitors.size)).toBeLessThanOrEqual(
        Math.max(2, Math.ceil(total!.visitors.size * bound)),
      )

      const byPath = expectedBy(id, (a) => a.path)
      const paths = await stats<Array<Record<string, string | number>>>('/v1/stats/breakdown', {
        site: id,
        ...range,
        property: 'path',
        metrics: 'events,pageviews,visitors',
        limit: '1000',
      })
      const got = Object.fromEntries(
        paths.map((r) => [
          String(r.path),
          { events: r.events, pageviews: r.pageviews, visitors: r.visitors },
        ]),
      )
      const want = Object.fromEntries(
        [...byPath].map(([p, e]) => [
          p,
          { events: e.events, pageviews: e.pageviews, visitors: sketchOf(e.visitors) },
        ]),
      )
      expect(got, `${id} by path`).toEqual(want)
    }

    // The archive: wait until it holds the whole log (the archiver closes segments every 30 s),
    // then the raw export of each site has every acknowledged event once.
    await eventually(
      async () => {
        const { meta } = await exportEvents(sites.a.siteId, from, to)
        const parts = (meta.archive as { partitions: Array<{ next_offset: number; end_offset: number }> })
          .partitions
        return parts.length === config.kafka.partitions && parts.every((p) => p.next_offset >= p.end_offset)
          ? true
          : undefined
      },
      120_000,
      'the archive to hold the whole raw log',
    )
    for (const site of [sites.a, sites.b, sites.h]) {
      const { events } = await exportEvents(site.siteId, from, to)
      const want = [...acked.values()].filter((a) => a.site === site.siteId)
      const ids = events.map((e) => e.messageId)
      expect(new Set(ids).size, `${site.siteId}: duplicates in the export`).toBe(ids.length)
      expect(ids.sort(), `${site.siteId} export`).toEqual(want.map((a) => a.messageId).sort())
    }

    for (const p of [stream, archive, query, ingest]) await stopCleanly(p)
  })
})
