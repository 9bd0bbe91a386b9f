import { randomBytes } from 'node:crypto'
import { type Goal, goalOf, goalsFull, MAX_GOALS } from '../aggregate/goals.js'
import { MAX_PROP_KEYS, propKeysFull } from '../aggregate/props.js'
import { ERR } from '../error-codes.js'
import { TallyError } from '../errors.js'
import { hashToken, newReadToken, newWriteKey, readTokenId, readTokenPrefix } from '../keys.js'
import {
  domainTaken,
  type NewSite,
  oldestKeptSaltDay,
  type ReadTokenInfo,
  readTokenNotFound,
  type Site,
  type SiteStore,
  sortReadTokens,
  storedTimezone,
} from '../ports/site-store.js'
import type { Db } from './sqlite.js'

interface SiteRow {
  site_id: string
  domain: string
  origins: string
  write_key: string
  read_token_hashes: string
  created_at_ms: number
  timezone: string | null
}

function rowToSite(r: SiteRow): Site {
  return {
    siteId: r.site_id,
    domain: r.domain,
    origins: (JSON.parse(r.origins) as string[]).slice().sort(),
    writeKey: r.write_key,
    readTokenHashes: (JSON.parse(r.read_token_hashes) as string[]).slice().sort(),
    createdAt: new Date(r.created_at_ms),
    ...(r.timezone ? { timezone: r.timezone } : {}),
  }
}

interface TokenRow {
  token_id: string
  prefix: string | null
  created_at_ms: number
  last_used_at_ms: number | null
  revoked_at_ms: number | null
}

function rowToToken(r: TokenRow): ReadTokenInfo {
  return {
    tokenId: r.token_id,
    prefix: r.prefix ?? undefined,
    createdAt: new Date(r.created_at_ms),
    lastUsedAt: r.last_used_at_ms === null ? undefined : new Date(r.last_used_at_ms),
    revokedAt: r.revoked_at_ms === null ? undefined : new Date(r.revoked_at_ms),
  }
}

function notFound(siteId: string): TallyError {
  return new TallyError(ERR.SITE_NOT_FOUND, `no site ${siteId}`, { where: 'siteId' })
}

const COLUMNS = 'site_id, domain, origins, write_key, read_token_hashes, created_at_ms, timezone'

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
      setTimezone: db.prepare('UPDATE sites SET timezone = ?, updated_at_ms = ? WHERE site_id = ?'),
      remove: db.prepare('DELETE FROM sites WHERE site_id = ?'),
      insertToken: db.prepare(
        'INSERT OR IGNORE INTO site_tokens (site_id, token_id, token_hash, prefix, created_at_ms) VALUES (?, ?, ?, ?, ?)',
      ),
      tokens: db.prepare(
        'SELECT token_id, prefix, created_at_ms, last_used_at_ms, revoked_at_ms FROM site_tokens WHERE site_id = ?',
      ),
      token: db.prepare(
        'SELECT token_id, prefix, created_at_ms, last_used_at_ms, revoked_at_ms FROM site_tokens WHERE site_id = ? AND token_id = ?',
      ),
      revokeToken: db.prepare('UPDATE site_tokens SET revoked_at_ms = ? WHERE site_id = ? AND token_id = ?'),
      // max(): of two uses recorded out of order, the later one stays.
      useToken: db.prepare(
        'UPDATE site_tokens SET last_used_at_ms = max(coalesce(last_used_at_ms, 0), ?) WHERE site_id = ? AND token_id = ?',
      ),
      removeTokens: db.prepare('DELETE FROM site_tokens WHERE site_id = ?'),
      claimDomain: db.prepare('INSERT OR IGNORE INTO site_domains (domain, site_id, alias) VALUES (?, ?, ?)'),
      domain: db.prepare('SELECT site_id, alias FROM site_domains WHERE domain = ?'),
      aliases: db.prepare('SELECT domain FROM site_domains WHERE site_id = ? AND alias = 1 ORDER BY domain'),
      removeAlias: db.prepare('DELETE FROM site_domains WHERE domain = ? AND site_id = ? AND alias = 1'),
      removeDomains: db.prepare('DELETE FROM site_domains WHERE site_id = ?'),
      insertSalt: db.prepare(
        'INSERT INTO visitor_salts (day, salt, created_at_ms) VALUES (?, ?, ?) ON CONFLICT (day) DO NOTHING',
      ),
      salt: db.prepare('SELECT salt FROM visitor_salts WHERE day = ?'),
      deleteSalts: db.prepare('DELETE FROM visitor_salts WHERE day < ?'),
      saltDays: db.prepare('SELECT day FROM visitor_salts ORDER BY day'),
    }
  }

  async create(input: NewSite): Promise<{ site: Site; readToken: string }> {
    const writeKey = newWriteKey()
    const readToken = newReadToken()
    const tokenHash = hashToken(readToken)
    const now = this.now()
    const origins = [...input.origins].sort()
    const tz = storedTimezone(input.timezone)
    const created = this.db.transaction(() => {
      const info = this.stmt.insert.run(
        input.siteId,
        input.domain,
        JSON.stringify(origins),
        writeKey,
        JSON.stringify([tokenHash]),
        now,
        now,
      )
      if (info.changes === 0) return false
      this.stmt.insertToken.run(
        input.siteId,
        readTokenId(tokenHash),
        tokenHash,
        readTokenPrefix(readToken),
        now,
      )
      this.stmt.claimDomain.run(input.domain, input.siteId, 0)
      if (tz !== null) this.stmt.setTimezone.run(tz, now, input.siteId)
      return true
    })()
    if (!created) {
      throw new TallyError(ERR.SITE_EXISTS, `site ${input.siteId} already exists`, {
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
        ...(tz === null ? {} : { timezone: tz }),
      },
      readToken,
    }
  }

  async importSite(site: Site): Promise<'created' | 'unchanged' | 'conflict'> {
    const now = this.now()
    const createdAtMs = site.createdAt.getTime()
    const hashes = [...new Set(site.readTokenHashes)].sort()
    return this.db.transaction((): 'created' | 'unchanged' | 'conflict' => {
      const info = this.stmt.insert.run(
        site.siteId,
        site.domain,
        JSON.stringify([...site.origins].sort()),
        site.writeKey,
        JSON.stringify(hashes),
        createdAtMs,
        now,
      )
      if (info.changes > 0) {
        for (const h of hashes) this.stmt.insertToken.run(site.siteId, readTokenId(h), h, null, createdAtMs)
        this.stmt.claimDomain.run(site.domain, site.siteId, 0)
        const tz = storedTimezone(site.timezone)
        if (tz !== null) this.stmt.setTimezone.run(tz, now, site.siteId)
        return 'created'
      }
      const row = this.stmt.get.get(site.siteId) as SiteRow | undefined
      if (!row || row.write_key !== site.writeKey) return 'conflict'
      this.stmt.claimDomain.run(site.domain, site.siteId, 0)
      const existing = JSON.parse(row.read_token_hashes) as string[]
      // A token revoked here stays revoked, even when an older copy of the site still holds it.
      const added = hashes.filter((h) => {
        const token = this.stmt.token.get(site.siteId, readTokenId(h)) as TokenRow | undefined
        return !existing.includes(h) && token?.revoked_at_ms == null
      })
      if (added.length > 0) {
        this.stmt.setTokens.run(JSON.stringify([...existing, ...added].sort()), now, site.siteId)
        for (const h of added) this.stmt.insertToken.run(site.siteId, readTokenId(h), h, null, createdAtMs)
      }
      return 'unchanged'
    })()
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

  async setTimezone(siteId: string, timezone: string): Promise<Site> {
    const tz = storedTimezone(timezone)
    if (this.stmt.setTimezone.run(tz, this.now(), siteId).changes === 0) throw notFound(siteId)
    return (await this.get(siteId))!
  }

  async addReadToken(siteId: string): Promise<string> {
    const token = newReadToken()
    const hash = hashToken(token)
    this.db.transaction(() => {
      const row = this.stmt.get.get(siteId) as SiteRow | undefined
      if (!row) throw notFound(siteId)
      const hashes = new Set(JSON.parse(row.read_token_hashes) as string[])
      hashes.add(hash)
      const now = this.now()
      this.stmt.setTokens.run(JSON.stringify([...hashes].sort()), now, siteId)
      this.stmt.insertToken.run(siteId, readTokenId(hash), hash, readTokenPrefix(token), now)
    })()
    return token
  }

  async listReadTokens(siteId: string): Promise<ReadTokenInfo[]> {
    if (!this.stmt.get.get(siteId)) throw notFound(siteId)
    return sortReadTokens((this.stmt.tokens.all(siteId) as TokenRow[]).map(rowToToken))
  }

  async revokeReadToken(siteId: string, tokenId: string): Promise<ReadTokenInfo> {
    return this.db.transaction(() => {
      const row = this.stmt.get.get(siteId) as SiteRow | undefined
      if (!row) throw notFound(siteId)
      const token = this.stmt.token.get(siteId, tokenId) as TokenRow | undefined
      if (!token) throw readTokenNotFound(siteId, tokenId)
      if (token.revoked_at_ms !== null) return rowToToken(token)
      const now = this.now()
      const hashes = (JSON.parse(row.read_token_hashes) as string[]).filter((h) => readTokenId(h) !== tokenId)
      // One transaction: the hash leaves the site (what query roles check) with the revocation.
      this.stmt.setTokens.run(JSON.stringify(hashes), now, siteId)
      this.stmt.revokeToken.run(now, siteId, tokenId)
      return rowToToken({ ...token, revoked_at_ms: now })
    })()
  }

  async markReadTokenUsed(siteId: string, tokenHash: string, usedAt: Date): Promise<void> {
    this.stmt.useToken.run(usedAt.getTime(), siteId, readTokenId(tokenHash))
  }

  async remove(siteId: string): Promise<boolean> {
    return this.db.transaction(() => {
      this.stmt.removeTokens.run(siteId)
      this.stmt.removeDomains.run(siteId)
      this.propStmt.removeAll.run(siteId)
      this.goalStmt.removeAll.run(siteId)
      return this.stmt.remove.run(siteId).changes > 0
    })()
  }

  async byDomain(domain: string): Promise<Site | undefined> {
    const row = this.stmt.domain.get(domain) as { site_id: string } | undefined
    return row ? this.get(row.site_id) : undefined
  }

  async addAlias(siteId: string, domain: string): Promise<void> {
    this.db.transaction(() => {
      if (!this.stmt.get.get(siteId)) throw notFound(siteId)
      this.stmt.claimDomain.run(domain, siteId, 1)
      const holder = (this.stmt.domain.get(domain) as { site_id: string }).site_id
      if (holder !== siteId) throw domainTaken(domain, holder)
    })()
  }

  async removeAlias(siteId: string, domain: string): Promise<boolean> {
    return this.stmt.removeAlias.run(domain, siteId).changes > 0
  }

  async listAliases(siteId: string): Promise<string[]> {
    if (!this.stmt.get.get(siteId)) throw notFound(siteId)
    return (this.stmt.aliases.all(siteId) as Array<{ domain: string }>).map((r) => r.domain)
  }

  // Custom properties (core/aggregate/props.ts).
  private propStatements: ReturnType<EmbeddedSiteStore['preparePropStatements']> | undefined

  private get propStmt(): ReturnType<EmbeddedSiteStore['preparePropStatements']> {
    this.propStatements ??= this.preparePropStatements()
    return this.propStatements
  }

  private preparePropStatements() {
    return {
      insert: this.db.prepare(
        'INSERT OR IGNORE INTO site_props (site_id, key, added_at_ms) VALUES (?, ?, ?)',
      ),
      list: this.db.prepare('SELECT key FROM site_props WHERE site_id = ? ORDER BY key'),
      remove: this.db.prepare('DELETE FROM site_props WHERE site_id = ? AND key = ?'),
      removeAll: this.db.prepare('DELETE FROM site_props WHERE site_id = ?'),
    }
  }

  async addPropKey(siteId: string, key: string): Promise<void> {
    this.db.transaction(() => {
      if (!this.stmt.get.get(siteId)) throw notFound(siteId)
      const keys = this.propKeysOf(siteId)
      if (keys.includes(key)) return
      if (keys.length >= MAX_PROP_KEYS) throw propKeysFull(siteId)
      this.propStmt.insert.run(siteId, key, this.now())
    })()
  }

  async removePropKey(siteId: string, key: string): Promise<boolean> {
    return this.propStmt.remove.run(siteId, key).changes > 0
  }

  async listPropKeys(siteId: string): Promise<string[]> {
    if (!this.stmt.get.get(siteId)) throw notFound(siteId)
    return this.propKeysOf(siteId)
  }

  private propKeysOf(siteId: string): string[] {
    return (this.propStmt.list.all(siteId) as Array<{ key: string }>).map((r) => r.key)
  }

  // Goals (core/aggregate/goals.ts).
  private goalStatements: ReturnType<EmbeddedSiteStore['prepareGoalStatements']> | undefined

  private get goalStmt(): ReturnType<EmbeddedSiteStore['prepareGoalStatements']> {
    this.goalStatements ??= this.prepareGoalStatements()
    return this.goalStatements
  }

  private prepareGoalStatements() {
    return {
      insert: this.db.prepare(
        'INSERT OR IGNORE INTO site_goals (site_id, name, kind, target, added_at_ms) VALUES (?, ?, ?, ?, ?)',
      ),
      list: this.db.prepare('SELECT kind, target FROM site_goals WHERE site_id = ? ORDER BY name'),
      remove: this.db.prepare('DELETE FROM site_goals WHERE site_id = ? AND name = ?'),
      removeAll: this.db.prepare('DELETE FROM site_goals WHERE site_id = ?'),
    }
  }

  async addGoal(siteId: string, goal: Goal): Promise<void> {
    this.db.transaction(() => {
      if (!this.stmt.get.get(siteId)) throw notFound(siteId)
      const goals = this.goalsOf(siteId)
      if (goals.some((g) => g.name === goal.name)) return
      if (goals.length >= MAX_GOALS) throw goalsFull(siteId)
      this.goalStmt.insert.run(siteId, goal.name, goal.kind, goal.target, this.now())
    })()
  }

  async removeGoal(siteId: string, name: string): Promise<boolean> {
    return this.goalStmt.remove.run(siteId, name).changes > 0
  }

  async listGoals(siteId: string): Promise<Goal[]> {
    if (!this.stmt.get.get(siteId)) throw notFound(siteId)
    return this.goalsOf(siteId)
  }

  private goalsOf(siteId: string): Goal[] {
    return (this.goalStmt.list.all(siteId) as Array<{ kind: string; target: string }>).map((r) =>
      goalOf(r.kind, r.target),
    )
  }

  async dailySalt(day: string): Promise<Buffer> {
    return this.db.transaction(() => {
      this.stmt.insertSalt.run(day, randomBytes(32), this.now())
      this.stmt.deleteSalts.run(oldestKeptSaltDay(day))
      return Buffer.from((this.stmt.salt.get(day) as { salt: Uint8Array }).salt)
    })()
  }

  async saltDays(): Promise<string[]> {
    return (this.stmt.saltDays.all() as Array<{ day: string }>).map((r) => r.day)
  }
}
