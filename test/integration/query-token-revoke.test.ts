import { createHash } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLogger } from '../../core/log.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import { CheckpointFreshness } from '../../query/freshness.js'
import { TokenUseRecorder } from '../../query/token-use.js'
import type { AggregateStoreHarness } from '../contract/aggregate-store.js'
import { cassandraHarness, embeddedHarness } from '../contract/backends.js'
import type { SiteStoreHarness } from '../contract/site-store.js'
import { uniqueName } from '../helpers/context.js'

/**
 * A leaked read token is revoked for every query role within the site cache's TTL: two query apps
 * (two roles) share one store, each with its own cache of the site, on both backends.
 */

const TTL_MS = 1500
const HOUR = 3_600_000

type Harness = AggregateStoreHarness & SiteStoreHarness

const idOf = (token: string) => createHash('sha256').update(token).digest('hex').slice(0, 12)

function revokeSuite(name: string, open: () => Promise<Harness>) {
  describe(`read token revocation through the query API: ${name}`, () => {
    let h: Harness
    const roles: Array<{ app: Awaited<ReturnType<typeof buildQueryApp>>; uses: TokenUseRecorder }> = []
    let siteId = ''
    let leaked = ''
    let kept = ''
    const windowStart = Math.floor(Date.now() / HOUR) * HOUR
    const range = `from=${new Date(windowStart).toISOString()}&to=${new Date(windowStart + HOUR).toISOString()}`

    const ask = (role: number, token: string) =>
      roles[role]!.app.inject({
        method: 'GET',
        url: `/v1/stats/aggregate?${range}&metrics=events&site=${siteId}`,
        headers: { authorization: `Bearer ${token}` },
      })

    beforeAll(async () => {
      h = await open()
      siteId = uniqueName('revoke')
      leaked = (await h.sites.create({ siteId, domain: 'revoke.test', origins: [] })).readToken
      kept = await h.sites.addReadToken(siteId)
      for (let i = 0; i < 2; i++) {
        const uses = new TokenUseRecorder(h.sites)
        const app = await buildQueryApp({
          reader: h.reader,
          auth: new ReadAccessCache(h.sites, { ttlMs: TTL_MS, onUse: (s, hash) => uses.used(s, hash) }),
          freshness: new CheckpointFreshness(h.reader, {
            group: uniqueName('group'),
            topic: uniqueName('raw'),
            partitions: 1,
            graceMs: 2 * HOUR,
            cacheMs: 0,
          }),
          logger: createLogger('silent'),
          retentionSeconds: { minute: 0, hour: 0, day: 0 },
          answerCache: { maxBytes: 1024 * 1024, maxAgeMs: 60_000 },
        })
        roles.push({ app, uses })
      }
    })

    afterAll(async () => {
      for (const r of roles) {
        await r.app.close()
        await r.uses.settled()
      }
      await h?.close()
    })

    it('both roles accept the token, and its use shows in the token list', async () => {
      const before = Date.now()
      for (const role of [0, 1])
        for (const token of [leaked, kept]) expect((await ask(role, token)).statusCode).toBe(200)
      for (const r of roles) await r.uses.settled()
      const listed = await h.sites.listReadTokens(siteId)
      expect(listed.map((t) => t.tokenId).sort()).toEqual([idOf(leaked), idOf(kept)].sort())
      for (const t of listed) {
        expect(t.lastUsedAt?.getTime()).toBeGreaterThanOrEqual(before - 1000)
        expect(t.lastUsedAt?.getTime()).toBeLessThanOrEqual(Date.now() + 1000)
      }
    })

    it('refuses the revoked token on every role (401, error body) within the cache TTL; the other token keeps working', async () => {
      // Every role has the site cached with the token in it.
      for (const role of [0, 1]) expect((await ask(role, leaked)).statusCode).toBe(200)
      const revokedAt = Date.now()
      await h.sites.revokeReadToken(siteId, idOf(leaked))
      for (const role of [0, 1]) {
        let res = await ask(role, leaked)
        while (res.statusCode === 200 && Date.now() - revokedAt < TTL_MS + 5000) {
          await new Promise((r) => setTimeout(r, 50))
          res = await ask(role, leaked)
        }
        const refusedAfterMs = Date.now() - revokedAt
        expect(res.statusCode, res.body).toBe(401)
        expect(res.json()).toMatchObject({
          success: false,
          code: 'TALLY_ERR_INVALID_READ_TOKEN',
          where: 'authorization',
        })
        // The TTL, plus the store read and one poll step.
        expect(refusedAfterMs).toBeLessThanOrEqual(TTL_MS + 500)
        // And it stays refused.
        expect((await ask(role, leaked)).statusCode).toBe(401)
        expect((await ask(role, kept)).statusCode).toBe(200)
      }
    })
  })
}

revokeSuite('cassandra', cassandraHarness)
revokeSuite('embedded', embeddedHarness)
