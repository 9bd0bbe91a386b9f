import { afterEach, describe, expect, it } from 'vitest'
import { startOpsServer } from '../../core/http.js'
import { createLogger } from '../../core/log.js'
import { createProcessRegistry } from '../../core/metrics.js'

const closing: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const close of closing.splice(0)) await close()
})

describe('startOpsServer', () => {
  it('serves /healthz, /readyz (503 until ready, then the role’s body) and the registry at /metrics', async () => {
    let ready: Record<string, unknown> | undefined
    const { app, url } = await startOpsServer({
      logger: createLogger('silent'),
      registry: createProcessRegistry(),
      host: '127.0.0.1',
      port: 0,
      what: "the test's /metrics",
      where: 'PORT',
      ready: () => ready,
    })
    closing.push(() => app.close())
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
    expect((await app.inject('/healthz')).json()).toEqual({ status: 'ok' })
    const starting = await app.inject('/readyz')
    expect(starting.statusCode).toBe(503)
    expect(starting.json()).toEqual({ status: 'starting' })
    ready = { partitions: [0, 2] }
    const up = await app.inject('/readyz')
    expect(up.statusCode).toBe(200)
    expect(up.json()).toEqual({ status: 'ready', partitions: [0, 2] })
    const metrics = await app.inject('/metrics')
    expect(metrics.headers['content-type']).toContain('text/plain')
    expect(metrics.body).toContain('process_cpu_user_seconds_total')
  })

  it('names the address and the setting when the port is taken', async () => {
    const options = {
      logger: createLogger('silent'),
      registry: createProcessRegistry(),
      host: '127.0.0.1',
      what: "the test's /metrics",
      where: '--stream-port',
      ready: () => undefined,
    }
    const first = await startOpsServer({ ...options, port: 0 })
    closing.push(() => first.app.close())
    const port = Number(new URL(first.url).port)
    await expect(startOpsServer({ ...options, port })).rejects.toMatchObject({
      code: 'TALLY_ERR_PORT_IN_USE',
      where: '--stream-port',
    })
  })
})
