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
  /** Most unknown keys remembered (least recently used leave first). Default 10000. */
  maxUnknownKeys?: number
}

interface Known {
  site: Site
  /** Until when the site may be served while the store cannot answer. */
  staleUntil: number
}

/**
 * Write key → site with bounded staleness, plus the set of origins of all sites (for CORS
 * preflights, which carry no key). Concurrent misses for one key share one store read (lru-cache's
 * `fetch`). Known sites and unknown keys live in two bounded caches, so a flood of random keys
 * churns only the unknown ones and never evicts a known site.
 */
export class SiteCache {
  private readonly known: LRUCache<string, Known>
  private readonly unknown: LRUCache<string, true>
  private origins = new Set<string>()
  private originsExpire = 0
  private originsLoading: Promise<void> | undefined
  private readonly ttlMs: number

  constructor(
    private readonly store: Pick<SiteStore, 'byWriteKey' | 'list'>,
    options: SiteCacheOptions = {},
  ) {
    this.ttlMs = options.ttlMs ?? 10_000
    const maxStaleMs = options.maxStaleMs ?? 300_000
    // Date.now rather than performance.now, and no cached clock: the same time as the entries'
    // staleUntil; + 1 because lru-cache reads a start time of 0 as "no TTL".
    const perf = { now: () => Date.now() + 1 }
    this.unknown = new LRUCache<string, true>({
      max: options.maxUnknownKeys ?? 10_000,
      ttl: Math.max(1, options.negativeTtlMs ?? 2000),
      ttlResolution: 0,
      perf,
      noDeleteOnStaleGet: true,
    })
    this.known = new LRUCache<string, Known>({
      max: options.maxSites ?? 100_000,
      // TTL 0 (TALLY_SITE_CACHE_TTL_MS=0) re-reads on every request, as lru-cache's 1 ms does.
      ttl: Math.max(1, this.ttlMs),
      ttlResolution: 0,
      perf,
      // A failed read keeps the expired entry, so byWriteKey can serve it within maxStaleMs.
      noDeleteOnFetchRejection: true,
      fetchMethod: async (writeKey) => {
        const site = await this.store.byWriteKey(writeKey)
        if (site === undefined) {
          this.unknown.set(writeKey, true)
          return undefined
        }
        return { site, staleUntil: Date.now() + this.ttlMs + maxStaleMs }
      },
    })
  }

  async byWriteKey(writeKey: string): Promise<Site | undefined> {
    if (this.unknown.has(writeKey)) return undefined
    try {
      return (await this.known.fetch(writeKey))?.site
    } catch (err) {
      // The store is down: keep serving a known site for a while rather than refusing events.
      const stale = this.known.peek(writeKey, { allowStale: true })
      if (stale && stale.staleUntil > Date.now()) return stale.site
      throw err
    }
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
