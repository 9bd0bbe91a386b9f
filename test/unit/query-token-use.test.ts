import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import type { Site } from '../../core/ports/site-store.js'
import { ReadAccessCache } from '../../query/auth.js'
import { type TokenUseOutcome, TokenUseRecorder } from '../../query/token-use.js'

const sha = (token: string) => createHash('sha256').update(token).digest('hex')

class FakeUses {
  writes: Array<{ siteId: string; tokenHash: string; usedAtMs: number }> = []
  failing = false
  /** Writes wait for this before they settle, when set. */
  gate: Promise<void> | undefined
  async markReadTokenUsed(siteId: string, tokenHash: string, usedAt: Date): Promise<void> {
    await this.gate
    if (this.failing) throw new Error('store down')
    this.writes.push({ siteId, tokenHash, usedAtMs: usedAt.getTime() })
  }
}

describe('last use of read tokens', () => {
  it('writes a token’s use at most once per interval per token, without the caller waiting', async () => {
    const store = new FakeUses()
    const outcomes: TokenUseOutcome[] = []
    let t = 1_000_000
    const rec = new TokenUseRecorder(store, {
      intervalMs: 60_000,
      now: () => t,
      onOutcome: (o) => outcomes.push(o),
    })
    for (let i = 0; i < 100; i++) rec.used('a', 'h1')
    rec.used('a', 'h2')
    rec.used('b', 'h1')
    await rec.settled()
    expect(store.writes).toEqual([
      { siteId: 'a', tokenHash: 'h1', usedAtMs: 1_000_000 },
      { siteId: 'a', tokenHash: 'h2', usedAtMs: 1_000_000 },
      { siteId: 'b', tokenHash: 'h1', usedAtMs: 1_000_000 },
    ])
    t += 59_999
    rec.used('a', 'h1')
    await rec.settled()
    expect(store.writes).toHaveLength(3)
    t += 1
    rec.used('a', 'h1')
    await rec.settled()
    expect(store.writes.at(-1)).toEqual({ siteId: 'a', tokenHash: 'h1', usedAtMs: 1_060_000 })
    expect(outcomes).toEqual(['written', 'written', 'written', 'written'])
  })

  it('counts failed writes (with their error) and skips uses beyond the writes allowed in flight', async () => {
    const store = new FakeUses()
    const seen: Array<[TokenUseOutcome, unknown]> = []
    let t = 0
    const rec = new TokenUseRecorder(store, {
      intervalMs: 1000,
      maxInFlight: 2,
      now: () => t,
      onOutcome: (o, err) => seen.push([o, err]),
    })
    let open = () => {}
    store.gate = new Promise<void>((resolve) => {
      open = resolve
    })
    rec.used('a', 'h1')
    rec.used('a', 'h2')
    rec.used('a', 'h3')
    expect(seen).toEqual([['skipped', undefined]])
    open()
    await rec.settled()
    // The skipped use was not taken as written: the next request writes it.
    rec.used('a', 'h3')
    await rec.settled()
    expect(store.writes.map((w) => w.tokenHash)).toEqual(['h1', 'h2', 'h3'])
    store.failing = true
    t = 1000
    rec.used('a', 'h1')
    await rec.settled()
    expect(seen.at(-1)?.[0]).toBe('failed')
    expect(String(seen.at(-1)?.[1])).toContain('store down')
  })

  it('the read-token check reports every accepted token (authorize and allowsNow), never a refused one', async () => {
    const site: Site = {
      siteId: 'a',
      domain: 'a',
      origins: [],
      writeKey: 'wk_a',
      readTokenHashes: [sha('rt_good')],
      createdAt: new Date(0),
    }
    const uses: string[] = []
    const auth = new ReadAccessCache(
      { get: async (id) => (id === 'a' ? site : undefined), list: async () => [site] },
      { onUse: (siteId, hash) => uses.push(`${siteId}:${hash}`) },
    )
    await auth.authorize('a', 'Bearer rt_good')
    expect(auth.allowsNow('a', 'Bearer rt_good')).toBe(true)
    await expect(auth.authorize('a', 'Bearer rt_bad')).rejects.toMatchObject({ statusCode: 401 })
    expect(auth.allowsNow('a', 'Bearer rt_bad')).toBe(false)
    expect(uses).toEqual([`a:${sha('rt_good')}`, `a:${sha('rt_good')}`])
  })
})
