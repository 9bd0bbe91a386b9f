import { spawnSync } from 'node:child_process'
import { afterAll, describe, expect, it } from 'vitest'
import { cleanup, envOf, testConfig } from '../helpers/context.js'

const config = testConfig()
afterAll(() => cleanup(config))

function tally(args: string[], env: Record<string, string> = {}) {
  const res = spawnSync(process.execPath, ['bin/tally.js', ...args], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
    timeout: 120_000,
  })
  return { code: res.status, stdout: res.stdout, stderr: res.stderr }
}

describe('tally CLI', () => {
  it('runs migrate twice: the second run applies nothing', () => {
    const env = envOf(config)
    const first = tally(['migrate'], env)
    expect(first.stderr).toBe('')
    expect(first.code).toBe(0)
    expect(first.stdout).toMatch(/keyspace tally_test_\w+: created/)
    expect(first.stdout).toMatch(/applied 0001_sites/)
    const second = tally(['migrate'], env)
    expect(second.code).toBe(0)
    expect(second.stdout).toMatch(/0 applied, \d+ already applied/)
    expect(second.stdout).toContain(`kafka topic ${config.kafka.topicRaw}: exists`)
  })

  it('exits 2 with a one-line reason on bad usage', () => {
    const res = tally(['frobnicate'])
    expect(res.code).toBe(2)
    expect(res.stderr.trim().split('\n')).toHaveLength(1)
    expect(res.stderr).toContain("unknown command 'frobnicate'")
    const bad = tally(['services', 'up', 'zookeeper'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('unknown service "zookeeper"')
  })

  it('stops on a bad configuration value, naming variable, value and expected form', () => {
    const res = tally(['migrate'], { KAFKA_PARTITIONS: 'many' })
    expect(res.code).toBe(2)
    expect(res.stderr).toContain('KAFKA_PARTITIONS="many" is not valid: expected an integer from 1 to 10000')
  })

  it('prints --help for every command', () => {
    for (const args of [
      ['--help'],
      ['services', '--help'],
      ['services', 'up', '--help'],
      ['migrate', '--help'],
    ]) {
      const res = tally(args)
      expect(res.code).toBe(0)
      expect(res.stdout).toContain('Usage: tally')
    }
  })
})
