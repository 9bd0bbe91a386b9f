import type { FastifyInstance } from 'fastify'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { loadConfig } from '../../core/config.js'
import { createLogger } from '../../core/log.js'
import type { LogRecord } from '../../core/ports/event-log.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildIngestApp } from '../../ingest/app.js'
import { DailySalt } from '../../ingest/daily-salt.js'
import { createIngestMetrics, type IngestMetrics } from '../../ingest/metrics.js'
import { SiteCache } from '../../ingest/site-cache.js'

/**
 * Plausible's event API (POST /api/event) with a fake log and site store: the request shapes of
 * Plausible's documentation and of its tracker, domains and aliases, unknown domains and bad
 * bodies answered as Plausible answers them (nothing logged), and the daily salt of cookieless
 * visitor ids.
 */

const UA =
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36'

function site(siteId: string, domain: string): Site {
  return {
    siteId,
    domain,
    origins: [],
    writeKey: `wk_${siteId}`,
    readTokenHashes: [],
    createdAt: new Date(0),
  }
}

const SHOP = site('shop', 'shop.test')
const BLOG = site('blog', 'blog.test')
/** domain or alias → site, as the site store keeps them. */
const DOMAINS: Record<string, Site> = { 'shop.test': SHOP, 'shop-staging.test': SHOP, 'blog.test': BLOG }

let app: FastifyInstance
let records: LogRecord[]
let metrics: IngestMetrics
let nowMs: number
/** TALLY_TRUST_PROXY of the app under test ('1': a proxy in front; '': none). */
let trustProxy = '1'
/** Salts the fake store handed out, by day. */
let salts: Map<string, Buffer>

async function rebuild(): Promise<void> {
  records = []
  metrics = createIngestMetrics()
  nowMs = Date.parse('2026-03-10T12:00:00Z')
  salts = new Map()
  const store = {
    byWriteKey: async () => undefined,
    list: async () => [],
    byDomain: async (d: string) => DOMAINS[d],
  }
  const sites = new SiteCache(store)
  const salt = new DailySalt(
    {
      dailySalt: async (day: string) => {
        if (!salts.has(day)) salts.set(day, Buffer.from(`salt-of-${day}`))
        return salts.get(day)!
      },
    },
    () => nowMs,
  )
  app = await buildIngestApp({
    // Most tests speak as a trusted proxy in front of ingest (X-Forwarded-For names the visitor).
    config: loadConfig({ LOG_LEVEL: 'silent', ...(trustProxy ? { TALLY_TRUST_PROXY: trustProxy } : {}) })
      .ingest,
    topic: 'raw',
    log: {
      append: async (_t, rs) => void records.push(...rs),
      healthy: () => true,
      close: async () => {},
    },
    sites,
    metrics,
    logger: createLogger('silent'),
    plausible: { sites, salt },
  })
}

beforeEach(rebuild)

afterEach(async () => {
  await app.close()
})

type Json = Record<string, unknown>

function post(payload: unknown, headers: Record<string, string> = {}) {
  return app.inject({
    method: 'POST',
    url: '/api/event',
    headers: { 'user-agent': UA, 'content-type': 'application/json', ...headers },
    remoteAddress: '203.0.113.7',
    payload: typeof payload === 'string' ? payload : JSON.stringify(payload),
  })
}

function logged(): Json[] {
  return records.map((r) => JSON.parse(r.value.toString('utf8')) as Json)
}

async function dropped(reason: string): Promise<number> {
  const m = await metrics.plausibleDropped.get()
  return m.values.find((v) => v.labels.reason === reason)?.value ?? 0
}

describe('Plausible event API: request shapes', () => {
  it("takes the documented long form (Plausible's curl example): 202 ok, a page event of the site", async () => {
    // https://plausible.io/docs/events-api: the example request.
    const res = await post(
      {
        name: 'pageview',
        url: 'https://shop.test/login?ref=nav',
        domain: 'shop.test',
        referrer: 'https://www.google.com/',
      },
      { 'x-forwarded-for': '127.0.0.1' },
    )
    expect(res.statusCode).toBe(202)
    expect(res.body).toBe('ok')
    expect(res.headers['content-type']).toMatch(/^text\/plain/)
    const [e] = logged()
    expect(e).toMatchObject({
      siteId: 'shop',
      type: 'page',
      properties: { url: 'https://shop.test/login?ref=nav', path: '/login', search: '?ref=nav' },
      context: {
        page: { path: '/login', referrer: 'https://www.google.com/' },
        library: { name: 'plausible' },
      },
    })
    expect(e!.anonymousId).toMatch(/^pl_[0-9a-f]{32}$/)
    // The IP is used for the hash only: it is nowhere in the logged event.
    expect(JSON.stringify(e)).not.toContain('127.0.0.1')
    expect(JSON.stringify(e)).not.toContain('203.0.113.7')
  })

  it('takes the long form custom event with props, revenue and interactive: false (a track event)', async () => {
    const res = await post({
      name: 'Purchase',
      url: 'https://shop.test/checkout',
      domain: 'shop.test',
      props: { plan: 'pro', seats: 3, empty: '', nested: { no: 1 } },
      revenue: { amount: '15.99', currency: 'usd' },
      interactive: false,
    })
    expect(res.statusCode).toBe(202)
    expect(logged()[0]).toMatchObject({
      type: 'track',
      event: 'Purchase',
      properties: { plan: 'pro', seats: 3, revenue: 15.99, currency: 'USD' },
      context: { page: { path: '/checkout' }, plausible: { interactive: false } },
    })
    expect(logged()[0]!.properties).not.toHaveProperty('empty')
    expect(logged()[0]!.properties).not.toHaveProperty('nested')
  })

  it('takes the short form the tracker sends as text/plain (n, u, d, r, p, $, v), and props as JSON text (m)', async () => {
    const short = {
      n: 'Signup',
      u: 'https://shop.test/pricing',
      d: 'shop.test',
      r: null,
      p: { tier: 'startup' },
      $: { amount: 9, currency: 'EUR' },
      v: 36,
    }
    expect((await post(JSON.stringify(short), { 'content-type': 'text/plain' })).statusCode).toBe(202)
    expect(
      (await post({ n: 'Old', u: 'https://shop.test/', d: 'shop.test', m: '{"a":"b"}' })).statusCode,
    ).toBe(202)
    const [a, b] = logged()
    expect(a).toMatchObject({
      type: 'track',
      event: 'Signup',
      properties: { tier: 'startup', revenue: 9, currency: 'EUR' },
      context: { library: { name: 'plausible', version: '36' } },
    })
    expect((a!.context as Json).page).not.toHaveProperty('referrer')
    expect(b).toMatchObject({ event: 'Old', properties: { a: 'b' } })
  })

  it('keeps the fragment in the path in hash mode (h: 1) only, and decodes the path as Plausible does', async () => {
    await post({ n: 'pageview', u: 'https://shop.test/app/#/cart', d: 'shop.test', h: 1 })
    await post({ n: 'pageview', u: 'https://shop.test/app/#/cart', d: 'shop.test' })
    await post({ n: 'pageview', u: 'https://shop.test/caf%C3%A9', d: 'shop.test' })
    expect(logged().map((e) => (e.properties as Json).path)).toEqual(['/app/#/cart', '/app/', '/café'])
  })

  it('finds the site by an alias, by the URL host without a domain, strips www., and sends to each of several domains', async () => {
    await post({ n: 'pageview', u: 'https://shop-staging.test/', d: 'shop-staging.test' })
    await post({ n: 'pageview', u: 'https://www.shop.test/' })
    await post({ n: 'pageview', u: 'https://shop.test/', d: 'www.shop.test' })
    const res = await post({ n: 'pageview', u: 'https://shop.test/', d: 'shop.test,blog.test,nobody.test' })
    expect(res.statusCode).toBe(202)
    expect(res.headers['x-plausible-dropped']).toBe('1')
    expect(logged().map((e) => e.siteId)).toEqual(['shop', 'shop', 'shop', 'shop', 'blog'])
  })
})

describe('Plausible event API: what is not logged', () => {
  it('answers an unknown domain 202 ok as Plausible does, logs nothing and counts it', async () => {
    const res = await post({ n: 'pageview', u: 'https://nobody.test/', d: 'nobody.test' })
    expect(res.statusCode).toBe(202)
    expect(res.body).toBe('ok')
    expect(res.headers['x-plausible-dropped']).toBe('1')
    expect(records).toHaveLength(0)
    expect(await dropped('unknown_domain')).toBe(1)
  })

  it("drops the tracker's engagement pings (202, counted, not logged)", async () => {
    const res = await post({
      n: 'engagement',
      u: 'https://shop.test/',
      d: 'shop.test',
      sd: 40,
      e: 5000,
      v: 36,
    })
    expect(res.statusCode).toBe(202)
    expect(records).toHaveLength(0)
    expect(await dropped('engagement')).toBe(1)
  })

  it.each([
    ['not JSON', '{"n": "pageview",', { request: ['Unable to parse request body as json'] }],
    ['a JSON array', '[1, 2]', { request: ['Unable to parse request body as json'] }],
    ['an empty body', '', { request: ['Unable to parse request body as json'] }],
    ['no name', { u: 'https://shop.test/', d: 'shop.test' }, { event_name: ["can't be blank"] }],
    ['no url', { n: 'pageview', d: 'shop.test' }, { url: ['is required'] }],
    ['a url that is no string', { n: 'pageview', u: 42, d: 'shop.test' }, { url: ['must be a string'] }],
    ['a relative url', { n: 'pageview', u: '/x', d: 'shop.test' }, { url: ['must be an absolute URL'] }],
    [
      'a data: url',
      { n: 'pageview', u: 'data:text/html,hi', d: 'shop.test' },
      { url: ['scheme is not allowed'] },
    ],
    ['a blank domain', { n: 'pageview', u: 'https://shop.test/', d: ' ' }, { domain: ["can't be blank"] }],
    [
      'a path longer than 2000 characters',
      { n: 'pageview', u: `https://shop.test/${'a'.repeat(2000)}`, d: 'shop.test' },
      { pathname: ['should be at most 2000 character(s)'] },
    ],
  ])("answers a body with %s 400 with Plausible's errors, logging nothing", async (_what, body, errors) => {
    const res = await post(body)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual({ errors })
    expect(records).toHaveLength(0)
  })
})

describe('Plausible event API: cookieless visitors and the daily salt', () => {
  const hit = (ip: string, ua = UA, path = '/') =>
    post(
      { n: 'pageview', u: `https://shop.test${path}`, d: 'shop.test' },
      { 'x-forwarded-for': ip, 'user-agent': ua },
    )
  const ids = () => logged().map((e) => e.anonymousId as string)

  it('gives one visitor one id through a day (IP and user agent), another IP or browser another id', async () => {
    await hit('198.51.100.1', UA, '/a')
    await hit('198.51.100.1', UA, '/b')
    await hit('198.51.100.2', UA)
    await hit('198.51.100.1', `${UA} Edg/120.0`)
    const [a, b, c, d] = ids()
    expect(a).toBe(b)
    expect(new Set([a, c, d]).size).toBe(3)
  })

  it('believes X-Forwarded-For only behind a trusted proxy: without TALLY_TRUST_PROXY a client cannot pose as other visitors', async () => {
    trustProxy = ''
    try {
      await app.close()
      records = []
      // A fresh app without trust (beforeEach built one with it).
      await rebuild()
      await hit('198.51.100.1')
      await hit('198.51.100.2')
      await hit('198.51.100.3')
      expect(new Set(ids()).size).toBe(1)
    } finally {
      trustProxy = '1'
    }
  })

  it('counts the same visitor on two days as two visitors (the salt rotates at midnight UTC)', async () => {
    nowMs = Date.parse('2026-03-10T23:59:59Z')
    await hit('198.51.100.1')
    nowMs = Date.parse('2026-03-11T00:00:01Z')
    await hit('198.51.100.1')
    await hit('198.51.100.1')
    const [day1, day2, day2again] = ids()
    expect(day1).not.toBe(day2)
    expect(day2).toBe(day2again)
    expect([...salts.keys()]).toEqual(['2026-03-10', '2026-03-11'])
  })

  it('gives the same visitor another id on each site', async () => {
    await post({ n: 'pageview', u: 'https://shop.test/', d: 'shop.test,blog.test' })
    const [shop, blog] = ids()
    expect(shop).not.toBe(blog)
  })
})
