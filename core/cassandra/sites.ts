import type { Client, types } from 'cassandra-driver'
import { TallyError } from '../errors.js'
import { hashToken, newReadToken, newWriteKey } from '../keys.js'
import type { NewSite, Site, SiteStore } from '../ports/site-store.js'

function rowToSite(row: { get(name: string): unknown }): Site {
  return {
    siteId: String(row.get('site_id')),
    domain: String(row.get('domain') ?? ''),
    origins: ((row.get('origins') as string[] | null) ?? []).slice().sort(),
    writeKey: String(row.get('write_key') ?? ''),
    readTokenHashes: ((row.get('read_token_hashes') as string[] | null) ?? []).slice(),
    createdAt: (row.get('created_at') as Date | null) ?? new Date(0),
  }
}

const SITE_COLUMNS = 'site_id, domain, origins, write_key, read_token_hashes, created_at'

/** Sites in Cassandra: one row per site plus lookup tables by write key and by token hash. */
export class CassandraSiteStore implements SiteStore {
  constructor(private readonly client: Client) {}

  async create(input: NewSite): Promise<{ site: Site; readToken: string }> {
    const writeKey = newWriteKey()
    const readToken = newReadToken()
    const tokenHash = hashToken(readToken)
    const now = new Date()
    // LWT here is fine: creating a site is rare, and it must not silently replace another.
    const rs = await this.client.execute(
      'INSERT INTO sites (site_id, domain, origins, write_key, read_token_hashes, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS',
      [input.siteId, input.domain, input.origins, writeKey, [tokenHash], now, now],
      { prepare: true },
    )
    if (!rs.wasApplied()) {
      throw new TallyError('TALLY_ERR_SITE_EXISTS', `site ${input.siteId} already exists`, {
        statusCode: 409,
        where: 'siteId',
      })
    }
    await this.client.execute(
      'INSERT INTO site_write_keys (write_key, site_id) VALUES (?, ?)',
      [writeKey, input.siteId],
      {
        prepare: true,
      },
    )
    await this.client.execute(
      'INSERT INTO site_read_tokens (token_hash, site_id, created_at) VALUES (?, ?, ?)',
      [tokenHash, input.siteId, now],
      { prepare: true },
    )
    return {
      site: {
        ...input,
        origins: [...input.origins].sort(),
        writeKey,
        readTokenHashes: [tokenHash],
        createdAt: now,
      },
      readToken,
    }
  }

  async importSite(site: Site): Promise<'created' | 'unchanged' | 'conflict'> {
    const now = new Date()
    const rs = await this.client.execute(
      'INSERT INTO sites (site_id, domain, origins, write_key, read_token_hashes, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS',
      [site.siteId, site.domain, site.origins, site.writeKey, site.readTokenHashes, site.createdAt, now],
      { prepare: true },
    )
    let outcome: 'created' | 'unchanged' = 'created'
    if (!rs.wasApplied()) {
      const existing = await this.get(site.siteId)
      if (!existing || existing.writeKey !== site.writeKey) return 'conflict'
      const missing = site.readTokenHashes.filter((h) => !existing.readTokenHashes.includes(h))
      if (missing.length > 0) {
        await this.client.execute(
          'UPDATE sites SET read_token_hashes = read_token_hashes + ?, updated_at = ? WHERE site_id = ?',
          [missing, now, site.siteId],
          { prepare: true },
        )
      }
      outcome = 'unchanged'
    }
    await this.client.execute(
      'INSERT INTO site_write_keys (write_key, site_id) VALUES (?, ?)',
      [site.writeKey, site.siteId],
      {
        prepare: true,
      },
    )
    for (const hash of site.readTokenHashes) {
      await this.client.execute(
        'INSERT INTO site_read_tokens (token_hash, site_id, created_at) VALUES (?, ?, ?)',
        [hash, site.siteId, site.createdAt],
        { prepare: true },
      )
    }
    return outcome
  }

  async get(siteId: string): Promise<Site | undefined> {
    const rs = await this.client.execute(`SELECT ${SITE_COLUMNS} FROM sites WHERE site_id = ?`, [siteId], {
      prepare: true,
    })
    const row = rs.first()
    return row ? rowToSite(row) : undefined
  }

  async list(): Promise<Site[]> {
    const sites: Site[] = []
    // Sites are few (one row each); paging keeps memory flat anyway.
    const rows = this.client.stream(`SELECT ${SITE_COLUMNS} FROM sites`, [], {
      prepare: true,
      fetchSize: 500,
    })
    for await (const row of rows as unknown as AsyncIterable<types.Row>) sites.push(rowToSite(row))
    return sites.sort((a, b) => a.siteId.localeCompare(b.siteId))
  }

  async byWriteKey(writeKey: string): Promise<Site | undefined> {
    const rs = await this.client.execute(
      'SELECT site_id FROM site_write_keys WHERE write_key = ?',
      [writeKey],
      {
        prepare: true,
      },
    )
    const siteId = rs.first()?.get('site_id') as string | undefined
    if (!siteId) return undefined
    const site = await this.get(siteId)
    // A rotated key's lookup row may outlive the rotation briefly; the site row is the truth.
    return site && site.writeKey === writeKey ? site : undefined
  }

  async rotateWriteKey(siteId: string): Promise<Site> {
    const site = await this.get(siteId)
    if (!site) throw notFound(siteId)
    const writeKey = newWriteKey()
    await this.client.execute(
      'INSERT INTO site_write_keys (write_key, site_id) VALUES (?, ?)',
      [writeKey, siteId],
      {
        prepare: true,
      },
    )
    await this.client.execute(
      'UPDATE sites SET write_key = ?, updated_at = ? WHERE site_id = ?',
      [writeKey, new Date(), siteId],
      {
        prepare: true,
      },
    )
    await this.client.execute('DELETE FROM site_write_keys WHERE write_key = ?', [site.writeKey], {
      prepare: true,
    })
    return { ...site, writeKey }
  }

  async addReadToken(siteId: string): Promise<string> {
    const site = await this.get(siteId)
    if (!site) throw notFound(siteId)
    const token = newReadToken()
    const hash = hashToken(token)
    await this.client.execute(
      'INSERT INTO site_read_tokens (token_hash, site_id, created_at) VALUES (?, ?, ?)',
      [hash, siteId, new Date()],
      { prepare: true },
    )
    await this.client.execute(
      'UPDATE sites SET read_token_hashes = read_token_hashes + ? WHERE site_id = ?',
      [[hash], siteId],
      {
        prepare: true,
      },
    )
    return token
  }

  async remove(siteId: string): Promise<boolean> {
    const site = await this.get(siteId)
    if (!site) return false
    await this.client.execute('DELETE FROM site_write_keys WHERE write_key = ?', [site.writeKey], {
      prepare: true,
    })
    for (const hash of site.readTokenHashes) {
      await this.client.execute('DELETE FROM site_read_tokens WHERE token_hash = ?', [hash], {
        prepare: true,
      })
    }
    await this.client.execute('DELETE FROM sites WHERE site_id = ?', [siteId], { prepare: true })
    return true
  }
}

function notFound(siteId: string): TallyError {
  return new TallyError('TALLY_ERR_SITE_NOT_FOUND', `no site ${siteId}`, { statusCode: 404, where: 'siteId' })
}
