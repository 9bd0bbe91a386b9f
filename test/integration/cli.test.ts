import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { cleanup, envOf, testConfig, uniqueName } from '../helpers/context.js'

const idOf = (token: string) => createHash('sha256').update(token).digest('hex').slice(0, 12)

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

  it('lists the read tokens of a site and revokes one by id; unknown site or token id: exit code and one line', () => {
    const env = envOf(config)
    const siteId = uniqueName('cli_site')
    const added = tally(['sites', 'add', 'cli.test', '--id', siteId, '--json'], env)
    expect(added.stderr).toBe('')
    const first = (JSON.parse(added.stdout) as { readToken: string }).readToken
    const more = tally(['sites', 'token', siteId, '--json'], env)
    expect(more.code).toBe(0)
    const second = JSON.parse(more.stdout) as { readToken: string; tokenId: string }
    expect(second.tokenId).toBe(idOf(second.readToken))

    const listed = tally(['sites', 'tokens', siteId, '--json'], env)
    expect(listed.code).toBe(0)
    const tokens = JSON.parse(listed.stdout) as Array<Record<string, unknown>>
    expect(tokens.map((t) => t.tokenId).sort()).toEqual([idOf(first), idOf(second.readToken)].sort())
    for (const t of tokens) {
      expect(Object.keys(t).sort()).toEqual(['createdAt', 'lastUsedAt', 'prefix', 'revokedAt', 'tokenId'])
      expect([t.lastUsedAt, t.revokedAt]).toEqual([null, null])
      // The prefix recognizes a token; the secret itself is never printed.
      expect([first.slice(0, 8), second.readToken.slice(0, 8)]).toContain(t.prefix)
    }
    expect(listed.stdout).not.toContain(first)
    const text = tally(['sites', 'tokens', siteId], env)
    expect(text.stdout).toContain(`${idOf(first)}\t${first.slice(0, 8)}…`)
    expect(text.stdout).toContain('last used never')

    const revoked = tally(['sites', 'revoke-token', siteId, idOf(first)], env)
    expect(revoked.stderr).toBe('')
    expect(revoked.code).toBe(0)
    expect(revoked.stdout).toMatch(
      new RegExp(`^site ${siteId}: read token ${idOf(first)} revoked at \\S+\n$`),
    )
    const after = JSON.parse(tally(['sites', 'tokens', siteId, '--json'], env).stdout) as Array<{
      tokenId: string
      revokedAt: string | null
    }>
    expect(after.find((t) => t.tokenId === idOf(first))?.revokedAt).toEqual(expect.any(String))
    expect(after.find((t) => t.tokenId === idOf(second.readToken))?.revokedAt).toBeNull()

    const unknownToken = tally(['sites', 'revoke-token', siteId, '0123456789ab'], env)
    expect(unknownToken.code).toBe(1)
    expect(unknownToken.stderr).toBe(
      `tally: site ${siteId} has no read token 0123456789ab [TALLY_ERR_READ_TOKEN_NOT_FOUND]\n`,
    )
    const unknownSite = tally(['sites', 'tokens', `${siteId}-none`], env)
    expect(unknownSite.code).toBe(1)
    expect(unknownSite.stderr).toBe(`tally: no site ${siteId}-none [TALLY_ERR_SITE_NOT_FOUND]\n`)
    const badId = tally(['sites', 'revoke-token', siteId, 'rt_notanid'], env)
    expect(badId.code).toBe(2)
    expect(badId.stderr.trim().split('\n')).toHaveLength(1)
    expect(badId.stderr).toContain('is not a read token id')
  })

  it('adds a site with aliases and lists, adds and removes them; a domain another site holds is refused', () => {
    const env = envOf(config)
    const siteId = uniqueName('cli_alias')
    const other = uniqueName('cli_alias_other')
    const base = uniqueName('d').replace(/_/g, '-')
    const added = tally(
      ['sites', 'add', `${base}.test`, '--id', siteId, '--alias', `staging.${base}.test`],
      env,
    )
    expect(added.code, added.stderr).toBe(0)
    expect(added.stdout).toContain(`aliases    staging.${base}.test`)
    expect(tally(['sites', 'alias', siteId, 'add', `HTTPS://Preview.${base}.test/x`], env).stdout).toContain(
      `alias preview.${base}.test added`,
    )
    expect(JSON.parse(tally(['sites', 'alias', siteId, 'list', '--json'], env).stdout)).toEqual([
      `preview.${base}.test`,
      `staging.${base}.test`,
    ])
    expect(tally(['sites', 'add', `${base}-other.test`, '--id', other], env).code).toBe(0)
    const taken = tally(['sites', 'alias', other, 'add', `staging.${base}.test`], env)
    expect(taken.code).not.toBe(0)
    expect(taken.stderr).toContain('TALLY_ERR_DOMAIN_TAKEN')
    expect(tally(['sites', 'alias', siteId, 'remove', `staging.${base}.test`], env).code).toBe(0)
    expect(tally(['sites', 'alias', siteId, 'list'], env).stdout.trim()).toBe(`preview.${base}.test`)
    expect(tally(['sites', 'alias', siteId, 'remove', `staging.${base}.test`], env).code).toBe(2)
    expect(tally(['sites', 'alias', siteId, 'rename', 'x.test'], env).code).toBe(2)
  })

  it.each(['kafka-cassandra', 'embedded'])(
    '%s: sites add --timezone, set and show keep a time zone (UTC by default); an unknown zone is refused in one line',
    (backend) => {
      const data = mkdtempSync(join(tmpdir(), 'tally-cli-tz-'))
      const env = backend === 'embedded' ? { TALLY_DATA_DIR: data } : envOf(config)
      try {
        expect(tally(['migrate'], env).code).toBe(0)
        const siteId = uniqueName('cli_tz')
        const base = uniqueName('tz').replace(/_/g, '-')
        const added = tally(
          ['sites', 'add', `${base}.test`, '--id', siteId, '--timezone', 'america/new_york'],
          env,
        )
        expect(added.code, added.stderr).toBe(0)
        expect(added.stdout).toContain('time zone  America/New_York')
        const shown = JSON.parse(tally(['sites', 'show', siteId, '--json'], env).stdout) as {
          timezone: string
        }
        expect(shown.timezone).toBe('America/New_York')
        const set = tally(['sites', 'set', siteId, '--timezone', 'Asia/Kolkata'], env)
        expect([set.code, set.stdout]).toEqual([0, `site ${siteId}: time zone Asia/Kolkata\n`])
        const listed = JSON.parse(tally(['sites', 'list', '--json'], env).stdout) as Array<{
          siteId: string
          timezone: string
        }>
        expect(listed.find((r) => r.siteId === siteId)?.timezone).toBe('Asia/Kolkata')
        expect(tally(['sites', 'set', siteId, '--timezone', 'UTC'], env).code).toBe(0)
        expect(tally(['sites', 'show', siteId], env).stdout).toContain('time zone  UTC')
        const plain = uniqueName('cli_tz_plain')
        expect(tally(['sites', 'add', `${base}-plain.test`, '--id', plain], env).stdout).toContain(
          'time zone  UTC',
        )
        const bad = tally(['sites', 'set', siteId, '--timezone', 'Mars/Olympus'], env)
        expect(bad.code).toBe(1)
        expect(bad.stderr.trim().split('\n')).toHaveLength(1)
        expect(bad.stderr).toContain('TALLY_ERR_BAD_TIMEZONE')
        const none = tally(['sites', 'show', `${siteId}-none`], env)
        expect(none.stderr).toContain('TALLY_ERR_SITE_NOT_FOUND')
      } finally {
        rmSync(data, { recursive: true, force: true })
      }
    },
  )

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
      ['sites', 'tokens', '--help'],
      ['sites', 'revoke-token', '--help'],
    ]) {
      const res = tally(args)
      expect(res.code).toBe(0)
      expect(res.stdout).toContain('Usage: tally')
    }
  })
})
