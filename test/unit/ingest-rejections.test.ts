import { Writable } from 'node:stream'
import type { InjectOptions } from 'fastify'
import { pino } from 'pino'
import { describe, expect, it } from 'vitest'
import { loadConfig } from '../../core/config.js'
import type { EventLogWriter, LogRecord } from '../../core/ports/event-log.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildIngestApp } from '../../ingest/app.js'
import { createIngestMetrics } from '../../ingest/metrics.js'
import { metricValue } from '../helpers/ingest.js'

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
  siteId: 'site-rej',
  domain: 'rej.test',
  origins: ['https://rej.test'],
  writeKey: 'wk_rej',
  readTokenHashes: [],
  createdAt: new Date(0),
}
const basicOf = (key: string) => `Basic ${Buffer.from(`${key}:`).toString('base64')}`

describe('rejected requests', () => {
  it('a flood of them writes no log line at info level, and each is counted by code in the metrics', async () => {
    const lines: string[] = []
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(...chunk.toString('utf8').split('\n').filter(Boolean))
        done()
      },
    })
    const metrics = createIngestMetrics()
    const log = new RecordingLog()
    const app = await buildIngestApp({
      config: loadConfig({ LOG_LEVEL: 'info', TALLY_RATE_LIMIT_SITE: '0', TALLY_RATE_LIMIT_CLIENT: '5' })
        .ingest,
      topic: 'raw',
      log,
      sites: {
        byWriteKey: async (k) => (k === site.writeKey ? site : undefined),
        isKnownOrigin: async () => false,
      },
      metrics,
      logger: pino({ level: 'info' }, sink),
    })
    try {
      const json = { 'content-type': 'application/json' }
      const auth = { ...json, authorization: basicOf(site.writeKey) }
      const good = JSON.stringify({ event: 'E', anonymousId: 'a' })
      // Each kind of rejection, with the code it must be counted under.
      const kinds: Array<[code: string, status: number, request: InjectOptions]> = [
        [
          'TALLY_ERR_MALFORMED_JSON',
          400,
          { method: 'POST', url: '/v1/track', headers: auth, payload: '{"event":' },
        ],
        [
          'TALLY_ERR_MISSING_WRITE_KEY',
          401,
          { method: 'POST', url: '/v1/track', headers: json, payload: good },
        ],
        [
          'TALLY_ERR_INVALID_WRITE_KEY',
          401,
          {
            method: 'POST',
            url: '/v1/track',
            headers: { ...json, authorization: basicOf('nope') },
            payload: good,
          },
        ],
        [
          'TALLY_ERR_MISSING_IDENTITY',
          400,
          { method: 'POST', url: '/v1/track', headers: auth, payload: JSON.stringify({ event: 'E' }) },
        ],
        [
          'TALLY_ERR_ORIGIN_NOT_ALLOWED',
          403,
          {
            method: 'POST',
            url: '/v1/track',
            headers: { ...auth, origin: 'https://evil.test' },
            payload: good,
          },
        ],
        [
          'TALLY_ERR_UNSUPPORTED_ENCODING',
          415,
          {
            method: 'POST',
            url: '/v1/track',
            headers: { ...auth, 'content-encoding': 'zstd' },
            payload: good,
          },
        ],
        [
          'TALLY_ERR_UNSUPPORTED_CHARSET',
          415,
          {
            method: 'POST',
            url: '/v1/track',
            headers: { ...auth, 'content-type': 'application/json; charset=x-nope' },
            payload: good,
          },
        ],
        [
          'TALLY_ERR_UNSUPPORTED_MEDIA_TYPE',
          415,
          {
            method: 'POST',
            url: '/v1/track',
            headers: { ...auth, 'content-type': 'image/png' },
            payload: good,
          },
        ],
      ]
      const rounds = 50
      for (let round = 0; round < rounds; round++) {
        for (const [code, status, request] of kinds) {
          const res = await app.inject(request)
          expect(res.statusCode, `${code}: ${res.body}`).toBe(status)
          expect(res.json().code).toBe(code)
        }
      }
      // Rate limited: a browser-style client's burst is 10 events; the rest of 30 single events wait.
      let limited = 0
      for (let i = 0; i < 30; i++) {
        const res = await app.inject({
          method: 'POST',
          url: '/v1/t',
          headers: { 'content-type': 'text/plain' },
          payload: JSON.stringify({ event: 'E', anonymousId: 'a', writeKey: site.writeKey }),
        })
        if (res.statusCode === 429) limited++
        else expect(res.statusCode).toBe(200)
      }
      expect(limited).toBeGreaterThanOrEqual(20)

      expect(lines).toEqual([])
      const text = await metrics.registry.metrics()
      for (const [code] of kinds) {
        expect(metricValue(text, 'tally_ingest_rejections_total', { code }), code).toBe(rounds)
      }
      expect(metricValue(text, 'tally_ingest_rejections_total', { code: 'TALLY_ERR_RATE_LIMITED' })).toBe(
        limited,
      )
      expect(log.records).toHaveLength(30 - limited)
    } finally {
      await app.close()
    }
  })
})
