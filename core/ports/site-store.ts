import type { Goal } from '../aggregate/goals.js'
import { ERR } from '../error-codes.js'
import { TallyError } from '../errors.js'

/** A site: one domain's analytics, with one write key (public) and read tokens (secret, hashed). */
export interface Site {
  siteId: string
  domain: string
  /** Origins allowed to post events from a browser (CORS), e.g. https://www.example.com. */
  origins: string[]
  writeKey: string
  /** SHA-256 (hex) of each read token not revoked. The tokens themselves are never stored. */
  readTokenHashes: string[]
  createdAt: Date
  /** IANA time zone its days and periods follow (query/zone.ts); absent = UTC. */
  timezone?: string
}

/** A read token as `tally sites tokens` lists it: never the secret. */
export interface ReadTokenInfo {
  /** Short and not secret (core/keys.ts readTokenId): names the token to revoke it. */
  tokenId: string
  /** The token's first 8 characters (readTokenPrefix); undefined for tokens created before prefixes were kept. */
  prefix: string | undefined
  createdAt: Date
  /** Last accepted by a query role, recorded at most once a minute per token and role; undefined: never. */
  lastUsedAt: Date | undefined
  /** Undefined while the token works. */
  revokedAt: Date | undefined
}

export interface NewSite {
  siteId: string
  domain: string
  origins: string[]
  /** IANA time zone (canonical name, query/zone.ts canonicalZone); absent or `UTC` = UTC. */
  timezone?: string
}

/** The site registry, kept in the aggregate store. */
export interface SiteStore {
  /** Creates a site with a fresh write key and one read token; the token is returned once. */
  create(site: NewSite): Promise<{ site: Site; readToken: string }>
  get(siteId: string): Promise<Site | undefined>
  list(): Promise<Site[]>
  byWriteKey(writeKey: string): Promise<Site | undefined>
  /** Replaces the write key; the old one stops working (after caches expire). */
  rotateWriteKey(siteId: string): Promise<Site>
  /** Adds a read token and returns it (once). */
  addReadToken(siteId: string): Promise<string>
  /** The site's read tokens, revoked ones included, oldest first. TALLY_ERR_SITE_NOT_FOUND without the site. */
  listReadTokens(siteId: string): Promise<ReadTokenInfo[]>
  /**
   * Revokes a read token: its hash leaves `readTokenHashes` at once, so query roles refuse it once
   * their cached copy of the site expires. Revoking a revoked token returns it unchanged.
   * TALLY_ERR_SITE_NOT_FOUND / TALLY_ERR_READ_TOKEN_NOT_FOUND when the site or the id is unknown.
   */
  revokeReadToken(siteId: string, tokenId: string): Promise<ReadTokenInfo>
  /** Records that a query role accepted the token (hash) at `usedAt`; a later time never goes back. */
  markReadTokenUsed(siteId: string, tokenHash: string, usedAt: Date): Promise<void>
  remove(siteId: string): Promise<boolean>
  /**
   * Bulk import of a site exported from another store, keys and token hashes as they are (moving an
   * installation). `created` when it was absent; `unchanged` when the same site with the same write
   * key is there already (its token hashes are merged in, except revoked ones); `conflict` when another write key holds
   * the id (nothing is changed).
   */
  importSite(site: Site): Promise<'created' | 'unchanged' | 'conflict'>
  /**
   * The site whose domain or alias is `domain` (lower case, as `tally sites` stores it), for
   * Plausible's event API, which names its site by domain. Of two sites created with one domain,
   * the first keeps it.
   */
  byDomain(domain: string): Promise<Site | undefined>
  /**
   * Adds another domain under which the site takes Plausible events (a staging host, a second
   * name). Adding one the site has is a no-op; TALLY_ERR_SITE_NOT_FOUND without the site,
   * TALLY_ERR_DOMAIN_TAKEN when another site's domain or alias holds it.
   */
  addAlias(siteId: string, domain: string): Promise<void>
  /** Removes an alias; false when the site had no such alias (its own domain is no alias). */
  removeAlias(siteId: string, domain: string): Promise<boolean>
  /** The site's aliases, sorted. TALLY_ERR_SITE_NOT_FOUND without the site. */
  listAliases(siteId: string): Promise<string[]>
  /**
   * The salt of a UTC day (`YYYY-MM-DD`) for cookieless visitor ids (Plausible's scheme): made at
   * the day's first use with a conditional insert, so every ingest process gets the same one.
   * Salts of days before the day before `day` are deleted then, so no visitor can be followed
   * across days once they are gone.
   */
  dailySalt(day: string): Promise<Buffer>
  /** The days whose salt is kept, sorted (to check the deletion). */
  saltDays(): Promise<string[]>
  /**
   * Sets the site's time zone (a canonical IANA name; `UTC` clears it, the default) and returns the
   * site. TALLY_ERR_SITE_NOT_FOUND without the site.
   */
  setTimezone(siteId: string, timezone: string): Promise<Site>

  // Custom properties (issue 17 point 4; core/aggregate/props.ts): the event property keys the
  // site's rows are broken down by, as dimensions `prop:KEY`.
  /**
   * Declares a property key (syntax checked by the caller: checkPropKey). Declaring one the site
   * has is a no-op; TALLY_ERR_SITE_NOT_FOUND without the site, TALLY_ERR_PROP_KEYS_FULL when it
   * declares MAX_PROP_KEYS already.
   */
  addPropKey(siteId: string, key: string): Promise<void>
  /** Removes a declared key; false when the site had none such. */
  removePropKey(siteId: string, key: string): Promise<boolean>
  /** The site's declared keys, sorted. TALLY_ERR_SITE_NOT_FOUND without the site. */
  listPropKeys(siteId: string): Promise<string[]>

  // Goals (issue 17 point 5; core/aggregate/goals.ts): the event names and page path patterns
  // whose completions are counted in the rows of the dimension `goal`.
  /**
   * Defines a goal (checked by the caller: eventGoal / pageGoal). Defining one the site has (same
   * name) is a no-op; TALLY_ERR_SITE_NOT_FOUND without the site, TALLY_ERR_GOALS_FULL when it
   * defines MAX_GOALS already.
   */
  addGoal(siteId: string, goal: Goal): Promise<void>
  /** Removes a goal by its name; false when the site had none such. */
  removeGoal(siteId: string, name: string): Promise<boolean>
  /** The site's goals, sorted by name. TALLY_ERR_SITE_NOT_FOUND without the site. */
  listGoals(siteId: string): Promise<Goal[]>
}

/** The stored form of a time zone: none for UTC, the default. */
export function storedTimezone(timezone: string | undefined): string | null {
  return timezone === undefined || timezone === 'UTC' ? null : timezone
}

/** The oldest day (`YYYY-MM-DD`, UTC) whose salt is kept once `day` is used: the day before; older salts are deleted. */
export function oldestKeptSaltDay(day: string): string {
  return new Date(Date.parse(`${day}T00:00:00Z`) - 86_400_000).toISOString().slice(0, 10)
}

export function domainTaken(domain: string, siteId: string): TallyError {
  return new TallyError(ERR.DOMAIN_TAKEN, `domain ${domain} belongs to site ${siteId}`, {
    where: 'domain',
  })
}

/** Oldest first, then by id: the order every store lists a site's tokens in. */
export function sortReadTokens(tokens: ReadTokenInfo[]): ReadTokenInfo[] {
  return tokens.sort(
    (a, b) => a.createdAt.getTime() - b.createdAt.getTime() || a.tokenId.localeCompare(b.tokenId),
  )
}

export function readTokenNotFound(siteId: string, tokenId: string): TallyError {
  return new TallyError(ERR.READ_TOKEN_NOT_FOUND, `site ${siteId} has no read token ${tokenId}`, {
    where: 'tokenId',
  })
}
