import { createHash } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventGoal, pageGoal } from '../../core/aggregate/goals.js'
import { hashToken } from '../../core/keys.js'
import type { SiteStore } from '../../core/ports/site-store.js'
import { uniqueName } from '../helpers/context.js'

export interface SiteStoreHarness {
  sites: SiteStore
  close(): Promise<void>
}

/** A token's id computed here, apart from core/keys.ts: the first 12 hex digits of its SHA-256. */
function idOf(token: string): string {
  return createHash('sha256').update(token).digest('hex').slice(0, 12)
}

/** The behaviour every site registry (Cassandra, embedded) must have. */
export function siteStoreContract(name: string, make: () => Promise<SiteStoreHarness>): void {
  describe(`site store contract: ${name}`, () => {
    let h: SiteStoreHarness

    beforeAll(async () => {
      h = await make()
    })

    afterAll(async () => {
      await h?.close()
    })

    it('creates a site with a write key and one read token (only its hash is kept); a second create of the id is refused', async () => {
      const siteId = uniqueName('site')
      const before = Date.now()
      const { site, readToken } = await h.sites.create({
        siteId,
        domain: 'example.test',
        origins: ['https://www.example.test', 'https://example.test'],
      })
      expect(site).toMatchObject({
        siteId,
        domain: 'example.test',
        origins: ['https://example.test', 'https://www.example.test'],
        readTokenHashes: [hashToken(readToken)],
      })
      expect(site.writeKey).toMatch(/^wk_/)
      expect(readToken).toMatch(/^rt_/)
      expect(site.createdAt.getTime()).toBeGreaterThanOrEqual(before - 1000)
      expect(await h.sites.get(siteId)).toEqual(site)
      await expect(h.sites.create({ siteId, domain: 'other.test', origins: [] })).rejects.toMatchObject({
        code: 'TALLY_ERR_SITE_EXISTS',
        statusCode: 409,
      })
      expect((await h.sites.get(siteId))?.domain).toBe('example.test')
      expect(await h.sites.get(uniqueName('none'))).toBeUndefined()
    })

    it('finds a site by write key; rotating the key retires the old one', async () => {
      const siteId = uniqueName('site')
      const { site } = await h.sites.create({ siteId, domain: 'rotate.test', origins: [] })
      expect((await h.sites.byWriteKey(site.writeKey))?.siteId).toBe(siteId)
      expect(await h.sites.byWriteKey('wk_unknown')).toBeUndefined()
      const rotated = await h.sites.rotateWriteKey(siteId)
      expect(rotated.writeKey).not.toBe(site.writeKey)
      expect({ ...rotated, writeKey: site.writeKey }).toEqual(site)
      expect(await h.sites.byWriteKey(site.writeKey)).toBeUndefined()
      expect((await h.sites.byWriteKey(rotated.writeKey))?.siteId).toBe(siteId)
      expect((await h.sites.get(siteId))?.writeKey).toBe(rotated.writeKey)
      await expect(h.sites.rotateWriteKey(uniqueName('none'))).rejects.toMatchObject({
        code: 'TALLY_ERR_SITE_NOT_FOUND',
        statusCode: 404,
      })
    })

    it('adds read tokens (hashes kept, sorted); lists sites by id; removes a site with its keys', async () => {
      const a = uniqueName('site_a')
      const b = uniqueName('site_b')
      const created = await h.sites.create({ siteId: b, domain: 'b.test', origins: [] })
      await h.sites.create({ siteId: a, domain: 'a.test', origins: [] })
      const token = await h.sites.addReadToken(b)
      expect(token).toMatch(/^rt_/)
      const hashes = (await h.sites.get(b))?.readTokenHashes
      expect(hashes).toEqual([hashToken(token), ...created.site.readTokenHashes].sort())
      await expect(h.sites.addReadToken(uniqueName('none'))).rejects.toMatchObject({
        code: 'TALLY_ERR_SITE_NOT_FOUND',
      })
      const ids = (await h.sites.list()).map((s) => s.siteId)
      expect(ids).toContain(a)
      expect(ids).toContain(b)
      expect(ids).toEqual([...ids].sort((x, y) => x.localeCompare(y)))
      expect(await h.sites.remove(b)).toBe(true)
      expect(await h.sites.get(b)).toBeUndefined()
      expect(await h.sites.byWriteKey(created.site.writeKey)).toBeUndefined()
      expect((await h.sites.list()).map((s) => s.siteId)).not.toContain(b)
      expect(await h.sites.remove(b)).toBe(false)
      expect((await h.sites.get(a))?.domain).toBe('a.test')
    })

    it('lists read tokens by id with their first characters and creation time, never the secret', async () => {
      const siteId = uniqueName('site_tokens')
      const before = Date.now()
      const { readToken: first } = await h.sites.create({ siteId, domain: 'tokens.test', origins: [] })
      const second = await h.sites.addReadToken(siteId)
      const after = Date.now()
      const tokens = await h.sites.listReadTokens(siteId)
      expect(tokens.map((t) => t.tokenId).sort()).toEqual([idOf(first), idOf(second)].sort())
      for (const [token, listed] of [first, second].map(
        (t) => [t, tokens.find((x) => x.tokenId === idOf(t))!] as const,
      )) {
        expect(listed).toMatchObject({
          prefix: token.slice(0, 8),
          lastUsedAt: undefined,
          revokedAt: undefined,
        })
        expect(listed.createdAt.getTime()).toBeGreaterThanOrEqual(before - 1000)
        expect(listed.createdAt.getTime()).toBeLessThanOrEqual(after + 1000)
        expect(JSON.stringify(listed)).not.toContain(token)
      }
      // Oldest first.
      const times = tokens.map((t) => t.createdAt.getTime())
      expect(times).toEqual([...times].sort((a, b) => a - b))
      await expect(h.sites.listReadTokens(uniqueName('none'))).rejects.toMatchObject({
        code: 'TALLY_ERR_SITE_NOT_FOUND',
        statusCode: 404,
      })
      await h.sites.remove(siteId)
    })

    it('revokes a read token by id: its hash leaves the site at once, it stays listed as revoked, a repeat changes nothing', async () => {
      const siteId = uniqueName('site_revoke')
      const other = uniqueName('site_other')
      const { readToken: leaked } = await h.sites.create({ siteId, domain: 'revoke.test', origins: [] })
      const kept = await h.sites.addReadToken(siteId)
      const { readToken: foreign } = await h.sites.create({
        siteId: other,
        domain: 'other.test',
        origins: [],
      })
      const before = Date.now()
      const revoked = await h.sites.revokeReadToken(siteId, idOf(leaked))
      expect(revoked).toMatchObject({ tokenId: idOf(leaked), prefix: leaked.slice(0, 8) })
      expect(revoked.revokedAt?.getTime()).toBeGreaterThanOrEqual(before - 1000)
      expect(revoked.revokedAt?.getTime()).toBeLessThanOrEqual(Date.now() + 1000)
      // What query roles check: only the token not revoked.
      expect((await h.sites.get(siteId))?.readTokenHashes).toEqual([hashToken(kept)])
      expect((await h.sites.list()).find((s) => s.siteId === siteId)?.readTokenHashes).toEqual([
        hashToken(kept),
      ])
      const listed = await h.sites.listReadTokens(siteId)
      expect(listed.map((t) => [t.tokenId, t.revokedAt?.getTime()]).sort()).toEqual(
        [
          [idOf(leaked), revoked.revokedAt?.getTime()],
          [idOf(kept), undefined],
        ].sort(),
      )
      // Revoking again returns the same revocation.
      expect(await h.sites.revokeReadToken(siteId, idOf(leaked))).toEqual(revoked)
      // Unknown ids, another site's token, an unknown site: refused, nothing changed.
      for (const tokenId of ['000000000000', idOf(foreign)])
        await expect(h.sites.revokeReadToken(siteId, tokenId)).rejects.toMatchObject({
          code: 'TALLY_ERR_READ_TOKEN_NOT_FOUND',
          statusCode: 404,
          where: 'tokenId',
        })
      await expect(h.sites.revokeReadToken(uniqueName('none'), idOf(kept))).rejects.toMatchObject({
        code: 'TALLY_ERR_SITE_NOT_FOUND',
      })
      expect((await h.sites.get(other))?.readTokenHashes).toEqual([hashToken(foreign)])
      expect((await h.sites.get(siteId))?.readTokenHashes).toEqual([hashToken(kept)])
      await h.sites.remove(siteId)
      await h.sites.remove(other)
    })

    it('records when a token was last used (the latest use wins, whatever the order of writes)', async () => {
      const siteId = uniqueName('site_used')
      const { readToken } = await h.sites.create({ siteId, domain: 'used.test', origins: [] })
      const unused = await h.sites.addReadToken(siteId)
      const hash = hashToken(readToken)
      const t0 = Math.floor(Date.now() / 1000) * 1000
      const lastUsed = async () =>
        (await h.sites.listReadTokens(siteId)).map((t) => [t.tokenId, t.lastUsedAt?.getTime()]).sort()
      await h.sites.markReadTokenUsed(siteId, hash, new Date(t0))
      await h.sites.markReadTokenUsed(siteId, hash, new Date(t0 - 60_000))
      expect(await lastUsed()).toEqual(
        [
          [idOf(readToken), t0],
          [idOf(unused), undefined],
        ].sort(),
      )
      await h.sites.markReadTokenUsed(siteId, hash, new Date(t0 + 60_000))
      await h.sites.revokeReadToken(siteId, idOf(readToken))
      expect((await h.sites.listReadTokens(siteId)).find((t) => t.tokenId === idOf(readToken))).toMatchObject(
        {
          lastUsedAt: new Date(t0 + 60_000),
          revokedAt: expect.any(Date),
        },
      )
      await h.sites.remove(siteId)
    })

    it('removes the tokens with their site: a site created again under the id lists only its new token', async () => {
      const siteId = uniqueName('site_again')
      const { readToken: old } = await h.sites.create({ siteId, domain: 'again.test', origins: [] })
      const revokedOld = await h.sites.addReadToken(siteId)
      await h.sites.revokeReadToken(siteId, idOf(revokedOld))
      await h.sites.markReadTokenUsed(siteId, hashToken(old), new Date())
      expect(await h.sites.remove(siteId)).toBe(true)
      const { readToken } = await h.sites.create({ siteId, domain: 'again.test', origins: [] })
      expect((await h.sites.listReadTokens(siteId)).map((t) => t.tokenId)).toEqual([idOf(readToken)])
      await h.sites.remove(siteId)
    })

    it('imports a site with its keys as they are: created once, unchanged (token hashes merged) on a repeat, conflict for another write key', async () => {
      const siteId = uniqueName('site_import')
      const site = {
        siteId,
        domain: 'moved.test',
        origins: ['https://moved.test'],
        writeKey: `wk_${uniqueName('k')}`,
        readTokenHashes: [hashToken('rt_one')],
        createdAt: new Date('2024-05-01T10:00:00Z'),
      }
      expect(await h.sites.importSite(site)).toBe('created')
      expect(await h.sites.get(siteId)).toEqual(site)
      expect((await h.sites.byWriteKey(site.writeKey))?.siteId).toBe(siteId)
      const more = { ...site, readTokenHashes: [hashToken('rt_two'), hashToken('rt_one')] }
      expect(await h.sites.importSite(more)).toBe('unchanged')
      expect((await h.sites.get(siteId))?.readTokenHashes).toEqual(
        [hashToken('rt_one'), hashToken('rt_two')].sort(),
      )
      // Imported tokens are listed (no prefix: only hashes travel), created with their site.
      expect(
        (await h.sites.listReadTokens(siteId))
          .map((t) => [t.tokenId, t.prefix, t.createdAt.getTime()])
          .sort(),
      ).toEqual(
        [
          [idOf('rt_one'), undefined, site.createdAt.getTime()],
          [idOf('rt_two'), undefined, site.createdAt.getTime()],
        ].sort(),
      )
      // A token revoked here is not brought back by importing an older copy of the site.
      await h.sites.revokeReadToken(siteId, idOf('rt_one'))
      expect(await h.sites.importSite(more)).toBe('unchanged')
      expect((await h.sites.get(siteId))?.readTokenHashes).toEqual([hashToken('rt_two')])
      expect(await h.sites.importSite({ ...site, writeKey: `wk_${uniqueName('other')}` })).toBe('conflict')
      expect((await h.sites.get(siteId))?.writeKey).toBe(site.writeKey)
      await h.sites.remove(siteId)
    })

    it('finds a site by its domain and its aliases; an alias another site holds is refused; removing the site frees them', async () => {
      const domain = uniqueDomain()
      const alias = uniqueDomain()
      const a = uniqueName('site_dom_a')
      const b = uniqueName('site_dom_b')
      await h.sites.create({ siteId: a, domain, origins: [] })
      expect((await h.sites.byDomain(domain))?.siteId).toBe(a)
      expect(await h.sites.byDomain(alias)).toBeUndefined()
      expect(await h.sites.listAliases(a)).toEqual([])
      await h.sites.addAlias(a, alias)
      await h.sites.addAlias(a, alias)
      // Its own domain is no alias: adding it changes nothing.
      await h.sites.addAlias(a, domain)
      expect(await h.sites.listAliases(a)).toEqual([alias])
      expect((await h.sites.byDomain(alias))?.siteId).toBe(a)
      // A second site with the same domain is created, but the first keeps the domain.
      await h.sites.create({ siteId: b, domain, origins: [] })
      expect((await h.sites.byDomain(domain))?.siteId).toBe(a)
      await expect(h.sites.addAlias(b, alias)).rejects.toMatchObject({
        code: 'TALLY_ERR_DOMAIN_TAKEN',
        statusCode: 409,
      })
      await expect(h.sites.addAlias(b, domain)).rejects.toMatchObject({ code: 'TALLY_ERR_DOMAIN_TAKEN' })
      await expect(h.sites.addAlias(uniqueName('none'), uniqueDomain())).rejects.toMatchObject({
        code: 'TALLY_ERR_SITE_NOT_FOUND',
      })
      await expect(h.sites.listAliases(uniqueName('none'))).rejects.toMatchObject({
        code: 'TALLY_ERR_SITE_NOT_FOUND',
      })
      expect(await h.sites.removeAlias(b, alias)).toBe(false)
      expect(await h.sites.removeAlias(a, domain)).toBe(false)
      expect(await h.sites.removeAlias(a, alias)).toBe(true)
      expect(await h.sites.byDomain(alias)).toBeUndefined()
      expect(await h.sites.listAliases(a)).toEqual([])
      await h.sites.addAlias(b, alias)
      expect((await h.sites.byDomain(alias))?.siteId).toBe(b)
      await h.sites.remove(b)
      expect(await h.sites.byDomain(alias)).toBeUndefined()
      expect((await h.sites.byDomain(domain))?.siteId).toBe(a)
      await h.sites.remove(a)
      expect(await h.sites.byDomain(domain)).toBeUndefined()
      // Free again: a new site takes the domain.
      await h.sites.create({ siteId: b, domain, origins: [] })
      expect((await h.sites.byDomain(domain))?.siteId).toBe(b)
      await h.sites.remove(b)
    })

    it('keeps a time zone per site: none (UTC) by default, given at create, changed by setTimezone, UTC clears it, kept by an import', async () => {
      const plain = uniqueName('site_tz_plain')
      const zoned = uniqueName('site_tz_zoned')
      const created = await h.sites.create({ siteId: plain, domain: uniqueDomain(), origins: [] })
      expect(created.site.timezone).toBeUndefined()
      expect((await h.sites.get(plain))?.timezone).toBeUndefined()
      const withZone = await h.sites.create({
        siteId: zoned,
        domain: uniqueDomain(),
        origins: [],
        timezone: 'Europe/Berlin',
      })
      expect(withZone.site.timezone).toBe('Europe/Berlin')
      expect(await h.sites.get(zoned)).toEqual(withZone.site)
      expect((await h.sites.list()).find((s) => s.siteId === zoned)?.timezone).toBe('Europe/Berlin')
      expect(await h.sites.setTimezone(plain, 'Asia/Kathmandu')).toEqual({
        ...created.site,
        timezone: 'Asia/Kathmandu',
      })
      expect((await h.sites.get(plain))?.timezone).toBe('Asia/Kathmandu')
      expect((await h.sites.byWriteKey(created.site.writeKey))?.timezone).toBe('Asia/Kathmandu')
      const cleared = await h.sites.setTimezone(plain, 'UTC')
      expect(cleared.timezone).toBeUndefined()
      expect(await h.sites.get(plain)).toEqual(created.site)
      await expect(h.sites.setTimezone(uniqueName('none'), 'Europe/Berlin')).rejects.toMatchObject({
        code: 'TALLY_ERR_SITE_NOT_FOUND',
      })
      // Moving an installation keeps the zone.
      const moved = {
        ...withZone.site,
        siteId: uniqueName('site_tz_moved'),
        writeKey: `wk_${uniqueName('tz')}`,
      }
      expect(await h.sites.importSite(moved)).toBe('created')
      expect((await h.sites.get(moved.siteId))?.timezone).toBe('Europe/Berlin')
      for (const id of [plain, zoned, moved.siteId]) await h.sites.remove(id)
    })

    it('declares custom property keys: sorted, a repeat changes nothing, at most 20, removed with the site', async () => {
      const siteId = uniqueName('site')
      await h.sites.create({ siteId, domain: 'props.example.test', origins: [] })
      expect(await h.sites.listPropKeys(siteId)).toEqual([])
      const keys = Array.from({ length: 20 }, (_, i) => `key_${String(i).padStart(2, '0')}`)
      for (const k of [...keys].reverse()) await h.sites.addPropKey(siteId, k)
      await h.sites.addPropKey(siteId, keys[3]!)
      expect(await h.sites.listPropKeys(siteId)).toEqual([...keys].sort())
      await expect(h.sites.addPropKey(siteId, 'one_more')).rejects.toMatchObject({
        code: 'TALLY_ERR_PROP_KEYS_FULL',
      })
      expect(await h.sites.removePropKey(siteId, keys[0]!)).toBe(true)
      expect(await h.sites.removePropKey(siteId, keys[0]!)).toBe(false)
      await h.sites.addPropKey(siteId, 'one_more')
      expect(await h.sites.listPropKeys(siteId)).toEqual([...keys.slice(1), 'one_more'].sort())
      await expect(h.sites.listPropKeys(uniqueName('none'))).rejects.toMatchObject({
        code: 'TALLY_ERR_SITE_NOT_FOUND',
      })
      await expect(h.sites.addPropKey(uniqueName('none'), 'plan')).rejects.toMatchObject({
        code: 'TALLY_ERR_SITE_NOT_FOUND',
      })
      await h.sites.remove(siteId)
      await h.sites.create({ siteId, domain: 'props.example.test', origins: [] })
      expect(await h.sites.listPropKeys(siteId)).toEqual([])
    })

    it('defines goals: event and page goals by name, sorted, a repeat changes nothing, at most 20, removed with the site', async () => {
      const siteId = uniqueName('site')
      await h.sites.create({ siteId, domain: 'goals.example.test', origins: [] })
      expect(await h.sites.listGoals(siteId)).toEqual([])
      const goals = [
        ...Array.from({ length: 10 }, (_, i) => eventGoal(`Event ${String(i).padStart(2, '0')}`)),
        ...Array.from({ length: 10 }, (_, i) => pageGoal(`/p${String(i).padStart(2, '0')}/*`)),
      ]
      for (const g of [...goals].reverse()) await h.sites.addGoal(siteId, g)
      await h.sites.addGoal(siteId, goals[3]!)
      const byName = (a: { name: string }, b: { name: string }) =>
        a.name < b.name ? -1 : a.name > b.name ? 1 : 0
      expect(await h.sites.listGoals(siteId)).toEqual([...goals].sort(byName))
      expect((await h.sites.listGoals(siteId)).find((g) => g.kind === 'page')).toMatchObject({
        name: 'Visit /p00/*',
        target: '/p00/*',
      })
      await expect(h.sites.addGoal(siteId, eventGoal('Signup'))).rejects.toMatchObject({
        code: 'TALLY_ERR_GOALS_FULL',
      })
      expect(await h.sites.removeGoal(siteId, 'Visit /p00/*')).toBe(true)
      expect(await h.sites.removeGoal(siteId, 'Visit /p00/*')).toBe(false)
      await h.sites.addGoal(siteId, eventGoal('Signup'))
      expect((await h.sites.listGoals(siteId)).map((g) => g.name)).toEqual(
        [...goals.filter((g) => g.name !== 'Visit /p00/*').map((g) => g.name), 'Signup'].sort(),
      )
      await expect(h.sites.listGoals(uniqueName('none'))).rejects.toMatchObject({
        code: 'TALLY_ERR_SITE_NOT_FOUND',
      })
      await expect(h.sites.addGoal(uniqueName('none'), eventGoal('Signup'))).rejects.toMatchObject({
        code: 'TALLY_ERR_SITE_NOT_FOUND',
      })
      await h.sites.remove(siteId)
      await h.sites.create({ siteId, domain: 'goals.example.test', origins: [] })
      expect(await h.sites.listGoals(siteId)).toEqual([])
      await h.sites.remove(siteId)
    })

    it('keeps one salt per UTC day, the same for every caller, and none older than the day before', async () => {
      const first = await h.sites.dailySalt('2031-03-01')
      expect(first.length).toBeGreaterThanOrEqual(16)
      // Concurrent first uses of a day (several ingest processes) all get the same salt.
      const again = await Promise.all([1, 2, 3].map(() => h.sites.dailySalt('2031-03-01')))
      for (const s of again) expect(Buffer.from(s).equals(Buffer.from(first))).toBe(true)
      const next = await h.sites.dailySalt('2031-03-02')
      expect(Buffer.from(next).equals(Buffer.from(first))).toBe(false)
      expect(await h.sites.saltDays()).toEqual(['2031-03-01', '2031-03-02'])
      await h.sites.dailySalt('2031-03-03')
      expect(await h.sites.saltDays()).toEqual(['2031-03-02', '2031-03-03'])
      await h.sites.dailySalt('2031-03-10')
      expect(await h.sites.saltDays()).toEqual(['2031-03-10'])
    })
  })
}

/** A domain no other test uses. */
function uniqueDomain(): string {
  return `${uniqueName('d').replace(/_/g, '-')}.test`
}
