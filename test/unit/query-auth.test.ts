import { describe, expect, it } from 'vitest'
import { TallyError } from '../../core/errors.js'
import { hashToken } from '../../core/keys.js'
import type { Site } from '../../core/ports/site-store.js'
import { ReadAccessCache } from '../../query/auth.js'

function site(siteId: string, tokens: string[]): Site {
  return {
    siteId,
    domain: siteId,
    origins: [],
    writeKey: `wk_${siteId}`,
    readTokenHashes: tokens.map(hashToken),
    createdAt: new Date(0),
  }
}

class FakeStore {
  gets = 0
  lists = 0
  failing = false
  constructor(public sites: Site[]) {}
  async get(id: string) {
    this.gets++
    if (this.failing) throw new Error('store down')
    return this.sites.find((s) => s.siteId === id)
  }
  async list() {
    this.lists++
    if (this.failing) throw new Error('store down')
    return this.sites
  }
}

async function failure(p: Promise<unknown>): Promise<TallyError> {
  try {
    await p
  } catch (err) {
    if (err instanceof TallyError) return err
    throw err
  }
  throw new Error('expected a rejection')
}

describe('read-token authorization', () => {
  it('answers 401 without or with an unknown token, 403 for a token of another site', async () => {
    const store = new FakeStore([site('a.test', ['rt_a1', 'rt_a2']), site('b.test', ['rt_b'])])
    let t = 0
    const auth = new ReadAccessCache(store, { ttlMs: 1000, now: () => t })
    await expect(auth.authorize('a.test', 'Bearer rt_a1')).resolves.toBeUndefined()
    await expect(auth.authorize('a.test', 'bearer   rt_a2')).resolves.toBeUndefined()
    const none = await failure(auth.authorize('a.test', undefined))
    expect([none.statusCode, none.code, none.where]).toEqual([
      401,
      'TALLY_ERR_MISSING_READ_TOKEN',
      'authorization',
    ])
    const basic = await failure(auth.authorize('a.test', 'Basic cnRfYTE6'))
    expect([basic.statusCode, basic.code]).toEqual([401, 'TALLY_ERR_INVALID_READ_TOKEN'])
    const unknown = await failure(auth.authorize('a.test', 'Bearer rt_nope'))
    expect([unknown.statusCode, unknown.code]).toEqual([401, 'TALLY_ERR_INVALID_READ_TOKEN'])
    const other = await failure(auth.authorize('a.test', 'Bearer rt_b'))
    expect([other.statusCode, other.code, other.where]).toEqual([403, 'TALLY_ERR_WRONG_SITE', 'site'])
    // A site that does not exist looks the same as one the token cannot read.
    expect((await failure(auth.authorize('missing.test', 'Bearer rt_b'))).statusCode).toBe(403)
    expect((await failure(auth.authorize('missing.test', 'Bearer rt_nope'))).statusCode).toBe(401)

    // Cached within the TTL; a revoked token stops working once it expires.
    const gets = store.gets
    await auth.authorize('a.test', 'Bearer rt_a1')
    expect(store.gets).toBe(gets)
    store.sites[0] = site('a.test', ['rt_a2'])
    t += 1001
    expect((await failure(auth.authorize('a.test', 'Bearer rt_a1'))).statusCode).toBe(401)
  })

  it('sees a token or a site added since it cached, at most one store read per second', async () => {
    const store = new FakeStore([site('a.test', ['rt_a']), site('b.test', ['rt_b'])])
    let t = 0
    const auth = new ReadAccessCache(store, { ttlMs: 60_000, minRefreshMs: 1000, now: () => t })
    await auth.authorize('a.test', 'Bearer rt_a')
    expect((await failure(auth.authorize('a.test', 'Bearer rt_c'))).statusCode).toBe(401)
    store.sites.push(site('c.test', ['rt_c']))
    store.sites[0] = site('a.test', ['rt_a', 'rt_a2'])
    const [gets, lists] = [store.gets, store.lists]
    // Within a second of the last reads, unknown tokens cost no store read.
    for (let i = 0; i < 5; i++)
      expect((await failure(auth.authorize('a.test', 'Bearer rt_a2'))).statusCode).toBe(401)
    expect((await failure(auth.authorize('a.test', 'Bearer rt_c'))).statusCode).toBe(401)
    expect([store.gets, store.lists]).toEqual([gets, lists])
    t = 1000
    await expect(auth.authorize('a.test', 'Bearer rt_a2')).resolves.toBeUndefined()
    expect((await failure(auth.authorize('a.test', 'Bearer rt_c'))).statusCode).toBe(403)
  })

  it('keeps serving a known site while the store is down, up to the staleness limit', async () => {
    const store = new FakeStore([site('a.test', ['rt_a'])])
    let t = 0
    const auth = new ReadAccessCache(store, { ttlMs: 1000, maxStaleMs: 5000, now: () => t })
    await auth.authorize('a.test', 'Bearer rt_a')
    store.failing = true
    t = 3000
    await expect(auth.authorize('a.test', 'Bearer rt_a')).resolves.toBeUndefined()
    t = 7000
    const err = await failure(auth.authorize('a.test', 'Bearer rt_a'))
    expect([err.statusCode, err.code, err.retriable]).toEqual([503, 'TALLY_ERR_SITES_UNAVAILABLE', true])
  })

  it("allowsNow passes a cached site's own token at once, and leaves everything else to authorize", async () => {
    const clock = { t: 0 }
    const store = new FakeStore([site('a', ['rt_a']), site('b', ['rt_b'])])
    const auth = new ReadAccessCache(store, { ttlMs: 1000, now: () => clock.t })
    // Nothing cached yet: not known at once.
    expect(auth.allowsNow('a', 'Bearer rt_a')).toBe(false)
    await auth.authorize('a', 'Bearer rt_a')
    expect(auth.allowsNow('a', 'Bearer rt_a')).toBe(true)
    expect(auth.allowsNow('a', 'bearer  rt_a ')).toBe(true)
    // Another site's token, an unknown one, a malformed header, no header: for authorize to answer.
    for (const header of ['Bearer rt_b', 'Bearer rt_x', 'Basic rt_a', '', undefined])
      expect(auth.allowsNow('a', header)).toBe(false)
    expect((await failure(auth.authorize('a', 'Bearer rt_b'))).statusCode).toBe(403)
    // Once the cached site expired, the store decides again.
    clock.t = 1001
    expect(auth.allowsNow('a', 'Bearer rt_a')).toBe(false)
    const gets = store.gets
    await auth.authorize('a', 'Bearer rt_a')
    expect(store.gets).toBe(gets + 1)
    expect(auth.allowsNow('a', 'Bearer rt_a')).toBe(true)
  })

  it('keeps known sites cached through a flood of unknown site ids', async () => {
    const clock = { t: 1 }
    const store = new FakeStore([site('a', ['rt_a'])])
    const auth = new ReadAccessCache(store, { ttlMs: 60_000, negativeTtlMs: 60_000, now: () => clock.t })
    await auth.authorize('a', 'Bearer rt_a')
    // More random ids than either cache holds (each one a 401).
    for (let i = 0; i < 101_000; i += 10_100) {
      await Promise.all(
        Array.from({ length: 10_100 }, (_, j) =>
          auth.authorize(`random-${i + j}`, 'Bearer rt_a').catch(() => {}),
        ),
      )
    }
    const gets = store.gets
    expect(auth.allowsNow('a', 'Bearer rt_a')).toBe(true)
    await auth.authorize('a', 'Bearer rt_a')
    expect(store.gets).toBe(gets)
  }, 120_000) // 100 000+ store misses: seconds on a loaded machine
})
