import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { RowDimension as Dimension, Granularity } from '../../core/aggregate/definition.js'
import type { FinalSpan } from '../../core/aggregate/final.js'
import { HyperLogLog } from '../../core/hll.js'
import type {
  AggregateReader,
  AggregateValues,
  RowKey,
  StreamStore,
} from '../../core/ports/aggregate-store.js'
import type {
  ArchiveStateStore,
  FinalRow,
  FinalRowStore,
  JobRun,
  JobStore,
  Lease,
  LeaseStore,
} from '../../core/ports/batch-store.js'
import { uniqueName } from '../helpers/context.js'

/** Row lifetimes in seconds per granularity (0: forever). */
export interface RowTtl {
  minute: number
  hour: number
  day: number
}

/** What the batch-store contract needs from one implementation. */
export interface BatchStoreHarness {
  batch: { leases: LeaseStore; jobs: JobStore; rows: FinalRowStore; archive: ArchiveStateStore }
  /** The stream side of the same store: partial rows beside the final ones. */
  store: StreamStore
  /** Reads the same store. */
  reader: AggregateReader
  precision: number
  /** A final-row store (and a reader of what it writes) whose rows live as long as `ttl` says. */
  finalRowsWithTtl(
    ttl: RowTtl,
  ): Promise<{ rows: FinalRowStore; reader: AggregateReader; close(): Promise<void> }>
  close(): Promise<void>
}

const MINUTE = 60_000
const HOUR = 3_600_000
const DAY = 86_400_000

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

function sketch(precision: number, ids: readonly string[]): Uint8Array {
  const h = new HyperLogLog(precision)
  for (const id of ids) h.add(id)
  return h.toBytes()
}

function ids(prefix: string, n: number): string[] {
  return Array.from({ length: n }, (_, i) => `${prefix}-${i}`)
}

function values(precision: number, events: number, visitors: readonly string[] = []): AggregateValues {
  return {
    events,
    pageviews: Math.floor(events / 2),
    botEvents: events % 3,
    visitors: sketch(precision, visitors),
  }
}

function finalRow(
  siteId: string,
  granularity: Granularity,
  windowStart: number,
  v: AggregateValues,
  dimension?: Dimension,
  value = '',
): FinalRow {
  return { siteId, granularity, windowStart, dimension, value, values: v }
}

function partialKey(
  siteId: string,
  granularity: Granularity,
  windowStart: number,
  sourcePartition: number,
  dimension?: Dimension,
  value = '',
): RowKey {
  return { siteId, granularity, windowStart, dimension, value, sourcePartition }
}

async function all<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const x of it) out.push(x)
  return out
}

function run(overrides: Partial<JobRun> & Pick<JobRun, 'jobId' | 'startedAtMs'>): JobRun {
  return {
    kind: 'manual',
    siteId: undefined,
    fromMs: Math.floor(overrides.startedAtMs / HOUR) * HOUR - 2 * HOUR,
    toMs: Math.floor(overrides.startedAtMs / HOUR) * HOUR,
    status: 'running',
    holder: 'host:1/abc',
    leaseName: 'rebuild|*|range',
    token: 1_700_000_000_000_000,
    finishedAtMs: undefined,
    durationMs: undefined,
    segmentsRead: 0,
    eventsRead: 0,
    duplicates: 0,
    windowsWritten: 0,
    rowsWritten: 0,
    corruptSegments: [],
    warnings: [],
    error: undefined,
    ...overrides,
  }
}

/**
 * The behaviour every batch store (Cassandra, embedded) must have: leases taken if absent with a
 * TTL, renewed and released only by their holder, with fencing tokens that grow with every
 * acquisition; archive commits fenced by epoch and next offset; job runs and range records; final
 * rows fenced by token, replacing the stream's partials of their window for every reader.
 */
export function batchStoreContract(name: string, make: () => Promise<BatchStoreHarness>): void {
  describe(`batch store contract: ${name}`, () => {
    let h: BatchStoreHarness
    let p: number

    beforeAll(async () => {
      h = await make()
      p = h.precision
    })

    afterAll(async () => {
      await h?.close()
    })

    describe('leases', () => {
      it('are exclusive: taken only when absent; renewed by their holder only; released by their holder only', async () => {
        const { leases } = h.batch
        const name = uniqueName('lease')
        const before = Date.now()
        const a = await leases.tryAcquire(name, 'holder-a', 30_000)
        expect(a).toMatchObject({ name, holder: 'holder-a', ttlMs: 30_000 })
        expect(a!.token).toBeGreaterThan(0)
        expect(a!.acquiredAtMs).toBeGreaterThanOrEqual(before - 1000)
        expect(a!.acquiredAtMs).toBeLessThanOrEqual(Date.now() + 1000)
        expect(await leases.tryAcquire(name, 'holder-b', 30_000)).toBeUndefined()
        // Even its holder cannot take it a second time (a holder is one acquisition).
        expect(await leases.tryAcquire(name, 'holder-a', 30_000)).toBeUndefined()
        expect(await leases.current(name)).toEqual({ holder: 'holder-a', token: a!.token })
        expect(await leases.current(uniqueName('lease'))).toBeUndefined()

        expect(await leases.renew(a!)).toBe(true)
        expect(await leases.renew({ ...a!, holder: 'holder-b' })).toBe(false)
        expect(await leases.renew({ ...a!, token: a!.token - 1 })).toBe(false)
        expect(await leases.current(name)).toEqual({ holder: 'holder-a', token: a!.token })

        await leases.release({ ...a!, holder: 'holder-b' })
        expect(await leases.current(name)).toEqual({ holder: 'holder-a', token: a!.token })
        await leases.release(a!)
        expect(await leases.current(name)).toBeUndefined()
        expect(await leases.renew(a!)).toBe(false)

        const b = await leases.tryAcquire(name, 'holder-b', 30_000)
        expect(b?.token).toBeGreaterThan(a!.token)
        expect(await leases.current(name)).toEqual({ holder: 'holder-b', token: b!.token })
        // A release by the earlier holder does not touch the new one's lease.
        await leases.release(a!)
        expect(await leases.current(name)).toEqual({ holder: 'holder-b', token: b!.token })
        await leases.release(b!)
      })

      it('hand out fencing tokens that grow with every acquisition of any lease', async () => {
        const { leases } = h.batch
        const names = [uniqueName('lease'), uniqueName('lease'), uniqueName('lease')]
        const taken: Lease[] = []
        for (let round = 0; round < 3; round++) {
          for (const n of names) {
            const lease = await leases.tryAcquire(n, `holder-${round}`, 30_000)
            expect(lease).toBeDefined()
            taken.push(lease!)
          }
          for (const lease of taken.slice(-names.length)) await leases.release(lease)
        }
        const tokens = taken.map((l) => l.token)
        for (let i = 1; i < tokens.length; i++) expect(tokens[i]).toBeGreaterThan(tokens[i - 1]!)
        // At least the wall clock in microseconds.
        expect(tokens[0]).toBeGreaterThanOrEqual((Date.now() - 60_000) * 1000)
      })

      it('expire after their TTL without renewal: the renewal is refused and another holder takes it with a higher token', async () => {
        const { leases } = h.batch
        const name = uniqueName('lease')
        const a = await leases.tryAcquire(name, 'holder-a', 2000)
        expect(a).toBeDefined()
        await sleep(2300)
        expect(await leases.current(name)).toBeUndefined()
        expect(await leases.renew(a!)).toBe(false)
        const b = await leases.tryAcquire(name, 'holder-b', 30_000)
        expect(b?.token).toBeGreaterThan(a!.token)
        expect(await leases.renew(a!)).toBe(false)
        await leases.release(a!)
        expect(await leases.current(name)).toEqual({ holder: 'holder-b', token: b!.token })
        await leases.release(b!)
      })

      it('stay held past their TTL while renewed', async () => {
        const { leases } = h.batch
        const name = uniqueName('lease')
        const a = await leases.tryAcquire(name, 'holder-a', 2000)
        expect(a).toBeDefined()
        for (let i = 0; i < 6; i++) {
          await sleep(500)
          expect(await leases.renew(a!)).toBe(true)
        }
        expect(await leases.current(name)).toEqual({ holder: 'holder-a', token: a!.token })
        expect(await leases.tryAcquire(name, 'holder-b', 2000)).toBeUndefined()
        await leases.release(a!)
      })

      it('two racing acquirers: exactly one wins; racing acquisitions of different leases get distinct tokens', async () => {
        const { leases } = h.batch
        for (let round = 0; round < 5; round++) {
          const name = uniqueName('race')
          const got = await Promise.all([
            leases.tryAcquire(name, 'racer-a', 30_000),
            leases.tryAcquire(name, 'racer-b', 30_000),
          ])
          const winners = got.filter((l): l is Lease => l !== undefined)
          expect(winners).toHaveLength(1)
          expect(await leases.current(name)).toEqual({ holder: winners[0]!.holder, token: winners[0]!.token })
          await leases.release(winners[0]!)
        }
        const many = await Promise.all(
          Array.from({ length: 4 }, (_, i) => leases.tryAcquire(uniqueName('race'), `racer-${i}`, 30_000)),
        )
        expect(many.every((l) => l !== undefined)).toBe(true)
        expect(new Set(many.map((l) => l!.token)).size).toBe(4)
        for (const l of many) await leases.release(l!)
      })
    })

    describe('archive state', () => {
      it('hands out epochs that only grow; a commit needs the current epoch and the stored next offset', async () => {
        const { archive } = h.batch
        const key = `${uniqueName('grp')}|contract.raw`
        expect(await archive.read(key, 0)).toBeUndefined()
        expect(await archive.progress(key, 4)).toEqual([])
        // Never taken: nothing to commit to.
        expect(
          await archive.commit(key, 3, 1, {
            firstOffset: 0,
            nextOffset: 1,
            watermarkMs: 1,
            pending: new Map(),
          }),
        ).toBe(false)

        const before = Date.now()
        expect(await archive.acquire(key, 0, 'owner-a')).toEqual({
          epoch: 1,
          nextOffset: 0,
          watermarkMs: 0,
          pending: new Map(),
        })
        expect(await archive.read(key, 0)).toEqual({
          epoch: 1,
          nextOffset: 0,
          watermarkMs: 0,
          pending: new Map(),
        })

        const pending = new Map([
          [
            '2024-05-01/13/p0-00000000000000000000-00000000000000000009-r10-c0a1b2c3.arrow',
            '_staging/p0/1-0-9-2024-05-01T13.arrow.tmp',
          ],
          [
            '2024-05-01/13/p0-00000000000000000000-00000000000000000009-r10-c0a1b2c3.raw.arrow',
            '_staging/p0/1-0-9-2024-05-01T13.raw.arrow.tmp',
          ],
          [
            '2024-05-01/12/p0-00000000000000000000-00000000000000000009-r2-0a0b0c0d.arrow',
            '_staging/p0/1-0-9-2024-05-01T12.arrow.tmp',
          ],
        ])
        // A flush must start where the last commit ended.
        expect(
          await archive.commit(key, 0, 1, { firstOffset: 5, nextOffset: 10, watermarkMs: 1000, pending }),
        ).toBe(false)
        expect(
          await archive.commit(key, 0, 1, { firstOffset: 0, nextOffset: 10, watermarkMs: 1000, pending }),
        ).toBe(true)
        // The same flush again no longer starts at the next offset.
        expect(
          await archive.commit(key, 0, 1, { firstOffset: 0, nextOffset: 10, watermarkMs: 1000, pending }),
        ).toBe(false)
        expect(await archive.read(key, 0)).toEqual({ epoch: 1, nextOffset: 10, watermarkMs: 1000, pending })

        // A new owner takes over exactly the committed state, pending renames included.
        expect(await archive.acquire(key, 0, 'owner-b')).toEqual({
          epoch: 2,
          nextOffset: 10,
          watermarkMs: 1000,
          pending,
        })
        // The old owner can no longer commit, even from the right offset.
        expect(
          await archive.commit(key, 0, 1, {
            firstOffset: 10,
            nextOffset: 20,
            watermarkMs: 2000,
            pending: new Map(),
          }),
        ).toBe(false)
        expect(
          await archive.commit(key, 0, 2, {
            firstOffset: 10,
            nextOffset: 25,
            watermarkMs: 2500,
            pending: new Map(),
          }),
        ).toBe(true)
        expect(await archive.read(key, 0)).toEqual({
          epoch: 2,
          nextOffset: 25,
          watermarkMs: 2500,
          pending: new Map(),
        })

        // Epochs per partition and per archive.
        expect((await archive.acquire(key, 1, 'owner-a')).epoch).toBe(1)
        expect((await archive.acquire(`${uniqueName('grp')}|contract.raw`, 0, 'owner-a')).epoch).toBe(1)
        expect((await archive.acquire(key, 0, 'owner-c')).epoch).toBe(3)

        const progress = await archive.progress(key, 4)
        expect(progress.map((x) => [x.partition, x.nextOffset, x.watermarkMs])).toEqual([
          [0, 25, 2500],
          [1, 0, 0],
        ])
        for (const x of progress) {
          expect(x.committedAtMs).toBeGreaterThanOrEqual(before - 5000)
          expect(x.committedAtMs).toBeLessThanOrEqual(Date.now() + 5000)
        }
        expect((await archive.progress(key, 1)).map((x) => x.partition)).toEqual([0])
        expect(await archive.progress(key, 0)).toEqual([])
      })

      it('racing owners get distinct epochs, and only the later one can commit', async () => {
        const { archive } = h.batch
        const key = `${uniqueName('grp')}|contract.raw`
        const taken = await Promise.all([
          archive.acquire(key, 0, 'owner-x'),
          archive.acquire(key, 0, 'owner-y'),
        ])
        expect(taken.map((t) => t.epoch).sort()).toEqual([1, 2])
        const commit = { firstOffset: 0, nextOffset: 3, watermarkMs: 30, pending: new Map<string, string>() }
        expect(await archive.commit(key, 0, 1, commit)).toBe(false)
        expect(await archive.commit(key, 0, 2, commit)).toBe(true)
        expect((await archive.read(key, 0))?.nextOffset).toBe(3)
      })
    })

    describe('job runs', () => {
      it('saves runs (a save of the same run replaces it) and lists them newest first, since a time, at most a limit', async () => {
        const { jobs } = h.batch
        const now = Date.now()
        const r1 = run({ jobId: 'job-1', startedAtMs: now - 30 * MINUTE })
        const r2 = run({ jobId: 'job-2', startedAtMs: now - 20 * MINUTE, kind: 'hourly', siteId: 'site-2' })
        const r3b = run({ jobId: 'job-3b', startedAtMs: now - 10 * MINUTE })
        const r3a = run({ jobId: 'job-3a', startedAtMs: now - 10 * MINUTE, kind: 'nightly' })
        const old = run({ jobId: 'job-old', startedAtMs: now - 2 * DAY - HOUR })
        for (const r of [r1, r3b, old, r2, r3a]) await jobs.save(r)

        expect(await jobs.list(now - HOUR, 10)).toEqual([r3a, r3b, r2, r1])
        expect(await jobs.list(now - HOUR, 2)).toEqual([r3a, r3b])
        expect(await jobs.list(now - 25 * MINUTE, 10)).toEqual([r3a, r3b, r2])
        expect(await jobs.list(now - 3 * DAY, 10)).toEqual([r3a, r3b, r2, r1, old])
        expect(await jobs.list(now - 3 * DAY, 5)).toEqual([r3a, r3b, r2, r1, old])
        expect(await jobs.list(now - 3 * DAY, 4)).toEqual([r3a, r3b, r2, r1])

        const finished: JobRun = {
          ...r1,
          status: 'failed',
          finishedAtMs: now - 25 * MINUTE,
          durationMs: 5 * MINUTE,
          segmentsRead: 12,
          eventsRead: 34_567,
          duplicates: 89,
          windowsWritten: 61,
          rowsWritten: 4321,
          corruptSegments: ['/archive/raw/2024-05-01/13/p0-a.arrow', '/archive/raw/2024-05-01/13/p1-b.arrow'],
          warnings: ['site a.test: the rebuild read 0 events in 1 hour(s) where the stream counted 3'],
          error: 'corrupt segment /archive/raw/2024-05-01/13/p0-a.arrow',
        }
        await jobs.save(finished)
        expect(await jobs.list(now - HOUR, 10)).toEqual([r3a, r3b, r2, finished])
        expect(await jobs.list(now + MINUTE, 10)).toEqual([])
      })

      it('records the last success of a range', async () => {
        const { jobs } = h.batch
        const key = `rebuild|*|${uniqueName('range')}`
        expect(await jobs.lastSuccess(key)).toBeUndefined()
        const first = { fingerprint: 'a'.repeat(64), jobId: 'job-1', finishedAtMs: Date.now() - 1000 }
        await jobs.recordSuccess(key, first)
        expect(await jobs.lastSuccess(key)).toEqual(first)
        const second = { fingerprint: 'b'.repeat(64), jobId: 'job-2', finishedAtMs: Date.now() }
        await jobs.recordSuccess(key, second)
        expect(await jobs.lastSuccess(key)).toEqual(second)
        expect(await jobs.lastSuccess(`${key}-other`)).toBeUndefined()
      })
    })

    describe('final rows', () => {
      const tokens = async (n: number): Promise<number[]> => {
        const out: number[] = []
        for (let i = 0; i < n; i++) {
          const lease = await h.batch.leases.tryAcquire(uniqueName('fence'), 'fence-holder', 30_000)
          out.push(lease!.token)
          await h.batch.leases.release(lease!)
        }
        return out
      }

      it('carry visit counts, which replace the partials of their window once committed (rows without them read as without)', async () => {
        const site = uniqueName('site')
        const ws = Math.floor(Date.now() / DAY) * DAY - 3 * DAY + 7 * HOUR
        const [token] = (await tokens(1)) as [number]
        const visits = { visits: 5, bounces: 2, visitDurationMs: 1_234_567, visitPageviews: 11 }
        await h.store.writeRows(
          [
            {
              key: partialKey(site, 'hour', ws, 0),
              values: { ...values(p, 9), visits: 1, bounces: 1, visitDurationMs: 0, visitPageviews: 1 },
              throughOffset: 1,
            },
          ],
          1,
        )
        await h.batch.rows.writeFinal(
          [
            finalRow(site, 'hour', ws, { ...values(p, 20, ids('v', 3)), ...visits }),
            finalRow(site, 'hour', ws, { ...values(p, 0), ...visits }, 'exit_page', '/bye'),
            finalRow(site, 'hour', ws, values(p, 20, ids('v', 3)), 'path', '/a'),
          ],
          token,
        )
        const [before] = await h.reader.totals(site, 'hour', ws, ws + HOUR)
        expect(before).toMatchObject({ events: 9, visits: 1, bounces: 1, final: false })
        await h.batch.rows.commitFinal(site, [{ scope: 'hour', startMs: ws }], token)
        const [after] = await h.reader.totals(site, 'hour', ws, ws + HOUR)
        expect(after).toMatchObject({ events: 20, ...visits, final: true })
        const exit = await h.reader.breakdownDetailed(site, 'hour', 'exit_page', ws, ws + HOUR)
        expect(exit.values.get('/bye')).toMatchObject({ ...visits, final: true })
        expect(await h.batch.rows.existingValues(site, 'hour', 'exit_page', ws)).toEqual(['/bye'])
        const path = await h.reader.breakdownDetailed(site, 'hour', 'path', ws, ws + HOUR)
        expect(path.values.get('/a')?.visits).toBeUndefined()
        expect(path.windowsWithoutVisits).toEqual(new Set([ws]))
      })

      it('are read only once committed, all spans of a commit at once; a commit of a lower token never replaces a higher one', async () => {
        const site = uniqueName('site')
        const ws = Math.floor(Date.now() / DAY) * DAY - 2 * DAY + 5 * HOUR
        const [t1, t2, t3] = (await tokens(3)) as [number, number, number]
        const spans: FinalSpan[] = [
          { scope: 'hour', startMs: ws },
          { scope: 'hour', startMs: ws + HOUR },
        ]
        const rows = (events: number, who: string) => [
          finalRow(site, 'hour', ws, values(p, events, ids(who, 3))),
          finalRow(site, 'hour', ws, values(p, events, ids(who, 3)), 'path', '/a'),
          finalRow(site, 'minute', ws + HOUR + 5 * MINUTE, values(p, events + 1, ids(who, 3))),
        ]
        const read = async () => {
          const [w] = await h.reader.totals(site, 'hour', ws, ws + HOUR)
          const d = (await h.reader.breakdown(site, 'hour', 'path', ws, ws + HOUR)).get('/a')
          const m = await h.reader.totals(site, 'minute', ws + HOUR, ws + 2 * HOUR)
          return {
            totals: [w?.events, w?.final, Buffer.from(w?.visitors ?? []).toString('hex')],
            path: [d?.events, d?.final, Buffer.from(d?.visitors ?? []).toString('hex')],
            minute: m.map((x) => [x.events, x.final]),
          }
        }
        const expected = (events: number, who: string) => {
          const hex = Buffer.from(sketch(p, ids(who, 3))).toString('hex')
          return { totals: [events, true, hex], path: [events, true, hex], minute: [[events + 1, true]] }
        }
        const nothing = { totals: [undefined, undefined, ''], path: [undefined, undefined, ''], minute: [] }
        await h.batch.rows.writeFinal(rows(20, 'job2'), t2)
        expect(await read()).toEqual(nothing)
        await h.batch.rows.commitFinal(site, spans, t2)
        expect(await read()).toEqual(expected(20, 'job2'))
        // An older job's rows and commit arriving last lose.
        await h.batch.rows.writeFinal(rows(99, 'job1'), t1)
        await h.batch.rows.commitFinal(site, spans, t1)
        expect(await read()).toEqual(expected(20, 'job2'))
        // The same write and commit again change nothing.
        await h.batch.rows.writeFinal(rows(20, 'job2'), t2)
        await h.batch.rows.commitFinal(site, spans, t2)
        expect(await read()).toEqual(expected(20, 'job2'))
        // A later job's rows stay unseen until its commit, then replace the earlier ones (fewer
        // events too) in every span of the commit at once.
        await h.batch.rows.writeFinal(rows(5, 'job3'), t3)
        expect(await read()).toEqual(expected(20, 'job2'))
        await h.batch.rows.commitFinal(site, spans, t3)
        expect(await read()).toEqual(expected(5, 'job3'))
        await h.batch.rows.writeFinal([], t1)
        await h.batch.rows.commitFinal(site, [], t1)
        expect(await read()).toEqual(expected(5, 'job3'))
        // A commit covers its own site only.
        const other = uniqueName('site')
        await h.batch.rows.commitFinal(other, spans, t3 + 1)
        expect(await read()).toEqual(expected(5, 'job3'))
        expect(await h.reader.totals(other, 'hour', ws, ws + HOUR)).toEqual([])
      })

      it('a provisional commit is read like any other but its windows are not final; a later full commit makes them final', async () => {
        const site = uniqueName('site')
        const ws = Math.floor(Date.now() / DAY) * DAY - 2 * DAY + 7 * HOUR
        const [t1, t2] = (await tokens(2)) as [number, number]
        const read = async () => {
          const hours = await h.reader.totals(site, 'hour', ws, ws + 2 * HOUR)
          const path = (await h.reader.breakdown(site, 'hour', 'path', ws, ws + 2 * HOUR)).get('/a')
          const minutes = await h.reader.totals(site, 'minute', ws, ws + 2 * HOUR)
          const detailed = await h.reader.breakdownDetailed(site, 'hour', 'path', ws, ws + 2 * HOUR)
          return {
            hours: hours.map((w) => [w.windowStart - ws, w.events, w.final]),
            path: [path?.events, path?.final],
            minutes: minutes.map((w) => [w.windowStart - ws, w.events, w.final]),
            windows: [...detailed.windows].map(([w, v]) => [w - ws, v.final]).sort(),
          }
        }
        const rows = (events: number) => [
          finalRow(site, 'hour', ws, values(p, events)),
          finalRow(site, 'hour', ws + HOUR, values(p, events + 1)),
          finalRow(site, 'hour', ws + HOUR, values(p, events), 'path', '/a'),
          finalRow(site, 'minute', ws + HOUR + MINUTE, values(p, events)),
        ]
        await h.batch.rows.writeFinal(rows(6), t1)
        // The first hour is covered, the second is not.
        await h.batch.rows.commitFinal(
          site,
          [
            { scope: 'hour', startMs: ws },
            { scope: 'hour', startMs: ws + HOUR, provisional: true },
          ],
          t1,
        )
        expect(await read()).toEqual({
          hours: [
            [0, 6, true],
            [HOUR, 7, false],
          ],
          path: [6, false],
          minutes: [[HOUR + MINUTE, 6, false]],
          windows: [[HOUR, false]],
        })
        await h.batch.rows.writeFinal(rows(9), t2)
        await h.batch.rows.commitFinal(
          site,
          [
            { scope: 'hour', startMs: ws },
            { scope: 'hour', startMs: ws + HOUR },
          ],
          t2,
        )
        expect(await read()).toEqual({
          hours: [
            [0, 9, true],
            [HOUR, 10, true],
          ],
          path: [9, true],
          minutes: [[HOUR + MINUTE, 9, true]],
          windows: [[HOUR, true]],
        })
      })

      it('streamHourEvents sums the stream partials of each hour (events and bot events), never final rows', async () => {
        const site = uniqueName('site')
        const day = Math.floor(Date.now() / DAY) * DAY - 2 * DAY
        const h1 = day + 5 * HOUR
        const h2 = day + 6 * HOUR
        // values(p, n): n events and n % 3 bot events.
        await h.store.writeRows(
          [
            { key: partialKey(site, 'hour', h1, 0), values: values(p, 4), throughOffset: 1 },
            { key: partialKey(site, 'hour', h1, 1), values: values(p, 5), throughOffset: 1 },
            { key: partialKey(site, 'hour', h2, 2), values: values(p, 3), throughOffset: 1 },
            { key: partialKey(site, 'minute', h2 + MINUTE, 2), values: values(p, 30), throughOffset: 1 },
            { key: partialKey(site, 'hour', h1, 0, 'path', '/x'), values: values(p, 40), throughOffset: 1 },
          ],
          1,
        )
        const [token] = (await tokens(1)) as [number]
        await h.batch.rows.writeFinal([finalRow(site, 'hour', h2, values(p, 100))], token)
        await h.batch.rows.commitFinal(site, [{ scope: 'hour', startMs: h2 }], token)
        expect(await h.batch.rows.streamHourEvents(site, day, day + DAY)).toEqual(
          new Map([
            [h1, 4 + 1 + 5 + 2],
            [h2, 3],
          ]),
        )
        expect(await h.batch.rows.streamHourEvents(site, h2, day + DAY)).toEqual(new Map([[h2, 3]]))
        expect(await h.batch.rows.streamHourEvents(uniqueName('site'), day, day + DAY)).toEqual(new Map())
      })

      it("a site's final mark changes with every commit of its final rows, and only with those", async () => {
        const site = uniqueName('site')
        const other = uniqueName('site')
        const ws = Math.floor(Date.now() / HOUR) * HOUR - 40 * HOUR
        const [t1, t2] = (await tokens(2)) as [number, number]
        const span: FinalSpan[] = [{ scope: 'hour', startMs: ws }]
        expect(await h.reader.finalMark(site)).toBe('')
        // Rows alone (not committed, so not read) leave the mark.
        await h.batch.rows.writeFinal([finalRow(site, 'hour', ws, values(p, 4, ids('m', 2)))], t1)
        expect(await h.reader.finalMark(site)).toBe('')
        await h.batch.rows.commitFinal(site, span, t1)
        const first = await h.reader.finalMark(site)
        expect(first).not.toBe('')
        expect(await h.reader.finalMark(site)).toBe(first)
        expect(await h.reader.finalMark(other)).toBe('')
        // The same commit again (a retried write) still gets a new mark: the reader cannot tell them apart.
        await h.batch.rows.commitFinal(site, span, t1)
        const second = await h.reader.finalMark(site)
        expect(second).not.toBe(first)
        // A commit marks its site only; stream rows mark nothing.
        await h.batch.rows.writeFinal([finalRow(other, 'hour', ws, values(p, 1), 'path', '/o')], t2)
        await h.batch.rows.commitFinal(other, span, t2)
        expect(await h.reader.finalMark(site)).toBe(second)
        const otherMark = await h.reader.finalMark(other)
        expect(otherMark).not.toBe('')
        await h.store.writeRows(
          [{ key: partialKey(site, 'hour', ws + HOUR, 0), values: values(p, 1), throughOffset: 1 }],
          1,
        )
        expect(await h.reader.finalMark(site)).toBe(second)
        await h.batch.rows.commitFinal(site, [], t2)
        expect(await h.reader.finalMark(site)).toBe(second)
        expect(await h.reader.finalMark(other)).toBe(otherMark)
      })

      it('existingWindows and existingValues list the windows and values holding stream or final rows', async () => {
        const site = uniqueName('site')
        const day = Math.floor(Date.now() / DAY) * DAY - 2 * DAY
        const h1 = day + 5 * HOUR
        const h2 = day + 6 * HOUR
        const m1 = h1 + 3 * MINUTE
        const m2 = h1 + 7 * MINUTE
        const m3 = h2 + 1 * MINUTE
        await h.store.writeRows(
          [
            { key: partialKey(site, 'minute', m1, 0), values: values(p, 1), throughOffset: 1 },
            { key: partialKey(site, 'minute', m2, 1), values: values(p, 2), throughOffset: 2 },
            { key: partialKey(site, 'minute', m2, 0), values: values(p, 2), throughOffset: 2 },
            { key: partialKey(site, 'hour', h1, 1), values: values(p, 3), throughOffset: 2 },
            { key: partialKey(site, 'hour', h1, 0, 'path', '/x'), values: values(p, 3), throughOffset: 2 },
            { key: partialKey(site, 'hour', h1, 1, 'path', '/x'), values: values(p, 3), throughOffset: 2 },
          ],
          1,
        )
        const [token] = (await tokens(1)) as [number]
        await h.batch.rows.writeFinal(
          [
            finalRow(site, 'minute', m3, values(p, 4)),
            finalRow(site, 'minute', m2, values(p, 4)),
            finalRow(site, 'hour', h2, values(p, 4)),
            finalRow(site, 'hour', h1, values(p, 4), 'path', '/y'),
            finalRow(site, 'hour', h1, values(p, 4), 'path', '/x'),
            finalRow(site, 'day', day, values(p, 4), 'browser', 'Firefox'),
          ],
          token,
        )
        const { rows } = h.batch
        expect(await rows.existingWindows(site, 'minute', day, day + DAY)).toEqual([m1, m2, m3])
        expect(await rows.existingWindows(site, 'minute', m1 + 1, day + DAY)).toEqual([m2, m3])
        expect(await rows.existingWindows(site, 'minute', day, m2)).toEqual([m1])
        expect(await rows.existingWindows(site, 'hour', day, day + DAY)).toEqual([h1, h2])
        expect(await rows.existingWindows(site, 'hour', h2, h2 + HOUR)).toEqual([h2])
        // Windows of totals only: the day has a breakdown row but no totals.
        expect(await rows.existingWindows(site, 'day', day - DAY, day + DAY)).toEqual([])
        expect(await rows.existingWindows(uniqueName('site'), 'minute', day, day + DAY)).toEqual([])
        expect((await rows.existingValues(site, 'hour', 'path', h1)).sort()).toEqual(['/x', '/y'])
        expect(await rows.existingValues(site, 'hour', 'path', h2)).toEqual([])
        expect(await rows.existingValues(site, 'hour', 'browser', h1)).toEqual([])
        expect(await rows.existingValues(site, 'day', 'browser', day)).toEqual(['Firefox'])
      })

      it('are read as final by the aggregate reader: they replace the partials of their window; other windows stay provisional', async () => {
        const site = uniqueName('site')
        const w1 = Math.floor(Date.now() / HOUR) * HOUR - 40 * HOUR
        const w2 = w1 + HOUR
        const w3 = w1 + 2 * HOUR
        const partial = (
          ws: number,
          sp: number,
          events: number,
          who: string,
          dimension?: Dimension,
          value = '',
        ) => ({
          key: partialKey(site, 'hour', ws, sp, dimension, value),
          values: values(p, events, ids(who, events)),
          throughOffset: 10,
        })
        await h.store.writeRows(
          [
            partial(w1, 0, 4, 'a'),
            partial(w1, 1, 3, 'b'),
            partial(w2, 0, 6, 'c'),
            partial(w2, 2, 7, 'd'),
            partial(w1, 0, 4, 'a', 'path', '/a'),
            partial(w2, 0, 5, 'c', 'path', '/a'),
            partial(w2, 2, 2, 'd', 'path', '/b'),
            partial(w3, 1, 9, 'e', 'path', '/a'),
          ],
          1,
        )
        const empty = sketch(p, [])
        const [token] = (await tokens(1)) as [number]
        // The rebuild of w2: '/b' was a duplicate, so it gets a final row of zeros.
        await h.batch.rows.writeFinal(
          [
            finalRow(site, 'hour', w2, values(p, 11, ids('f', 8))),
            finalRow(site, 'hour', w2, values(p, 11, ids('f', 8)), 'path', '/a'),
            finalRow(
              site,
              'hour',
              w2,
              { events: 0, pageviews: 0, botEvents: 0, visitors: empty },
              'path',
              '/b',
            ),
          ],
          token,
        )
        await h.batch.rows.commitFinal(site, [{ scope: 'hour', startMs: w2 }], token)
        // A later rebuild of w2 and w3, killed before its commit: its rows are never read.
        const [killed] = (await tokens(1)) as [number]
        await h.batch.rows.writeFinal(
          [
            finalRow(site, 'hour', w2, values(p, 500, ids('k', 8))),
            finalRow(site, 'hour', w2, values(p, 500, ids('k', 8)), 'path', '/a'),
            finalRow(site, 'hour', w3, values(p, 500, ids('k', 8)), 'path', '/k'),
          ],
          killed,
        )
        // The stream keeps writing w2's partials after the rebuild, with fences far above the token:
        // they are rows of their own and stay hidden behind the final row.
        await h.store.writeRows([partial(w2, 0, 50, 'g'), partial(w2, 0, 50, 'g', 'path', '/a')], 10_000)

        const totals = await h.reader.totals(site, 'hour', w1, w3 + HOUR)
        expect(totals.map((w) => [w.windowStart, w.events, w.final])).toEqual([
          [w1, 7, false],
          [w2, 11, true],
        ])
        expect(Buffer.from(totals[1]!.visitors)).toEqual(Buffer.from(sketch(p, ids('f', 8))))
        expect(Buffer.from(totals[0]!.visitors)).toEqual(
          Buffer.from(sketch(p, [...ids('a', 4), ...ids('b', 3)])),
        )
        expect(await all(h.reader.streamTotals(site, 'hour', w1, w3 + HOUR))).toEqual(totals)

        const detailed = await h.reader.breakdownDetailed(site, 'hour', 'path', w1, w3 + HOUR)
        expect(detailed.windows).toEqual(
          new Map([
            [w1, { final: false }],
            [w2, { final: true }],
            [w3, { final: false }],
          ]),
        )
        expect(detailed.values.get('/a')?.events).toBe(4 + 11 + 9)
        expect(detailed.values.get('/a')?.final).toBe(false)
        expect(detailed.values.get('/b')).toMatchObject({
          events: 0,
          pageviews: 0,
          botEvents: 0,
          final: true,
        })
        const onlyW2 = await h.reader.breakdownDetailed(site, 'hour', 'path', w2, w3)
        expect(new Map([...onlyW2.values].map(([v, m]) => [v, [m.events, m.final]]))).toEqual(
          new Map([
            ['/a', [11, true]],
            ['/b', [0, true]],
          ]),
        )
        const windows = await h.reader.dimensionWindows(site, 'hour', 'path', ['/a', '/b'], w1, w3 + HOUR)
        expect(windows.map((w) => [w.windowStart, w.events, w.final])).toEqual([
          [w1, 4, false],
          [w2, 11, true],
          [w3, 9, false],
        ])
        const rows = await all(h.reader.streamDimension(site, 'hour', 'path', w1, w3 + HOUR))
        expect(rows.map((r) => [r.windowStart, r.value, r.events, r.final])).toEqual([
          [w1, '/a', 4, false],
          [w2, '/a', 11, true],
          [w2, '/b', 0, true],
          [w3, '/a', 9, false],
        ])
      })

      it('live as long as the TTL of their granularity', async () => {
        const store = await h.finalRowsWithTtl({ minute: 2, hour: 0, day: 0 })
        try {
          const site = uniqueName('site')
          const hour = Math.floor(Date.now() / HOUR) * HOUR - 3 * HOUR
          const [token] = (await tokens(1)) as [number]
          await store.rows.writeFinal(
            [
              finalRow(site, 'minute', hour + MINUTE, values(p, 3)),
              finalRow(site, 'hour', hour, values(p, 3)),
            ],
            token,
          )
          await store.rows.commitFinal(site, [{ scope: 'hour', startMs: hour }], token)
          expect((await store.reader.totals(site, 'minute', hour, hour + HOUR)).map((w) => w.events)).toEqual(
            [3],
          )
          await sleep(2300)
          expect(await store.reader.totals(site, 'minute', hour, hour + HOUR)).toEqual([])
          expect(await store.rows.existingWindows(site, 'minute', hour, hour + HOUR)).toEqual([])
          expect((await store.reader.totals(site, 'hour', hour, hour + HOUR)).map((w) => w.events)).toEqual([
            3,
          ])
        } finally {
          await store.close()
        }
      })
    })
  })
}
