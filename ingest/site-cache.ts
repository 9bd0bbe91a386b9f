import { LRUCache } from 'lru-cache'
import type { Site, SiteStore } from '../core/ports/site-store.js'

export interface SiteCacheOptions {
  /** A cached site is re-read after this long, so rotations and removals apply within it. Default 10 s. */
  ttlMs?: number
  /** Unknown keys are remembered this long, so a bad key cannot hammer the store. Default 2 s. */
  negativeTtlMs?: number
  /** When the store cannot answer, a known site is still served for this long past its TTL. Default 5 min. */
  maxStaleMs?: number
  /** Most known sites kept (least recently used leave first). Default 100000. */
  maxSites?: number
  /** Most unknown keys (and domains) remembered (least recently used leave first). Default 10000. */
  maxUnknownKeys?: number
}

interface Known {
  site: Site
  /** Until when the site may be served while the store cannot answer. */
  staleUntil: number
}

interface LookupOptions {
  ttlMs: number
  negativeTtlMs: number
  maxStaleMs: number
  maxSites: number
  maxUnknownKeys: number
}

/**
 * One key → site lookup with bounded staleness (by write key, by domain). Concurrent misses for
 * one key share one store read (lru-cache's `fetch`). Known sites and unknown keys live in two
 * bounded caches, so a flood of random keys churns only the unknown ones and never evicts a known
 * site.
 */
class Lookup {
  private readonly known: LRUCache<string, Known>
  private readonly unknown: LRUCache<string, true>

  constructor(read: (key: string) => Promise<Site | undefined>, options: LookupOptions) {
    const { ttlMs, maxStaleMs } = options
    // Date.now rather than performance.now, and no cached clock: the same time as the entries'
    // staleUntil; + 1 because lru-cache reads a start time of 0 as "no TTL".
    const perf = { now: () => Date.now() + 1 }
    this.unknown = new LRUCache<string, true>({
      max: options.maxUnknownKeys,
      ttl: Math.max(1, options.negativeTtlMs),
      ttlResolution: 0,
      perf,
      noDeleteOnStaleGet: true,
    })
    this.known = new LRUCache<string, Known>({
      max: options.maxSites,
      // TTL 0 (TALLY_SITE_CACHE_TTL_MS=0) re-reads on every request, as lru-cache's 1 ms does.
      ttl: Math.max(1, ttlMs),
      ttlResolution: 0,
      perf,
      // A failed read keeps the expired entry, so get can serve it within maxStaleMs.
      noDeleteOnFetchRejection: true,
      fetchMethod: async (key) => {
        const site = await read(key)
        if (site === undefined) {
          this.unknown.set(key, true)
          return undefined
        }
        return { site, staleUntil: Date.now() + ttlMs + maxStaleMs }
      },
    })
  }

  async get(key: string): Promise<Site | undefined> {
    if (this.unknown.has(key)) return undefined
    try {
      return (await this.known.fetch(key))?.site
    } catch (err) {
      // The store is down: keep serving a known site for a while rather than refusing events.
      const stale = this.known.peek(key, { allowStale: true })
      if (stale && stale.staleUntil > Date.now()) return stale.site
      throw err
    }
  }
}

/**
 * Write key → site and domain → site (Plausible's event API names its site by domain) with
 * bounded staleness, plus the set of origins of all sites (for CORS preflights, which carry no key).
 */
export class SiteCache {
  private readonly byKey: Lookup
  private readonly byName: Lookup
  private origins = new Set<string>()
  private originsExpire = 0
  private originsLoading: Promise<void> | undefined
  private readonly ttlMs: number

  constructor(
    private readonly store: Pick<SiteStore, 'byWriteKey' | 'list'> & Partial<Pick<SiteStore, 'byDomain'>>,
    options: SiteCacheOptions = {},
  ) {
    this.ttlMs = options.ttlMs ?? 10_000
    const lookup: LookupOptions = {
      ttlMs: this.ttlMs,
      negativeTtlMs: options.negativeTtlMs ?? 2000,
      maxStaleMs: options.maxStaleMs ?? 300_000,
      maxSites: options.maxSites ?? 100_000,
      maxUnknownKeys: options.maxUnknownKeys ?? 10_000,
    }
    this.byKey = new Lookup((key) => this.store.byWriteKey(key), lookup)
    this.byName = new Lookup(async (domain) => this.store.byDomain?.(domain), lookup)
  }

  byWriteKey(writeKey: string): Promise<Site | undefined> {
    return this.byKey.get(writeKey)
  }

  /** The site whose domain or alias this is (lower case). */
  byDomain(domain: string): Promise<Site | undefined> {
    return this.byName.get(domain)
  }

  /** Whether any site allows this origin (used to answer preflights). */
  async isKnownOrigin(origin: string): Promise<boolean> {
    if (Date.now() > this.originsExpire) {
      this.originsLoading ??= this.store
        .list()
        .then((sites) => {
          this.origins = new Set(sites.flatMap(allowedOrigins))
          this.originsExpire = Date.now() + this.ttlMs
        })
        .finally(() => {
          this.originsLoading = undefined
        })
      try {
        await this.originsLoading
      } catch (err) {
        if (this.originsExpire === 0) throw err
      }
    }
    return this.origins.has(origin)
  }
}

/** The site's configured origins, plus its own domain over https and http. */
export function allowedOrigins(site: Pick<Site, 'origins' | 'domain'>): string[] {
  return [...site.origins, `https://${site.domain}`, `http://${site.domain}`]
}
