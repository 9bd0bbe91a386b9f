import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { RowDimension as Dimension, Granularity } from '../../core/aggregate/definition.js'
import { generationOf } from '../../core/aggregate/final.js'
import { HyperLogLog } from '../../core/hll.js'
import {
  type AggregateReader,
  type AggregateValues,
  type MergedWindow,
  type PartitionRef,
  type RowKey,
  rowId,
  type StreamStore,
} from '../../core/ports/aggregate-store.js'
import type { FinalRowStore } from '../../core/ports/batch-store.js'
import { uniqueName } from '../helpers/context.js'

/** What the aggregate-store contract needs from one implementation. */
export interface AggregateStoreHarness {
  store: StreamStore
  reader: AggregateReader
  /** Commits the generations of final rows (the rows themselves are written here as rows). */
  batch: { rows: FinalRowStore }
  /** HyperLogLog precision the reader merges with. */
  precision: number
  close(): Promise<void>
}

const HOUR = 3_600_000

function sketch(precision: number, ids: readonly string[]): Uint8Array {
  const h = new HyperLogLog(precision)
  for (const id of ids) h.add(id)
  return h.toBytes()
}

function values(precision: number, events: number, ids: readonly string[], botEvents = 0): AggregateValues {
  return { events, pageviews: Math.floor(events / 2), botEvents, visitors: sketch(precision, ids) }
}

function ids(prefix: string, n: number): string[] {
  return Array.from({ length: n }, (_, i) => `${prefix}-${i}`)
}

function totalsKey(siteId: string, g: Granularity, windowStart: number, sourcePartition: number): RowKey {
  return { siteId, granularity: g, windowStart, dimension: undefined, value: '', sourcePartition }
}

function dimKey(
  siteId: string,
  dimension: Dimension,
  windowStart: number,
  value: string,
  sourcePartition: number,
): RowKey {
  return { siteId, granularity: 'hour', windowStart, dimension, value, sourcePartition }
}

async function all<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const x of it) out.push(x)
  return out
}

/**
 * The behaviour every aggregate store (Cassandra, embedded) must have: epochs that only grow,
 * checkpoints and rows fenced by (epoch, offset), dedup chunks by offset and time, and reads that
 * merge per-partition partials (sums, HyperLogLog merge) with final rows replacing them.
 */
export function aggregateStoreContract(name: string, make: () => Promise<AggregateStoreHarness>): void {
  describe(`aggregate store contract: ${name}`, () => {
    let h: AggregateStoreHarness
    let p: number
    const ref = (partition = 0): PartitionRef => ({
      group: uniqueName('grp'),
      topic: 'contract.raw',
      partition,
    })

    beforeAll(async () => {
      h = await make()
      p = h.precision
    })

    afterAll(async () => {
      await h?.close()
    })

    it('hands out epochs that only grow, per source partition', async () => {
      const r0 = ref(0)
      const r1 = { ...r0, partition: 1 }
      expect(await h.store.acquireEpoch(r0, 'owner-a')).toBe(1)
      expect(await h.store.acquireEpoch(r0, 'owner-b')).toBe(2)
      expect(await h.store.acquireEpoch(r1, 'owner-a')).toBe(1)
      expect(await h.store.acquireEpoch(r0, 'owner-a')).toBe(3)
      expect(await h.store.acquireEpoch({ ...r0, group: uniqueName('grp') }, 'owner-a')).toBe(1)
    })

    it('fences checkpoints: a stale epoch loses even with a higher offset; a newer epoch wins even with a lower one', async () => {
      const r = ref(2)
      expect(await h.store.readCheckpoint(r)).toBeUndefined()
      await h.store.writeCheckpoint(r, { nextOffset: 10, watermarkMs: 1000, epoch: 2 })
      expect(await h.store.readCheckpoint(r)).toEqual({ nextOffset: 10, watermarkMs: 1000, epoch: 2 })
      await h.store.writeCheckpoint(r, { nextOffset: 500, watermarkMs: 9000, epoch: 1 })
      expect(await h.store.readCheckpoint(r)).toEqual({ nextOffset: 10, watermarkMs: 1000, epoch: 2 })
      // Within an epoch a later flush (higher offset) wins, an older one loses.
      await h.store.writeCheckpoint(r, { nextOffset: 20, watermarkMs: 2000, epoch: 2 })
      await h.store.writeCheckpoint(r, { nextOffset: 15, watermarkMs: 1500, epoch: 2 })
      expect(await h.store.readCheckpoint(r)).toEqual({ nextOffset: 20, watermarkMs: 2000, epoch: 2 })
      // A new owner re-fences at the checkpoint it read (possibly lower than a stale owner's last).
      await h.store.writeCheckpoint(r, { nextOffset: 0, watermarkMs: 2000, epoch: 3 })
      expect(await h.store.readCheckpoint(r)).toEqual({ nextOffset: 0, watermarkMs: 2000, epoch: 3 })
      // Epochs beyond 2^13 (the fence then exceeds 2^53) still compare right.
      await h.store.writeCheckpoint(r, { nextOffset: 7, watermarkMs: 3000, epoch: 10_000 })
      await h.store.writeCheckpoint(r, { nextOffset: 2 ** 39, watermarkMs: 4000, epoch: 9_999 })
      expect(await h.store.readCheckpoint(r)).toEqual({ nextOffset: 7, watermarkMs: 3000, epoch: 10_000 })
    })

    it('round-trips rows by full key (totals and dimensions); missing rows are absent', async () => {
      const site = uniqueName('site')
      const ws = Math.floor(Date.now() / HOUR) * HOUR - 2 * HOUR
      const rows = [
        {
          key: totalsKey(site, 'minute', ws + 60_000, 0),
          values: values(p, 3, ids('a', 3)),
          throughOffset: 7,
        },
        { key: totalsKey(site, 'hour', ws, 1), values: values(p, 5, ids('b', 4), 2), throughOffset: 9 },
        { key: dimKey(site, 'path', ws, '/pricing', 1), values: values(p, 2, ids('c', 2)), throughOffset: 9 },
        { key: dimKey(site, 'browser', ws, 'Firefox', 0), values: values(p, 1, []), throughOffset: -1 },
      ]
      await h.store.writeRows(rows, 1)
      const missing = dimKey(site, 'path', ws, '/nowhere', 1)
      const loaded = await h.store.loadRows([...rows.map((r) => r.key), missing])
      expect(loaded.size).toBe(rows.length)
      expect(loaded.has(rowId(missing))).toBe(false)
      for (const r of rows) {
        const got = loaded.get(rowId(r.key))
        expect(got).toBeDefined()
        expect({ ...got, visitors: Buffer.from(got!.visitors) }).toEqual({
          ...r.values,
          visitors: Buffer.from(r.values.visitors),
          throughOffset: r.throughOffset,
        })
      }
      expect(await h.store.writeRows([], 1)).toBeUndefined()
    })

    it('round-trips many rows of one window and one day at once (small and dense sketches, long values), with missing ones among them', async () => {
      const site = uniqueName('site')
      const day = Math.floor(Date.now() / 86_400_000) * 86_400_000 - 86_400_000
      const rows = [
        // 300 minute windows of one day: one totals partition.
        ...Array.from({ length: 300 }, (_, i) => ({
          key: totalsKey(site, 'minute', day + i * 60_000, 2),
          values: values(p, i + 1, ids(`m${i}`, i % 40)),
          throughOffset: 1000 + i,
        })),
        // 250 values of one dimension in one window, some long, some with a dense sketch.
        ...Array.from({ length: 250 }, (_, i) => ({
          key: dimKey(site, 'path', day, `/p/${i}/${'x'.repeat(i % 7 === 0 ? 200 : 3)}`, 2),
          values: values(p, i + 1, ids(`d${i}`, i % 50 === 0 ? 6000 : i % 30)),
          throughOffset: 2000 + i,
        })),
      ]
      await h.store.writeRows(rows, 4)
      const missing = [
        totalsKey(site, 'minute', day + 400 * 60_000, 2),
        totalsKey(site, 'minute', day, 3),
        dimKey(site, 'path', day, '/absent', 2),
        dimKey(site, 'path', day, '/p/1/xxx', 3),
      ]
      const loaded = await h.store.loadRows([...missing, ...rows.map((r) => r.key)])
      expect(loaded.size).toBe(rows.length)
      for (const k of missing) expect(loaded.has(rowId(k))).toBe(false)
      for (const r of rows) {
        const got = loaded.get(rowId(r.key))
        expect({ ...got, visitors: Buffer.from(got!.visitors) }).toEqual({
          ...r.values,
          visitors: Buffer.from(r.values.visitors),
          throughOffset: r.throughOffset,
        })
      }
    })

    it('fences rows like a write timestamp (epoch << 40) + offset: a lower fence never overwrites a higher one', async () => {
      const site = uniqueName('site')
      const ws = Math.floor(Date.now() / HOUR) * HOUR - 3 * HOUR
      const key = totalsKey(site, 'hour', ws, 0)
      const dim = dimKey(site, 'event', ws, 'pageview', 0)
      const write = (events: number, throughOffset: number, epoch: number) =>
        h.store.writeRows(
          [
            { key, values: values(p, events, []), throughOffset },
            { key: dim, values: values(p, events, []), throughOffset },
          ],
          epoch,
        )
      const read = async () => {
        const m = await h.store.loadRows([key, dim])
        return [m.get(rowId(key))?.events, m.get(rowId(dim))?.events]
      }
      await write(10, 10, 2)
      await write(99, 1_000_000, 1) // stale owner
      expect(await read()).toEqual([10, 10])
      await write(5, 5, 2) // older flush of the same owner, arriving late
      expect(await read()).toEqual([10, 10])
      await write(11, 11, 2)
      expect(await read()).toEqual([11, 11])
      await write(3, -1, 3) // new owner, before it counted anything
      expect(await read()).toEqual([3, 3])
    })

    it('round-trips visit counts (totals, session and entry/exit rows); rows written without them read back without them, and a write without them keeps them', async () => {
      const site = uniqueName('site')
      const ws = Math.floor(Date.now() / HOUR) * HOUR - 3 * HOUR
      const visits = { visits: 4, bounces: 1, visitDurationMs: 3_600_001, visitPageviews: 9 }
      const rows = [
        {
          key: totalsKey(site, 'day', ws - (ws % 86_400_000), 0),
          values: { ...values(p, 3, ['a']), ...visits },
          throughOffset: 3,
        },
        {
          key: dimKey(site, 'entry_page', ws, '/landing', 0),
          values: { ...values(p, 0, []), ...visits },
          throughOffset: 3,
        },
        {
          key: dimKey(site, 'referrer', ws, 'google.com', 0),
          values: { ...values(p, 2, ['a']), visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 },
          throughOffset: 3,
        },
        { key: dimKey(site, 'path', ws, '/old', 0), values: values(p, 2, ['a']), throughOffset: 3 },
      ]
      await h.store.writeRows(rows, 1)
      const loaded = await h.store.loadRows(rows.map((r) => r.key))
      for (const r of rows) {
        const got = loaded.get(rowId(r.key))!
        expect({ ...got, visitors: Buffer.from(got.visitors) }).toEqual({
          ...r.values,
          visitors: Buffer.from(r.values.visitors),
          throughOffset: r.throughOffset,
        })
      }
      expect(loaded.get(rowId(rows[3]!.key))!.visits).toBeUndefined()
      // A later write without visit counts (a writer that does not count them) leaves them as they were.
      await h.store.writeRows([{ key: rows[1]!.key, values: values(p, 0, []), throughOffset: 4 }], 1)
      expect((await h.store.loadRows([rows[1]!.key])).get(rowId(rows[1]!.key))).toMatchObject(visits)
    })

    it('reads visit counts: partials add up per window, a window with a row without them has none, breakdowns name those windows', async () => {
      const site = uniqueName('site')
      const w1 = Math.floor(Date.now() / HOUR) * HOUR - 6 * HOUR
      const w2 = w1 + HOUR
      const v = (visits: number, bounces: number, durationMs: number, pageviews: number) => ({
        visits,
        bounces,
        visitDurationMs: durationMs,
        visitPageviews: pageviews,
      })
      await h.store.writeRows(
        [
          {
            key: totalsKey(site, 'hour', w1, 0),
            values: { ...values(p, 4, ['a']), ...v(2, 1, 60_000, 3) },
            throughOffset: 1,
          },
          {
            key: totalsKey(site, 'hour', w1, 1),
            values: { ...values(p, 2, ['b']), ...v(1, 0, 30_000, 2) },
            throughOffset: 1,
          },
          // w2: partition 1 still has a row written before visits existed.
          {
            key: totalsKey(site, 'hour', w2, 0),
            values: { ...values(p, 2, ['c']), ...v(1, 1, 0, 1) },
            throughOffset: 2,
          },
          { key: totalsKey(site, 'hour', w2, 1), values: values(p, 5, ['d']), throughOffset: 2 },
          {
            key: dimKey(site, 'entry_page', w1, '/a', 0),
            values: { ...values(p, 0, []), ...v(2, 1, 60_000, 3) },
            throughOffset: 1,
          },
          {
            key: dimKey(site, 'entry_page', w1, '/a', 1),
            values: { ...values(p, 0, []), ...v(1, 0, 30_000, 2) },
            throughOffset: 1,
          },
          {
            key: dimKey(site, 'entry_page', w2, '/a', 0),
            values: { ...values(p, 0, []), ...v(1, 1, 0, 1) },
            throughOffset: 2,
          },
          { key: dimKey(site, 'referrer', w2, 'x.com', 1), values: values(p, 5, ['d']), throughOffset: 2 },
          {
            key: dimKey(site, 'referrer', w1, 'x.com', 0),
            values: { ...values(p, 4, ['a']), ...v(2, 1, 60_000, 3) },
            throughOffset: 1,
          },
        ],
        1,
      )
      const [a, b] = (await h.reader.totals(site, 'hour', w1, w2 + HOUR)) as [MergedWindow, MergedWindow]
      expect([a.visits, a.bounces, a.visitDurationMs, a.visitPageviews, a.events]).toEqual([
        3, 1, 90_000, 5, 6,
      ])
      expect([b.visits, b.bounces, b.visitDurationMs, b.visitPageviews, b.events]).toEqual([
        undefined,
        undefined,
        undefined,
        undefined,
        7,
      ])
      expect(await all(h.reader.streamTotals(site, 'hour', w1, w2 + HOUR))).toEqual([a, b])
      const entry = await h.reader.breakdownDetailed(site, 'hour', 'entry_page', w1, w2 + HOUR)
      expect(entry.values.get('/a')).toMatchObject({
        visits: 4,
        bounces: 2,
        visitDurationMs: 90_000,
        visitPageviews: 6,
        events: 0,
      })
      expect(entry.windowsWithoutVisits).toEqual(new Set())
      const ref = await h.reader.breakdownDetailed(site, 'hour', 'referrer', w1, w2 + HOUR)
      // Over a range, the sums of the windows that have visit data; the others are named.
      expect(ref.values.get('x.com')).toMatchObject({ visits: 2, bounces: 1, events: 9 })
      expect(ref.windowsWithoutVisits).toEqual(new Set([w2]))
      const rows = await all(h.reader.streamDimension(site, 'hour', 'entry_page', w1, w2 + HOUR))
      expect(rows.map((r) => [r.windowStart, r.value, r.visits, r.visitPageviews])).toEqual([
        [w1, '/a', 3, 5],
        [w2, '/a', 1, 1],
      ])
      const windows = await h.reader.dimensionWindows(site, 'hour', 'entry_page', ['/a'], w1, w2 + HOUR)
      expect(windows.map((w) => [w.windowStart, w.visits, w.bounces])).toEqual([
        [w1, 3, 1],
        [w2, 1, 1],
      ])
    })

    it('keeps dedup chunks by offset and receipt time, fenced by epoch', async () => {
      const r = ref(0)
      const now = Date.now()
      const chunk = (first: number, last: number, ageMs: number, fill: number) => ({
        firstOffset: first,
        lastOffset: last,
        maxReceivedMs: now - ageMs,
        entries: Buffer.alloc(24, fill),
      })
      await h.store.writeDedup(r, chunk(0, 9, 20 * 60_000, 1), 1)
      await h.store.writeDedup(r, chunk(10, 19, 5 * 60_000, 2), 1)
      await h.store.writeDedup(r, chunk(20, 29, 0, 3), 1)
      const sorted = (cs: Array<{ lastOffset: number }>) => cs.map((c) => c.lastOffset).sort((a, b) => a - b)
      expect(sorted(await h.store.loadDedup(r, 30, now - 60 * 60_000))).toEqual([9, 19, 29])
      expect(sorted(await h.store.loadDedup(r, 20, now - 60 * 60_000))).toEqual([9, 19])
      const recent = await h.store.loadDedup(r, 30, now - 10 * 60_000)
      expect(sorted(recent)).toEqual([19, 29])
      const c19 = recent.find((c) => c.lastOffset === 19)!
      expect(c19).toEqual({ ...chunk(10, 19, 5 * 60_000, 2), entries: expect.anything() })
      expect(Buffer.from(c19.entries)).toEqual(Buffer.alloc(24, 2))
      // A stale owner cannot replace a chunk.
      await h.store.acquireEpoch(r, 'x')
      await h.store.writeDedup(r, chunk(10, 19, 0, 2), 2)
      await h.store.writeDedup(r, chunk(10, 19, 0, 9), 1)
      const again = await h.store.loadDedup(r, 20, now - 60 * 60_000)
      expect(Buffer.from(again.find((c) => c.lastOffset === 19)!.entries)).toEqual(Buffer.alloc(24, 2))
    })

    it('keeps one visit state per source partition, replaced whole, fenced like checkpoints', async () => {
      const r = ref(3)
      const other = { ...r, partition: 4 }
      expect(await h.store.loadVisitState(r)).toBeUndefined()
      const bytes = (n: number, fill: number) => new Uint8Array(n).fill(fill)
      const read = async (pr: PartitionRef) => {
        const s = await h.store.loadVisitState(pr)
        return s && { nextOffset: s.nextOffset, state: Buffer.from(s.state).toString('hex') }
      }
      const hex = (n: number, fill: number) => Buffer.from(bytes(n, fill)).toString('hex')
      await h.store.writeVisitState(r, { nextOffset: 10, state: bytes(5, 1) }, 2)
      expect(await read(r)).toEqual({ nextOffset: 10, state: hex(5, 1) })
      expect(await h.store.loadVisitState(other)).toBeUndefined()
      // A stale epoch loses even with a higher offset; within an epoch the later offset wins.
      await h.store.writeVisitState(r, { nextOffset: 500, state: bytes(7, 9) }, 1)
      expect(await read(r)).toEqual({ nextOffset: 10, state: hex(5, 1) })
      await h.store.writeVisitState(r, { nextOffset: 20, state: bytes(3, 2) }, 2)
      await h.store.writeVisitState(r, { nextOffset: 15, state: bytes(4, 8) }, 2)
      expect(await read(r)).toEqual({ nextOffset: 20, state: hex(3, 2) })
      // A new owner re-fences at the offset it read; an empty state is a state.
      await h.store.writeVisitState(r, { nextOffset: 0, state: new Uint8Array(0) }, 3)
      expect(await read(r)).toEqual({ nextOffset: 0, state: '' })
      // A state larger than one chunk (Cassandra: 1 MiB), then a smaller one: exactly the last.
      const big = new Uint8Array(2.5 * 1024 * 1024)
      for (let i = 0; i < big.length; i++) big[i] = (i * 7) % 251
      await h.store.writeVisitState(r, { nextOffset: 30, state: big }, 3)
      const loaded = await h.store.loadVisitState(r)
      expect(loaded?.nextOffset).toBe(30)
      expect(Buffer.from(loaded!.state).equals(Buffer.from(big))).toBe(true)
      await h.store.writeVisitState(r, { nextOffset: 31, state: bytes(6, 4) }, 3)
      expect(await read(r)).toEqual({ nextOffset: 31, state: hex(6, 4) })
      // Epochs beyond 2^13 still compare right.
      await h.store.writeVisitState(r, { nextOffset: 7, state: bytes(2, 5) }, 10_000)
      await h.store.writeVisitState(r, { nextOffset: 2 ** 39, state: bytes(2, 6) }, 9_999)
      expect(await read(r)).toEqual({ nextOffset: 7, state: hex(2, 5) })
    })

    describe('reads', () => {
      const site = uniqueName('site')
      const base = Math.floor(Date.now() / HOUR) * HOUR - 10 * HOUR
      const w1 = base
      const w2 = base + HOUR
      const w3 = base + 2 * HOUR
      let union12: Uint8Array

      // The final rows of a rebuild: source_partition = -generation, read once committed.
      const token = 7_000_000
      const fin = -generationOf(token)

      beforeAll(async () => {
        // w1: partials of partitions 0 and 1 only. w2: partials plus a final row (batch). w3 outside most ranges.
        union12 = sketch(p, [...ids('v', 30), ...ids('w', 10)])
        const rows = [
          { key: totalsKey(site, 'hour', w1, 0), values: values(p, 10, ids('v', 20), 1), throughOffset: 5 },
          {
            key: totalsKey(site, 'hour', w1, 1),
            values: values(p, 7, ids('v', 30).slice(10), 2),
            throughOffset: 8,
          },
          { key: totalsKey(site, 'hour', w2, 0), values: values(p, 4, ids('x', 4)), throughOffset: 9 },
          { key: totalsKey(site, 'hour', w2, 1), values: values(p, 4, ids('y', 4)), throughOffset: 9 },
          { key: totalsKey(site, 'hour', w2, fin), values: values(p, 9, ids('z', 6), 3), throughOffset: -1 },
          // An uncommitted generation (a rebuild killed before its commit): never read.
          {
            key: totalsKey(site, 'hour', w1, fin - 1),
            values: values(p, 70, ids('k', 6)),
            throughOffset: -1,
          },
          {
            key: totalsKey(site, 'hour', w3 + HOUR, fin),
            values: values(p, 70, ids('k', 6)),
            throughOffset: -1,
          },
          { key: totalsKey(site, 'hour', w3, 2), values: values(p, 1, ids('q', 1)), throughOffset: 1 },
          { key: dimKey(site, 'path', w1, '/a', 0), values: values(p, 6, ids('v', 20)), throughOffset: 5 },
          { key: dimKey(site, 'path', w1, '/a', 1), values: values(p, 2, ids('w', 10)), throughOffset: 8 },
          { key: dimKey(site, 'path', w1, '/b', 1), values: values(p, 3, ids('u', 3)), throughOffset: 8 },
          { key: dimKey(site, 'path', w2, '/a', 0), values: values(p, 100, ids('s', 5)), throughOffset: 9 },
          { key: dimKey(site, 'path', w2, '/a', fin), values: values(p, 8, ids('v', 30)), throughOffset: -1 },
          {
            key: dimKey(site, 'path', w2, '/d', fin - 1),
            values: values(p, 70, ids('k', 6)),
            throughOffset: -1,
          },
          { key: dimKey(site, 'path', w2, '/c', 1), values: values(p, 1, ids('c', 1)), throughOffset: 9 },
          { key: dimKey(site, 'path', w3, '/a', 0), values: values(p, 50, ids('t', 2)), throughOffset: 1 },
        ]
        await h.store.writeRows(rows, 1)
        await h.batch.rows.commitFinal(site, [{ scope: 'hour', startMs: w2 }], token)
      })

      it('totals: partials add up and merge registers; a final row replaces the partials of its window', async () => {
        const got = await h.reader.totals(site, 'hour', w1, w3)
        expect(got.map((w) => w.windowStart)).toEqual([w1, w2])
        const [a, b] = got as [MergedWindow, MergedWindow]
        expect({ events: a.events, pageviews: a.pageviews, botEvents: a.botEvents, final: a.final }).toEqual({
          events: 17,
          pageviews: 5 + 3,
          botEvents: 3,
          final: false,
        })
        expect(Buffer.from(a.visitors)).toEqual(Buffer.from(sketch(p, ids('v', 30))))
        expect({ events: b.events, pageviews: b.pageviews, botEvents: b.botEvents, final: b.final }).toEqual({
          events: 9,
          pageviews: 4,
          botEvents: 3,
          final: true,
        })
        expect(Buffer.from(b.visitors)).toEqual(Buffer.from(sketch(p, ids('z', 6))))
        const counts = await h.reader.totals(site, 'hour', w1, w3 + HOUR, { visitors: false })
        expect(counts.map((w) => [w.windowStart, w.events, w.visitors.length])).toEqual([
          [w1, 17, 0],
          [w2, 9, 0],
          [w3, 1, 0],
        ])
        expect(await h.reader.totals(site, 'minute', w1, w3)).toEqual([])
        expect(await h.reader.totals(uniqueName('site'), 'hour', w1, w3)).toEqual([])
        // Rows of a generation whose span is not committed are not read, not even as a zero window.
        expect(await h.reader.totals(site, 'hour', w3 + HOUR, w3 + 2 * HOUR)).toEqual([])
        expect(await all(h.reader.streamTotals(site, 'hour', w3 + HOUR, w3 + 2 * HOUR))).toEqual([])
      })

      it('breakdowns merge each (window, value) first, then sum over windows; windows say which are final', async () => {
        const detailed = await h.reader.breakdownDetailed(site, 'hour', 'path', w1, w3)
        expect(detailed.windows).toEqual(
          new Map([
            [w1, { final: false }],
            [w2, { final: true }],
          ]),
        )
        const a = detailed.values.get('/a')!
        // w1: 6 + 2 partials; w2: the final row (8) replaces the partial (100).
        expect([a.events, a.final]).toEqual([16, false])
        expect(Buffer.from(a.visitors)).toEqual(Buffer.from(union12))
        expect([...detailed.values.keys()].sort()).toEqual(['/a', '/b', '/c'])
        expect(detailed.values.get('/b')?.events).toBe(3)
        expect(detailed.values.get('/c')?.events).toBe(1)
        const simple = await h.reader.breakdown(site, 'hour', 'path', w1, w3)
        expect(new Map([...simple].map(([k, v]) => [k, v.events]))).toEqual(
          new Map([
            ['/a', 16],
            ['/b', 3],
            ['/c', 1],
          ]),
        )
        const only = await h.reader.breakdownDetailed(site, 'hour', 'path', w1, w3 + HOUR, {
          values: ['/a', '/zzz'],
          visitors: false,
        })
        expect([...only.values.keys()]).toEqual(['/a'])
        expect(only.values.get('/a')?.events).toBe(66)
        expect(only.values.get('/a')?.visitors.length).toBe(0)
        expect(only.windows.size).toBe(3)
        const none = await h.reader.breakdownDetailed(site, 'hour', 'path', w1, w3, { values: [] })
        expect(none.values.size).toBe(0)
      })

      it('dimensionWindows: per window, the chosen values summed (final rows replacing partials)', async () => {
        const got = await h.reader.dimensionWindows(site, 'hour', 'path', ['/a', '/b'], w1, w3 + HOUR)
        expect(got.map((w) => [w.windowStart, w.events, w.final])).toEqual([
          [w1, 11, false],
          [w2, 8, true],
          [w3, 50, false],
        ])
        expect(Buffer.from(got[0]!.visitors)).toEqual(
          Buffer.from(sketch(p, [...ids('v', 20), ...ids('w', 10), ...ids('u', 3)])),
        )
        expect(await h.reader.dimensionWindows(site, 'hour', 'path', [], w1, w3)).toEqual([])
      })

      it('bulk export streams the same merged windows and rows, in order', async () => {
        const totals = await all(h.reader.streamTotals(site, 'hour', w1, w3 + HOUR))
        expect(totals).toEqual(await h.reader.totals(site, 'hour', w1, w3 + HOUR))
        const dims = await all(h.reader.streamDimension(site, 'hour', 'path', w1, w3 + HOUR))
        expect(dims.map((r) => [r.windowStart, r.value, r.events, r.final])).toEqual([
          [w1, '/a', 8, false],
          [w1, '/b', 3, false],
          [w2, '/a', 8, true],
          [w2, '/c', 1, false],
          [w3, '/a', 50, false],
        ])
      })

      it('streamProgress reads the checkpoints of a group', async () => {
        const r = ref(0)
        const before = Date.now()
        await h.store.writeCheckpoint(r, { nextOffset: 42, watermarkMs: 4242, epoch: 1 })
        await h.store.writeCheckpoint({ ...r, partition: 2 }, { nextOffset: 7, watermarkMs: 77, epoch: 1 })
        await h.store.writeCheckpoint({ ...r, partition: 5 }, { nextOffset: 1, watermarkMs: 1, epoch: 1 })
        const progress = await h.reader.streamProgress(r.group, r.topic, 3)
        expect(progress.map((x) => [x.partition, x.nextOffset, x.watermarkMs])).toEqual([
          [0, 42, 4242],
          [2, 7, 77],
        ])
        for (const x of progress) expect(x.updatedAtMs).toBeGreaterThanOrEqual(before - 5000)
        expect(await h.reader.streamProgress(r.group, r.topic, 0)).toEqual([])
      })
    })
  })
}
