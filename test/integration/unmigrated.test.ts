import { spawn, spawnSync } from 'node:child_process'
import { afterAll, describe, expect, it } from 'vitest'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { loadMigrations, migrateCassandra } from '../../core/cassandra/migrate.js'
import { cleanup, envOf, testConfig } from '../helpers/context.js'

/**
 * A careless operator starts a role before `tally migrate`, on a keyspace that does not exist, or on
 * one created by hand, or after an upgrade without migrating. The role must stop at once with one
 * line naming the keyspace, the code and the command to run (not a driver message, not a role that
 * runs and answers 500s), or, when only the newest migrations are missing, start and say which.
 * Real Cassandra and Kafka; `npm run build` first.
 */

const configs = [testConfig(), testConfig(), testConfig()]
afterAll(async () => {
  for (const c of configs) await cleanup(c)
})

const ROLES = ['ingest', 'query', 'stream', 'archive'] as const

function tally(args: string[], env: Record<string, string>) {
  const res = spawnSync(process.execPath, ['bin/tally.js', ...args], {
    encoding: 'utf8',
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      PORT: '0',
      LOG_LEVEL: 'silent',
      ...env,
    },
    timeout: 60_000,
  })
  return { code: res.status, stdout: res.stdout, stderr: res.stderr }
}

function expectRefused(res: ReturnType<typeof tally>, keyspace: string): void {
  expect(res.code, res.stderr).toBe(1)
  const lines = res.stderr.trim().split('\n')
  expect(lines, res.stderr).toHaveLength(1)
  expect(lines[0]).toContain('[TALLY_ERR_NOT_MIGRATED]')
  expect(lines[0]).toContain(keyspace)
  expect(lines[0]).toContain('tally migrate')
}

describe('roles against an unmigrated keyspace', () => {
  it('the keyspace does not exist: every role and `sites add` stop with one line saying to run `tally migrate`', () => {
    const config = configs[0]!
    const env = envOf(config)
    for (const role of ROLES) expectRefused(tally([role], env), config.cassandra.keyspace)
    expectRefused(tally(['sites', 'add', 'unmigrated.test'], env), config.cassandra.keyspace)
  })

  it('the keyspace exists without any migration: refused the same way, nothing is written', async () => {
    const config = configs[1]!
    const client = createCassandraClient(config.cassandra)
    await client.connect()
    try {
      await client.execute(
        `CREATE KEYSPACE ${config.cassandra.keyspace} WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}`,
      )
      const env = envOf(config)
      for (const role of ROLES) expectRefused(tally([role], env), config.cassandra.keyspace)
      const tables = await client.execute(
        'SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?',
        [config.cassandra.keyspace],
      )
      expect(tables.rows).toEqual([])
    } finally {
      await client.shutdown()
    }
  })

  it('the newest migrations are missing: the role starts and names them and `tally migrate` in a warning', async () => {
    const config = configs[2]!
    const all = await loadMigrations()
    const missing = all.slice(-2)
    await migrateCassandra(
      config.cassandra,
      all.filter((m) => !missing.includes(m)),
    )
    const child = spawn(process.execPath, ['bin/tally.js', 'query'], {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '',
        PORT: '0',
        LOG_LEVEL: 'warn',
        ...envOf(config),
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    let stderr = ''
    child.stderr!.setEncoding('utf8')
    const warned = new Promise<Record<string, unknown>>((resolve, reject) => {
      child.stderr!.on('data', (chunk: string) => {
        stderr += chunk
        for (const line of stderr.split('\n')) {
          if (!line.includes('tally migrate')) continue
          try {
            resolve(JSON.parse(line) as Record<string, unknown>)
          } catch {
            // A partial line: wait for the rest.
          }
        }
      })
      child.once('exit', (code) => reject(new Error(`query exited ${code} before warning: ${stderr}`)))
    })
    try {
      const warning = await warned
      expect(warning.level).toBe(40)
      expect(warning.missing).toEqual(missing.map((m) => `${String(m.version).padStart(4, '0')}_${m.name}`))
      expect(String(warning.msg)).toContain(config.cassandra.keyspace)
    } finally {
      child.kill('SIGTERM')
      await new Promise((resolve) => child.once('exit', resolve))
    }
  }, 60_000)
})
