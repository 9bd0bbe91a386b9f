import { Writable } from 'node:stream'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { ServiceUnavailableError } from '../../core/errors.js'
import { createHttpServer } from '../../core/http.js'
import type { Logger } from '../../core/log.js'

/**
 * While a backing service is down every request is answered 503: each answer is sent (with a retry
 * hint) and counted, but the log gets one warning per code and interval, not one error per request.
 */
describe('503 answers in the log', () => {
  it('50 answers of an outage: 50 × 503 with retry-after, one warn line naming the code', async () => {
    const lines: Array<{ level: number; code?: string; msg: string }> = []
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line))
        done()
      },
    })
    const logger = pino({ level: 'debug' }, sink) as unknown as Logger
    const app = createHttpServer({ logger, bodyLimit: 1024, requestTimeoutMs: 10_000 })
    app.get('/down', async () => {
      throw new ServiceUnavailableError('cassandra', 'no host answered')
    })
    await app.ready()
    try {
      const codes: number[] = []
      for (let i = 0; i < 50; i++) {
        const res = await app.inject({ method: 'GET', url: '/down' })
        expect(res.headers['retry-after']).toBe('1')
        codes.push(res.statusCode)
      }
      expect(codes).toEqual(Array(50).fill(503))
      await new Promise((r) => setImmediate(r))
      const about503 = lines.filter((l) => l.code === 'TALLY_ERR_SERVICE_UNAVAILABLE' || l.level >= 50)
      expect(about503).toEqual([
        expect.objectContaining({
          level: 40,
          code: 'TALLY_ERR_SERVICE_UNAVAILABLE',
          msg: 'answering 503: cassandra: no host answered',
        }),
      ])
    } finally {
      await app.close()
    }
  })
})
