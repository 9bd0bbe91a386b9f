import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { afterEach, describe, expect, it } from 'vitest'
import { loadConfig } from '../../core/config.js'
import { createLogger } from '../../core/log.js'
import type { AggregateReader } from '../../core/ports/aggregate-store.js'
import type { EventLogWriter } from '../../core/ports/event-log.js'
import { buildIngestApp } from '../../ingest/app.js'
import { createIngestMetrics } from '../../ingest/metrics.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import {
  client,
  closesWithin,
  destroyClients,
  heldConnections,
  lastBody,
  type SlowClient,
  sleep,
  slowHeaders,
  statusOf,
  trickle,
} from '../helpers/slow-client.js'

/**
 * Slow clients against real listening ingest and query servers (127.0.0.1, any port): a request
 * whose headers or body trickle in is answered 408 once TALLY_REQUEST_TIMEOUT_MS has passed since
 * its first byte; no more than TALLY_MAX_CONNECTIONS connections are held; near that cap, idle
 * keep-alive connections are closed so a new client is still served.
 */

const logger = createLogger('silent')
/** How late after the request timeout a 408 may come: Node checks on an interval (≤ 1 s, a tenth of the timeout here) plus scheduling on a busy machine. */
const MARGIN_MS = 900

const log: EventLogWriter = {
  append: async () => {},
  healthy: () => true,
  close: async () => {},
}

let ingestMetrics = createIngestMetrics()

async function ingestServer(requestTimeoutMs: number, maxConnections: number): Promise<FastifyInstance> {
  ingestMetrics = createIngestMetrics()
  return buildIngestApp({
    config: loadConfig({
      LOG_LEVEL: 'silent',
      TALLY_REQUEST_TIMEOUT_MS: String(requestTimeoutMs),
      TALLY_MAX_CONNECTIONS: String(maxConnections),
    }).ingest,
    topic: 'raw',
    log,
    sites: { byWriteKey: async () => undefined, isKnownOrigin: async () => false },
    metrics: ingestMetrics,
    logger,
  })
}

/** Releases the /readyz requests of the query servers, which wait for the store until then. */
let releaseStore: () => void = () => {}

async function queryServer(requestTimeoutMs: number, maxConnections: number): Promise<FastifyInstance> {
  return buildQueryApp({
    reader: {} as AggregateReader,
    auth: new ReadAccessCache({ get: async () => undefined, list: async () => [] }),
    freshness: {
      // A store that does not answer: /readyz requests stay in progress.
      current: () =>
        new Promise((resolve) => {
          const before = releaseStore
          releaseStore = () => {
            before()
            resolve({
              completeThroughMs: undefined,
              receivedThroughMs: undefined,
              graceMs: 0,
              partitionsReporting: 0,
              partitionsExpected: 1,
            })
          }
        }),
    },
    logger,
    requestTimeoutMs,
    maxConnections,
  })
}

const servers: FastifyInstance[] = []
afterEach(async () => {
  releaseStore()
  releaseStore = () => {}
  destroyClients()
  for (const app of servers.splice(0)) await app.close()
})

async function listen(app: FastifyInstance): Promise<number> {
  servers.push(app)
  await app.listen({ host: '127.0.0.1', port: 0 })
  return (app.server.address() as AddressInfo).port
}

const ingestSlowBody =
  'POST /v1/track HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nAuthorization: Basic d2s6\r\nContent-Length: 500\r\n\r\n{"event":"'
const querySlowBody = 'GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\n\r\n'

/** A request in progress until the test ends. */
const busy = {
  // Its body trickles in: the request is being received.
  ingest: (port: number) => trickle(port, ingestSlowBody, 'a', 200),
  // The store never answers: the request waits for its answer.
  query: (port: number) => {
    const c = client(port)
    c.socket.write('GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n')
    return c
  },
}

const roles = [
  {
    role: 'ingest',
    server: ingestServer,
    slowBody: ingestSlowBody,
    path: '/v1/pixel.gif?wk=x',
    busy: busy.ingest,
  },
  {
    role: 'query',
    server: queryServer,
    slowBody: querySlowBody,
    path: '/v1/stats/aggregate?site=x',
    busy: busy.query,
  },
] as const

describe.each(roles)('$role server', ({ server, slowBody, path }) => {
  const timeoutMs = 1000

  it('answers a request whose headers trickle in with 408 TALLY_ERR_REQUEST_TIMEOUT at the request timeout', async () => {
    const port = await listen(await server(timeoutMs, 100))
    const c = trickle(port, slowHeaders(path), 'X-Slow: a\r\n', 100)
    expect(await closesWithin(c, timeoutMs + 8000)).toBe(true)
    const afterMs = c.closedAfterMs()!
    expect(afterMs).toBeGreaterThanOrEqual(timeoutMs - 50)
    expect(afterMs).toBeLessThanOrEqual(timeoutMs + MARGIN_MS)
    expect(statusOf(c.text())).toBe(408)
    expect(lastBody(c.text())).toMatchObject({ success: false, code: 'TALLY_ERR_REQUEST_TIMEOUT' })
  })

  it('closes a request whose body trickles in at the request timeout', async () => {
    const port = await listen(await server(timeoutMs, 100))
    const c = trickle(port, slowBody, 'a', 200)
    expect(await closesWithin(c, timeoutMs + 8000)).toBe(true)
    const afterMs = c.closedAfterMs()!
    expect(afterMs).toBeGreaterThanOrEqual(timeoutMs - 50)
    expect(afterMs).toBeLessThanOrEqual(timeoutMs + MARGIN_MS)
  })

  it('holds at most TALLY_MAX_CONNECTIONS connections from slow clients, and closes them at the timeout', async () => {
    const cap = 10
    const longTimeoutMs = 3000
    const app = await server(longTimeoutMs, cap)
    const port = await listen(app)
    const clients = Array.from({ length: 30 }, () => trickle(port, slowBody, 'a', 200))
    await Promise.all(clients.map((c) => c.connected))
    // The ones over the cap are closed as soon as the server accepts them (polled: on a loaded
    // machine the accepts may come later than the clients' connects).
    const stillOpen = () => clients.filter((c) => c.closedAfterMs() === undefined)
    for (const until = Date.now() + 5000; stillOpen().length > cap && Date.now() < until; ) await sleep(50)
    await sleep(100)
    const open = stillOpen()
    expect(open).toHaveLength(cap)
    const held = await heldConnections(app.server)
    expect(held).toBe(cap)
    for (const c of clients) expect(await closesWithin(c, longTimeoutMs + 8000)).toBe(true)
    for (const c of open) expect(c.closedAfterMs()!).toBeLessThanOrEqual(longTimeoutMs + MARGIN_MS + 300)
  })
})

describe('ingest server', () => {
  it('answers a request whose body trickles in with 408 naming the request, counted once', async () => {
    const timeoutMs = 1000
    const port = await listen(await ingestServer(timeoutMs, 100))
    const c = trickle(port, ingestSlowBody.replace('Host: t', 'Host: t\r\nX-Request-Id: slow-1'), 'a', 200)
    expect(await closesWithin(c, timeoutMs + 8000)).toBe(true)
    expect(c.closedAfterMs()!).toBeLessThanOrEqual(timeoutMs + MARGIN_MS)
    expect(statusOf(c.text())).toBe(408)
    expect(c.text()).toContain('\r\nx-request-id: slow-1\r\n')
    expect(lastBody(c.text())).toEqual({
      success: false,
      code: 'TALLY_ERR_REQUEST_TIMEOUT',
      message: `the request (headers and body) was not received within ${timeoutMs} ms`,
      requestId: 'slow-1',
    })
    // The aborted body that follows is not a second rejection.
    await sleep(100)
    const rejections = (await ingestMetrics.rejections.get()).values
    expect(rejections.map((v) => [v.labels.code, v.value])).toEqual([['TALLY_ERR_REQUEST_TIMEOUT', 1]])
  })
})

describe.each(roles)('$role server near the connection cap', ({ server, busy }) => {
  it('closes idle keep-alive connections first, so a new client is served and busy ones are kept', async () => {
    const cap = 10
    const app = await server(5000, cap)
    const port = await listen(app)
    const inProgress = Array.from({ length: 5 }, () => busy(port))
    await Promise.all(inProgress.map((c) => c.connected))
    const idle: SlowClient[] = []
    for (let i = 0; i < 5; i++) {
      const c = client(port)
      c.socket.write('GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n')
      idle.push(c)
      // Answered and kept open (HTTP/1.1 keep-alive): idle from then on.
      for (let n = 0; !c.text().includes('{"status":"ok"}') && n < 200; n++) await sleep(10)
      expect(statusOf(c.text())).toBe(200)
    }
    // Every connection is now open: 5 with a request in progress, 5 idle.
    const fresh = client(port)
    fresh.socket.write('GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n')
    expect(await closesWithin(fresh, 3000)).toBe(true)
    expect(statusOf(fresh.text())).toBe(200)
    expect(lastBody(fresh.text())).toEqual({ status: 'ok' })
    // Requests in progress were not cut.
    for (const c of inProgress) expect(c.closedAfterMs()).toBeUndefined()
    expect(inProgress.every((c) => c.text() === '')).toBe(true)
    expect(idle.filter((c) => c.closedAfterMs() !== undefined).length).toBeGreaterThanOrEqual(1)
    const held = await heldConnections(app.server)
    expect(held).toBeLessThanOrEqual(cap)
  })
})
