import { Writable } from 'node:stream'
import { pino } from 'pino'
import { describe, expect, it } from 'vitest'
import { CLIENT_IPS } from '../../bench/workload.js'
import { dimensionsOf } from '../../core/aggregate/definition.js'
import { rowKeysFor } from '../../core/aggregate/rows.js'
import { loadConfig } from '../../core/config.js'
import type { LogRecord } from '../../core/ports/event-log.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildIngestApp } from '../../ingest/app.js'
import { openCountryLookup, sharedCountryLookup } from '../../ingest/geo.js'
import { createIngestMetrics } from '../../ingest/metrics.js'
import type { RawEventV1 } from '../../schemas/events.js'

describe('country lookup (ingest/geo.ts)', () => {
  const geo = sharedCountryLookup()

  it('finds public IPv4 and IPv6 addresses (checked against the shipped database)', () => {
    expect(geo.country('8.8.8.8')).toBe('US')
    expect(geo.country('81.2.69.142')).toBe('GB')
    expect(geo.country('89.160.20.112')).toBe('SE')
    expect(geo.country('2001:4860:4860::8888')).toBe('US')
    expect(geo.country('2a02:cf40::1')).toBe('DK')
    // A dual-stack socket's IPv4-mapped form is the IPv4 address.
    expect(geo.country('::ffff:8.8.8.8')).toBe('US')
  })

  it('answers (unknown) for no IP, garbage, private, loopback, link-local, shared and documentation ranges', () => {
    for (const ip of [
      undefined,
      '',
      'not-an-ip',
      '10.1.2.3',
      '172.16.5.4',
      // The database places 192.168.1.1 in AU: the reserved ranges are checked before it.
      '192.168.1.1',
      '127.0.0.1',
      '169.254.1.1',
      '100.64.0.1',
      '192.0.2.1',
      '198.51.100.7',
      '203.0.113.200',
      '::1',
      'fe80::1',
      'fd00::1',
      '2001:db8::1',
    ])
      expect(geo.country(ip), String(ip)).toBe('(unknown)')
  })

  it("agrees with the workload generator's IP table (the integration truth of `country`)", () => {
    for (const { ip, country } of CLIENT_IPS) expect(geo.country(ip), String(ip)).toBe(country)
  })

  it('answers a cached lookup as it answered the first (the cost is measured in the bench: --only lookups)', () => {
    const lookup = openCountryLookup({ cacheSize: 10 })
    const first = CLIENT_IPS.map((c) => lookup.country(c.ip))
    const again = CLIENT_IPS.map((c) => lookup.country(c.ip))
    expect(again).toEqual(first)
    expect(first).toEqual(CLIENT_IPS.map((c) => c.country))
  })
})

const SITE: Site = {
  siteId: 'geo.test',
  domain: 'shop.example',
  origins: ['https://shop.example'],
  writeKey: 'wk-geo',
  readTokenHashes: [],
  createdAt: new Date(0),
}

async function ingestWith(env: Record<string, string>) {
  const config = loadConfig({ ...envOfTest(), ...env })
  const records: LogRecord[] = []
  const lines: string[] = []
  const sink = new Writable({
    write(chunk, _enc, done) {
      lines.push(String(chunk))
      done()
    },
  })
  const app = await buildIngestApp({
    config: { ...config.ingest, rateLimitClientPerSec: 0, rateLimitSitePerSec: 0 },
    topic: 'raw',
    log: {
      append: async (_topic, rs) => {
        records.push(...rs)
      },
      healthy: () => true,
      close: async () => {},
    },
    sites: {
      byWriteKey: async (k) => (k === SITE.writeKey ? SITE : undefined),
      isKnownOrigin: async () => true,
    },
    metrics: createIngestMetrics(),
    logger: pino({ level: 'trace' }, sink),
  })
  const events = () => records.map((r) => JSON.parse(String(r.value)) as RawEventV1)
  return { app, records, lines, events }
}

function envOfTest(): Record<string, string> {
  return {}
}

const track = (extra: Record<string, unknown> = {}) => ({
  writeKey: SITE.writeKey,
  type: 'track',
  event: 'Signed Up',
  anonymousId: 'v1',
  ...extra,
})

describe('the visitor IP at ingest: used for the country, then dropped', () => {
  it('without TALLY_TRUST_PROXY, X-Forwarded-For is not believed: the socket address counts', async () => {
    const t = await ingestWith({})
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/track',
      remoteAddress: '81.2.69.142',
      headers: { 'x-forwarded-for': '8.8.8.8' },
      payload: track(),
    })
    expect(res.statusCode, res.body).toBe(200)
    expect(t.events()[0]!.country).toBe('GB')
    await t.app.close()
  })

  it('with a hop count or the proxy CIDR, the forwarded client address counts', async () => {
    for (const trust of ['1', '10.0.0.0/8', '10.0.0.5,192.168.0.0/16']) {
      const t = await ingestWith({ TALLY_TRUST_PROXY: trust })
      const res = await t.app.inject({
        method: 'POST',
        url: '/v1/track',
        remoteAddress: '10.0.0.5',
        headers: { 'x-forwarded-for': '203.0.113.1, 81.2.69.142' },
        payload: track(),
      })
      expect(res.statusCode, res.body).toBe(200)
      expect(t.events()[0]!.country, trust).toBe('GB')
      await t.app.close()
    }
    // A proxy that is not the trusted one: its own (private) address counts.
    const t = await ingestWith({ TALLY_TRUST_PROXY: '192.168.0.0/16' })
    await t.app.inject({
      method: 'POST',
      url: '/v1/track',
      remoteAddress: '10.0.0.5',
      headers: { 'x-forwarded-for': '81.2.69.142' },
      payload: track(),
    })
    expect(t.events()[0]!.country).toBe('(unknown)')
    await t.app.close()
  })

  it("uses Segment's context.ip when given; a server-side call without it has no country", async () => {
    const t = await ingestWith({})
    const basic = `Basic ${Buffer.from(`${SITE.writeKey}:`).toString('base64')}`
    await t.app.inject({
      method: 'POST',
      url: '/v1/track',
      remoteAddress: '8.8.8.8',
      headers: { authorization: basic },
      payload: { ...track(), writeKey: undefined, context: { ip: '2a02:cf40::1' } },
    })
    await t.app.inject({
      method: 'POST',
      url: '/v1/track',
      remoteAddress: '8.8.8.8',
      headers: { authorization: basic },
      payload: { ...track(), writeKey: undefined },
    })
    expect(t.events().map((e) => e.country)).toEqual(['DK', '(unknown)'])
    await t.app.close()
  })

  it('the IP appears nowhere after ingest: not in the raw record, its rows, or the logs', async () => {
    const t = await ingestWith({ TALLY_TRUST_PROXY: '1' })
    const ips = ['81.2.69.142', '2001:4860:4860::8888', '89.160.20.112']
    await t.app.inject({
      method: 'POST',
      url: '/v1/batch',
      remoteAddress: '127.0.0.1',
      headers: { 'x-forwarded-for': ips[0]! },
      payload: {
        writeKey: SITE.writeKey,
        batch: [
          track({ context: { ip: ips[1] } }),
          { type: 'page', anonymousId: 'v2', properties: { url: `https://shop.example/?ip=x` } },
        ],
      },
    })
    // A rejected event is logged too: it must not carry the IP either.
    await t.app.inject({
      method: 'POST',
      url: '/v1/track',
      remoteAddress: '127.0.0.1',
      headers: { 'x-forwarded-for': ips[2]! },
      payload: { writeKey: SITE.writeKey, type: 'track', anonymousId: 'v3', context: { ip: ips[2] } },
    })
    const events = t.events()
    expect(events.map((e) => e.country)).toEqual(['US', 'GB'])
    const stored = [
      ...t.records.map((r) => `${String(r.value)} ${JSON.stringify(r.headers)} ${r.key ?? ''}`),
      ...events.flatMap((e) => rowKeysFor(e, Date.parse(e.timestamp), 0).map((k) => JSON.stringify(k))),
      ...events.map((e) => JSON.stringify(dimensionsOf(e))),
      ...t.lines,
    ].join('\n')
    expect(t.lines.length).toBeGreaterThan(0)
    for (const ip of ips) expect(stored).not.toContain(ip)
    await t.app.close()
  })
})

describe('TALLY_TRUST_PROXY', () => {
  it('takes a hop count or a list of addresses/CIDRs, and refuses anything else', () => {
    const env = envOfTest()
    expect(loadConfig({ ...env, TALLY_TRUST_PROXY: '2' }).ingest.trustProxy).toBe(2)
    expect(loadConfig({ ...env, TALLY_TRUST_PROXY: '10.0.0.0/8, ::1' }).ingest.trustProxy).toEqual([
      '10.0.0.0/8',
      '::1',
    ])
    expect(loadConfig(env).ingest.trustProxy).toBeUndefined()
    for (const bad of ['0', 'yes', '10.0.0.0/33', '10.0.0.0/8/1', 'proxy.example'])
      expect(() => loadConfig({ ...env, TALLY_TRUST_PROXY: bad }), bad).toThrow(/TALLY_TRUST_PROXY/)
  })
})
