import { UAParser } from 'ua-parser-js'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { createHttpServer } from '../../core/http.js'
import { createLogger } from '../../core/log.js'
import { createProcessRegistry } from '../../core/metrics.js'
import { EventRateLimiter } from '../../ingest/rate-limit.js'
import { UserAgentParser } from '../../ingest/user-agent.js'

/**
 * Issue 22 point 3 (flat cost over time): what an ingest process keeps per key it meets (user
 * agents, rate-limit buckets, metric label sets) stays within its bound however many distinct keys
 * arrive, so a long-running process does not carry more state, or more to scan and collect, than a
 * fresh one. Counted, never timed.
 */

afterEach(() => {
  vi.useRealTimers()
})

/** A distinct, plausible browser user agent per `i`. */
function userAgent(i: number): string {
  return `Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/${100 + (i % 30)}.0.${i}.0 Safari/537.36`
}

describe('per-key state of the ingest role stays bounded', () => {
  it('the user-agent cache holds at most its limit after many more distinct user agents, and still parses right', () => {
    const limit = 500
    const parser = new UserAgentParser(limit)
    for (let i = 0; i < limit * 4; i++) {
      parser.parse(userAgent(i))
      expect(parser.size).toBeLessThanOrEqual(limit)
    }
    expect(parser.size).toBe(limit)
    // An evicted user agent (the first) and a cached one (the last) answer what ua-parser-js says.
    for (const ua of [userAgent(0), userAgent(limit * 4 - 1)]) {
      const truth = new UAParser(ua).getResult()
      expect(parser.parse(ua)).toMatchObject({
        browser: truth.browser.name,
        os: truth.os.name,
        device: truth.device.type ?? 'desktop',
      })
    }
  })

  it('the rate limiter holds at most maxKeys buckets after many more distinct clients, busy or idle', () => {
    vi.useFakeTimers({ now: 1_000_000 })
    const maxKeys = 1_000
    const limiter = new EventRateLimiter(10, 20, maxKeys)
    for (let i = 0; i < maxKeys * 5; i++) {
      // Half the clients use up part of their bucket (not evictable as "full"), half barely any.
      limiter.take(`site:client-${i}`, i % 2 === 0 ? 15 : 1)
      expect(limiter.size).toBeLessThanOrEqual(maxKeys)
      if (i % 100 === 0) vi.advanceTimersByTime(50)
    }
    // A client that used up its bucket is still limited right after (its bucket was kept or is new and full).
    expect(limiter.take('site:client-new', 20)).toBe(0)
    expect(limiter.take('site:client-new', 1)).toBeGreaterThan(0)
  })

  it('HTTP metrics keep one label set per method, route pattern and status, not per URL', async () => {
    const registry = createProcessRegistry()
    const app = createHttpServer({
      logger: createLogger('silent'),
      bodyLimit: 1024,
      requestTimeoutMs: 1000,
      registry,
    })
    app.get('/v1/things/:id', async () => ({ ok: true }))
    const sent = new Set<string>()
    for (let i = 0; i < 300; i++) {
      // Distinct ids in a route's parameter, distinct unknown paths and query strings.
      const known = await app.inject({ method: 'GET', url: `/v1/things/${i}?r=${i}` })
      sent.add(`GET ${known.statusCode} /v1/things/:id`)
      const unknown = await app.inject({ method: i % 3 === 0 ? 'POST' : 'GET', url: `/nowhere/${i}` })
      sent.add(`${i % 3 === 0 ? 'POST' : 'GET'} ${unknown.statusCode} unmatched`)
    }
    const metric = await registry.getSingleMetric('http_request_duration_seconds')!.get()
    const labelSets = new Set(
      metric.values
        .filter((v) => (v as { metricName?: string }).metricName === 'http_request_duration_seconds_count')
        .map((v) => `${v.labels.method} ${v.labels.status_code} ${v.labels.route}`),
    )
    expect(labelSets).toEqual(sent)
    expect(labelSets.size).toBeLessThanOrEqual(3)
    await app.close()
  })
})
