import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { cleanup, envOf, eventually, testConfig, uniqueName } from '../helpers/context.js'
import { basic, freePort } from '../helpers/ingest.js'

/**
 * Issue 20: with the same environment every command talks to the same backend. Before, with
 * nothing configured, `tally sites add` wrote to the embedded store while `tally ingest` connected
 * to Kafka and Cassandra on localhost, so the key just printed got 401.
 */

const config = testConfig()
const data = mkdtempSync(join(tmpdir(), 'tally-backend-'))
afterAll(async () => {
  rmSync(data, { recursive: true, force: true })
  await cleanup(config)
})

const base = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '' }

function tally(args: string[], env: Record<string, string>) {
  const res = spawnSync(process.execPath, ['bin/tally.js', ...args], {
    encoding: 'utf8',
    env: { ...base, ...env },
    timeout: 120_000,
  })
  return { code: res.status, stdout: res.stdout, stderr: res.stderr }
}

describe('one backend for every command', () => {
  it('nothing configured: `sites add` uses the embedded store and `tally ingest` refuses in one line instead of reaching localhost', () => {
    const env = { TALLY_DATA_DIR: data }
    const added = tally(['sites', 'add', 'embedded.test', '--json'], env)
    expect(added.code, added.stderr).toBe(0)
    expect(added.stderr).toBe('')
    const ingest = tally(['ingest'], { ...env, PORT: '0' })
    expect(ingest.code).toBe(2)
    expect(ingest.stderr.trim().split('\n')).toHaveLength(1)
    expect(ingest.stderr).toContain('the backend is embedded')
    expect(ingest.stderr).toContain('KAFKA_BROKERS')
    expect(ingest.stderr).toContain('TALLY_BACKEND=kafka-cassandra')
    expect(ingest.stderr).toContain('[TALLY_ERR_USAGE]')
  })

  it('Kafka and Cassandra configured: `tally ingest` says so and accepts the key `sites add` printed', async () => {
    const env = envOf(config)
    const migrated = tally(['migrate'], env)
    expect(migrated.code, migrated.stderr).toBe(0)
    const siteId = uniqueName('backend_site')
    const added = tally(['sites', 'add', 'backend.test', '--id', siteId, '--json'], env)
    expect(added.code, added.stderr).toBe(0)
    const { writeKey } = JSON.parse(added.stdout) as { writeKey: string }

    const port = await freePort()
    const child: ChildProcess = spawn(process.execPath, ['bin/tally.js', 'ingest'], {
      env: { ...base, ...env, PORT: String(port), LOG_LEVEL: 'info' },
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    let stderr = ''
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString()
    })
    const exited = once(child, 'exit')
    try {
      const url = `http://127.0.0.1:${port}`
      await eventually(async () => ((await fetch(`${url}/readyz`)).ok ? true : undefined), 60_000, 'ingest')
      expect(stderr).toContain(
        `tally ingest: backend: kafka-cassandra (KAFKA_BROKERS=${config.kafka.brokers.join(',')}`,
      )
      const res = await fetch(`${url}/v1/track`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: basic(writeKey) },
        body: JSON.stringify({ event: 'Same Backend', anonymousId: 'v1' }),
      })
      expect(res.status).toBe(200)
    } finally {
      child.kill('SIGTERM')
      await exited
    }
  })
})
