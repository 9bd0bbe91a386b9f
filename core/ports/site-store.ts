/** A site: one domain's analytics, with one write key (public) and read tokens (secret, hashed). */
export interface Site {
  siteId: string
  domain: string
  /** Origins allowed to post events from a browser (CORS), e.g. https://www.example.com. */
  origins: string[]
  writeKey: string
  /** SHA-256 (hex) of each read token. The tokens themselves are never stored. */
  readTokenHashes: string[]
  createdAt: Date
}

export interface NewSite {
  siteId: string
  domain: string
  origins: string[]
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
  remove(siteId: string): Promise<boolean>
  /**
   * Bulk import of a site exported from another store, keys and token hashes as they are (moving an
   * installation). `created` when it was absent; `unchanged` when the same site with the same write
   * key is there already (its token hashes are merged in); `conflict` when another write key holds
   * the id (nothing is changed).
   */
  importSite(site: Site): Promise<'created' | 'unchanged' | 'conflict'>
}
