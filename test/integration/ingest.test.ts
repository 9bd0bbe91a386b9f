import { randomBytes, randomUUID } from 'node:crypto'
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib'
import {
  Analytics,
  type HTTPClient,
  type HTTPClientRequest,
  type HTTPResponse,
} from '@segment/analytics-node'
import type { LightMyRequestResponse } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadConfig } from '../../core/config.js'
import type { Site } from '../../core/ports/site-store.js'
import { requestIdOf } from '../../core/record/headers.js'
import { type EventType, RAW_EVENT_SCHEMA_VERSION } from '../../schemas/events.js'
import { cleanup, envOf, eventually, testConfig } from '../helpers/context.js'
import {
  basic,
  body,
  buildTestIngest,
  metricValue,
  migrateForIngest,
  type TestIngest,
} from '../helpers/ingest.js'
import { expectedRawEvent, USER_AGENTS } from '../helpers/raw-event.js'
import { type RawMessage, RawTopicReader } from '../helpers/raw-topic.js'

const config = testConfig()
let ingest: TestIngest
let reader: RawTopicReader
let siteA: Site
let siteB: Site
let url: string

beforeAll(async () => {
  await migrateForIngest(config)
  ingest = await buildTestIngest(config)
  reader = await RawTopicReader.start(config.kafka, config.kafka.topicRaw)
  siteA = await ingest.addSite(['https://app.site-a.test'])
  siteB = await ingest.addSite(['https://app.site-b.test'])
  url = await ingest.app.listen({ host: '127.0.0.1', port: 0 })
})

afterAll(async () => {
  await reader?.close()
  await ingest?.close()
  await cleanup(config)
})

type Json = Record<string, unknown>

function traceparent(): { header: string; traceId: string } {
  const traceId = randomBytes(16).toString('hex')
  return { header: `00-${traceId}-${randomBytes(8).toString('hex')}-01`, traceId }
}

function post(
  path: string,
  payload: unknown,
  headers: Record<string, string> = {},
): Promise<LightMyRequestResponse> {
  return ingest.app.inject({
    method: 'POST',
    url: path,
    headers: { 'content-type': 'application/json', 'user-agent': USER_AGENTS.chromeDesktop, ...headers },
    payload: typeof payload === 'string' || Buffer.isBuffer(payload) ? payload : JSON.stringify(payload),
  })
}

/** A client whose clock is `skewMs` off, sending an event that happened `ageMs` before it was sent. */
function clientTimes(skewMs: number, ageMs: number): { timestamp: string; sentAt: string } {
  const sentAt = Date.now() + skewMs
  return { timestamp: new Date(sentAt - ageMs).toISOString(), sentAt: new Date(sentAt).toISOString() }
}

function expectReceivedWithin(m: RawMessage, before: number, after: number): void {
  const t = Date.parse(m.event.receivedAt)
  expect(t).toBeGreaterThanOrEqual(before)
  expect(t).toBeLessThanOrEqual(after)
}

/** The request id is the traceparent's trace id here, so it rides in no header of its own. */
function expectHeaders(m: RawMessage, siteId: string, trace: string, requestId: string): void {
  expect(m.headers).toEqual({
    traceparent: trace,
    'tally-schema-version': String(RAW_EVENT_SCHEMA_VERSION),
    'tally-site-id': siteId,
  })
  expect(requestIdOf(m.headers)).toBe(requestId)
}

/** A payload of each type with every Segment spec field the type uses. */
function payloadFor(type: EventType, anonymousId: string): Json {
  const common: Json = {
    messageId: `msg-${randomUUID()}`,
    anonymousId,
    context: {
      ip: '198.51.100.77',
      locale: 'fr-FR',
      page: {
        path: '/pricing',
        url: 'https://site-a.test/pricing?utm_source=news',
        referrer: 'https://news.test/',
      },
      campaign: { source: 'news' },
      library: { name: 'curl', version: '8' },
    },
    integrations: { All: true, Mixpanel: false },
    // The client's clock is 93.5 s fast; the event happened 2.5 s before it was sent.
    ...clientTimes(93_500, 2500),
  }
  switch (type) {
    case 'track':
      return {
        ...common,
        event: 'Order Completed',
        properties: { orderId: 'o-1', total: 42.5, items: [{ sku: 'a', qty: 2 }], gift: false },
      }
    case 'page':
      return {
        ...common,
        name: 'Pricing',
        category: 'Docs',
        properties: { path: '/pricing', title: 'Pricing' },
      }
    case 'screen':
      return { ...common, name: 'Home', category: 'Main', properties: { variant: 'b' } }
    case 'identify':
      return { ...common, userId: 'user-1', traits: { email: 'a@b.test', plan: 'pro', logins: 3 } }
    case 'group':
      return { ...common, userId: 'user-1', groupId: 77, traits: { name: 'Acme', employees: 12 } }
    case 'alias':
      return { ...common, userId: 'user-1', previousId: anonymousId }
  }
}

describe('single-event endpoints', () => {
  it('logs every field of every endpoint (long and analytics.js short paths), enriched, in send order', async () => {
    const paths: Array<[string, EventType]> = [
      ['track', 'track'],
      ['page', 'page'],
      ['screen', 'screen'],
      ['identify', 'identify'],
      ['group', 'group'],
      ['alias', 'alias'],
      ['t', 'track'],
      ['p', 'page'],
      ['s', 'screen'],
      ['i', 'identify'],
      ['g', 'group'],
      ['a', 'alias'],
    ]
    // One visitor: all of its events share a key, hence a partition, and stay in order.
    const visitor = `anon-${randomUUID()}`
    const sent: Array<{
      payload: Json
      type: EventType
      trace: string
      requestId: string
      before: number
      after: number
    }> = []
    for (const [path, type] of paths) {
      const payload = payloadFor(type, visitor)
      const trace = traceparent()
      const before = Date.now()
      const res = await post(`/v1/${path}`, payload, {
        authorization: basic(siteA.writeKey),
        traceparent: trace.header,
      })
      const after = Date.now()
      expect(res.statusCode, `${path}: ${res.body}`).toBe(200)
      expect(body(res)).toEqual({ success: true, accepted: 1, rejected: [] })
      // The request id is the incoming trace id, echoed back.
      expect(res.headers['x-request-id']).toBe(trace.traceId)
      sent.push({ payload, type, trace: trace.header, requestId: trace.traceId, before, after })
    }
    const found = await reader.waitFor(sent.map((s) => s.payload.messageId as string))
    const offsets: bigint[] = []
    const partitions = new Set<number>()
    for (const s of sent) {
      const list = found.get(s.payload.messageId as string) ?? []
      expect(list).toHaveLength(1)
      const m = list[0]!
      expect(m.key).toBe(`${siteA.siteId}:${visitor}`)
      expectHeaders(m, siteA.siteId, s.trace, s.requestId)
      expectReceivedWithin(m, s.before, s.after)
      expect(m.event).toEqual(
        expectedRawEvent(s.payload, {
          siteId: siteA.siteId,
          receivedAt: m.event.receivedAt,
          userAgent: undefined, // HTTP Basic: a server sent it, its User-Agent is not the visitor's
          routeType: s.type,
        }),
      )
      // Skew-corrected: 2.5 s before it reached us, whatever the client's clock said.
      expect(Date.parse(m.event.receivedAt) - Date.parse(m.event.timestamp)).toBe(2500)
      expect(m.recordBytes.toString()).not.toContain('198.51.100.77')
      partitions.add(m.partition)
      offsets.push(BigInt(m.offset))
    }
    expect(partitions.size).toBe(1)
    expect(offsets).toEqual([...offsets].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)))
  })

  it('carries a request id and a W3C trace context even when the client sends neither, and honours x-request-id', async () => {
    const plain = { type: 'track', event: 'No Trace', anonymousId: 'v-1', messageId: `msg-${randomUUID()}` }
    const res = await post('/v1/track', plain, { authorization: basic(siteA.writeKey) })
    expect(res.statusCode).toBe(200)
    const requestId = String(res.headers['x-request-id'])
    expect(requestId).toMatch(/^[0-9a-f]{32}$/)
    const m = await reader.one(plain.messageId)
    // One id to grep for: the generated trace context carries the request id as its trace id, and
    // the record needs no x-request-id header besides.
    expect(m.headers.traceparent).toMatch(new RegExp(`^00-${requestId}-[0-9a-f]{16}-01$`))
    expect(m.headers['x-request-id']).toBeUndefined()
    expect(requestIdOf(m.headers)).toBe(requestId)

    const own = { ...plain, messageId: `msg-${randomUUID()}` }
    const res2 = await post('/v1/track', own, {
      authorization: basic(siteA.writeKey),
      'x-request-id': 'lb-req-42.7',
    })
    expect(res2.headers['x-request-id']).toBe('lb-req-42.7')
    const m2 = await reader.one(own.messageId)
    expect(m2.headers['x-request-id']).toBe('lb-req-42.7')
    expect(m2.headers.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/)
    expect(requestIdOf(m2.headers)).toBe('lb-req-42.7')
  })

  it('assigns a messageId when the client sent none, and flags it as server-assigned', async () => {
    const payload = { event: 'No Id', anonymousId: `anon-${randomUUID()}`, properties: { n: 1 } }
    const before = Date.now()
    const res = await post('/v1/track', payload, { authorization: basic(siteA.writeKey) })
    expect(res.statusCode).toBe(200)
    const m = await eventually(
      async () => reader.messages.find((x) => x.event.anonymousId === payload.anonymousId),
      30_000,
      'the event without messageId',
    )
    expect(m.event.messageIdAssigned).toBe(true)
    expect(m.event.messageId.length).toBeGreaterThan(8)
    expectReceivedWithin(m, before, Date.now())
    expect(m.event).toEqual(
      expectedRawEvent(payload, {
        siteId: siteA.siteId,
        receivedAt: m.event.receivedAt,
        userAgent: undefined, // HTTP Basic: a server sent it, its User-Agent is not the visitor's
        routeType: 'track',
        assignedMessageId: m.event.messageId,
      }),
    )
  })

  it('parses the user agent into browser/os/device, flags bots, and never stores the client IP', async () => {
    const cases = [
      {
        ua: USER_AGENTS.safariIphone,
        expect: { browser: 'Mobile Safari', os: 'iOS', device: 'mobile' },
        bot: false,
      },
      {
        ua: USER_AGENTS.firefoxLinux,
        expect: { browser: 'Firefox', os: 'Linux', device: 'desktop' },
        bot: false,
      },
      { ua: USER_AGENTS.googlebot, expect: undefined, bot: true },
    ]
    for (const c of cases) {
      const payload = {
        anonymousId: 'ua-visitor',
        messageId: `msg-${randomUUID()}`,
        context: { ip: '203.0.113.200' },
        properties: {},
      }
      // A browser request (key in the body): its User-Agent header is the visitor's.
      const res = await post(
        '/v1/page',
        { ...payload, writeKey: siteA.writeKey },
        {
          'user-agent': c.ua,
          'x-forwarded-for': '203.0.113.201',
        },
      )
      expect(res.statusCode).toBe(200)
      const m = await reader.one(payload.messageId)
      if (c.expect) expect(m.event.ua).toEqual(c.expect)
      expect(m.event.bot).toBe(c.bot)
      expect(m.event.context).toEqual({})
      const stored = m.recordBytes.toString()
      expect(stored).not.toContain('203.0.113.200')
      expect(stored).not.toContain('203.0.113.201')
      expect(stored).not.toContain('127.0.0.1')
    }
  })
})

describe('batch and import', () => {
  for (const path of ['/v1/batch', '/v1/b']) {
    it(`${path} keeps the valid events, lists the invalid ones by index, and applies the batch context and sentAt`, async () => {
      const times = clientTimes(-45_000, 0)
      const batchContext = {
        library: { name: 'analytics-python', version: '2.3' },
        locale: 'en-GB',
        ip: '192.0.2.1',
      }
      const ok1 = {
        type: 'track',
        event: 'A',
        anonymousId: 'b-1',
        messageId: `msg-${randomUUID()}`,
        timestamp: new Date(Date.parse(times.sentAt) - 10_000).toISOString(),
      }
      const bad1 = { type: 'track', event: 'No identity', messageId: `msg-${randomUUID()}` }
      const ok2 = {
        type: 'page',
        name: 'Home',
        userId: 9001,
        messageId: `msg-${randomUUID()}`,
        context: { locale: 'de-DE', page: { path: '/' } },
        integrations: { All: false },
      }
      const bad2 = { type: 'click', anonymousId: 'b-1', messageId: `msg-${randomUUID()}` }
      const ok3 = { type: 'identify', anonymousId: 'b-3', traits: { a: 1 }, messageId: `msg-${randomUUID()}` }
      const bad3 = {
        type: 'track',
        event: 'Huge',
        anonymousId: 'b-1',
        messageId: `msg-${randomUUID()}`,
        properties: { blob: 'x'.repeat(40_000) },
      }
      const items = [ok1, bad1, ok2, bad2, ok3, bad3]
      const before = Date.now()
      const res = await post(
        path,
        { batch: items, sentAt: times.sentAt, context: batchContext, integrations: { Segment: true } },
        { authorization: basic(siteB.writeKey) },
      )
      const after = Date.now()
      expect(res.statusCode, res.body).toBe(200)
      const b = body(res)
      expect(b.success).toBe(true)
      expect(b.accepted).toBe(3)
      expect(b.rejected).toEqual([
        { index: 1, code: 'TALLY_ERR_MISSING_IDENTITY', message: expect.any(String), where: '/anonymousId' },
        { index: 3, code: 'TALLY_ERR_INVALID_EVENT', message: expect.any(String), where: '/type' },
        {
          index: 5,
          code: 'TALLY_ERR_EVENT_TOO_LARGE',
          message: expect.stringContaining(String(config.ingest.maxEventBytes)),
        },
      ])
      const found = await reader.waitFor([ok1, ok2, ok3].map((e) => e.messageId))
      for (const sent of [ok1, ok2, ok3]) {
        const list = found.get(sent.messageId)!
        expect(list).toHaveLength(1)
        const m = list[0]!
        expectReceivedWithin(m, before, after)
        expect(m.headers['tally-site-id']).toBe(siteB.siteId)
        expect(m.key).toBe(`${siteB.siteId}:${(sent as Json).anonymousId ?? (sent as Json).userId}`)
        expect(m.event).toEqual(
          expectedRawEvent(sent, {
            siteId: siteB.siteId,
            receivedAt: m.event.receivedAt,
            userAgent: undefined, // HTTP Basic: a server sent it, its User-Agent is not the visitor's
            batchSentAt: times.sentAt,
            batchContext,
            batchIntegrations: { Segment: true },
          }),
        )
      }
      // ok1 happened 10 s before the batch was sent by a clock 45 s slow.
      const m1 = found.get(ok1.messageId)![0]!
      expect(Date.parse(m1.event.receivedAt) - Date.parse(m1.event.timestamp)).toBe(10_000)
      await reader.catchUp()
      for (const bad of [bad1, bad2, bad3]) expect(reader.byMessageId(bad.messageId)).toEqual([])
    })
  }

  it('/v1/import keeps the original timestamps of historical events and flags them imported', async () => {
    const history = Array.from({ length: 5 }, (_, i) => ({
      type: 'track',
      event: 'Old Purchase',
      userId: `old-user-${i}`,
      messageId: `imp-${randomUUID()}`,
      timestamp: new Date(Date.UTC(2023, 4, 1 + i, 10, 0, 0, 123)).toISOString(),
      properties: { i },
    }))
    const sentAt = new Date().toISOString()
    const res = await post('/v1/import', { batch: history, sentAt }, { authorization: basic(siteA.writeKey) })
    expect(res.statusCode, res.body).toBe(200)
    expect(body(res)).toEqual({ success: true, accepted: 5, rejected: [] })
    const found = await reader.waitFor(history.map((h) => h.messageId))
    for (const h of history) {
      const m = found.get(h.messageId)![0]!
      expect(m.event.imported).toBe(true)
      expect(m.event.timestamp).toBe(h.timestamp)
      expect(m.event).toEqual(
        expectedRawEvent(h, {
          siteId: siteA.siteId,
          receivedAt: m.event.receivedAt,
          userAgent: undefined, // HTTP Basic: a server sent it, its User-Agent is not the visitor's
          batchSentAt: sentAt,
          imported: true,
        }),
      )
    }
  })

  it('accepts gzip, deflate and br bodies, and text/plain with a charset', async () => {
    const encoders: Array<[string, (b: Buffer) => Buffer]> = [
      ['gzip', (b) => gzipSync(b)],
      ['deflate', (b) => deflateSync(b)],
      ['br', (b) => brotliCompressSync(b)],
    ]
    const ids: string[] = []
    for (const [encoding, encode] of encoders) {
      const e = {
        event: `Compressed ${encoding}`,
        anonymousId: 'z',
        messageId: `msg-${randomUUID()}`,
        properties: { pad: 'p'.repeat(2000) },
      }
      ids.push(e.messageId)
      const res = await post('/v1/track', encode(Buffer.from(JSON.stringify(e))), {
        authorization: basic(siteA.writeKey),
        'content-encoding': encoding,
      })
      expect(res.statusCode, `${encoding}: ${res.body}`).toBe(200)
    }
    const beacon = {
      event: 'Plain',
      anonymousId: 'z',
      messageId: `msg-${randomUUID()}`,
      writeKey: siteA.writeKey,
    }
    ids.push(beacon.messageId)
    const res = await post('/v1/t', beacon, { 'content-type': 'text/plain;charset=UTF-8' })
    expect(res.statusCode, res.body).toBe(200)
    const found = await reader.waitFor(ids)
    expect([...found.values()].every((l) => l.length === 1)).toBe(true)
    expect(found.get(ids[0]!)![0]!.event.properties).toEqual({ pad: 'p'.repeat(2000) })
  })
})

describe('pixel, health and metrics', () => {
  it('GET /v1/pixel.gif answers a 1x1 GIF and logs a page view', async () => {
    const messageId = `px-${randomUUID()}`
    const q = new URLSearchParams({
      wk: siteA.writeKey,
      a: 'pixel-visitor',
      m: messageId,
      url: 'https://site-a.test/blog/post-1?x=1',
      r: 'https://search.test/',
      title: 'Post 1',
    })
    const res = await ingest.app.inject({
      method: 'GET',
      url: `/v1/pixel.gif?${q}`,
      headers: { 'user-agent': USER_AGENTS.firefoxLinux },
    })
    expect(res.statusCode).toBe(200)
    expect(res.headers['content-type']).toBe('image/gif')
    expect(res.headers['cache-control']).toContain('no-store')
    const gif = res.rawPayload
    expect(gif.subarray(0, 6).toString('latin1')).toMatch(/^GIF8[79]a$/)
    expect(gif.readUInt16LE(6)).toBe(1)
    expect(gif.readUInt16LE(8)).toBe(1)
    const m = await reader.one(messageId)
    const page = {
      url: 'https://site-a.test/blog/post-1?x=1',
      path: '/blog/post-1',
      referrer: 'https://search.test/',
      title: 'Post 1',
    }
    expect(m.event).toMatchObject({
      type: 'page',
      name: 'Post 1',
      anonymousId: 'pixel-visitor',
      siteId: siteA.siteId,
      properties: page,
      context: { page },
      ua: { browser: 'Firefox', os: 'Linux' },
    })
    // Without an anonymous id every hit is its own visitor.
    const anon = await ingest.app.inject({
      method: 'GET',
      url: `/v1/pixel.gif?wk=${siteA.writeKey}&m=${messageId}-2`,
    })
    expect(anon.statusCode).toBe(200)
    expect((await reader.one(`${messageId}-2`)).event.anonymousId).toMatch(/^px-/)
    const bad = await ingest.app.inject({ method: 'GET', url: '/v1/pixel.gif?wk=wk_nope' })
    expect(bad.statusCode).toBe(401)
  })

  it('/healthz and /readyz answer 200 while Kafka takes writes', async () => {
    const h = await ingest.app.inject({ method: 'GET', url: '/healthz' })
    expect(h.statusCode).toBe(200)
    const r = await ingest.app.inject({ method: 'GET', url: '/readyz' })
    expect(r.statusCode).toBe(200)
    expect(body(r).status).toBe('ready')
  })

  it('/metrics is Prometheus text and counts requests, events and rejections by reason (once each)', async () => {
    const scrape = async () => {
      const res = await ingest.app.inject({ method: 'GET', url: '/metrics' })
      expect(res.statusCode).toBe(200)
      expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/)
      return res.body
    }
    const before = await scrape()
    const auth = { authorization: basic(siteA.writeKey) }
    await post('/v1/track', '{"event":', auth)
    await post('/v1/track', { event: 'x', messageId: 'no-identity' }, auth)
    await post('/v1/batch', { batch: [{ type: 'page' }, { type: 'page' }] }, auth)
    await post(
      '/v1/batch',
      {
        batch: [
          { type: 'page', anonymousId: 'm' },
          { type: 'nope', anonymousId: 'm' },
        ],
      },
      auth,
    )
    await post('/v1/track', { event: 'x', anonymousId: 'm' })
    const after = await scrape()
    const delta = (name: string, labels: Record<string, string>) =>
      metricValue(after, name, labels) - metricValue(before, name, labels)
    const rej = 'tally_ingest_rejections_total'
    expect(delta(rej, { code: 'TALLY_ERR_MALFORMED_JSON' })).toBe(1)
    expect(delta(rej, { code: 'TALLY_ERR_MISSING_IDENTITY' })).toBe(3)
    expect(delta(rej, { code: 'TALLY_ERR_NO_VALID_EVENT' })).toBe(1)
    expect(delta(rej, { code: 'TALLY_ERR_INVALID_EVENT' })).toBe(1)
    expect(delta(rej, { code: 'TALLY_ERR_MISSING_WRITE_KEY' })).toBe(1)
    expect(delta('tally_ingest_requests_total', { endpoint: '/v1/track', status: '400' })).toBe(2)
    expect(delta('tally_ingest_requests_total', { endpoint: '/v1/batch', status: '200' })).toBe(1)
    expect(delta('tally_ingest_events_total', { endpoint: 'batch', outcome: 'accepted' })).toBe(1)
    expect(delta('tally_ingest_events_total', { endpoint: 'batch', outcome: 'rejected' })).toBe(3)
    expect(delta('tally_ingest_produce_seconds_count', {})).toBe(1)
    expect(after).toContain('tally_ingest_in_flight_requests')
    expect(after).toContain('tally_ingest_request_events_bucket')
    expect(metricValue(after, 'process_resident_memory_bytes')).toBeGreaterThan(0)
    // An endpoint's rejected-events series exists at 0 once it has taken a request, without any
    // rejection (rates and absence alerts on it work before the first).
    const screenRejected = { endpoint: 'screen', outcome: 'rejected' }
    expect((await post('/v1/screen', { name: 'Home', anonymousId: 'm' }, auth)).statusCode).toBe(200)
    const later = await scrape()
    expect(later).toMatch(
      /tally_ingest_events_total\{[^}]*endpoint="screen"[^}]*outcome="rejected"[^}]*\} 0\n/,
    )
    expect(metricValue(later, 'tally_ingest_events_total', screenRejected)).toBe(0)
    const screenAccepted = { endpoint: 'screen', outcome: 'accepted' }
    expect(
      metricValue(later, 'tally_ingest_events_total', screenAccepted) -
        metricValue(after, 'tally_ingest_events_total', screenAccepted),
    ).toBe(1)
  })
})

describe('sites and keys', () => {
  it('takes the write key as HTTP Basic user or as writeKey in the body; a missing or unknown key is 401', async () => {
    const e = () => ({ event: 'Auth', anonymousId: 'k', messageId: `msg-${randomUUID()}` })
    const viaBasic = e()
    expect((await post('/v1/track', viaBasic, { authorization: basic(siteA.writeKey) })).statusCode).toBe(200)
    const viaBody = e()
    expect((await post('/v1/track', { ...viaBody, writeKey: siteA.writeKey })).statusCode).toBe(200)
    const missing = await post('/v1/track', e())
    expect(missing.statusCode).toBe(401)
    expect(body(missing).code).toBe('TALLY_ERR_MISSING_WRITE_KEY')
    const unknown = await post('/v1/track', e(), { authorization: basic(`wk_${randomUUID()}`) })
    expect(unknown.statusCode).toBe(401)
    expect(body(unknown).code).toBe('TALLY_ERR_INVALID_WRITE_KEY')
    const unknownBody = await post('/v1/batch', { writeKey: 'wk_nope', batch: [{ ...e(), type: 'track' }] })
    expect(unknownBody.statusCode).toBe(401)
    const found = await reader.waitFor([viaBasic.messageId, viaBody.messageId])
    expect(found.get(viaBody.messageId)![0]!.event.siteId).toBe(siteA.siteId)
  })

  it('a write key is valid for its own site only: naming another site is 403 TALLY_ERR_WRONG_SITE', async () => {
    const e = { event: 'Cross', anonymousId: 'k', messageId: `msg-${randomUUID()}` }
    const viaHeader = await post('/v1/track', e, {
      authorization: basic(siteA.writeKey),
      'x-tally-site': siteB.siteId,
    })
    expect(viaHeader.statusCode).toBe(403)
    expect(body(viaHeader).code).toBe('TALLY_ERR_WRONG_SITE')
    const viaBody = await post('/v1/track', { ...e, siteId: siteB.siteId, writeKey: siteA.writeKey })
    expect(viaBody.statusCode).toBe(403)
    expect(body(viaBody).code).toBe('TALLY_ERR_WRONG_SITE')
    const viaBatch = await post(
      '/v1/batch',
      { siteId: siteA.siteId, batch: [{ ...e, type: 'track' }] },
      {
        authorization: basic(siteB.writeKey),
      },
    )
    expect(viaBatch.statusCode).toBe(403)
    const pixel = await ingest.app.inject({
      method: 'GET',
      url: `/v1/pixel.gif?wk=${siteA.writeKey}&site=${siteB.siteId}&a=x`,
    })
    expect(pixel.statusCode).toBe(403)
    // Naming its own site is fine.
    const own = await post('/v1/track', e, {
      authorization: basic(siteA.writeKey),
      'x-tally-site': siteA.siteId,
    })
    expect(own.statusCode).toBe(200)
    expect((await reader.one(e.messageId)).event.siteId).toBe(siteA.siteId)
  })
})

describe('bad input: each gets its own status and code, and the server keeps serving', () => {
  interface BadCase {
    name: string
    path?: string
    body: string | Buffer
    headers?: Record<string, string>
    status: number
    code: string
    /** Asserted on the error body besides success/code/message/requestId. */
    extra?: (b: Json) => void
  }
  const deep = (levels: number) => {
    let v: unknown = 1
    for (let i = 0; i < levels; i++) v = { n: v }
    return v
  }
  const ev = (over: Json = {}) => ({
    event: 'Bad',
    anonymousId: 'bad',
    messageId: `bad-${randomUUID()}`,
    ...over,
  })
  const bomb = gzipSync(
    Buffer.from(JSON.stringify({ ...ev(), properties: { pad: ' '.repeat(20 * 1024 * 1024) } })),
  )

  function cases(): BadCase[] {
    const key = { authorization: basic(siteA.writeKey) }
    return [
      {
        name: 'malformed JSON',
        body: '{"event": "x", ',
        headers: key,
        status: 400,
        code: 'TALLY_ERR_MALFORMED_JSON',
      },
      { name: 'empty body', body: '', headers: key, status: 400, code: 'TALLY_ERR_MALFORMED_JSON' },
      {
        name: 'prototype poisoning',
        body: `{"event":"x","anonymousId":"a","__proto__":{"admin":true}}`,
        headers: key,
        status: 400,
        code: 'TALLY_ERR_MALFORMED_JSON',
      },
      {
        name: 'JSON that is not an object',
        body: '[1,2,3]',
        headers: key,
        status: 400,
        code: 'TALLY_ERR_INVALID_EVENT',
      },
      {
        name: 'no valid event in a batch',
        path: '/v1/batch',
        body: JSON.stringify({ batch: [{ type: 'track' }, { type: 'nope', anonymousId: 'a' }] }),
        headers: key,
        status: 400,
        code: 'TALLY_ERR_NO_VALID_EVENT',
        extra: (b) =>
          expect(b.rejected).toEqual([
            expect.objectContaining({ index: 0, code: 'TALLY_ERR_MISSING_IDENTITY' }),
            expect.objectContaining({ index: 1, code: 'TALLY_ERR_INVALID_EVENT' }),
          ]),
      },
      {
        name: 'empty batch',
        path: '/v1/batch',
        body: '{"batch":[]}',
        headers: key,
        status: 400,
        code: 'TALLY_ERR_NO_VALID_EVENT',
      },
      {
        name: 'batch that is not an array',
        path: '/v1/batch',
        body: '{"batch":{}}',
        headers: key,
        status: 400,
        code: 'TALLY_ERR_INVALID_EVENT',
      },
      {
        name: 'single event missing identity',
        body: JSON.stringify(ev({ anonymousId: undefined })),
        headers: key,
        status: 400,
        code: 'TALLY_ERR_MISSING_IDENTITY',
      },
      {
        name: 'timestamp that is not ISO 8601',
        body: JSON.stringify(ev({ timestamp: 'yesterday at 5' })),
        headers: key,
        status: 400,
        code: 'TALLY_ERR_INVALID_TIMESTAMP',
      },
      {
        name: 'type that does not match the endpoint',
        body: JSON.stringify(ev({ type: 'page' })),
        headers: key,
        status: 400,
        code: 'TALLY_ERR_INVALID_EVENT',
      },
      {
        name: 'missing write key',
        body: JSON.stringify(ev()),
        status: 401,
        code: 'TALLY_ERR_MISSING_WRITE_KEY',
      },
      {
        name: 'wrong write key',
        body: JSON.stringify(ev()),
        headers: { authorization: basic('wk_wrong') },
        status: 401,
        code: 'TALLY_ERR_INVALID_WRITE_KEY',
      },
      {
        name: "another site's key",
        body: JSON.stringify(ev()),
        headers: { authorization: basic(siteB.writeKey), 'x-tally-site': siteA.siteId },
        status: 403,
        code: 'TALLY_ERR_WRONG_SITE',
      },
      {
        name: 'body over 500 KB',
        path: '/v1/batch',
        body: JSON.stringify({
          batch: Array.from({ length: 40 }, () => ({
            ...ev({ type: 'track' }),
            properties: { s: 'y'.repeat(14_000) },
          })),
        }),
        headers: key,
        status: 413,
        code: 'TALLY_ERR_PAYLOAD_TOO_LARGE',
      },
      {
        name: `gzip bomb (${bomb.length} bytes inflating to 20 MB)`,
        body: bomb,
        headers: { ...key, 'content-encoding': 'gzip' },
        status: 413,
        code: 'TALLY_ERR_PAYLOAD_TOO_LARGE',
      },
      {
        name: 'event over 32 KB',
        body: JSON.stringify(ev({ properties: { s: 'z'.repeat(33 * 1024) } })),
        headers: key,
        status: 413,
        code: 'TALLY_ERR_EVENT_TOO_LARGE',
      },
      {
        name: 'too many events',
        path: '/v1/batch',
        body: JSON.stringify({
          batch: Array.from({ length: config.ingest.maxBatchEvents + 1 }, (_, i) => ({
            type: 'page',
            anonymousId: `a${i}`,
          })),
        }),
        headers: key,
        status: 413,
        code: 'TALLY_ERR_TOO_MANY_EVENTS',
      },
      {
        name: 'nesting too deep',
        body: JSON.stringify(ev({ properties: deep(20) })),
        headers: key,
        status: 400,
        code: 'TALLY_ERR_NESTING_TOO_DEEP',
      },
      {
        name: 'absurdly deep nesting (100 000 levels)',
        body: `{"event":"x","anonymousId":"a","properties":{"p":${'['.repeat(100_000)}${']'.repeat(100_000)}}}`,
        headers: key,
        status: 400,
        code: 'TALLY_ERR_NESTING_TOO_DEEP',
      },
      {
        name: 'form-encoded body',
        body: 'event=x&anonymousId=a',
        headers: { ...key, 'content-type': 'application/x-www-form-urlencoded' },
        status: 415,
        code: 'TALLY_ERR_UNSUPPORTED_MEDIA_TYPE',
      },
      {
        name: 'XML body',
        body: '<event/>',
        headers: { ...key, 'content-type': 'application/xml' },
        status: 415,
        code: 'TALLY_ERR_UNSUPPORTED_MEDIA_TYPE',
      },
      {
        name: 'unsupported content-encoding',
        body: JSON.stringify(ev()),
        headers: { ...key, 'content-encoding': 'compress' },
        status: 415,
        code: 'TALLY_ERR_UNSUPPORTED_ENCODING',
      },
      {
        name: 'corrupt gzip',
        body: Buffer.from('definitely not gzip'),
        headers: { ...key, 'content-encoding': 'gzip' },
        status: 400,
        code: 'TALLY_ERR_BAD_ENCODING',
      },
    ]
  }

  it('over real sockets', async () => {
    expect(bomb.length).toBeLessThan(config.ingest.maxBodyBytes)
    for (const c of cases()) {
      const res = await fetch(`${url}${c.path ?? '/v1/track'}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...c.headers },
        body: c.body,
      })
      const b = (await res.json()) as Json
      expect({ name: c.name, status: res.status, code: b.code }).toEqual({
        name: c.name,
        status: c.status,
        code: c.code,
      })
      expect(b).toMatchObject({
        success: false,
        message: expect.any(String),
        requestId: res.headers.get('x-request-id'),
      })
      c.extra?.(b)
      // The server keeps serving.
      const good = ev()
      const ok = await fetch(`${url}/v1/track`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: basic(siteA.writeKey) },
        body: JSON.stringify(good),
      })
      expect(ok.status, `after ${c.name}`).toBe(200)
    }
    const unknownRoute = await fetch(`${url}/v1/nope`, { method: 'POST' })
    expect(unknownRoute.status).toBe(404)
    expect(((await unknownRoute.json()) as Json).code).toBe('TALLY_ERR_NOT_FOUND')
  })

  it('nothing of a rejected request reaches the log', async () => {
    const marker = `rejected-${randomUUID()}`
    const key = { authorization: basic(siteA.writeKey) }
    const rejectedIds: string[] = []
    const bad = (over: Json) => {
      const e = ev({ ...over, messageId: `${marker}-${rejectedIds.length}` })
      rejectedIds.push(e.messageId as string)
      return e
    }
    expect((await post('/v1/track', bad({ anonymousId: undefined }), key)).statusCode).toBe(400)
    expect((await post('/v1/track', bad({}), { authorization: basic('wk_wrong') })).statusCode).toBe(401)
    expect((await post('/v1/track', bad({ properties: { s: 'z'.repeat(40_000) } }), key)).statusCode).toBe(
      413,
    )
    expect(
      (
        await post(
          '/v1/batch',
          { batch: [{ ...bad({}), type: 'track' }, ...Array(config.ingest.maxBatchEvents).fill({})] },
          key,
        )
      ).statusCode,
    ).toBe(413)
    await reader.catchUp()
    expect(reader.messages.filter((m) => m.event.messageId.startsWith(marker))).toEqual([])
  })

  it('limits are configurable: body, event size, events per request and depth', async () => {
    const small = loadConfig({
      ...envOf(config),
      LOG_LEVEL: 'silent',
      TALLY_MAX_BODY_BYTES: '4096',
      TALLY_MAX_EVENT_BYTES: '600',
      TALLY_MAX_BATCH_EVENTS: '3',
      TALLY_MAX_DEPTH: '4',
    })
    const limited = await buildTestIngest(small)
    try {
      const key = { authorization: basic(siteA.writeKey) }
      const send = (path: string, payload: unknown, headers: Record<string, string> = {}) =>
        limited.app.inject({
          method: 'POST',
          url: path,
          headers: { 'content-type': 'application/json', ...key, ...headers },
          payload: Buffer.isBuffer(payload) ? payload : JSON.stringify(payload),
        })
      const sized = (bytes: number) => {
        const e = { event: 'S', anonymousId: 'a', messageId: `lim-${randomUUID()}`, properties: { s: '' } }
        e.properties.s = 'q'.repeat(bytes - Buffer.byteLength(JSON.stringify(e)))
        return e
      }
      const atLimit = sized(600)
      expect((await send('/v1/track', atLimit)).statusCode).toBe(200)
      const over = await send('/v1/track', sized(601))
      expect([over.statusCode, body(over).code]).toEqual([413, 'TALLY_ERR_EVENT_TOO_LARGE'])

      const three = [0, 1, 2].map(() => ({
        type: 'page',
        anonymousId: 'a',
        messageId: `lim-${randomUUID()}`,
      }))
      expect((await send('/v1/batch', { batch: three })).statusCode).toBe(200)
      const four = await send('/v1/batch', { batch: [...three, ...three].slice(0, 4) })
      expect([four.statusCode, body(four).code]).toEqual([413, 'TALLY_ERR_TOO_MANY_EVENTS'])

      const depth = (n: number) => {
        let v: unknown = 1
        // The event object itself is level 1, properties level 2.
        for (let i = 0; i < n - 1; i++) v = { n: v }
        return { event: 'D', anonymousId: 'a', messageId: `lim-${randomUUID()}`, properties: v }
      }
      expect((await send('/v1/track', depth(4))).statusCode).toBe(200)
      const tooDeep = await send('/v1/track', depth(5))
      expect([tooDeep.statusCode, body(tooDeep).code]).toEqual([400, 'TALLY_ERR_NESTING_TOO_DEEP'])

      const bigBatch = { batch: Array.from({ length: 3 }, () => ({ ...sized(570), type: 'track' })) }
      expect(Buffer.byteLength(JSON.stringify(bigBatch))).toBeGreaterThan(1024)
      const big = await send('/v1/batch', { ...bigBatch, pad: 'p'.repeat(4096) })
      expect([big.statusCode, body(big).code]).toEqual([413, 'TALLY_ERR_PAYLOAD_TOO_LARGE'])
      const gz = gzipSync(Buffer.from(JSON.stringify({ ...bigBatch, pad: ' '.repeat(8000) })))
      expect(gz.length).toBeLessThan(4096)
      const bomb = await send('/v1/batch', gz, { 'content-encoding': 'gzip' })
      expect([bomb.statusCode, body(bomb).code]).toEqual([413, 'TALLY_ERR_PAYLOAD_TOO_LARGE'])
      const gzOk = gzipSync(Buffer.from(JSON.stringify(bigBatch)))
      expect((await send('/v1/batch', gzOk, { 'content-encoding': 'gzip' })).statusCode).toBe(200)
      await reader.waitFor([
        atLimit.messageId,
        ...three.map((e) => e.messageId),
        ...bigBatch.batch.map((e) => e.messageId),
      ])
    } finally {
      await limited.close()
    }
  })
})

describe('rate limits', () => {
  it('answers 429 with Retry-After per site and per client IP, naming the limit, and lets the event through once the wait is over', async () => {
    const limitedConfig = loadConfig({
      ...envOf(config),
      LOG_LEVEL: 'silent',
      TALLY_RATE_LIMIT_SITE: '20',
      TALLY_RATE_LIMIT_CLIENT: '10',
    })
    const limited = await buildTestIngest(limitedConfig)
    try {
      const site = await limited.addSite()
      const other = await limited.addSite()
      const batch = (n: number) => ({
        batch: Array.from({ length: n }, () => ({
          type: 'track',
          event: 'R',
          anonymousId: 'r',
          messageId: `rl-${randomUUID()}`,
        })),
      })
      // Browser-style: the key in the body, as beacons and analytics.js send it.
      const send = (s: Site, payload: Json, ip: string) =>
        limited.app.inject({
          method: 'POST',
          url: '/v1/batch',
          remoteAddress: ip,
          headers: { 'content-type': 'text/plain' },
          payload: JSON.stringify({ ...payload, writeKey: s.writeKey }),
        })
      // Client burst is twice the per-second rate: 20 events from one IP pass, the 21st waits.
      const first = batch(limitedConfig.ingest.rateLimitClientPerSec * 2)
      expect((await send(site, first, '10.0.0.1')).statusCode).toBe(200)
      const refused = batch(5)
      const tooFast = await send(site, refused, '10.0.0.1')
      expect(tooFast.statusCode).toBe(429)
      expect(body(tooFast)).toMatchObject({ code: 'TALLY_ERR_RATE_LIMITED', limit: 'client', ratePerSec: 10 })
      expect(body(tooFast).message).toContain('10 events/s per client IP')
      // 5 events at 10/s from an empty bucket: 0.5 s, rounded up to whole seconds.
      expect(tooFast.headers['retry-after']).toBe('1')
      expect(tooFast.headers['x-ratelimit-reset']).toBe('1')
      // Another site from the same IP has buckets of its own.
      expect((await send(other, batch(5), '10.0.0.1')).statusCode).toBe(200)
      // The site limit spans IPs: a second IP fills it up, a third one waits.
      expect((await send(site, batch(20), '10.0.0.2')).statusCode).toBe(200)
      const siteFull = await send(site, batch(20), '10.0.0.3')
      expect(siteFull.statusCode).toBe(429)
      expect(body(siteFull)).toMatchObject({ code: 'TALLY_ERR_RATE_LIMITED', limit: 'site', ratePerSec: 20 })
      // 20 events at 20/s from an (almost) empty site bucket: 1 s.
      expect(siteFull.headers['retry-after']).toBe('1')
      const started = Date.now()
      const retried = await eventually(async () => {
        const res = await send(site, refused, '10.0.0.1')
        return res.statusCode === 200 ? res : undefined
      }, 10_000)
      expect(Date.now() - started).toBeLessThan(5000)
      expect(body(retried).accepted).toBe(5)
      const found = await reader.waitFor(refused.batch.map((e) => e.messageId))
      expect([...found.values()].every((l) => l.length === 1)).toBe(true)
    } finally {
      await limited.close()
    }
  })

  it('a server-side source (HTTP Basic) at 5,000 events/s from one IP is limited per site only; a browser-style one is limited per IP', async () => {
    const limitedConfig = loadConfig({
      ...envOf(config),
      LOG_LEVEL: 'silent',
      TALLY_RATE_LIMIT_SITE: '20000',
      TALLY_RATE_LIMIT_CLIENT: '1000',
    })
    const limited = await buildTestIngest(limitedConfig)
    try {
      const site = await limited.addSite()
      // 5,000 events/s for 2 s from one IP: 40 requests of 250 events, one every 50 ms, sent on
      // schedule whatever the answers take (an open loop), so the offered rate is the stated one.
      const eventsPerRequest = 250
      const requests = 40
      const intervalMs = 50
      const run = async (tag: string, auth: 'basic' | 'body') => {
        const ids: string[][] = []
        const started = Date.now()
        const answers: Array<Promise<LightMyRequestResponse>> = []
        for (let i = 0; i < requests; i++) {
          const wait = started + i * intervalMs - Date.now()
          if (wait > 0) await new Promise((r) => setTimeout(r, wait))
          const batch = Array.from({ length: eventsPerRequest }, (_, j) => ({
            type: 'track',
            event: tag,
            anonymousId: `${tag}-${j % 50}`,
            messageId: `${tag}-${i}-${j}-${randomUUID()}`,
          }))
          ids.push(batch.map((e) => e.messageId))
          answers.push(
            limited.app.inject({
              method: 'POST',
              url: '/v1/batch',
              remoteAddress: '10.9.9.9',
              headers:
                auth === 'basic'
                  ? { 'content-type': 'application/json', authorization: basic(site.writeKey) }
                  : { 'content-type': 'text/plain' },
              payload: JSON.stringify(auth === 'basic' ? { batch } : { batch, writeKey: site.writeKey }),
            }),
          )
        }
        const offeredMs = Date.now() - started
        const settled = await Promise.all(answers)
        return { ids, answers: settled, offeredMs, elapsedMs: Date.now() - started }
      }

      const server = await run('srv', 'basic')
      expect(server.answers.map((a) => a.statusCode)).toEqual(Array(requests).fill(200))
      // The whole load was offered within about 2 s: at least 4,000 events/s.
      expect((requests * eventsPerRequest) / (server.offeredMs / 1000)).toBeGreaterThan(4000)
      const logged = await reader.waitFor(server.ids.flat())
      expect([...logged.values()].every((l) => l.length === 1)).toBe(true)

      const browser = await run('web', 'body')
      const refused = browser.answers.filter((a) => a.statusCode === 429)
      const accepted = browser.answers.filter((a) => a.statusCode === 200)
      expect(refused.length + accepted.length).toBe(requests)
      expect(refused.length).toBeGreaterThan(0)
      for (const r of refused) {
        expect(body(r)).toMatchObject({ code: 'TALLY_ERR_RATE_LIMITED', limit: 'client', ratePerSec: 1000 })
        expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1)
      }
      // Per IP: at most the burst (2 s of the rate) plus the rate over the run, plus one request.
      const acceptedEvents = accepted.length * eventsPerRequest
      expect(acceptedEvents).toBeLessThanOrEqual(2000 + (1000 * browser.elapsedMs) / 1000 + eventsPerRequest)
    } finally {
      await limited.close()
    }
  })
})

describe('CORS and browser beacons', () => {
  const beaconHeaders = (origin: string) => ({
    'content-type': 'text/plain;charset=UTF-8',
    origin,
    'user-agent': USER_AGENTS.chromeDesktop,
  })

  it("answers preflights for the site's origins, and nothing for others", async () => {
    for (const origin of ['https://app.site-a.test', `https://${siteA.domain}`]) {
      const res = await ingest.app.inject({
        method: 'OPTIONS',
        url: '/v1/t',
        headers: {
          origin,
          'access-control-request-method': 'POST',
          'access-control-request-headers': 'content-type',
        },
      })
      expect(res.statusCode).toBe(204)
      expect(res.headers['access-control-allow-origin']).toBe(origin)
      expect(String(res.headers['access-control-allow-methods'])).toContain('POST')
      expect(String(res.headers['access-control-allow-headers'])).toContain('content-type')
    }
    const evil = await ingest.app.inject({
      method: 'OPTIONS',
      url: '/v1/t',
      headers: { origin: 'https://evil.test', 'access-control-request-method': 'POST' },
    })
    expect(evil.statusCode).toBeGreaterThanOrEqual(400)
    expect(evil.headers['access-control-allow-origin']).toBeUndefined()
  })

  it('takes navigator.sendBeacon requests (text/plain;charset=UTF-8, key in body, no preflight) from allowed origins only', async () => {
    const origin = 'https://app.site-a.test'
    const beacon = {
      type: 'track',
      event: 'Left Page',
      anonymousId: 'beacon-visitor',
      messageId: `beacon-${randomUUID()}`,
      writeKey: siteA.writeKey,
      properties: { seconds: 31 },
      ...clientTimes(-5000, 250),
    }
    const before = Date.now()
    const res = await ingest.app.inject({
      method: 'POST',
      url: '/v1/t',
      headers: beaconHeaders(origin),
      payload: JSON.stringify(beacon),
    })
    expect(res.statusCode, res.body).toBe(200)
    expect(res.headers['access-control-allow-origin']).toBe(origin)
    expect(String(res.headers.vary)).toContain('Origin')
    const m = await reader.one(beacon.messageId)
    expectReceivedWithin(m, before, Date.now())
    expect(m.event).toEqual(
      expectedRawEvent(beacon, {
        siteId: siteA.siteId,
        receivedAt: m.event.receivedAt,
        userAgent: USER_AGENTS.chromeDesktop,
      }),
    )
    expect(m.recordBytes.toString()).not.toContain(siteA.writeKey)

    const evil = { ...beacon, messageId: `beacon-${randomUUID()}` }
    const refused = await ingest.app.inject({
      method: 'POST',
      url: '/v1/t',
      headers: beaconHeaders('https://evil.test'),
      payload: JSON.stringify(evil),
    })
    expect(refused.statusCode).toBe(403)
    expect(body(refused).code).toBe('TALLY_ERR_ORIGIN_NOT_ALLOWED')
    expect(refused.headers['access-control-allow-origin']).toBeUndefined()
    // An origin of site B with the key of site A is refused too.
    const crossSite = { ...beacon, messageId: `beacon-${randomUUID()}` }
    const cross = await ingest.app.inject({
      method: 'POST',
      url: '/v1/t',
      headers: beaconHeaders('https://app.site-b.test'),
      payload: JSON.stringify(crossSite),
    })
    expect(cross.statusCode).toBe(403)
    expect(body(cross).code).toBe('TALLY_ERR_ORIGIN_NOT_ALLOWED')
    await reader.catchUp()
    expect(reader.byMessageId(evil.messageId)).toEqual([])
    expect(reader.byMessageId(crossSite.messageId)).toEqual([])
  })
})

describe('@segment/analytics-next request shapes', () => {
  const origin = 'https://app.site-a.test'
  const headers = { 'content-type': 'text/plain', origin, 'user-agent': USER_AGENTS.safariIphone }

  /** An event as analytics.js builds it (EventFactory + segmentio normalize) before identify. */
  function ajsEvent(type: EventType, anonymousId: string, extra: Json): Json {
    return {
      type,
      ...extra,
      integrations: {},
      messageId: `ajs-next-${randomBytes(16).toString('hex')}`,
      context: {
        page: { path: '/docs', referrer: '', search: '', title: 'Docs', url: 'https://app.site-a.test/docs' },
        userAgent: USER_AGENTS.safariIphone,
        userAgentData: { brands: [], mobile: true, platform: 'iOS' },
        locale: 'en-US',
        library: { name: 'analytics.js', version: 'npm:next-1.81.1' },
        timezone: 'Europe/Paris',
      },
      timestamp: new Date(Date.now() - 40).toISOString(),
      writeKey: siteA.writeKey,
      userId: null,
      anonymousId,
      sentAt: new Date().toISOString(),
      _metadata: { bundled: ['Segment.io'], unbundled: [], bundledIds: [] },
    }
  }

  it('standard delivery: one text/plain POST per event to /v1/t, /v1/p, /v1/i, /v1/g, /v1/a', async () => {
    const visitor = randomUUID()
    const events: Array<[string, Json]> = [
      ['p', ajsEvent('page', visitor, { properties: { path: '/docs', title: 'Docs' }, name: 'Docs' })],
      ['t', ajsEvent('track', visitor, { event: 'Clicked CTA', properties: { id: 'cta-1' } })],
      ['i', { ...ajsEvent('identify', visitor, { traits: { email: 'x@y.test' } }), userId: 'u-77' }],
      ['g', { ...ajsEvent('group', visitor, { groupId: 'org-1', traits: { name: 'Org' } }), userId: 'u-77' }],
      ['a', { ...ajsEvent('alias', visitor, { previousId: visitor }), userId: 'u-77' }],
    ]
    for (const [path, e] of events) {
      const res = await ingest.app.inject({
        method: 'POST',
        url: `/v1/${path}`,
        headers,
        payload: JSON.stringify(e),
      })
      expect(res.statusCode, `${path}: ${res.body}`).toBe(200)
      expect(res.headers['access-control-allow-origin']).toBe(origin)
    }
    const found = await reader.waitFor(events.map(([, e]) => e.messageId as string))
    for (const [, e] of events) {
      const m = found.get(e.messageId as string)![0]!
      expect(m.key).toBe(`${siteA.siteId}:${visitor}`)
      expect(m.event).toEqual(
        expectedRawEvent(e, {
          siteId: siteA.siteId,
          receivedAt: m.event.receivedAt,
          userAgent: USER_AGENTS.safariIphone,
        }),
      )
      expect(m.event.ua.device).toBe('mobile')
    }
  })

  it('batching delivery: {writeKey, batch, sentAt} to /v1/b', async () => {
    const visitor = randomUUID()
    const batch = [
      ajsEvent('page', visitor, { properties: {} }),
      ajsEvent('track', visitor, { event: 'Scrolled', properties: { depth: 75 } }),
      ajsEvent('track', visitor, { event: 'Scrolled', properties: { depth: 100 } }),
    ].map(({ sentAt: _sentAt, ...rest }) => rest)
    const sentAt = new Date().toISOString()
    const res = await ingest.app.inject({
      method: 'POST',
      url: '/v1/b',
      headers,
      payload: JSON.stringify({ writeKey: siteA.writeKey, batch, sentAt }),
    })
    expect(res.statusCode, res.body).toBe(200)
    expect(body(res)).toEqual({ success: true, accepted: 3, rejected: [] })
    const found = await reader.waitFor(batch.map((e) => e.messageId as string))
    for (const e of batch) {
      const m = found.get(e.messageId as string)![0]!
      expect(m.event).toEqual(
        expectedRawEvent(e, {
          siteId: siteA.siteId,
          receivedAt: m.event.receivedAt,
          userAgent: USER_AGENTS.safariIphone,
          batchSentAt: sentAt,
        }),
      )
    }
  })
})

describe('@segment/analytics-node against Tally', () => {
  interface Sent {
    headers: Record<string, string>
    body: { batch: Json[]; sentAt: string; writeKey: string }
    status: number
  }

  /** The client's own fetch-based transport, with a log of what it sent and what it was told. */
  function recordingClient(lie?: (attempt: number) => HTTPResponse | undefined): {
    client: HTTPClient
    sent: Sent[]
  } {
    const sent: Sent[] = []
    const client: HTTPClient = {
      async makeRequest(req: HTTPClientRequest): Promise<HTTPResponse> {
        const res = await fetch(req.url, { method: req.method, headers: req.headers, body: req.body })
        await res.arrayBuffer()
        sent.push({ headers: req.headers, body: JSON.parse(req.body) as Sent['body'], status: res.status })
        return lie?.(sent.length) ?? res
      },
    }
    return { client, sent }
  }

  function callback(errors: unknown[]): (err?: unknown) => void {
    return (err) => {
      if (err) errors.push(err)
    }
  }

  it('delivers every call of the real client to the raw topic', async () => {
    const { client, sent } = recordingClient()
    const analytics = new Analytics({
      writeKey: siteB.writeKey,
      host: url,
      path: '/v1/batch',
      flushAt: 4,
      flushInterval: 200,
      httpClient: client,
    })
    const errors: unknown[] = []
    const user = `user-${randomUUID()}`
    const anon = `anon-${randomUUID()}`
    const cb = callback(errors)
    analytics.identify({ userId: user, anonymousId: anon, traits: { plan: 'team' } }, cb)
    analytics.track(
      { userId: user, event: 'Invoice Paid', properties: { amount: 99.5, currency: 'EUR' } },
      cb,
    )
    analytics.page(
      {
        anonymousId: anon,
        name: 'Checkout',
        category: 'Shop',
        properties: { url: 'https://x.test/checkout' },
      },
      cb,
    )
    analytics.screen({ userId: user, name: 'Settings' }, cb)
    analytics.group({ userId: user, groupId: 'team-1', traits: { name: 'Team' } }, cb)
    analytics.alias({ userId: user, previousId: anon }, cb)
    analytics.track(
      {
        anonymousId: anon,
        event: 'Old',
        timestamp: new Date(Date.now() - 60_000),
        context: { ip: '198.51.100.9' },
      },
      cb,
    )
    await analytics.closeAndFlush({ timeout: 20_000 })
    expect(errors).toEqual([])
    expect(sent.length).toBeGreaterThanOrEqual(2)
    expect(sent.every((s) => s.status === 200)).toBe(true)
    const events = sent.flatMap((s) => s.body.batch.map((e) => ({ e, sentAt: s.body.sentAt })))
    expect(events).toHaveLength(7)
    const found = await reader.waitFor(events.map(({ e }) => e.messageId as string))
    for (const { e, sentAt } of events) {
      const list = found.get(e.messageId as string)!
      expect(list).toHaveLength(1)
      const m = list[0]!
      expect(m.key).toBe(`${siteB.siteId}:${e.anonymousId ?? e.userId}`)
      expect(m.event).toEqual(
        expectedRawEvent(e, {
          siteId: siteB.siteId,
          receivedAt: m.event.receivedAt,
          userAgent: undefined, // analytics-node is a server library: its User-Agent is not the visitor's
          batchSentAt: sentAt,
        }),
      )
      expect(m.event.context.library).toMatchObject({ name: '@segment/analytics-node' })
      // Server-side traffic is not mistaken for a bot because of the library's own User-Agent.
      expect(m.event.bot).toBe(false)
    }
  })

  it('retries a batch whose answer was lost: both copies are in the log with the same messageIds, nothing is lost', async () => {
    // The first request reaches Tally and is logged, but the client is told 503 (a lost answer).
    const { client, sent } = recordingClient((attempt) =>
      attempt === 1 ? { status: 503, statusText: 'Service Unavailable', headers: {} } : undefined,
    )
    const analytics = new Analytics({
      writeKey: siteB.writeKey,
      host: url,
      path: '/v1/batch',
      flushAt: 3,
      maxRetries: 3,
      httpClient: client,
    })
    const errors: unknown[] = []
    for (let i = 0; i < 3; i++)
      analytics.track({ anonymousId: `retry-${i}`, event: 'Retried', properties: { i } }, callback(errors))
    await analytics.closeAndFlush({ timeout: 20_000 })
    expect(errors).toEqual([])
    expect(sent).toHaveLength(2)
    expect(sent[0]!.headers['X-Retry-Count']).toBeUndefined()
    expect(sent[1]!.headers['X-Retry-Count']).toBe('1')
    const ids = sent[0]!.body.batch.map((e) => e.messageId as string)
    expect(sent[1]!.body.batch.map((e) => e.messageId)).toEqual(ids)
    const found = await reader.waitFor(ids)
    await reader.catchUp()
    for (const id of ids) {
      const copies = reader.byMessageId(id)
      expect(copies, id).toHaveLength(2)
      // Same event twice: downstream dedups by messageId.
      expect(copies[0]!.event.properties).toEqual(copies[1]!.event.properties)
      expect(copies[0]!.key).toBe(copies[1]!.key)
      expect(found.get(id)!.length).toBeGreaterThanOrEqual(1)
    }
  })

  it('retries a batch that never arrived: exactly one copy is logged', async () => {
    let calls = 0
    const { client: real, sent } = recordingClient()
    const client: HTTPClient = {
      makeRequest(req) {
        calls++
        if (calls === 1) return Promise.reject(new TypeError('fetch failed (socket hang up)'))
        return real.makeRequest(req)
      },
    }
    const analytics = new Analytics({
      writeKey: siteB.writeKey,
      host: url,
      path: '/v1/batch',
      flushAt: 2,
      maxRetries: 3,
      httpClient: client,
    })
    const errors: unknown[] = []
    const ids = [`nr-${randomUUID()}`, `nr-${randomUUID()}`]
    for (const messageId of ids)
      analytics.track({ anonymousId: 'never-arrived', event: 'E', messageId }, callback(errors))
    await analytics.closeAndFlush({ timeout: 20_000 })
    expect(errors).toEqual([])
    expect(calls).toBe(2)
    expect(sent[0]!.headers['X-Retry-Count']).toBe('1')
    await reader.waitFor(ids)
    await reader.catchUp()
    for (const id of ids) expect(reader.byMessageId(id)).toHaveLength(1)
  })

  it('backs off on 429 as told by Retry-After and then delivers', async () => {
    // A server library sends with HTTP Basic: the site limit is the one it meets.
    const limitedConfig = loadConfig({ ...envOf(config), LOG_LEVEL: 'silent', TALLY_RATE_LIMIT_SITE: '2' })
    const limited = await buildTestIngest(limitedConfig)
    try {
      const site = await limited.addSite()
      const limitedUrl = await limited.app.listen({ host: '127.0.0.1', port: 0 })
      const { client, sent } = recordingClient()
      const analytics = new Analytics({
        writeKey: site.writeKey,
        host: limitedUrl,
        path: '/v1/batch',
        flushAt: 4,
        httpClient: client,
      })
      const errors: unknown[] = []
      const ids = Array.from({ length: 8 }, () => `rl-${randomUUID()}`)
      for (const messageId of ids)
        analytics.track({ anonymousId: 'eager', event: 'E', messageId }, callback(errors))
      await analytics.closeAndFlush({ timeout: 20_000 })
      expect(errors).toEqual([])
      expect(sent.map((s) => s.status)).toContain(429)
      expect(sent.at(-1)!.status).toBe(200)
      const found = await reader.waitFor(ids)
      expect([...found.values()].every((l) => l.length === 1)).toBe(true)
    } finally {
      await limited.close()
    }
  })
})
