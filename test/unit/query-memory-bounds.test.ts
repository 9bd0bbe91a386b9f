import { Agent, get } from 'node:http'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { afterEach, describe, expect, it } from 'vitest'
import { hashToken } from '../../core/keys.js'
import { createLogger } from '../../core/log.js'
import type { AggregateReader } from '../../core/ports/aggregate-store.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import type { Freshness, SnapshotSource } from '../../query/freshness.js'

/**
 * One read-token holder must not be able to grow a query process without bound. Every distinct URL
 * is a new query, and a URL can be ~16 KB (Node's header limit) of filter values that parse: the
 * caches a request fills (parsed URLs, answers, settled reads) must count what they hold, keys
 * included, within their budgets. The truth is the process heap, measured after a collection,
 * against the budgets given here.
 */

setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

const NOW = Date.parse('2024-05-20T12:00:00Z')
const TOKEN = 'rt_memory'
const site = {
  siteId: 'memory.test',
  domain: 'memory.test',
  origins: [],
  writeKey: 'wk_memory',
  readTokenHashes: [hashToken(TOKEN)],
  createdAt: NOW - 86_400_000,
} as unknown as Site
const freshness: Freshness = {
  completeThroughMs: NOW - 3_600_000,
  receivedThroughMs: NOW,
  graceMs: 300_000,
  partitionsReporting: 1,
  partitionsExpected: 1,
}
const source: SnapshotSource = {
  current: async () => freshness,
  snapshot: async () => ({ freshness, version: 'v1', finalMark: 'm1' }),
}
/** Every read answers nothing: the answers are small, the queries are not. */
const reader = new Proxy({}, { get: () => async () => [] }) as unknown as AggregateReader

let close: (() => Promise<void>) | undefined
afterEach(async () => {
  await close?.()
  close = undefined
})

describe('query caches under distinct long URLs', () => {
  it('keep the heap within their byte budgets, keys counted', async () => {
    const cacheBytes = 1024 * 1024
    const app = await buildQueryApp({
      reader,
      auth: new ReadAccessCache({
        get: async (id) => (id === site.siteId ? site : undefined),
        list: async () => [site],
      }),
      freshness: source,
      logger: createLogger('silent'),
      now: () => NOW,
      retentionSeconds: { minute: 0, hour: 0, day: 0 },
      answerCache: { maxBytes: cacheBytes, maxAgeMs: 60_000 },
    })
    const base = await app.listen({ port: 0, host: '127.0.0.1' })
    const agent = new Agent({ keepAlive: true, maxSockets: 1 })
    close = async () => {
      agent.destroy()
      await app.close()
    }
    const long = 'x'.repeat(15_000)
    // Over a socket, as a client would (inject's responses are kept by its own machinery).
    const ask = (i: number) =>
      new Promise<{ statusCode: number; body: string }>((resolve, reject) => {
        const url = `${base}/v1/stats/aggregate?site=${site.siteId}&period=day&metrics=events&filters=path==/${i}${long}`
        get(url, { agent, headers: { authorization: `Bearer ${TOKEN}` } }, (res) => {
          let body = ''
          res.setEncoding('utf8')
          res.on('data', (c: string) => {
            body += c
          })
          res.on('end', () => resolve({ statusCode: res.statusCode ?? 0, body }))
        }).on('error', reject)
      })
    // Warm up (code, pools), then measure.
    const first = await ask(-1)
    expect(first.statusCode, first.body).toBe(200)
    gc()
    const before = process.memoryUsage().heapUsed
    const requests = 6000
    for (let i = 0; i < requests; i++) {
      const res = await ask(i)
      if (res.statusCode !== 200) throw new Error(res.body)
    }
    gc()
    const grownBytes = process.memoryUsage().heapUsed - before
    // What the requests carried: each holds ~15 KB that a cache keeping it would keep.
    const carried = requests * long.length
    // Budgets: the answers and the settled reads (cacheBytes each) and the parsed URLs (their own
    // budget, 8 MiB), with a factor 3 for object overhead. Without the bounds, the heap keeps a
    // multiple of all it was sent.
    const bound = 3 * (2 * cacheBytes + 8 * 1024 * 1024)
    expect(carried).toBeGreaterThan(2 * bound)
    expect(grownBytes).toBeLessThan(bound)
  }, 120_000)
})
