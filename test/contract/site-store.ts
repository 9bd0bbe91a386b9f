import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { hashToken } from '../../core/keys.js'
import type { SiteStore } from '../../core/ports/site-store.js'
import { uniqueName } from '../helpers/context.js'

export interface SiteStoreHarness {
  sites: SiteStore
  close(): Promise<void>
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
      expect(await h.sites.importSite({ ...site, writeKey: `wk_${uniqueName('other')}` })).toBe('conflict')
      expect((await h.sites.get(siteId))?.writeKey).toBe(site.writeKey)
      await h.sites.remove(siteId)
    })
  })
}
