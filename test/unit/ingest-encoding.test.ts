import type { FastifyInstance } from 'fastify'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { loadConfig } from '../../core/config.js'
import { createLogger } from '../../core/log.js'
import type { EventLogWriter, LogRecord } from '../../core/ports/event-log.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildIngestApp } from '../../ingest/app.js'
import { charsetOf } from '../../ingest/charset.js'
import { createIngestMetrics } from '../../ingest/metrics.js'
import { normalizeEvent } from '../../ingest/normalize.js'
import { UserAgentParser } from '../../ingest/user-agent.js'

/** An event log that acknowledges every append at once and keeps the records. */
class RecordingLog implements EventLogWriter {
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
  siteId: 'site-enc',
  domain: 'enc.test',
  origins: [],
  writeKey: 'wk_enc',
  readTokenHashes: [],
  createdAt: new Date(0),
}
const basicAuth = `Basic ${Buffer.from('wk_enc:').toString('base64')}`

let app: FastifyInstance
let log: RecordingLog

beforeEach(async () => {
  log = new RecordingLog()
  app = await buildIngestApp({
    config: loadConfig({ LOG_LEVEL: 'silent' }).ingest,
    topic: 'raw',
    log,
    sites: {
      byWriteKey: async (k) => (k === site.writeKey ? site : undefined),
      isKnownOrigin: async () => false,
    },
    metrics: createIngestMetrics(),
    logger: createLogger('silent'),
  })
})

afterEach(async () => {
  await app.close()
})

const FFFD = '\uFFFD'

/** The bytes are valid UTF-8 (a strict decoder accepts them). */
function isStrictUtf8(bytes: Buffer): boolean {
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(bytes)
    return true
  } catch {
    return false
  }
}

describe('lone surrogates', () => {
  // Written as JSON escapes, as a client's JSON.stringify of a broken string sends them.
  const body =
    '{"event":"Sign\\ud800up","anonymousId":"a\\udfff","properties":{"k\\udbff":"v\\ud800","list":["x\\udc00",{"deep":"\\ud83d"}],"pair":"\\ud83d\\ude00"},"context":{"page":{"path":"/p\\ud800"}}}'

  it('become one U+FFFD each, in keys and values at any depth, before the event reaches the log', async () => {
    const res = await app.inject({
      method: 'POST',
      url: '/v1/track',
      headers: { authorization: basicAuth, 'content-type': 'application/json' },
      payload: body,
    })
    expect(res.statusCode, res.body).toBe(200)
    expect(log.records).toHaveLength(1)
    const bytes = log.records[0]!.value
    // The stored JSON is valid UTF-8 with no surrogate escape left: strict parsers (jq) read it.
    expect(isStrictUtf8(bytes)).toBe(true)
    expect(bytes.toString('latin1')).not.toMatch(/\\u[dD][89a-fA-F]/)
    const event = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>
    expect(event.event).toBe(`Sign${FFFD}up`)
    expect(event.anonymousId).toBe(`a${FFFD}`)
    expect(event.properties).toEqual({
      [`k${FFFD}`]: `v${FFFD}`,
      list: [`x${FFFD}`, { deep: FFFD }],
      // A valid pair is a character, kept as it is.
      pair: '\u{1F600}',
    })
    expect((event.context as { page: { path: string } }).page.path).toBe(`/p${FFFD}`)
  })

  it('normalizeEvent leaves a well-formed payload as the same objects (nothing copied)', () => {
    const properties = { a: 'plain', nested: { b: ['c', 'é', '\u{1F600}'] } }
    const r = normalizeEvent(
      { event: 'E', anonymousId: 'a', properties },
      {
        siteId: 's',
        userAgent: undefined,
        receivedAtMs: Date.now(),
        batchSentAt: undefined,
        routeType: 'track',
        imported: false,
      },
      {
        maxEventBytes: 32 * 1024,
        maxDepth: 16,
        maxFutureMs: 23 * 3_600_000,
        maxPastMs: 7 * 86_400_000,
        importMaxPastMs: 1830 * 86_400_000,
      },
      new UserAgentParser(),
    )
    expect(r.ok && r.event.properties).toBe(properties)
  })
})

describe('request charsets', () => {
  const event = { event: 'Café crème', anonymousId: 'visitor-ü', properties: { city: 'Zürich' } }
  const json = JSON.stringify(event)

  const send = (contentType: string, payload: Buffer) =>
    app.inject({
      method: 'POST',
      url: '/v1/track',
      headers: { authorization: basicAuth, 'content-type': contentType },
      payload,
    })

  function logged(): Record<string, unknown> {
    expect(log.records).toHaveLength(1)
    return JSON.parse(log.records[0]!.value.toString('utf8')) as Record<string, unknown>
  }

  it('reads charset parameters in any case, quoted or not', () => {
    expect(charsetOf('application/json')).toBeUndefined()
    expect(charsetOf('text/plain;charset=UTF-8')).toBe('utf-8')
    expect(charsetOf('application/json; Charset="ISO-8859-1" ')).toBe('iso-8859-1')
    expect(charsetOf('text/plain; format=flowed; charset=utf8')).toBe('utf8')
  })

  for (const contentType of [
    'application/json',
    'application/json; charset=UTF-8',
    'text/plain;charset=utf8',
  ]) {
    it(`${contentType}: UTF-8`, async () => {
      const res = await send(contentType, Buffer.from(json, 'utf8'))
      expect(res.statusCode, res.body).toBe(200)
      expect(logged()).toMatchObject(event)
    })
  }

  // latin1 bytes of "é" (0xE9) read as UTF-8 would be U+FFFD: decoded, they are the characters sent.
  for (const [contentType, encode] of [
    ['application/json; charset=ISO-8859-1', (s: string) => Buffer.from(s, 'latin1')],
    ['text/plain; charset=windows-1252', (s: string) => Buffer.from(s, 'latin1')],
    ['application/json; charset="utf-16le"', (s: string) => Buffer.from(s, 'utf16le')],
  ] as const) {
    it(`${contentType}: decoded before parsing`, async () => {
      const bytes = encode(json)
      // The bytes are not UTF-8: reading them as UTF-8 would not give the event back.
      expect(bytes.toString('utf8')).not.toBe(json)
      const res = await send(contentType, bytes)
      expect(res.statusCode, res.body).toBe(200)
      expect(logged()).toMatchObject(event)
    })
  }

  it('a charset TextDecoder does not know is 415 TALLY_ERR_UNSUPPORTED_CHARSET naming it', async () => {
    const res = await send('application/json; charset=x-klingon', Buffer.from(json, 'utf8'))
    expect(res.statusCode).toBe(415)
    expect(res.json()).toMatchObject({
      success: false,
      code: 'TALLY_ERR_UNSUPPORTED_CHARSET',
      where: 'content-type',
    })
    expect(res.json().message).toContain('x-klingon')
    expect(log.records).toHaveLength(0)
  })
})
