import { readFile } from 'node:fs/promises'
import { afterAll, describe, expect, it } from 'vitest'
import { startIngest, startQuery, startStream } from '../../app/start.js'
import { createLogger } from '../../core/log.js'
import { tempDataDir } from '../contract/backends.js'
import { cleanup, envOf, eventually, testConfig } from '../helpers/context.js'
import { type RoleProcess, seeded, spawnRole, waitForLog } from '../helpers/processes.js'

/**
 * `tally all` with no Kafka or Cassandra configured runs on the embedded backend (issue 7): one
 * process, durable local log and store. These tests run the real CLI as users do (`npm start`).
 */

const ALL = ['all', '--quickstart', '--query-port', '0', '--stream-port', '0', '--batch-port', '0']

interface Running {
  proc: RoleProcess
  ingest: string
  query: string
  writeKey: string
  readToken: string
}

const data = tempDataDir('tally-all-')
afterAll(() => data.remove())

/** Starts `tally all --quickstart` on `dir` and reads the URLs and keys from its banner. */
async function startAll(dir: string, env: Record<string, string> = {}): Promise<Running> {
  const proc = spawnRole(ALL, { ...env, TALLY_DATA_DIR: dir }, 'all-embedded')
  await waitForLog(proc, /read token\s+rt_\S+/, 60_000)
  const text = await readFile(proc.logFile, 'utf8')
  const pick = (re: RegExp) => {
    const m = re.exec(text)
    if (!m?.[1]) throw new Error(`${proc.logFile}: no match for ${re}`)
    return m[1]
  }
  return {
    proc,
    ingest: pick(/^\s+ingest\s+(http:\S+)/m),
    query: pick(/^\s+query\s+(http:\S+)/m),
    writeKey: pick(/write key\s+(\S+)/),
    readToken: pick(/read token\s+(\S+)/),
  }
}

interface Sent {
  name: string
  body: string
  events: number
  acked: boolean
}

function request(i: number, rand: () => number, now: number): Sent {
  const name = `req-${i}`
  const events = 1 + Math.floor(rand() * 12)
  const batch = Array.from({ length: events }, (_, j) => ({
    type: 'track',
    event: name,
    messageId: `m-${i}-${j}`,
    anonymousId: `v-${i % 40}-${j % 3}`,
    timestamp: new Date(now - Math.floor(rand() * 30_000)).toISOString(),
  }))
  return { name, body: JSON.stringify({ batch }), events, acked: false }
}

async function post(r: Pick<Running, 'ingest' | 'writeKey'>, s: Sent): Promise<number> {
  const res = await fetch(`${r.ingest}/v1/batch`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: `Basic ${Buffer.from(`${r.writeKey}:`).toString('base64')}`,
    },
    body: s.body,
  })
  await res.arrayBuffer()
  return res.status
}

async function eventsByName(r: Pick<Running, 'query' | 'readToken'>): Promise<Map<string, number>> {
  const counts = new Map<string, number>()
  for (let page = 1; ; page++) {
    const url = `${r.query}/v1/stats/breakdown?site=localhost&period=day&property=event&metrics=events&limit=1000&page=${page}`
    const res = await fetch(url, { headers: { authorization: `Bearer ${r.readToken}` } })
    expect(res.status).toBe(200)
    const body = (await res.json()) as { results: Array<{ event: string; events: number }> }
    for (const row of body.results) counts.set(row.event, row.events)
    if (body.results.length < 1000) return counts
  }
}

async function stop(r: Running): Promise<void> {
  r.proc.child.kill('SIGTERM')
  expect(await r.proc.exited).toEqual({ code: 0, signal: null })
}

describe('tally all on the embedded backend', () => {
  it('a second process on the same data folder refuses to start, naming the first', async () => {
    const first = await startAll(data.dir)
    try {
      const second = spawnRole(ALL, { TALLY_DATA_DIR: data.dir }, 'all-embedded-second')
      expect((await second.exited).code).toBe(1)
      const log = await readFile(second.logFile, 'utf8')
      expect(log).toContain(`is in use by process ${first.proc.child.pid}`)
      expect(log).toContain('TALLY_ERR_DATA_DIR_LOCKED')
      // The first one keeps serving.
      expect((await fetch(`${first.ingest}/readyz`)).status).toBe(200)

      // Site commands reach the running process through its admin socket.
      const cli = async (args: string[]) => {
        const p = spawnRole(args, { TALLY_DATA_DIR: data.dir }, 'sites')
        const exit = await p.exited
        return { exit, out: await readFile(p.logFile, 'utf8') }
      }
      const added = await cli(['sites', 'add', 'shop.example', '--json'])
      expect(added.exit, added.out).toEqual({ code: 0, signal: null })
      const keys = JSON.parse(added.out.trim().split('\n').at(-1) ?? '') as {
        siteId: string
        writeKey: string
      }
      expect(keys.siteId).toBe('shop.example')
      const again = await cli(['sites', 'add', 'shop.example'])
      expect(again.exit.code).toBe(1)
      expect(again.out).toContain('TALLY_ERR_SITE_EXISTS')
      const listed = await cli(['sites', 'list'])
      expect(listed.out).toContain('shop.example')
      expect(listed.out).toContain('localhost')
      // Settings go through the running process too.
      const zoned = await cli(['sites', 'set', 'shop.example', '--timezone', 'Europe/Berlin'])
      expect(zoned.exit.code, zoned.out).toBe(0)
      expect((await cli(['sites', 'show', 'shop.example'])).out).toContain('time zone  Europe/Berlin')
      // Goals too, checked as they are added; a bad one gets its code.
      expect((await cli(['sites', 'goals', 'shop.example', 'add', '--page', '/checkout/*'])).exit.code).toBe(
        0,
      )
      expect((await cli(['sites', 'goals', 'shop.example', 'add', '--event', 'Signup'])).exit.code).toBe(0)
      const badGoal = await cli(['sites', 'goals', 'shop.example', 'add', '--page', 'checkout'])
      expect(badGoal.exit.code).not.toBe(0)
      expect(badGoal.out).toContain('TALLY_ERR_GOAL_INVALID')
      const lastLine = (out: string) => out.trim().split('\n').at(-1) ?? ''
      expect(
        JSON.parse(lastLine((await cli(['sites', 'goals', 'shop.example', 'list', '--json'])).out)),
      ).toEqual([
        { name: 'Signup', kind: 'event', target: 'Signup' },
        { name: 'Visit /checkout/*', kind: 'page', target: '/checkout/*' },
      ])
      expect((await cli(['sites', 'goals', 'shop.example', 'remove', 'Signup'])).exit.code).toBe(0)
      expect(lastLine((await cli(['sites', 'goals', 'shop.example', 'list'])).out)).toBe('Visit /checkout/*')
      // The new key is taken at once by the running ingest.
      const res = await fetch(`${first.ingest}/v1/track`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          authorization: `Basic ${Buffer.from(`${keys.writeKey}:`).toString('base64')}`,
        },
        body: JSON.stringify({ event: 'Bought', anonymousId: 'a-1' }),
      })
      expect(res.status).toBe(200)
      expect((await cli(['sites', 'remove', 'shop.example'])).exit.code).toBe(0)
    } finally {
      await stop(first)
    }
  })

  it('revokes a read token through the running process: its query role refuses it within the site cache TTL', async () => {
    const own = tempDataDir('tally-all-revoke-')
    const ttlMs = 1000
    const r = await startAll(own.dir, { TALLY_SITE_CACHE_TTL_MS: String(ttlMs) })
    try {
      const cli = async (args: string[]) => {
        const p = spawnRole(args, { TALLY_DATA_DIR: own.dir }, 'sites-tokens')
        const exit = await p.exited
        const out = await readFile(p.logFile, 'utf8')
        expect(exit, out).toEqual({ code: 0, signal: null })
        return out.trim().split('\n').at(-1) ?? ''
      }
      const ask = async (token: string) => {
        const res = await fetch(`${r.query}/v1/stats/aggregate?site=localhost&period=day&metrics=events`, {
          headers: { authorization: `Bearer ${token}` },
        })
        return { status: res.status, body: (await res.json()) as { code?: string; where?: string } }
      }
      const leaked = JSON.parse(await cli(['sites', 'token', 'localhost', '--json'])) as {
        readToken: string
        tokenId: string
      }
      expect((await ask(leaked.readToken)).status).toBe(200)
      // The use is recorded in the background; the admin socket lists it.
      const listed = await eventually(async () => {
        const tokens = JSON.parse(await cli(['sites', 'tokens', 'localhost', '--json'])) as Array<{
          tokenId: string
          lastUsedAt: string | null
        }>
        return tokens.find((t) => t.tokenId === leaked.tokenId)?.lastUsedAt ? tokens : undefined
      })
      expect(listed).toHaveLength(2)

      await cli(['sites', 'revoke-token', 'localhost', leaked.tokenId])
      const revokedAt = Date.now()
      let answer = await ask(leaked.readToken)
      while (answer.status === 200 && Date.now() - revokedAt < ttlMs + 5000) {
        await new Promise((resolve) => setTimeout(resolve, 50))
        answer = await ask(leaked.readToken)
      }
      expect(answer).toMatchObject({
        status: 401,
        body: { code: 'TALLY_ERR_INVALID_READ_TOKEN', where: 'authorization' },
      })
      expect(Date.now() - revokedAt).toBeLessThanOrEqual(ttlMs + 500)
      expect((await ask(r.readToken)).status).toBe(200)
    } finally {
      await stop(r)
      own.remove()
    }
  })

  it('counts every acknowledged event exactly once across a SIGKILL during ingest and a restart', async () => {
    const seed = Date.now() % 100_000
    const rand = seeded(seed)
    const sent: Sent[] = []
    let first = await startAll(data.dir)
    // Four clients post batches until the process dies; it is killed after a random number of requests.
    const killAfter = 80 + Math.floor(rand() * 300)
    let next = 0
    let killed = false
    const now = Date.now()
    const client = async () => {
      while (!killed && next < 800) {
        const s = request(next++, rand, now)
        sent.push(s)
        try {
          s.acked = (await post(first, s)) === 200
        } catch {
          // Connection refused or reset by the kill: the client does not know whether it was logged.
        }
        if (!killed && sent.length >= killAfter) {
          killed = true
          first.proc.child.kill('SIGKILL')
        }
      }
    }
    await Promise.all([client(), client(), client(), client()])
    expect(await first.proc.exited, `seed ${seed}`).toEqual({ code: null, signal: 'SIGKILL' })
    const acked = sent.filter((s) => s.acked).length
    expect(acked, `seed ${seed}: some requests got 2xx before the kill`).toBeGreaterThan(50)

    first = await startAll(data.dir)
    // Every 2xx of the first run is counted, once, and nothing unacknowledged is counted twice.
    const afterRestart = await eventually(
      async () => {
        const counts = await eventsByName(first)
        return sent.filter((s) => s.acked).every((s) => counts.get(s.name) === s.events) ? counts : undefined
      },
      30_000,
      'acknowledged events counted after the restart',
    )
    for (const s of sent) {
      const n = afterRestart.get(s.name) ?? 0
      if (s.acked) expect(n, `seed ${seed}: ${s.name}`).toBe(s.events)
      else expect([0, s.events], `seed ${seed}: ${s.name} (no 2xx)`).toContain(n)
    }
    // The clients retry what got no answer, with the same messageIds: every event is now counted exactly once.
    for (const s of sent.filter((x) => !x.acked)) expect(await post(first, s)).toBe(200)
    const total = sent.reduce((n, s) => n + s.events, 0)
    const final = await eventually(
      async () => {
        const counts = await eventsByName(first)
        const sum = [...counts.values()].reduce((a, b) => a + b, 0)
        return sum === total ? counts : undefined
      },
      30_000,
      `${total} events after the retries`,
    )
    for (const s of sent) expect(final.get(s.name), `seed ${seed}: ${s.name}`).toBe(s.events)
    expect(final.size).toBe(sent.length)

    // A clean stop and another start keep the data.
    await stop(first)
    const again = await startAll(data.dir)
    try {
      const counts = await eventsByName(again)
      for (const s of sent) expect(counts.get(s.name)).toBe(s.events)
    } finally {
      await stop(again)
    }
  })
  it('moves an installation into Kafka and Cassandra: same sites and keys, same numbers', async () => {
    const config = testConfig()
    const names = {
      TALLY_TOPIC_RAW: config.kafka.topicRaw,
      TALLY_TOPIC_DEAD_LETTER: config.kafka.topicDeadLetter,
      KAFKA_PARTITIONS: String(config.kafka.partitions),
    }
    const dir = tempDataDir('tally-move-')
    const logger = createLogger('silent')
    const started: Array<{ close(): Promise<void> }> = []
    try {
      const rand = seeded(7)
      const sent = Array.from({ length: 60 }, (_, i) => request(i, rand, Date.now()))
      const embedded = await startAll(dir.dir, names)
      for (const s of sent) expect(await post(embedded, s)).toBe(200)
      const total = sent.reduce((n, s) => n + s.events, 0)
      await eventually(
        async () =>
          [...(await eventsByName(embedded)).values()].reduce((a, b) => a + b, 0) === total
            ? true
            : undefined,
        30_000,
        'events counted on the embedded backend',
      )
      await stop(embedded)
      // A goal of the site moves with it (the store opened directly: nothing runs on the folder).
      const goalCli = async (args: string[], env: Record<string, string>) => {
        const p = spawnRole(['sites', 'goals', 'localhost', ...args], env, 'move-goals')
        const exit = await p.exited
        const out = await readFile(p.logFile, 'utf8')
        expect(exit, out).toEqual({ code: 0, signal: null })
        return out.trim().split('\n').at(-1) ?? ''
      }
      await goalCli(['add', '--page', '/pricing/**'], { ...names, TALLY_DATA_DIR: dir.dir })

      const move = () => {
        const p = spawnRole(
          ['embedded', 'move-to-kafka', '--batch', '50'],
          { ...envOf(config), TALLY_DATA_DIR: dir.dir },
          'move',
        )
        return p.exited.then(async (exit) => ({ exit, log: await readFile(p.logFile, 'utf8') }))
      }
      const first = await move()
      expect(first.exit, first.log).toEqual({ code: 0, signal: null })
      expect(first.log).toContain(`sites created 1 (localhost)`)
      expect(first.log).toContain(`${total} records of ${config.kafka.topicRaw}`)
      // A rerun resumes where the first ended: nothing is copied twice.
      const again = await move()
      expect(again.exit, again.log).toEqual({ code: 0, signal: null })
      expect(again.log).toContain('already there 1')
      expect(again.log).toContain(`0 records of ${config.kafka.topicRaw}`)

      expect(
        JSON.parse(await goalCli(['list', '--json'], { ...envOf(config), TALLY_DATA_DIR: dir.dir })),
      ).toEqual([{ name: 'Visit /pricing/**', kind: 'page', target: '/pricing/**' }])

      // The same keys work on the Kafka and Cassandra roles, and the numbers come out the same.
      const stream = await startStream(config, logger, { port: 0 })
      started.push(stream)
      const ingest = await startIngest(config, logger, { port: 0 })
      started.push(ingest)
      const query = await startQuery(config, logger, { port: 0 })
      started.push(query)
      const extra = request(1000, rand, Date.now())
      expect(await post({ ingest: ingest.url, writeKey: embedded.writeKey }, extra)).toBe(200)
      const moved = await eventually(
        async () => {
          const counts = await eventsByName({ query: query.url, readToken: embedded.readToken })
          return [...counts.values()].reduce((a, b) => a + b, 0) === total + extra.events ? counts : undefined
        },
        60_000,
        'moved events counted on Kafka and Cassandra',
      )
      for (const s of [...sent, extra]) expect(moved.get(s.name), s.name).toBe(s.events)
    } finally {
      for (const part of started.reverse()) await part.close()
      dir.remove()
      await cleanup(config)
    }
  })
})
