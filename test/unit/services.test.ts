import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { ServicesManager } from '../../app/services/manager.js'
import { loadConfig } from '../../core/config.js'

let dir: string | undefined
let server: Server | undefined
afterEach(async () => {
  server?.close()
  server = undefined
  if (dir) await rm(dir, { recursive: true, force: true })
})

async function freePortServer(): Promise<number> {
  server = createServer()
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return address.port
}

describe('tally services (process handling)', () => {
  it('refuses to start when a port is taken by a process it did not start', async () => {
    dir = await mkdtemp(join(tmpdir(), 'tally-svc-'))
    const port = await freePortServer()
    const cfg = loadConfig({
      TALLY_SERVICES_RUN_DIR: dir,
      TALLY_SERVICES_CACHE: join(dir, 'cache'),
      TALLY_SERVICES_KAFKA_PORT: String(port),
    })
    const manager = new ServicesManager(cfg.services)
    await expect(manager.up(['kafka'])).rejects.toMatchObject({
      code: 'TALLY_ERR_PORT_IN_USE',
      message: expect.stringContaining(`127.0.0.1:${port} is already in use`),
    })
    // Nothing was fetched: the check comes first.
    expect(existsSync(join(dir, 'cache'))).toBe(false)
  })

  it('treats a PID file of another process as stale and never signals that process', async () => {
    dir = await mkdtemp(join(tmpdir(), 'tally-svc-'))
    const cfg = loadConfig({ TALLY_SERVICES_RUN_DIR: dir })
    const lines: string[] = []
    const manager = new ServicesManager(cfg.services, (l) => lines.push(l))
    await mkdir(join(dir, 'kafka'), { recursive: true })
    // This test's own PID: alive, but not a Kafka started from this run folder.
    await writeFile(manager.pidFile('kafka'), `${process.pid}\n`)
    const status = await manager.status()
    expect(status.find((s) => s.name === 'kafka')?.state).toBe('down')
    await manager.down(['kafka'])
    expect(lines).toContain('kafka: not running')
    expect(existsSync(manager.pidFile('kafka'))).toBe(false)
  })

  it('reports a PID file of a dead process as down', async () => {
    dir = await mkdtemp(join(tmpdir(), 'tally-svc-'))
    const cfg = loadConfig({ TALLY_SERVICES_RUN_DIR: dir })
    const manager = new ServicesManager(cfg.services)
    await mkdir(join(dir, 'cassandra'), { recursive: true })
    await writeFile(manager.pidFile('cassandra'), '2147483646\n')
    const status = await manager.status()
    expect(status.find((s) => s.name === 'cassandra')).toMatchObject({ state: 'down', pid: undefined })
  })
})
