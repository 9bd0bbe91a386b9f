import type { Site, SiteStore } from '../core/ports/site-store.js'

export interface SiteCacheOptions {
  /** A cached site is re-read after this long, so rotations and removals apply within it. Default 10 s. */
  ttlMs?: number
  /** Unknown keys are remembered this long, so a bad key cannot hammer the store. Default 2 s. */
  negativeTtlMs?: number
  /** When the store cannot answer, a known site is still served for this long past its TTL. Default 5 min. */
  maxStaleMs?: number
}

interface Entry {
  site: Site | undefined
  expires: number
  staleUntil: number
}

/**
 * Write key → site with bounded staleness, plus the set of origins of all sites (for CORS
 * preflights, which carry no key). Concurrent misses for one key share one store read.
 */
export class SiteCache {
  private readonly byKey = new Map<string, Entry>()
  private readonly loading = new Map<string, Promise<Site | undefined>>()
  private origins = new Set<string>()
  private originsExpire = 0
  private originsLoading: Promise<void> | undefined
  private readonly ttlMs: number
  private readonly negativeTtlMs: number
  private readonly maxStaleMs: number

  constructor(
    private readonly store: Pick<SiteStore, 'byWriteKey' | 'list'>,
    options: SiteCacheOptions = {},
  ) {
    this.ttlMs = options.ttlMs ?? 10_000
    this.negativeTtlMs = options.negativeTtlMs ?? 2000
    this.maxStaleMs = options.maxStaleMs ?? 300_000
  }

  async byWriteKey(writeKey: string): Promise<Site | undefined> {
    const now = Date.now()
    const hit = this.byKey.get(writeKey)
    if (hit && hit.expires > now) return hit.site
    let pending = this.loading.get(writeKey)
    if (!pending) {
      pending = this.store.byWriteKey(writeKey).finally(() => this.loading.delete(writeKey))
      this.loading.set(writeKey, pending)
    }
    try {
      const site = await pending
      const t = Date.now()
      if (this.byKey.size > 100_000) this.byKey.clear()
      this.byKey.set(writeKey, {
        site,
        expires: t + (site ? this.ttlMs : this.negativeTtlMs),
        staleUntil: t + this.ttlMs + this.maxStaleMs,
      })
      return site
    } catch (err) {
      // The store is down: keep serving a known site for a while rather than refusing events.
      if (hit?.site && hit.staleUntil > Date.now()) return hit.site
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
