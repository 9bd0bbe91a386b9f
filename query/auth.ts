import { LRUCache } from 'lru-cache'
import { ERR } from '../core/error-codes.js'
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
  /** The site's IANA time zone once it was authorized (undefined: UTC, or not known). */
  zoneOf?(siteId: string): string | undefined
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
  /** Most known sites kept (least recently used leave first). Default 100000. */
  maxSites?: number
  /** Most unknown site ids remembered (least recently used leave first). Default 10000. */
  maxUnknownSites?: number
  /** Clock (tests). */
  now?: () => number
}

interface Known {
  site: Site
  loadedAt: number
  /** Until when the site may be used while the store cannot answer. */
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
  /** Known sites for ttlMs, read through lru-cache's fetch (concurrent misses share one read). */
  private readonly known: LRUCache<string, Known>
  /**
   * Unknown site ids → when they were read, for negativeTtlMs; apart from the known sites, so a
   * flood of random ids churns only these.
   */
  private readonly unknown: LRUCache<string, number>
  private tokenIndex = new Map<string, string>()
  /** Undefined until the index was loaded once. */
  private tokenIndexExpires: number | undefined
  private tokenIndexLoading: Promise<void> | undefined
  private readonly tokenIndexTtlMs: number
  private readonly minRefreshMs: number
  private tokenIndexLoadedAt = Number.NEGATIVE_INFINITY
  private readonly now: () => number
  private readonly onUse: ((siteId: string, tokenHash: string) => void) | undefined

  constructor(
    private readonly store: Pick<SiteStore, 'get' | 'list'>,
    options: ReadAccessCacheOptions = {},
  ) {
    const ttlMs = options.ttlMs ?? 10_000
    const maxStaleMs = options.maxStaleMs ?? 300_000
    this.tokenIndexTtlMs = options.tokenIndexTtlMs ?? 30_000
    this.minRefreshMs = options.minRefreshMs ?? 1000
    this.now = options.now ?? Date.now
    this.onUse = options.onUse
    // The injected clock, uncached, for the TTLs as for loadedAt and staleUntil; + 1 because
    // lru-cache reads a start time of 0 as "no TTL" (a test clock starts at 0).
    const perf = { now: () => this.now() + 1 }
    this.unknown = new LRUCache<string, number>({
      max: options.maxUnknownSites ?? 10_000,
      ttl: Math.max(1, options.negativeTtlMs ?? 2000),
      ttlResolution: 0,
      perf,
    })
    this.known = new LRUCache<string, Known>({
      max: options.maxSites ?? 100_000,
      // lru-cache's ttl 0 means "forever"; 1 ms is "re-read on every request", as TTL 0 was.
      ttl: Math.max(1, ttlMs),
      ttlResolution: 0,
      perf,
      // An expired site stays, to be used within maxStaleMs when a re-read fails.
      noDeleteOnStaleGet: true,
      noDeleteOnFetchRejection: true,
      fetchMethod: async (siteId) => {
        const site = await this.store.get(siteId)
        const t = this.now()
        if (site === undefined) {
          this.unknown.set(siteId, t)
          return undefined
        }
        this.unknown.delete(siteId)
        return { site, loadedAt: t, staleUntil: t + ttlMs + maxStaleMs }
      },
    })
  }

  async authorize(siteId: string, authorization: string | undefined): Promise<void> {
    if (authorization === undefined || authorization === '') {
      throw unauthorized(ERR.MISSING_READ_TOKEN, 'send a read token as Authorization: Bearer <token>')
    }
    const m = BEARER.exec(authorization)
    if (!m) throw unauthorized(ERR.INVALID_READ_TOKEN, 'Authorization must be Bearer <read token>')
    const hash = hashToken(m[1]!)
    let site = await this.site(siteId, false)
    if (!(site && matchesAny(hash, site.readTokenHashes))) site = await this.site(siteId, true)
    if (site && matchesAny(hash, site.readTokenHashes)) {
      this.onUse?.(siteId, hash)
      return
    }
    const owner = await this.ownerOf(hash)
    if (owner !== undefined && owner !== siteId) {
      throw new TallyError(ERR.WRONG_SITE, `this read token does not give access to site ${siteId}`, {
        where: 'site',
      })
    }
    // A revoked token is unknown here: its hash left the site (and the index, once rebuilt).
    throw unauthorized(ERR.INVALID_READ_TOKEN, 'unknown or revoked read token')
  }

  /** The same check as `authorize` when the site is cached and fresh and the token is one of its own. */
  allowsNow(siteId: string, authorization: string | undefined): boolean {
    if (!authorization) return false
    const hit = this.known.get(siteId)
    if (!hit) return false
    const m = BEARER.exec(authorization)
    if (m === null) return false
    const hash = hashToken(m[1]!)
    if (!matchesAny(hash, hit.site.readTokenHashes)) return false
    this.onUse?.(siteId, hash)
    return true
  }

  /** The zone of the site as last read (authorize has just read or confirmed it). */
  zoneOf(siteId: string): string | undefined {
    return this.known.peek(siteId, { allowStale: true })?.site.timezone
  }

  /** The site, from the cache while fresh; `refresh` re-reads it if cached longer than minRefreshMs. */
  private async site(siteId: string, refresh: boolean): Promise<Site | undefined> {
    const now = this.now()
    const unknownAt = this.unknown.get(siteId)
    if (unknownAt !== undefined && !(refresh && now - unknownAt >= this.minRefreshMs)) return undefined
    const hit = this.known.get(siteId)
    if (hit && !(refresh && now - hit.loadedAt >= this.minRefreshMs)) return hit.site
    try {
      // Expired, unknown or due for a refresh: read it (a read already under way is shared).
      return (await this.known.fetch(siteId, { forceRefresh: true }))?.site
    } catch (err) {
      const stale = this.known.peek(siteId, { allowStale: true })
      if (stale && stale.staleUntil > this.now()) return stale.site
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
  return new TallyError(ERR.SITES_UNAVAILABLE, 'cannot check the read token right now', {
    retriable: true,
    cause,
  })
}
