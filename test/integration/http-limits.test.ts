import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { type RunningAll, startAll } from '../../app/cli/all.js'
import { loadConfig } from '../../core/config.js'
import { createLogger } from '../../core/log.js'
import { tempDataDir } from '../contract/backends.js'
import {
  closesWithin,
  destroyClients,
  lastBody,
  sleep,
  slowHeaders,
  statusOf,
  trickle,
} from '../helpers/slow-client.js'

/**
 * The HTTP limits as `tally all` (embedded backend, in this process) starts its servers from the
 * environment: TALLY_REQUEST_TIMEOUT_MS and TALLY_MAX_CONNECTIONS reach ingest and query, and the
 * /metrics servers hold their own 10 s timeout rather than Node's defaults.
 */

const REQUEST_TIMEOUT_MS = 1000
const MAX_CONNECTIONS = 10
/** Node checks deadlines every tenth of the timeout (at most 1 s); the rest is scheduling on a busy machine. */
const MARGIN_MS = 1200

const data = tempDataDir('tally-http-limits-')
let all: RunningAll

beforeAll(async () => {
  const config = loadConfig({
    TALLY_BACKEND: 'embedded',
    TALLY_DATA_DIR: data.dir,
    PORT: '0',
    LOG_LEVEL: 'silent',
    TALLY_REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
    TALLY_MAX_CONNECTIONS: String(MAX_CONNECTIONS),
  })
  all = await startAll(config, createLogger('silent'), {
    quickstart: false,
    queryPort: 0,
    streamPort: 0,
    batchPort: 0,
  })
})

afterEach(() => destroyClients())

afterAll(async () => {
  await all?.close()
  data.remove()
})

const portOf = (url: string) => Number(new URL(url).port)

describe.each([
  { role: 'ingest', url: () => all.ingestUrl, path: '/v1/pixel.gif?wk=x' },
  { role: 'query', url: () => all.queryUrl, path: '/v1/stats/aggregate?site=x' },
])('tally all: $role', ({ url, path }) => {
  it('answers headers that trickle in with 408 at TALLY_REQUEST_TIMEOUT_MS', async () => {
    const c = trickle(portOf(url()), slowHeaders(path), 'X-Slow: a\r\n', 100)
    expect(await closesWithin(c, REQUEST_TIMEOUT_MS + 8000)).toBe(true)
    expect(c.closedAfterMs()!).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS - 50)
    expect(c.closedAfterMs()!).toBeLessThanOrEqual(REQUEST_TIMEOUT_MS + MARGIN_MS)
    expect(statusOf(c.text())).toBe(408)
    expect(lastBody(c.text())).toMatchObject({ success: false, code: 'TALLY_ERR_REQUEST_TIMEOUT' })
  })

  it('holds at most TALLY_MAX_CONNECTIONS slow clients', async () => {
    const clients = Array.from({ length: 3 * MAX_CONNECTIONS }, () =>
      trickle(portOf(url()), slowHeaders(path), 'X-Slow: a\r\n', 100),
    )
    await Promise.all(clients.map((c) => c.connected))
    await sleep(300)
    expect(clients.filter((c) => c.closedAfterMs() === undefined)).toHaveLength(MAX_CONNECTIONS)
    for (const c of clients) expect(await closesWithin(c, REQUEST_TIMEOUT_MS + 8000)).toBe(true)
  })
})

describe('tally all: /metrics servers', () => {
  it.each([
    { role: 'stream', url: () => all.streamUrl },
    { role: 'batch', url: () => all.batchUrl },
  ])('$role answers headers that trickle in with 408 at its 10 s request timeout', async ({ url }) => {
    const timeoutMs = 10_000
    const c = trickle(portOf(url()), slowHeaders('/metrics'), 'X-Slow: a\r\n', 500)
    expect(await closesWithin(c, timeoutMs + 15_000)).toBe(true)
    expect(c.closedAfterMs()!).toBeGreaterThanOrEqual(timeoutMs - 50)
    expect(c.closedAfterMs()!).toBeLessThanOrEqual(timeoutMs + MARGIN_MS)
    expect(statusOf(c.text())).toBe(408)
    expect(lastBody(c.text())).toMatchObject({ success: false, code: 'TALLY_ERR_REQUEST_TIMEOUT' })
  })
})
