import { gunzipSync } from 'node:zlib'
import type { FastifyInstance } from 'fastify'
import { Compile } from 'typebox/compile'
import { afterEach, describe, expect, it } from 'vitest'
import { loadConfig } from '../../core/config.js'
import { createLogger } from '../../core/log.js'
import type { EventLogWriter, LogRecord } from '../../core/ports/event-log.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildIngestApp } from '../../ingest/app.js'
import { createIngestMetrics } from '../../ingest/metrics.js'
import { normalizeEvent } from '../../ingest/normalize.js'
import { compactScript, trackerScript } from '../../ingest/tracker/plugin.js'
import { UserAgentParser } from '../../ingest/user-agent.js'
import { SegmentEventV1 } from '../../schemas/events.js'
import { TrackerSandbox } from '../helpers/browser.js'

const segment = Compile(SegmentEventV1)
const uaParser = new UserAgentParser()

/** Each event passes the ingest schema and normalization as a browser-sent batch item would. */
function expectAccepted(events: Array<Record<string, unknown>>): void {
  for (const e of events) {
    expect(segment.Check(e), JSON.stringify([...segment.Errors(e)])).toBe(true)
    const r = normalizeEvent(
      e,
      {
        siteId: 's',
        userAgent:
          'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36',
        // Received when the simulated browser sent it (its clock is in 2025): older events are refused.
        receivedAtMs: typeof e.timestamp === 'string' ? Date.parse(e.timestamp) : Date.now(),
        batchSentAt: undefined,
        routeType: undefined,
        imported: false,
      },
      loadConfig({}).ingest,
      uaParser,
    )
    expect(r.ok, JSON.stringify(r)).toBe(true)
  }
}

describe('tracker script as served', () => {
  it('is under 3 KB gzipped and valid JavaScript', () => {
    const script = trackerScript()
    expect(script.gzip.length).toBeLessThan(3 * 1024)
    expect(gunzipSync(script.gzip).equals(script.source)).toBe(true)
    // Parses (does not run): a compaction that broke the syntax fails here.
    expect(() => new Function(script.source.toString('utf8'))).not.toThrow()
  })

  it('compaction drops only whole-line comments, blank lines and indentation', () => {
    expect(compactScript('// head\n  const a = "//x"\n\n    // note\n  f(a) // tail\n')).toBe(
      'const a = "//x"\nf(a) // tail',
    )
  })
})

describe('tracker behaviour (simulated window)', () => {
  it('sends a page view on load, SPA navigations, custom events and outbound clicks, Segment-shaped', async () => {
    const t = new TrackerSandbox({
      url: 'https://shop.test/?utm_source=news&utm_campaign=spring',
      referrer: 'https://search.test/q',
      beacon: () => true,
    })
    t.pushState('/pricing')
    // Same URL again (routers do this): no new page view.
    t.replaceState('/pricing')
    t.call('track', 'Signed Up', { plan: 'pro' })
    t.back('/?utm_source=news&utm_campaign=spring')
    t.clickLink('/internal')
    t.clickLink('https://elsewhere.test/page')
    t.clickLink('https://elsewhere.test/middle', 'auxclick', 1)
    t.clickLink('https://elsewhere.test/right', 'auxclick', 2)
    await t.tick(1000)
    const events = t.events()
    expect(events.map((e) => [e.type, e.event ?? (e.properties as { path: string }).path])).toEqual([
      ['page', '/'],
      ['page', '/pricing'],
      ['track', 'Signed Up'],
      ['page', '/'],
      ['track', 'Outbound Link Clicked'],
      ['track', 'Outbound Link Clicked'],
    ])
    expect(t.sent.every((s) => s.via === 'beacon' && s.url === 'https://ingest.test/v1/b')).toBe(true)
    expect(
      t.sent.every((s) => s.body.writeKey === 'wk_test' && !Number.isNaN(Date.parse(s.body.sentAt))),
    ).toBe(true)
    expectAccepted(events)
    const ids = new Set(events.map((e) => e.anonymousId))
    expect(ids.size).toBe(1)
    expect(t.storage.get('tally_aid')).toBe([...ids][0])
    expect(new Set(events.map((e) => e.messageId)).size).toBe(events.length)
    const first = events[0]!
    expect(first.context).toMatchObject({
      page: {
        path: '/',
        referrer: 'https://search.test/q',
        url: 'https://shop.test/?utm_source=news&utm_campaign=spring',
      },
      campaign: { source: 'news', name: 'spring' },
      library: { name: 'tally.js' },
    })
    expect(events[2]!.properties).toEqual({ plan: 'pro' })
    expect(events[4]!.properties).toEqual({ url: 'https://elsewhere.test/page' })
    // Delivered: nothing left queued.
    expect(t.storage.has('tally_q')).toBe(false)
  })

  it('falls back to fetch with keepalive and retries a failed batch with the same messageIds', async () => {
    const t = new TrackerSandbox({ fetchAnswers: [503, 'error', 200] })
    t.call('track', 'Clicked')
    await t.tick(600)
    expect(t.sent).toHaveLength(1)
    expect(t.storage.get('tally_q')).toContain('Clicked')
    await t.tick(1000)
    expect(t.sent).toHaveLength(2)
    await t.tick(2000)
    expect(t.sent).toHaveLength(3)
    await t.tick(60_000)
    expect(t.sent).toHaveLength(3)
    const attempts = t.sent.map((s) => s.body.batch.map((e) => e.messageId))
    expect(attempts[1]).toEqual(attempts[0])
    expect(attempts[2]).toEqual(attempts[0])
    expect(attempts[0]).toHaveLength(2)
    expect(t.sent.every((s) => s.via === 'fetch')).toBe(true)
    expect(t.storage.has('tally_q')).toBe(false)
  })

  it('a batch refused with 400 is dropped, not retried', async () => {
    const t = new TrackerSandbox({ fetchAnswers: [400, 200] })
    await t.tick(60_000)
    expect(t.sent).toHaveLength(1)
    expect(t.storage.has('tally_q')).toBe(false)
  })

  it('events still queued when the page went away are sent by the next page load, same messageIds', async () => {
    const storage = new Map<string, string>()
    const first = new TrackerSandbox({ storage, fetchAnswers: ['error'] })
    first.call('track', 'Queued')
    await first.tick(600)
    const queued = first.sent[0]!.body.batch.map((e) => e.messageId)
    const second = new TrackerSandbox({ storage, beacon: () => true })
    await second.tick(600)
    const sent = second.events()
    expect(sent.slice(0, 2).map((e) => e.messageId)).toEqual(queued)
    expect(sent).toHaveLength(3)
    expect(sent[2]!.anonymousId).toBe(sent[0]!.anonymousId)
  })

  it('flushes at once on pagehide, before the batching delay', async () => {
    const t = new TrackerSandbox({ beacon: () => true, attrs: { 'batch-ms': '10000' } })
    t.call('track', 'Last')
    expect(t.sent).toHaveLength(0)
    t.pagehide()
    expect(t.events().map((e) => e.event ?? e.type)).toEqual(['page', 'Last'])
  })

  it('flushes at once on beforeunload, while the page still lives (an event tracked just before a navigation)', async () => {
    const t = new TrackerSandbox({ beacon: () => true, attrs: { 'batch-ms': '10000' } })
    t.call('track', 'Leaving')
    expect(t.sent).toHaveLength(0)
    t.beforeunload()
    expect(t.events().map((e) => e.event ?? e.type)).toEqual(['page', 'Leaving'])
    // pagehide after it sends nothing twice.
    t.pagehide()
    expect(t.events()).toHaveLength(2)
  })

  it('honours Global Privacy Control (default) and Do Not Track (when asked): nothing sent or stored', async () => {
    for (const opts of [{ gpc: true }, { dnt: '1', attrs: { 'honor-dnt': 'true' } }]) {
      const t = new TrackerSandbox({ ...opts, beacon: () => true })
      t.call('track', 'X')
      t.pushState('/next')
      t.pagehide()
      await t.tick(5000)
      expect(t.sent).toEqual([])
      expect(t.storage.size).toBe(0)
      expect((t.context.tally as { off: boolean }).off).toBe(true)
    }
    // GPC ignored when the site says so; DNT ignored by default.
    const g = new TrackerSandbox({ gpc: true, attrs: { 'honor-gpc': 'false' }, beacon: () => true })
    const dnt = new TrackerSandbox({ dnt: '1', beacon: () => true })
    await g.tick(1000)
    await dnt.tick(1000)
    expect(g.sent).toHaveLength(1)
    expect(dnt.sent).toHaveLength(1)
  })

  it('storage "none" keeps nothing on the device; early calls of the snippet stub are replayed', async () => {
    const t = new TrackerSandbox({
      attrs: { storage: 'none' },
      beacon: () => true,
      before:
        "window.tally = function () { (tally.q = tally.q || []).push(arguments) }; tally('track', 'Early', { a: 1 })",
    })
    await t.tick(1000)
    expect(t.storage.size).toBe(0)
    expect(t.events().map((e) => e.event ?? e.type)).toEqual(['page', 'Early'])
    expect(typeof t.events()[0]!.anonymousId).toBe('string')
  })

  it('data-api and a prefixed script URL choose where events go; data-auto="false" sends no automatic page view', async () => {
    const proxied = new TrackerSandbox({ src: 'https://shop.test/stats/t.js?v=1', beacon: () => true })
    const explicit = new TrackerSandbox({
      attrs: { api: 'https://collect.test/p/', auto: 'false' },
      beacon: () => true,
    })
    explicit.call('page')
    await proxied.tick(1000)
    await explicit.tick(1000)
    expect(proxied.sent[0]!.url).toBe('https://shop.test/stats/v1/b')
    expect(explicit.sent[0]!.url).toBe('https://collect.test/p/v1/b')
    expect(explicit.events()).toHaveLength(1)
  })

  it('identify attaches userId to later events and is kept for the next page', async () => {
    const t = new TrackerSandbox({ beacon: () => true })
    t.call('identify', 'user-7', { plan: 'pro' })
    t.call('track', 'After')
    await t.tick(1000)
    expect(t.events().map((e) => [e.type, e.userId])).toEqual([
      ['page', undefined],
      ['identify', 'user-7'],
      ['track', 'user-7'],
    ])
    expectAccepted(t.events())
    expect(t.storage.get('tally_uid')).toBe('user-7')
  })
})

class MemoryLog implements EventLogWriter {
  readonly records: LogRecord[] = []
  async append(_topic: string, records: readonly LogRecord[]): Promise<void> {
    this.records.push(...records)
  }
  healthy(): boolean {
    return true
  }
  async close(): Promise<void> {}
}

const site: Site = {
  siteId: 'site-1',
  domain: 'shop.test',
  origins: ['https://shop.test'],
  writeKey: 'wk_test',
  readTokenHashes: [],
  createdAt: new Date(0),
}

describe('ingest serves the tracker', () => {
  let app: FastifyInstance | undefined
  afterEach(async () => {
    await app?.close()
    app = undefined
  })

  async function build(env: Record<string, string>, log = new MemoryLog()): Promise<FastifyInstance> {
    app = await buildIngestApp({
      config: loadConfig({ LOG_LEVEL: 'silent', ...env }).ingest,
      topic: 'raw',
      log,
      sites: {
        byWriteKey: async (k) => (k === site.writeKey ? site : undefined),
        isKnownOrigin: async () => true,
      },
      metrics: createIngestMetrics(),
      logger: createLogger('silent'),
    })
    return app
  }

  it('GET /t.js: JavaScript, gzip when accepted, cacheable with an ETag', async () => {
    const a = await build({})
    const plain = await a.inject({ method: 'GET', url: '/t.js' })
    expect(plain.statusCode).toBe(200)
    expect(plain.headers['content-type']).toBe('text/javascript; charset=utf-8')
    expect(plain.headers['content-encoding']).toBeUndefined()
    expect(plain.rawPayload.equals(trackerScript().source)).toBe(true)
    const gz = await a.inject({ method: 'GET', url: '/t.js', headers: { 'accept-encoding': 'gzip, br' } })
    expect(gz.headers['content-encoding']).toBe('gzip')
    expect(gz.rawPayload.length).toBeLessThan(3 * 1024)
    expect(gunzipSync(gz.rawPayload).equals(trackerScript().source)).toBe(true)
    const again = await a.inject({
      method: 'GET',
      url: '/t.js',
      headers: { 'if-none-match': String(plain.headers.etag) },
    })
    expect(again.statusCode).toBe(304)
    expect((await a.inject({ method: 'GET', url: '/stats/t.js' })).statusCode).toBe(404)
  })

  it('the tracker payload, as sent (text/plain, key in the body), is accepted by /v1/b', async () => {
    const t = new TrackerSandbox({ beacon: () => true })
    t.call('track', 'Signed Up', { plan: 'pro' })
    await t.tick(1000)
    const log = new MemoryLog()
    const a = await build({}, log)
    const res = await a.inject({
      method: 'POST',
      url: '/v1/b',
      headers: { 'content-type': 'text/plain;charset=UTF-8', origin: 'https://shop.test' },
      payload: JSON.stringify(t.sent[0]!.body),
    })
    expect(res.statusCode, res.body).toBe(200)
    expect(res.json()).toEqual({ success: true, accepted: 2, rejected: [] })
    expect(log.records).toHaveLength(2)
  })

  it('TALLY_TRACKER_PREFIX: the tracker and every /v1 route also answer under the prefix', async () => {
    const log = new MemoryLog()
    const a = await build({ TALLY_TRACKER_PREFIX: '/stats/' }, log)
    expect((await a.inject({ method: 'GET', url: '/stats/t.js' })).statusCode).toBe(200)
    expect((await a.inject({ method: 'GET', url: '/t.js' })).statusCode).toBe(200)
    for (const url of ['/stats/v1/b', '/stats/v1/batch', '/v1/b']) {
      const res = await a.inject({
        method: 'POST',
        url,
        headers: { 'content-type': 'text/plain' },
        payload: JSON.stringify({
          writeKey: 'wk_test',
          batch: [{ type: 'track', event: 'E', anonymousId: 'a' }],
        }),
      })
      expect(res.statusCode, `${url}: ${res.body}`).toBe(200)
    }
    const single = await a.inject({
      method: 'POST',
      url: '/stats/v1/t',
      headers: { 'content-type': 'text/plain' },
      payload: JSON.stringify({ writeKey: 'wk_test', event: 'E', anonymousId: 'a' }),
    })
    expect(single.statusCode).toBe(200)
    expect(log.records).toHaveLength(4)
    // Only the API is aliased.
    expect((await a.inject({ method: 'GET', url: '/stats/healthz' })).statusCode).toBe(404)
    expect((await a.inject({ method: 'GET', url: '/stats/v1/pixel.gif' })).statusCode).toBe(401)
  })

  it('TALLY_TRACKER_PREFIX must be a path prefix', () => {
    expect(loadConfig({ TALLY_TRACKER_PREFIX: '/a/b/' }).ingest.trackerPrefix).toBe('/a/b')
    expect(loadConfig({}).ingest.trackerPrefix).toBe('')
    for (const bad of ['stats', '/a b', '/v1', '/x?y'])
      expect(() => loadConfig({ TALLY_TRACKER_PREFIX: bad }), bad).toThrow(/TALLY_TRACKER_PREFIX/)
  })
})
