import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Granularity } from '../../core/aggregate/definition.js'
import { HyperLogLog } from '../../core/hll.js'
import { createLogger } from '../../core/log.js'
import type { AggregateValues, PartitionRef, RowWrite } from '../../core/ports/aggregate-store.js'
import type { FinalRow } from '../../core/ports/batch-store.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import { CheckpointFreshness } from '../../query/freshness.js'
import { createQueryMetrics } from '../../query/metrics.js'
import type { AggregateStoreHarness } from '../contract/aggregate-store.js'
import { cassandraHarness, embeddedHarness } from '../contract/backends.js'
import type { BatchStoreHarness } from '../contract/batch-store.js'
import type { SiteStoreHarness } from '../contract/site-store.js'
import { uniqueName } from '../helpers/context.js'

/**
 * The query role's answer cache on both stores: an answer is served again only while the data
 * version (stream checkpoints + the site's final mark) is the one it was computed under, so every
 * stream flush and every rebuild write shows at once; rows written without a checkpoint (a worker
 * that died between the two) show after the cache's maximum age.
 */

const HOUR = 3_600_000
const DAY = 86_400_000
const PRECISION = 14
const MAX_AGE_MS = 1500

type Harness = AggregateStoreHarness & SiteStoreHarness & BatchStoreHarness

function cacheSuite(name: string, open: () => Promise<Harness>) {
  describe(`query answer cache: ${name}`, () => {
    let h: Harness
    let app: Awaited<ReturnType<typeof buildQueryApp>>
    const metrics = createQueryMetrics()
    const topic = uniqueName('raw')
    const group = uniqueName('group')
    const ref: PartitionRef = { group, topic, partition: 0 }
    const sites: Array<{ siteId: string; token: string }> = []
    // The stream writes the current hour (2 hours of grace: it never settles during the test); an
    // hour three days back is settled, as far as the stream is concerned.
    const windowStart = Math.floor(Date.now() / HOUR) * HOUR
    const settledStart = Math.floor(Date.now() / DAY) * DAY - 3 * DAY + 5 * HOUR
    let epoch = 0
    let offset = 0

    const sketch = (ids: number) => {
      const hll = new HyperLogLog(PRECISION)
      for (let i = 0; i < ids; i++) hll.add(`v${i}`)
      return hll.toBytes()
    }
    const values = (events: number): AggregateValues => ({
      events,
      pageviews: events,
      botEvents: 0,
      visitors: sketch(Math.min(events, 5)),
    })
    /** Stream rows of one hour for partition 0: totals of hour and day, and path /a of the hour. */
    const streamRows = (siteId: string, events: number): RowWrite[] => {
      offset += 10
      const at = (granularity: Granularity, ws: number, dimension?: 'path') => ({
        key: {
          siteId,
          granularity,
          windowStart: ws,
          dimension,
          value: dimension ? '/a' : '',
          sourcePartition: 0,
        },
        values: values(events),
        throughOffset: offset,
      })
      return [
        at('hour', windowStart),
        at('day', Math.floor(windowStart / DAY) * DAY),
        at('hour', windowStart, 'path'),
      ]
    }
    const checkpoint = () =>
      h.store.writeCheckpoint(ref, { nextOffset: offset + 1, watermarkMs: Date.now(), epoch })

    const get = async (path: string, siteIndex = 0) => {
      const site = sites[siteIndex]!
      const res = await app.inject({
        method: 'GET',
        url: `${path}${path.includes('?') ? '&' : '?'}site=${site.siteId}`,
        headers: { authorization: `Bearer ${site.token}` },
      })
      expect(res.statusCode, res.body).toBe(200)
      return res.json()
    }
    const range = `from=${new Date(windowStart).toISOString()}&to=${new Date(windowStart + HOUR).toISOString()}`
    const aggregate = async (siteIndex = 0) =>
      (await get(`/v1/stats/aggregate?${range}&metrics=events,visitors`, siteIndex)) as {
        results: { events: { value: number } }
        meta: { windows: { final: number } }
      }
    const counts = async () => {
      const m = (await metrics.registry.getSingleMetric('tally_query_cache_total')?.get())?.values ?? []
      const of = (outcome: string) => m.find((v) => v.labels.outcome === outcome)?.value ?? 0
      return { hit: of('hit'), miss: of('miss') }
    }

    beforeAll(async () => {
      h = await open()
      for (const domain of ['one', 'two']) {
        const created = await h.sites.create({
          siteId: uniqueName(domain),
          domain: `${domain}.test`,
          origins: [],
        })
        sites.push({ siteId: created.site.siteId, token: created.readToken })
      }
      epoch = await h.store.acquireEpoch(ref, 'test')
      const reader = h.reader
      app = await buildQueryApp({
        reader,
        auth: new ReadAccessCache(h.sites),
        freshness: new CheckpointFreshness(reader, {
          group,
          topic,
          partitions: 1,
          graceMs: 2 * HOUR,
          cacheMs: 0,
        }),
        logger: createLogger('silent'),
        hllPrecision: PRECISION,
        retentionSeconds: { minute: 0, hour: 0, day: 0 },
        metrics,
        answerCache: { maxBytes: 1024 * 1024, maxAgeMs: MAX_AGE_MS },
      })
    })

    afterAll(async () => {
      await app?.close()
      await h?.close()
    })

    it('serves an answer again while the data is unchanged, and a new one after every stream flush', async () => {
      await h.store.writeRows(streamRows(sites[0]!.siteId, 3), epoch)
      await checkpoint()
      const before = await counts()
      expect((await aggregate()).results.events.value).toBe(3)
      expect((await aggregate()).results.events.value).toBe(3)
      const after = await counts()
      expect(after.miss - before.miss).toBe(1)
      expect(after.hit - before.hit).toBe(1)

      // A flush: rows, then the checkpoint. The next answer has the new rows.
      await h.store.writeRows(streamRows(sites[0]!.siteId, 7), epoch)
      await checkpoint()
      expect((await aggregate()).results.events.value).toBe(7)
      expect((await counts()).miss - after.miss).toBe(1)
    })

    it('keeps different queries and sites apart', async () => {
      const breakdown = (await get(`/v1/stats/breakdown?${range}&property=path&metrics=events`)) as {
        results: Array<{ path: string; events: number }>
      }
      expect(breakdown.results).toEqual([{ path: '/a', events: 7 }])
      const timeseries = (await get(`/v1/stats/timeseries?${range}&interval=hour&metrics=events`)) as {
        results: Array<{ events: number }>
      }
      expect(timeseries.results.map((p) => p.events)).toEqual([7])
      // The other site has no rows: its answer is its own, not the first site's.
      expect((await aggregate(1)).results.events.value).toBe(0)
    })

    it("shows a rebuild's final rows at once: the site's final mark changes after them", async () => {
      const site = sites[0]!.siteId
      expect((await aggregate()).meta.windows.final).toBe(0)
      const rows: FinalRow[] = [
        {
          siteId: site,
          granularity: 'hour',
          windowStart,
          dimension: undefined,
          value: '',
          values: values(9),
        },
      ]
      const token = Date.now() * 1000
      await h.batch.rows.writeFinal(rows, token)
      // Written, not committed: not read, and the cached answer stays.
      expect((await aggregate()).meta.windows.final).toBe(0)
      await h.batch.rows.commitFinal(site, [{ scope: 'hour', startMs: windowStart }], token)
      const answer = await aggregate()
      expect(answer.results.events.value).toBe(9)
      expect(answer.meta.windows.final).toBe(1)
    })

    it('shows rows written without a checkpoint once the maximum age has passed', async () => {
      const other = sites[1]!.siteId
      await h.store.writeRows(streamRows(other, 4), epoch)
      await checkpoint()
      expect((await aggregate(1)).results.events.value).toBe(4)
      // Rows of a worker that stopped before its checkpoint: the version does not change.
      await h.store.writeRows(streamRows(other, 6), epoch)
      expect((await aggregate(1)).results.events.value).toBe(4)
      await new Promise((r) => setTimeout(r, MAX_AGE_MS + 100))
      expect((await aggregate(1)).results.events.value).toBe(6)
    })

    it('breakdowns: settled windows come from their cache, the current ones from the store, a rebuild shows at once', async () => {
      const site = sites[0]!.siteId
      const current = windowStart
      const pathRow = (ws: number, value: string, events: number): RowWrite => ({
        key: {
          siteId: site,
          granularity: 'hour',
          windowStart: ws,
          dimension: 'path',
          value,
          sourcePartition: 0,
        },
        values: values(events),
        throughOffset: ++offset,
      })
      const from = new Date(settledStart).toISOString()
      const to = new Date(current + HOUR).toISOString()
      const breakdown = async () =>
        (
          (await get(`/v1/stats/breakdown?from=${from}&to=${to}&property=path&metrics=events`)) as {
            results: Array<{ path: string; events: number }>
          }
        ).results
      await h.store.writeRows([pathRow(settledStart, '/a', 7), pathRow(current, '/b', 2)], epoch)
      await checkpoint()
      // /a: the settled hour (plus 7 in the current hour, from the first test); /b: the current hour.
      expect(await breakdown()).toEqual([
        { path: '/a', events: 14 },
        { path: '/b', events: 2 },
      ])
      await h.store.writeRows([pathRow(current, '/b', 12)], epoch)
      await checkpoint()
      expect(await breakdown()).toEqual([
        { path: '/a', events: 14 },
        { path: '/b', events: 12 },
      ])
      // A rebuild of the settled hour: the cached read of it is replaced.
      const rebuilt = Date.now() * 1000
      await h.batch.rows.writeFinal(
        [
          {
            siteId: site,
            granularity: 'hour',
            windowStart: settledStart,
            dimension: 'path',
            value: '/a',
            values: values(20),
          },
        ],
        rebuilt,
      )
      await h.batch.rows.commitFinal(site, [{ scope: 'hour', startMs: settledStart }], rebuilt)
      expect(await breakdown()).toEqual([
        { path: '/a', events: 27 },
        { path: '/b', events: 12 },
      ])
    })

    it('shares one computation among concurrent requests for the same query', async () => {
      await h.store.writeRows(streamRows(sites[1]!.siteId, 11), epoch)
      await checkpoint()
      const before = await counts()
      const answers = await Promise.all(Array.from({ length: 8 }, () => aggregate(1)))
      expect(answers.map((a) => a.results.events.value)).toEqual(Array(8).fill(11))
      const after = await counts()
      expect(after.miss - before.miss).toBe(1)
      expect(after.hit - before.hit).toBe(7)
    })
  })
}

cacheSuite('cassandra', cassandraHarness)
cacheSuite('embedded', embeddedHarness)
