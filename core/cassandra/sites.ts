import { randomBytes } from 'node:crypto'
import { type Client, types } from 'cassandra-driver'
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

function rowToSite(row: { get(name: string): unknown }): Site {
  return {
    siteId: String(row.get('site_id')),
    domain: String(row.get('domain') ?? ''),
    origins: ((row.get('origins') as string[] | null) ?? []).slice().sort(),
    writeKey: String(row.get('write_key') ?? ''),
    readTokenHashes: ((row.get('read_token_hashes') as string[] | null) ?? []).slice(),
    createdAt: (row.get('created_at') as Date | null) ?? new Date(0),
    ...timezoneOf(row),
  }
}

/** The site's time zone when it has one (schemas/cql/0013_site_timezone.cql); none = UTC. */
function timezoneOf(row: { get(name: string): unknown }): { timezone?: string } {
  const tz = row.get('timezone') as string | null | undefined
  return tz ? { timezone: tz } : {}
}

const SITE_COLUMNS = 'site_id, domain, origins, write_key, read_token_hashes, created_at, timezone'

interface TokenRow {
  tokenHash: string | undefined
  prefix: string | undefined
  createdAt: Date | undefined
  lastUsedAt: Date | undefined
  revokedAt: Date | undefined
}

function rowToToken(row: { get(name: string): unknown }): TokenRow {
  const opt = <T>(name: string) => (row.get(name) as T | null) ?? undefined
  return {
    tokenHash: opt<string>('token_hash'),
    prefix: opt<string>('prefix'),
    createdAt: opt<Date>('created_at'),
    lastUsedAt: opt<Date>('last_used_at'),
    revokedAt: opt<Date>('revoked_at'),
  }
}

const TOKEN_COLUMNS = 'token_id, token_hash, prefix, created_at, last_used_at, revoked_at'

/** The one partition of visitor_salts. */
const SALTS = 'visitor'

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
      throw new TallyError(ERR.SITE_EXISTS, `site ${input.siteId} already exists`, {
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
    await this.insertToken(input.siteId, readToken, tokenHash, now)
    await this.claimDomain(input.domain, input.siteId, false)
    const { timezone, ...rest } = input
    const tz = storedTimezone(timezone)
    if (tz !== null) await this.writeTimezone(input.siteId, tz)
    return {
      site: {
        ...rest,
        origins: [...input.origins].sort(),
        writeKey,
        readTokenHashes: [tokenHash],
        createdAt: now,
        ...(tz === null ? {} : { timezone: tz }),
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
    const tz = storedTimezone(site.timezone)
    if (rs.wasApplied() && tz !== null) await this.writeTimezone(site.siteId, tz)
    if (!rs.wasApplied()) {
      const existing = await this.get(site.siteId)
      if (!existing || existing.writeKey !== site.writeKey) return 'conflict'
      // A token revoked here stays revoked, even when an older copy of the site still holds it.
      const revoked = new Set(
        [...(await this.tokenRows(site.siteId))].filter(([, r]) => r.revokedAt).map(([id]) => id),
      )
      const missing = site.readTokenHashes.filter(
        (h) => !existing.readTokenHashes.includes(h) && !revoked.has(readTokenId(h)),
      )
      if (missing.length > 0) {
        await this.client.execute(
          'UPDATE sites SET read_token_hashes = read_token_hashes + ?, updated_at = ? WHERE site_id = ?',
          [missing, now, site.siteId],
          { prepare: true },
        )
      }
      outcome = 'unchanged'
    }
    await this.claimDomain(site.domain, site.siteId, false)
    await this.client.execute(
      'INSERT INTO site_write_keys (write_key, site_id) VALUES (?, ?)',
      [site.writeKey, site.siteId],
      {
        prepare: true,
      },
    )
    const active = new Set((await this.get(site.siteId))?.readTokenHashes ?? [])
    for (const hash of site.readTokenHashes.filter((h) => active.has(h))) {
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
    const now = new Date()
    await this.client.execute(
      'INSERT INTO site_read_tokens (token_hash, site_id, created_at) VALUES (?, ?, ?)',
      [hash, siteId, now],
      { prepare: true },
    )
    // The row before the hash joins the site: a token that works is always listed with its prefix.
    await this.insertToken(siteId, token, hash, now)
    await this.client.execute(
      'UPDATE sites SET read_token_hashes = read_token_hashes + ? WHERE site_id = ?',
      [[hash], siteId],
      {
        prepare: true,
      },
    )
    return token
  }

  async listReadTokens(siteId: string): Promise<ReadTokenInfo[]> {
    const site = await this.get(siteId)
    if (!site) throw notFound(siteId)
    const rows = await this.tokenRows(siteId)
    const out: ReadTokenInfo[] = []
    const active = new Set<string>()
    for (const hash of site.readTokenHashes) {
      const tokenId = readTokenId(hash)
      active.add(tokenId)
      out.push(await this.info(site, tokenId, hash, rows.get(tokenId), false))
    }
    // A row whose token is not in the site is listed only once revoked: a row holding just a use
    // (recorded after its site was removed and created again) names no token of this site.
    for (const [tokenId, row] of rows)
      if (!active.has(tokenId) && row.revokedAt)
        out.push(await this.info(site, tokenId, row.tokenHash, row, true))
    return sortReadTokens(out)
  }

  async revokeReadToken(siteId: string, tokenId: string): Promise<ReadTokenInfo> {
    const site = await this.get(siteId)
    if (!site) throw notFound(siteId)
    const rows = await this.tokenRows(siteId)
    const row = rows.get(tokenId)
    const hash = site.readTokenHashes.find((h) => readTokenId(h) === tokenId)
    if (hash === undefined) {
      if (row?.revokedAt) return this.info(site, tokenId, row.tokenHash, row, true)
      throw readTokenNotFound(siteId, tokenId)
    }
    const now = new Date()
    const info = { ...(await this.info(site, tokenId, hash, row, false)), revokedAt: now }
    // Row first, then the hash leaves the site: if this stops between the two, the token still
    // works and is listed as working, and revoking again finishes the job.
    await this.client.execute(
      'UPDATE site_tokens SET token_hash = ?, created_at = ?, revoked_at = ? WHERE site_id = ? AND token_id = ?',
      [hash, info.createdAt, now, siteId, tokenId],
      { prepare: true },
    )
    await this.client.execute(
      'UPDATE sites SET read_token_hashes = read_token_hashes - ?, updated_at = ? WHERE site_id = ?',
      [[hash], now, siteId],
      { prepare: true },
    )
    await this.client.execute('DELETE FROM site_read_tokens WHERE token_hash = ?', [hash], { prepare: true })
    return info
  }

  async markReadTokenUsed(siteId: string, tokenHash: string, usedAt: Date): Promise<void> {
    // The use's own time as write timestamp: of two roles' writes, the later use wins whatever
    // order they arrive in, and a use recorded before the site was removed stays deleted.
    await this.client.execute(
      'UPDATE site_tokens USING TIMESTAMP ? SET last_used_at = ? WHERE site_id = ? AND token_id = ?',
      [usedAt.getTime() * 1000, usedAt, siteId, readTokenId(tokenHash)],
      { prepare: true },
    )
  }

  async remove(siteId: string): Promise<boolean> {
    const site = await this.get(siteId)
    if (!site) return false
    await this.client.execute('DELETE FROM site_tokens WHERE site_id = ?', [siteId], { prepare: true })
    for (const domain of [site.domain, ...(await this.aliasesOf(siteId))])
      await this.releaseDomain(domain, siteId)
    await this.client.execute('DELETE FROM site_aliases WHERE site_id = ?', [siteId], { prepare: true })
    await this.client.execute('DELETE FROM site_props WHERE site_id = ?', [siteId], { prepare: true })
    await this.client.execute('DELETE FROM site_goals WHERE site_id = ?', [siteId], { prepare: true })
    await this.client.execute('DELETE FROM site_write_keys WHERE write_key = ?', [site.writeKey], {
      prepare: true,
    })
    for (const hash of site.readTokenHashes) {
      await this.client.execute('DELETE FROM site_read_tokens WHERE token_hash = ?', [hash], {
        prepare: true,
      })
    }
    // A lightweight transaction like the create: both take Paxos timestamps, so a site created
    // again under the id is written after this delete. A plain delete carries the driver's
    // client timestamp, which can run ahead of the server's clock and hide the new row.
    await this.client.execute('DELETE FROM sites WHERE site_id = ? IF EXISTS', [siteId], { prepare: true })
    return true
  }

  async byDomain(domain: string): Promise<Site | undefined> {
    const rs = await this.client.execute('SELECT site_id FROM site_domains WHERE domain = ?', [domain], {
      prepare: true,
    })
    const siteId = rs.first()?.get('site_id') as string | undefined
    return siteId ? this.get(siteId) : undefined
  }

  async addAlias(siteId: string, domain: string): Promise<void> {
    if (!(await this.get(siteId))) throw notFound(siteId)
    const holder = await this.claimDomain(domain, siteId, true)
    if (holder !== siteId) throw domainTaken(domain, holder)
    // Its own domain is no alias: only a domain claimed as an alias is listed.
    const rs = await this.client.execute('SELECT alias FROM site_domains WHERE domain = ?', [domain], {
      prepare: true,
      consistency: SERIAL_READ,
    })
    if (rs.first()?.get('alias') !== true) return
    await this.client.execute('INSERT INTO site_aliases (site_id, domain) VALUES (?, ?)', [siteId, domain], {
      prepare: true,
    })
  }

  async removeAlias(siteId: string, domain: string): Promise<boolean> {
    if (!(await this.aliasesOf(siteId)).includes(domain)) return false
    await this.releaseDomain(domain, siteId)
    await this.client.execute('DELETE FROM site_aliases WHERE site_id = ? AND domain = ?', [siteId, domain], {
      prepare: true,
    })
    return true
  }

  async listAliases(siteId: string): Promise<string[]> {
    if (!(await this.get(siteId))) throw notFound(siteId)
    return (await this.aliasesOf(siteId)).sort()
  }

  // Custom properties (core/aggregate/props.ts).
  async addPropKey(siteId: string, key: string): Promise<void> {
    if (!(await this.get(siteId))) throw notFound(siteId)
    const keys = await this.propKeysOf(siteId)
    if (keys.includes(key)) return
    // Two adds at once may both pass the count: the limit bounds the work per event, and one key
    // over it costs little; a later add is refused until one is removed.
    if (keys.length >= MAX_PROP_KEYS) throw propKeysFull(siteId)
    await this.client.execute(
      'INSERT INTO site_props (site_id, key, added_at) VALUES (?, ?, ?)',
      [siteId, key, new Date()],
      { prepare: true },
    )
  }

  async removePropKey(siteId: string, key: string): Promise<boolean> {
    if (!(await this.propKeysOf(siteId)).includes(key)) return false
    await this.client.execute('DELETE FROM site_props WHERE site_id = ? AND key = ?', [siteId, key], {
      prepare: true,
    })
    return true
  }

  async listPropKeys(siteId: string): Promise<string[]> {
    if (!(await this.get(siteId))) throw notFound(siteId)
    return this.propKeysOf(siteId)
  }

  private async propKeysOf(siteId: string): Promise<string[]> {
    const rs = await this.client.execute('SELECT key FROM site_props WHERE site_id = ?', [siteId], {
      prepare: true,
    })
    // Clustering order: sorted already.
    return rs.rows.map((r) => String(r.get('key')))
  }

  // Goals (core/aggregate/goals.ts).
  async addGoal(siteId: string, goal: Goal): Promise<void> {
    if (!(await this.get(siteId))) throw notFound(siteId)
    const goals = await this.goalsOf(siteId)
    if (goals.some((g) => g.name === goal.name)) return
    // As for property keys: two adds at once may both pass the count; the limit bounds the work per
    // event, and one goal over it costs little.
    if (goals.length >= MAX_GOALS) throw goalsFull(siteId)
    await this.client.execute(
      'INSERT INTO site_goals (site_id, name, kind, target, added_at) VALUES (?, ?, ?, ?, ?)',
      [siteId, goal.name, goal.kind, goal.target, new Date()],
      { prepare: true },
    )
  }

  async removeGoal(siteId: string, name: string): Promise<boolean> {
    if (!(await this.goalsOf(siteId)).some((g) => g.name === name)) return false
    await this.client.execute('DELETE FROM site_goals WHERE site_id = ? AND name = ?', [siteId, name], {
      prepare: true,
    })
    return true
  }

  async listGoals(siteId: string): Promise<Goal[]> {
    if (!(await this.get(siteId))) throw notFound(siteId)
    return this.goalsOf(siteId)
  }

  private async goalsOf(siteId: string): Promise<Goal[]> {
    const rs = await this.client.execute(
      'SELECT name, kind, target FROM site_goals WHERE site_id = ?',
      [siteId],
      { prepare: true },
    )
    // Clustering order by name: sorted already (by UTF-8 bytes, as the embedded store's BINARY).
    return rs.rows.map((r) => goalOf(String(r.get('kind')), String(r.get('target'))))
  }

  async dailySalt(day: string): Promise<Buffer> {
    // A lightweight transaction: of the ingest processes starting a day at once, one salt wins;
    // the others find it in the answer, which holds the row already there.
    const mine = randomBytes(32)
    const rs = await this.client.execute(
      'INSERT INTO visitor_salts (name, day, salt, created_at) VALUES (?, ?, ?, ?) IF NOT EXISTS',
      [SALTS, day, mine, new Date()],
      { prepare: true },
    )
    const salt = rs.wasApplied() ? mine : (rs.first()?.get('salt') as Buffer)
    await this.client.execute(
      'DELETE FROM visitor_salts WHERE name = ? AND day < ?',
      [SALTS, oldestKeptSaltDay(day)],
      { prepare: true },
    )
    return salt
  }

  async saltDays(): Promise<string[]> {
    const rs = await this.client.execute('SELECT day FROM visitor_salts WHERE name = ?', [SALTS], {
      prepare: true,
    })
    return rs.rows.map((r) => String(r.get('day'))).sort()
  }

  /** Inserts domain → site unless a site holds it; returns the holder (this site when it won). */
  async setTimezone(siteId: string, timezone: string): Promise<Site> {
    const site = await this.get(siteId)
    if (!site) throw notFound(siteId)
    const tz = storedTimezone(timezone)
    await this.writeTimezone(siteId, tz)
    const { timezone: _old, ...rest } = site
    return tz === null ? rest : { ...rest, timezone: tz }
  }

  private async writeTimezone(siteId: string, timezone: string | null): Promise<void> {
    await this.client.execute(
      'UPDATE sites SET timezone = ?, updated_at = ? WHERE site_id = ?',
      [timezone, new Date(), siteId],
      { prepare: true },
    )
  }

  private async claimDomain(domain: string, siteId: string, alias: boolean): Promise<string> {
    const rs = await this.client.execute(
      'INSERT INTO site_domains (domain, site_id, alias) VALUES (?, ?, ?) IF NOT EXISTS',
      [domain, siteId, alias],
      { prepare: true },
    )
    return rs.wasApplied() ? siteId : String(rs.first()?.get('site_id'))
  }

  /** Deletes domain → site if this site holds it (conditional, like the insert). */
  private async releaseDomain(domain: string, siteId: string): Promise<void> {
    await this.client.execute('DELETE FROM site_domains WHERE domain = ? IF site_id = ?', [domain, siteId], {
      prepare: true,
    })
  }

  private async aliasesOf(siteId: string): Promise<string[]> {
    const rs = await this.client.execute('SELECT domain FROM site_aliases WHERE site_id = ?', [siteId], {
      prepare: true,
    })
    return rs.rows.map((r) => String(r.get('domain')))
  }

  private async insertToken(siteId: string, token: string, hash: string, createdAt: Date): Promise<void> {
    await this.client.execute(
      'UPDATE site_tokens SET token_hash = ?, prefix = ?, created_at = ? WHERE site_id = ? AND token_id = ?',
      [hash, readTokenPrefix(token), createdAt, siteId, readTokenId(hash)],
      { prepare: true },
    )
  }

  private async tokenRows(siteId: string): Promise<Map<string, TokenRow>> {
    const rs = await this.client.execute(
      `SELECT ${TOKEN_COLUMNS} FROM site_tokens WHERE site_id = ?`,
      [siteId],
      // A site's tokens are few: one page holds them.
      { prepare: true, fetchSize: 5000 },
    )
    return new Map(rs.rows.map((r) => [String(r.get('token_id')), rowToToken(r)]))
  }

  /**
   * A token as listed. One from before site_tokens has no row (or only a recorded use): its
   * creation time is the one site_read_tokens kept, else the site's.
   */
  private async info(
    site: Site,
    tokenId: string,
    hash: string | undefined,
    row: TokenRow | undefined,
    revoked: boolean,
  ): Promise<ReadTokenInfo> {
    let createdAt = row?.createdAt
    if (!createdAt && hash !== undefined) {
      const rs = await this.client.execute(
        'SELECT created_at FROM site_read_tokens WHERE token_hash = ?',
        [hash],
        { prepare: true },
      )
      createdAt = (rs.first()?.get('created_at') as Date | null) ?? undefined
    }
    return {
      tokenId,
      prefix: row?.prefix,
      createdAt: createdAt ?? site.createdAt,
      lastUsedAt: row?.lastUsedAt,
      revokedAt: revoked ? row?.revokedAt : undefined,
    }
  }
}

/** Reads rows written by lightweight transactions as Paxos sees them (no stale replica). */
const SERIAL_READ = types.consistencies.serial

function notFound(siteId: string): TallyError {
  return new TallyError(ERR.SITE_NOT_FOUND, `no site ${siteId}`, { where: 'siteId' })
}
