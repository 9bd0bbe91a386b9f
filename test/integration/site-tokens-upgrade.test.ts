import { createHash, randomBytes } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { loadMigrations, migrateCassandra } from '../../core/cassandra/migrate.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { EMBEDDED_DIR, openEmbedded } from '../../core/embedded/index.js'
import { STORE_MIGRATIONS } from '../../core/embedded/schema.js'
import { openDatabase } from '../../core/embedded/sqlite.js'
import type { SiteStore } from '../../core/ports/site-store.js'
import { ReadAccessCache } from '../../query/auth.js'
import { tempDataDir } from '../contract/backends.js'
import { cleanup, testConfig, uniqueName } from '../helpers/context.js'

/**
 * Upgrading a store that holds sites from before read tokens had ids (CQL migrations up to 0006,
 * embedded store schema up to step 4): each site's token is listed after the upgrade, keeps
 * working, and can be revoked.
 */

const sha = (token: string) => createHash('sha256').update(token).digest('hex')
/** A token as the old code made them: rt_ and 32 characters. */
const oldToken = () => `rt_${randomBytes(24).toString('base64url').slice(0, 32)}`
const CREATED = new Date('2026-03-04T05:06:07.000Z')
const TOKEN_CREATED = new Date('2026-03-05T00:00:00.000Z')

/** What every upgraded store must show for the site made before the upgrade. */
async function expectUpgraded(sites: SiteStore, siteId: string, token: string, tokenCreated: Date) {
  expect(await sites.listReadTokens(siteId)).toEqual([
    {
      tokenId: sha(token).slice(0, 12),
      prefix: undefined,
      createdAt: tokenCreated,
      lastUsedAt: undefined,
      revokedAt: undefined,
    },
  ])
  // Still a working token (a fresh cache per check: each reads the store).
  await expect(new ReadAccessCache(sites).authorize(siteId, `Bearer ${token}`)).resolves.toBeUndefined()
  // Its use is recorded, and it can be revoked by the id listed.
  const usedAt = new Date(Math.floor(Date.now() / 1000) * 1000)
  await sites.markReadTokenUsed(siteId, sha(token), usedAt)
  const revoked = await sites.revokeReadToken(siteId, sha(token).slice(0, 12))
  expect(revoked).toMatchObject({ createdAt: tokenCreated, lastUsedAt: usedAt, revokedAt: expect.any(Date) })
  await expect(new ReadAccessCache(sites).authorize(siteId, `Bearer ${token}`)).rejects.toMatchObject({
    statusCode: 401,
    code: 'TALLY_ERR_INVALID_READ_TOKEN',
  })
  expect(await sites.listReadTokens(siteId)).toEqual([revoked])
}

describe('read tokens after an upgrade', () => {
  const config = testConfig()
  afterAll(() => cleanup(config))

  it('cassandra: a site created before migration 0007 is listed with its token after `migrate`', async () => {
    const all = await loadMigrations()
    const before = all.filter((m) => m.version <= 6)
    expect(before.length).toBeLessThan(all.length)
    await migrateCassandra(config.cassandra, before)
    const siteId = uniqueName('old_site')
    const token = oldToken()
    const client = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
    await client.connect()
    try {
      // The rows the previous version's `tally sites add` wrote.
      await client.execute(
        'INSERT INTO sites (site_id, domain, origins, write_key, read_token_hashes, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)',
        [siteId, 'old.test', [], `wk_${siteId}`, [sha(token)], CREATED, CREATED],
        { prepare: true },
      )
      await client.execute(
        'INSERT INTO site_write_keys (write_key, site_id) VALUES (?, ?)',
        [`wk_${siteId}`, siteId],
        { prepare: true },
      )
      await client.execute(
        'INSERT INTO site_read_tokens (token_hash, site_id, created_at) VALUES (?, ?, ?)',
        [sha(token), siteId, TOKEN_CREATED],
        { prepare: true },
      )
      const result = await migrateCassandra(config.cassandra)
      expect(result.applied.map((m) => m.name)).toContain('site_tokens')
      await expectUpgraded(new CassandraSiteStore(client), siteId, token, TOKEN_CREATED)
    } finally {
      await client.shutdown()
    }
  })

  it('embedded: a site created before store schema step 5 is listed with its token once the store opens', async () => {
    const { dir, remove } = tempDataDir()
    try {
      const siteId = uniqueName('old_site')
      const token = oldToken()
      mkdirSync(join(dir, EMBEDDED_DIR), { recursive: true })
      const db = openDatabase(join(dir, EMBEDDED_DIR, 'store.db'), STORE_MIGRATIONS.slice(0, 4))
      // The row the previous version's `tally sites add` wrote.
      db.prepare(
        'INSERT INTO sites (site_id, domain, origins, write_key, read_token_hashes, created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)',
      ).run(
        siteId,
        'old.test',
        '[]',
        `wk_${siteId}`,
        JSON.stringify([sha(token)]),
        CREATED.getTime(),
        CREATED.getTime(),
      )
      db.close()
      const backend = openEmbedded({ dataDir: dir, hllPrecision: 14, purgeIntervalMs: 0 })
      try {
        // The embedded store kept no time per token: the site's creation stands for it.
        await expectUpgraded(backend.sites, siteId, token, CREATED)
      } finally {
        await backend.close()
      }
    } finally {
      remove()
    }
  })
})
