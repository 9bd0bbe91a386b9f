import { afterEach, describe, expect, it, vi } from 'vitest'
import type { Site } from '../../core/ports/site-store.js'
import { pixelPayload } from '../../ingest/pixel.js'
import { EventRateLimiter } from '../../ingest/rate-limit.js'
import { allowedOrigins, SiteCache } from '../../ingest/site-cache.js'

afterEach(() => {
  vi.useRealTimers()
})

describe('EventRateLimiter', () => {
  it('allows a burst, then answers the seconds to wait, and refills at the rate', () => {
    vi.useFakeTimers({ now: 1_000_000 })
    const limiter = new EventRateLimiter(10, 20)
    expect(limiter.take('k', 20)).toBe(0)
    // Empty bucket: 5 events need 0.5 s of refill, rounded up to whole seconds for Retry-After.
    expect(limiter.take('k', 5)).toBe(1)
    expect(limiter.take('k', 25)).toBe(2)
    expect(limiter.take('other', 1)).toBe(0)
    vi.advanceTimersByTime(500)
    expect(limiter.take('k', 5)).toBe(0)
    expect(limiter.take('k', 1)).toBe(1)
  })

  it('lets a request larger than the burst through once the bucket is full, instead of refusing it forever', () => {
    vi.useFakeTimers({ now: 1_000_000 })
    const limiter = new EventRateLimiter(10, 20)
    expect(limiter.take('k', 50)).toBe(0)
    // It went into debt: the next events wait until the debt is paid off.
    expect(limiter.take('k', 1)).toBe(4)
    vi.advanceTimersByTime(5_000)
    expect(limiter.take('k', 20)).toBe(0)
  })

  it('gives tokens back for a request refused by another limit', () => {
    vi.useFakeTimers({ now: 1_000_000 })
    const limiter = new EventRateLimiter(10, 20)
    expect(limiter.take('k', 15)).toBe(0)
    limiter.refund('k', 15)
    expect(limiter.take('k', 20)).toBe(0)
    limiter.refund('k', 100)
    // Never above the burst.
    expect(limiter.take('k', 21)).toBe(0)
    expect(limiter.take('k', 1)).toBeGreaterThan(0)
  })

  it('is off with a rate of 0', () => {
    const limiter = new EventRateLimiter(0, 0)
    for (let i = 0; i < 5; i++) expect(limiter.take('k', 1_000_000)).toBe(0)
  })
})

describe('pixelPayload', () => {
  it('maps short query names to a Segment page event with page context', () => {
    const p = pixelPayload({
      wk: 'wk_1',
      a: 'anon-1',
      url: 'https://shop.example.com/cart?x=1',
      r: 'https://google.com/',
      title: 'Cart',
      m: 'px-msg-1',
      ts: '2026-01-01T00:00:00.000Z',
    })
    expect(p).toEqual({
      type: 'page',
      anonymousId: 'anon-1',
      messageId: 'px-msg-1',
      timestamp: '2026-01-01T00:00:00.000Z',
      name: 'Cart',
      properties: {
        url: 'https://shop.example.com/cart?x=1',
        path: '/cart',
        referrer: 'https://google.com/',
        title: 'Cart',
      },
      context: {
        page: {
          url: 'https://shop.example.com/cart?x=1',
          path: '/cart',
          referrer: 'https://google.com/',
          title: 'Cart',
        },
        library: { name: 'tally-pixel', version: '1' },
      },
    })
    expect(pixelPayload({ t: 'track', e: 'Opened Email', u: 'user-1' })).toMatchObject({
      type: 'track',
      event: 'Opened Email',
      userId: 'user-1',
    })
  })
})

function site(over: Partial<Site> = {}): Site {
  return {
    siteId: 's1',
    domain: 'example.com',
    origins: ['https://app.example.com'],
    writeKey: 'wk_1',
    readTokenHashes: [],
    createdAt: new Date(0),
    ...over,
  }
}

describe('SiteCache', () => {
  it('serves a site from cache within the TTL and re-reads it after, so a rotated key stops working', async () => {
    vi.useFakeTimers({ now: 1_000_000 })
    let current: Site | undefined = site()
    const store = {
      byWriteKey: vi.fn(async (key: string) => (current?.writeKey === key ? current : undefined)),
      list: vi.fn(async () => (current ? [current] : [])),
    }
    const cache = new SiteCache(store, { ttlMs: 1000, negativeTtlMs: 200 })
    expect((await cache.byWriteKey('wk_1'))?.siteId).toBe('s1')
    current = site({ writeKey: 'wk_2' })
    expect((await cache.byWriteKey('wk_1'))?.siteId).toBe('s1')
    expect(store.byWriteKey).toHaveBeenCalledTimes(1)
    vi.advanceTimersByTime(1001)
    expect(await cache.byWriteKey('wk_1')).toBeUndefined()
    expect((await cache.byWriteKey('wk_2'))?.siteId).toBe('s1')
  })

  it('shares one store read between concurrent misses and keeps serving a known site while the store is down', async () => {
    vi.useFakeTimers({ now: 1_000_000 })
    let down = false
    const store = {
      byWriteKey: vi.fn(async () => {
        if (down) throw new Error('cassandra down')
        return site()
      }),
      list: vi.fn(async () => [site()]),
    }
    const cache = new SiteCache(store, { ttlMs: 1000, maxStaleMs: 5000 })
    await Promise.all([cache.byWriteKey('wk_1'), cache.byWriteKey('wk_1'), cache.byWriteKey('wk_1')])
    expect(store.byWriteKey).toHaveBeenCalledTimes(1)
    down = true
    vi.advanceTimersByTime(2000)
    expect((await cache.byWriteKey('wk_1'))?.siteId).toBe('s1')
    vi.advanceTimersByTime(10_000)
    await expect(cache.byWriteKey('wk_1')).rejects.toThrow('cassandra down')
    await expect(cache.byWriteKey('wk_unknown')).rejects.toThrow('cassandra down')
  })

  it('keeps known sites cached through a flood of unknown keys', async () => {
    vi.useFakeTimers({ now: 1_000_000 })
    const known = site()
    const store = {
      byWriteKey: vi.fn(async (key: string) => (key === known.writeKey ? known : undefined)),
      list: vi.fn(async () => [known]),
    }
    const cache = new SiteCache(store, { ttlMs: 60_000, negativeTtlMs: 60_000 })
    expect((await cache.byWriteKey(known.writeKey))?.siteId).toBe('s1')
    // More random keys than either cache holds.
    for (let i = 0; i < 101_000; i += 10_100) {
      await Promise.all(Array.from({ length: 10_100 }, (_, j) => cache.byWriteKey(`wk_random_${i + j}`)))
    }
    store.byWriteKey.mockClear()
    expect((await cache.byWriteKey(known.writeKey))?.siteId).toBe('s1')
    expect(store.byWriteKey).not.toHaveBeenCalled()
    // Unknown keys stay remembered (bounded): a recent one is not read again.
    expect(await cache.byWriteKey('wk_random_100999')).toBeUndefined()
    expect(store.byWriteKey).not.toHaveBeenCalled()
  }, 120_000) // 100 000+ store misses: seconds on a loaded machine

  it("knows every site's origins (for preflights), including the site's own domain", async () => {
    const store = { byWriteKey: async () => undefined, list: async () => [site()] }
    const cache = new SiteCache(store)
    expect(await cache.isKnownOrigin('https://app.example.com')).toBe(true)
    expect(await cache.isKnownOrigin('https://example.com')).toBe(true)
    expect(await cache.isKnownOrigin('https://evil.example.net')).toBe(false)
    expect(allowedOrigins(site())).toEqual([
      'https://app.example.com',
      'https://example.com',
      'http://example.com',
    ])
  })
})
