import { Agent, type IncomingMessage, request } from 'node:http'
import { type Gunzip, gzipSync } from 'node:zlib'
import type { FastifyInstance } from 'fastify'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { loadConfig } from '../../core/config.js'
import { createLogger } from '../../core/log.js'
import type { EventLogWriter, LogRecord } from '../../core/ports/event-log.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildIngestApp } from '../../ingest/app.js'
import { createIngestMetrics } from '../../ingest/metrics.js'
import { eventually } from '../helpers/context.js'

// Every gunzip stream ingest creates, to see how far it inflated a bomb.
const gunzips = vi.hoisted(() => [] as Gunzip[])
vi.mock('node:zlib', async (importOriginal) => {
  const zlib = await importOriginal<typeof import('node:zlib')>()
  return {
    ...zlib,
    createGunzip: (options?: Parameters<typeof zlib.createGunzip>[0]) => {
      const g = zlib.createGunzip(options)
      gunzips.push(g)
      return g
    },
  }
})

function until(condition: () => boolean, what: string): Promise<true> {
  return eventually(async () => (condition() ? true : undefined), 10_000, what)
}

/** An event log whose appends the test settles by hand. */
class ManualLog implements EventLogWriter {
  readonly pending: Array<{
    records: readonly LogRecord[]
    resolve: () => void
    reject: (e: Error) => void
  }> = []
  ok = true
  append(_topic: string, records: readonly LogRecord[]): Promise<void> {
    return new Promise((resolve, reject) => this.pending.push({ records, resolve, reject }))
  }
  healthy(): boolean {
    return this.ok
  }
  async close(): Promise<void> {}
}

const site: Site = {
  siteId: 'site-1',
  domain: 'one.test',
  origins: [],
  writeKey: 'wk_one',
  readTokenHashes: [],
  createdAt: new Date(0),
}
const auth = {
  authorization: `Basic ${Buffer.from('wk_one:').toString('base64')}`,
  'content-type': 'application/json',
}

let app: FastifyInstance
let log: ManualLog

beforeEach(async () => {
  log = new ManualLog()
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
  for (const p of log.pending) p.resolve()
  await app.close()
})

describe('ingest app with a fake log', () => {
  it('answers 2xx only once the log acknowledged the write', async () => {
    let answered = false
    const res = app
      .inject({ method: 'POST', url: '/v1/track', headers: auth, payload: { event: 'E', anonymousId: 'a' } })
      .then((r) => {
        answered = true
        return r
      })
    await until(() => log.pending.length === 1, 'the append')
    expect(answered).toBe(false)
    log.pending[0]!.resolve()
    expect((await res).statusCode).toBe(200)
  })

  it('clamps far-future timestamps (flagged, counted in a metric) and rejects too-old and impossible ones per event', async () => {
    const nowMs = Date.now()
    const res = app.inject({
      method: 'POST',
      url: '/v1/batch',
      headers: auth,
      payload: {
        batch: [
          { type: 'page', anonymousId: 'a', messageId: 'future', timestamp: '2030-01-01T00:00:00.000Z' },
          {
            type: 'page',
            anonymousId: 'a',
            messageId: 'old',
            timestamp: new Date(nowMs - 30 * 86_400_000).toISOString(),
          },
          { type: 'page', anonymousId: 'a', messageId: 'impossible', timestamp: '2024-02-30' },
          {
            type: 'page',
            anonymousId: 'a',
            messageId: 'fine',
            timestamp: new Date(nowMs - 60_000).toISOString(),
          },
        ],
      },
    })
    await until(() => log.pending.length === 1, 'the append')
    const written = log.pending[0]!.records.map(
      (r) => JSON.parse(r.value!.toString()) as Record<string, unknown>,
    )
    log.pending[0]!.resolve()
    const r = await res
    expect(r.statusCode).toBe(200)
    expect(r.json()).toMatchObject({
      accepted: 2,
      rejected: [
        { index: 1, code: 'TALLY_ERR_TIMESTAMP_TOO_OLD', where: '/timestamp' },
        { index: 2, code: 'TALLY_ERR_INVALID_TIMESTAMP', where: '/timestamp' },
      ],
    })
    expect(written.map((e) => e.messageId)).toEqual(['future', 'fine'])
    expect(written[0]).toMatchObject({
      timestampClamped: true,
      originalTimestamp: '2030-01-01T00:00:00.000Z',
      timestamp: written[0]!.receivedAt,
    })
    expect(written[1]!.timestampClamped).toBeUndefined()
    const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
    expect(metrics).toContain('tally_ingest_timestamps_clamped_total{endpoint="batch"} 1')
    expect(metrics).toContain('tally_ingest_rejections_total{code="TALLY_ERR_TIMESTAMP_TOO_OLD"} 1')
  })

  it('answers 503 with Retry-After when the log refuses the write', async () => {
    const res = app.inject({
      method: 'POST',
      url: '/v1/batch',
      headers: auth,
      payload: { batch: [{ type: 'page', anonymousId: 'a' }] },
    })
    await until(() => log.pending.length === 1, 'the append')
    log.pending[0]!.reject(new Error('kafka down'))
    const r = await res
    expect(r.statusCode).toBe(503)
    expect(r.headers['retry-after']).toBe('1')
    expect(r.json()).toMatchObject({ success: false, code: 'TALLY_ERR_LOG_UNAVAILABLE' })
    log.ok = false
    expect((await app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(503)
    expect((await app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200)
  })

  it('stops inflating a gzip bomb once it passes the cap, instead of inflating all of it after answering 413', async () => {
    // 60 gzip members of 8 MiB of spaces each: about 480 MiB from well under 500 KB.
    const member = gzipSync(Buffer.alloc(8 * 1024 * 1024, 0x20), { level: 9 })
    const bomb = Buffer.concat(Array.from({ length: 60 }, () => member))
    expect(bomb.length).toBeLessThan(500 * 1024)
    const before = gunzips.length
    const res = await app.inject({
      method: 'POST',
      url: '/v1/track',
      headers: { ...auth, 'content-encoding': 'gzip' },
      payload: bomb,
    })
    expect(res.statusCode).toBe(413)
    expect(res.json()).toMatchObject({ code: 'TALLY_ERR_PAYLOAD_TOO_LARGE' })
    const gunzip = gunzips[before]!
    await until(() => gunzip.destroyed, 'the gunzip stream to be destroyed')
    // It read only the start of the bomb.
    expect(gunzip.bytesWritten).toBeLessThan(bomb.length / 4)
    expect(log.pending).toHaveLength(0)
  })

  it('ends a keep-alive connection with its in-flight answer once closing, so close() need not wait for the client', async () => {
    const url = new URL(await app.listen({ host: '127.0.0.1', port: 0 }))
    const agent = new Agent({ keepAlive: true })
    try {
      const answer = new Promise<IncomingMessage>((resolve, reject) => {
        const req = request(
          { host: url.hostname, port: url.port, path: '/v1/track', method: 'POST', agent, headers: auth },
          (res) => {
            res.resume()
            res.on('end', () => resolve(res))
          },
        )
        req.on('error', reject)
        req.end(JSON.stringify({ event: 'E', anonymousId: 'a' }))
      })
      await until(() => log.pending.length === 1, 'the in-flight append')
      const closed = app.close()
      // The server stopped listening: shutdown has begun while the request is still in flight.
      await until(() => !app.server.listening, 'the server to stop listening')
      log.pending[0]!.resolve()
      const res = await answer
      expect(res.statusCode).toBe(200)
      expect(res.headers.connection).toBe('close')
      // The client keeps its pool open; close() still ends well before any keep-alive timeout.
      const deadline = new Promise<string>((resolve) =>
        setTimeout(() => resolve('still waiting'), 5000).unref(),
      )
      expect(await Promise.race([closed.then(() => 'closed'), deadline])).toBe('closed')
    } finally {
      agent.destroy()
    }
  })
})
