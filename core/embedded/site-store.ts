import { TallyError } from '../errors.js'
import { hashToken, newReadToken, newWriteKey } from '../keys.js'
import type { NewSite, Site, SiteStore } from '../ports/site-store.js'
import type { Db } from './sqlite.js'

interface SiteRow {
  site_id: string
  domain: string
  origins: string
  write_key: string
  read_token_hashes: string
  created_at_ms: number
}

function rowToSite(r: SiteRow): Site {
  return {
    siteId: r.site_id,
    domain: r.domain,
    origins: (JSON.parse(r.origins) as string[]).slice().sort(),
    writeKey: r.write_key,
    readTokenHashes: (JSON.parse(r.read_token_hashes) as string[]).slice().sort(),
    createdAt: new Date(r.created_at_ms),
  }
}

function notFound(siteId: string): TallyError {
  return new TallyError('TALLY_ERR_SITE_NOT_FOUND', `no site ${siteId}`, { statusCode: 404, where: 'siteId' })
}

const COLUMNS = 'site_id, domain, origins, write_key, read_token_hashes, created_at_ms'

/**
 * Sites in the embedded store (SiteStore): one row per site, the write key under a unique index.
 * Lists come back sorted like the Cassandra store's (sites by id, origins and token hashes sorted).
 */
export class EmbeddedSiteStore implements SiteStore {
  private readonly stmt

  constructor(
    private readonly db: Db,
    private readonly now: () => number = Date.now,
  ) {
    this.stmt = {
      insert: db.prepare(
        'INSERT INTO sites (site_id, domain, origins, write_key, read_token_hashes, created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (site_id) DO NOTHING',
      ),
      get: db.prepare(`SELECT ${COLUMNS} FROM sites WHERE site_id = ?`),
      list: db.prepare(`SELECT ${COLUMNS} FROM sites`),
      byWriteKey: db.prepare(`SELECT ${COLUMNS} FROM sites WHERE write_key = ?`),
      setWriteKey: db.prepare('UPDATE sites SET write_key = ?, updated_at_ms = ? WHERE site_id = ?'),
      setTokens: db.prepare('UPDATE sites SET read_token_hashes = ?, updated_at_ms = ? WHERE site_id = ?'),
      remove: db.prepare('DELETE FROM sites WHERE site_id = ?'),
    }
  }

  async create(input: NewSite): Promise<{ site: Site; readToken: string }> {
    const writeKey = newWriteKey()
    const readToken = newReadToken()
    const tokenHash = hashToken(readToken)
    const now = this.now()
    const origins = [...input.origins].sort()
    const info = this.stmt.insert.run(
      input.siteId,
      input.domain,
      JSON.stringify(origins),
      writeKey,
      JSON.stringify([tokenHash]),
      now,
      now,
    )
    if (info.changes === 0) {
      throw new TallyError('TALLY_ERR_SITE_EXISTS', `site ${input.siteId} already exists`, {
        statusCode: 409,
        where: 'siteId',
      })
    }
    return {
      site: {
        siteId: input.siteId,
        domain: input.domain,
        origins,
        writeKey,
        readTokenHashes: [tokenHash],
        createdAt: new Date(now),
      },
      readToken,
    }
  }

  async importSite(site: Site): Promise<'created' | 'unchanged' | 'conflict'> {
    const now = this.now()
    const hashes = [...new Set(site.readTokenHashes)].sort()
    const info = this.stmt.insert.run(
      site.siteId,
      site.domain,
      JSON.stringify([...site.origins].sort()),
      site.writeKey,
      JSON.stringify(hashes),
      site.createdAt.getTime(),
      now,
    )
    if (info.changes > 0) return 'created'
    const existing = await this.get(site.siteId)
    if (!existing || existing.writeKey !== site.writeKey) return 'conflict'
    const merged = [...new Set([...existing.readTokenHashes, ...hashes])].sort()
    if (merged.length !== existing.readTokenHashes.length)
      this.stmt.setTokens.run(JSON.stringify(merged), now, site.siteId)
    return 'unchanged'
  }

  async get(siteId: string): Promise<Site | undefined> {
    const row = this.stmt.get.get(siteId) as SiteRow | undefined
    return row ? rowToSite(row) : undefined
  }

  async list(): Promise<Site[]> {
    return (this.stmt.list.all() as SiteRow[]).map(rowToSite).sort((a, b) => a.siteId.localeCompare(b.siteId))
  }

  async byWriteKey(writeKey: string): Promise<Site | undefined> {
    const row = this.stmt.byWriteKey.get(writeKey) as SiteRow | undefined
    return row ? rowToSite(row) : undefined
  }

  async rotateWriteKey(siteId: string): Promise<Site> {
    const site = await this.get(siteId)
    if (!site) throw notFound(siteId)
    const writeKey = newWriteKey()
    this.stmt.setWriteKey.run(writeKey, this.now(), siteId)
    return { ...site, writeKey }
  }

  async addReadToken(siteId: string): Promise<string> {
    const token = newReadToken()
    const hash = hashToken(token)
    this.db.transaction(() => {
      const row = this.stmt.get.get(siteId) as SiteRow | undefined
      if (!row) throw notFound(siteId)
      const hashes = new Set(JSON.parse(row.read_token_hashes) as string[])
      hashes.add(hash)
      this.stmt.setTokens.run(JSON.stringify([...hashes].sort()), this.now(), siteId)
    })()
    return token
  }

  async remove(siteId: string): Promise<boolean> {
    return this.stmt.remove.run(siteId).changes > 0
  }
}
