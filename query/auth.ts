import { TallyError } from '../core/errors.js'
import { hashesEqual, hashToken } from '../core/keys.js'
import type { Site, SiteStore } from '../core/ports/site-store.js'

/** Decides whether a bearer token may read a site. */
export interface ReadAuthorizer {
  /** Resolves when `authorization` (the raw header) carries a read token of `siteId`; throws 401/403 otherwise. */
  authorize(siteId: string, authorization: string | undefined): Promise<void>
  /**
   * True when the check can be decided at once and passes (for example from a cache); false means
   * "not known without `authorize`", never "denied".
   */
  allowsNow?(siteId: string, authorization: string | undefined): boolean
}

export interface ReadAccessCacheOptions {
  /** A cached site (and its token hashes) is re-read after this long. Default 10000 ms. */
  ttlMs?: number
  /** An unknown site is remembered this long. Default 2000 ms. */
  negativeTtlMs?: number
  /** When the store cannot answer, a known site is still used this long past its TTL. Default 300000 ms. */
  maxStaleMs?: number
  /**
   * The index token hash → site, read from the whole site list, only to tell a token of another
   * site (403) from an unknown one (401), is rebuilt after this long. Default 30000 ms.
   */
  tokenIndexTtlMs?: number
  /**
   * A token that does not match re-reads the site (a token added since it was cached) and the index
   * (a site created since), but at most this often, so bad tokens cannot flood the store. Default 1000 ms.
   */
  minRefreshMs?: number
  /** Called for every accepted token (TokenUseRecorder keeps "last used"); must not throw. */
  onUse?: (siteId: string, tokenHash: string) => void
  /** Clock (tests). */
  now?: () => number
}

interface Entry {
  site: Site | undefined
  loadedAt: number
  expires: number
  staleUntil: number
}

const BEARER = /^Bearer[ \t]+([A-Za-z0-9._~+/=-]{1,512})[ \t]*$/i

function unauthorized(code: string, message: string): TallyError {
  return new TallyError(code, message, { statusCode: 401, where: 'authorization' })
}

/**
 * Read-token checks with bounded staleness: the asked-for site is read (and cached) by id and the
 * token's SHA-256 is compared with each of its token hashes in constant time. Only a failed check
 * consults the token index, to answer 403 for a token of another site instead of 401.
 */
export class ReadAccessCache implements ReadAuthorizer {
  private readonly byId = new Map<string, Entry>()
  private readonly loading = new Map<string, Promise<Site | undefined>>()
  private tokenIndex = new Map<string, string>()
  /** Undefined until the index was loaded once. */
  private tokenIndexExpires: number | undefined
  private tokenIndexLoading: Promise<void> | undefined
  private readonly ttlMs: number
  private readonly negativeTtlMs: number
  private readonly maxStaleMs: number
  private readonly tokenIndexTtlMs: number
  private readonly minRefreshMs: number
  private tokenIndexLoadedAt = Number.NEGATIVE_INFINITY
  private readonly now: () => number
  private readonly onUse: ((siteId: string, tokenHash: string) => void) | undefined

  constructor(
    private readonly store: Pick<SiteStore, 'get' | 'list'>,
    options: ReadAccessCacheOptions = {},
  ) {
    this.ttlMs = options.ttlMs ?? 10_000
    this.negativeTtlMs = options.negativeTtlMs ?? 2000
    this.maxStaleMs = options.maxStaleMs ?? 300_000
    this.tokenIndexTtlMs = options.tokenIndexTtlMs ?? 30_000
    this.minRefreshMs = options.minRefreshMs ?? 1000
    this.now = options.now ?? Date.now
    this.onUse = options.onUse
  }

  async authorize(siteId: string, authorization: string | undefined): Promise<void> {
    if (authorization === undefined || authorization === '') {
      throw unauthorized('TALLY_ERR_MISSING_READ_TOKEN', 'send a read token as Authorization: Bearer <token>')
    }
    const m = BEARER.exec(authorization)
    if (!m) throw unauthorized('TALLY_ERR_INVALID_READ_TOKEN', 'Authorization must be Bearer <read token>')
    const hash = hashToken(m[1]!)
    let site = await this.site(siteId, false)
    if (!(site && matchesAny(hash, site.readTokenHashes))) site = await this.site(siteId, true)
    if (site && matchesAny(hash, site.readTokenHashes)) {
      this.onUse?.(siteId, hash)
      return
    }
    const owner = await this.ownerOf(hash)
    if (owner !== undefined && owner !== siteId) {
      throw new TallyError('TALLY_ERR_WRONG_SITE', `this read token does not give access to site ${siteId}`, {
        statusCode: 403,
        where: 'site',
      })
    }
    // A revoked token is unknown here: its hash left the site (and the index, once rebuilt).
    throw unauthorized('TALLY_ERR_INVALID_READ_TOKEN', 'unknown or revoked read token')
  }

  /** The same check as `authorize` when the site is cached and fresh and the token is one of its own. */
  allowsNow(siteId: string, authorization: string | undefined): boolean {
    if (!authorization) return false
    const hit = this.byId.get(siteId)
    if (!hit?.site || hit.expires <= this.now()) return false
    const m = BEARER.exec(authorization)
    if (m === null) return false
    const hash = hashToken(m[1]!)
    if (!matchesAny(hash, hit.site.readTokenHashes)) return false
    this.onUse?.(siteId, hash)
    return true
  }

  /** The site, from the cache while fresh; `refresh` re-reads it if cached longer than minRefreshMs. */
  private async site(siteId: string, refresh: boolean): Promise<Site | undefined> {
    const now = this.now()
    const hit = this.byId.get(siteId)
    if (hit && hit.expires > now && !(refresh && now - hit.loadedAt >= this.minRefreshMs)) return hit.site
    let pending = this.loading.get(siteId)
    if (!pending) {
      pending = this.store.get(siteId).finally(() => this.loading.delete(siteId))
      this.loading.set(siteId, pending)
    }
    try {
      const site = await pending
      const t = this.now()
      if (this.byId.size > 100_000) this.byId.clear()
      this.byId.set(siteId, {
        site,
        loadedAt: t,
        expires: t + (site ? this.ttlMs : this.negativeTtlMs),
        staleUntil: t + this.ttlMs + this.maxStaleMs,
      })
      return site
    } catch (err) {
      if (hit?.site && hit.staleUntil > this.now()) return hit.site
      throw unavailable(err)
    }
  }

  private async ownerOf(hash: string): Promise<string | undefined> {
    const now = this.now()
    const expired = this.tokenIndexExpires === undefined || now >= this.tokenIndexExpires
    const miss = !this.tokenIndex.has(hash) && now - this.tokenIndexLoadedAt >= this.minRefreshMs
    if (expired || miss) {
      this.tokenIndexLoading ??= this.store
        .list()
        .then((sites) => {
          const index = new Map<string, string>()
          for (const s of sites) for (const h of s.readTokenHashes) index.set(h, s.siteId)
          this.tokenIndex = index
          this.tokenIndexLoadedAt = this.now()
          this.tokenIndexExpires = this.tokenIndexLoadedAt + this.tokenIndexTtlMs
        })
        .finally(() => {
          this.tokenIndexLoading = undefined
        })
      try {
        await this.tokenIndexLoading
      } catch (err) {
        if (this.tokenIndexExpires === undefined) throw unavailable(err)
      }
    }
    // A map lookup by hash: the hash of a secret, not the secret, so its timing reveals nothing usable.
    return this.tokenIndex.get(hash)
  }
}

/** Compares with every stored hash (no early exit) in constant time per comparison. */
function matchesAny(hash: string, hashes: readonly string[]): boolean {
  let found = false
  for (const h of hashes) if (hashesEqual(hash, h)) found = true
  return found
}

function unavailable(cause: unknown): TallyError {
  return new TallyError('TALLY_ERR_SITES_UNAVAILABLE', 'cannot check the read token right now', {
    statusCode: 503,
    retriable: true,
    cause,
  })
}
