import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ArrowDesign, writeArrowDay } from '../../bench/filters/arrow-files.js'
import {
  type Answer,
  type AnswerRow,
  type DayBatch,
  type FILTER_DIMENSIONS,
  type FilterQuery,
  querySet,
  SITE_SIZES,
  SiteGenerator,
} from '../../bench/filters/data.js'
import { DuckDesign, ParquetWriter } from '../../bench/filters/duck-files.js'
import { memorySource, rollupDay, TupleDesign, type TupleRow } from '../../bench/filters/tuples.js'
import { HyperLogLog } from '../../core/hll.js'

/**
 * The filters study's three prototypes (bench/filters/) must give the same answers: each is compared
 * with the truth computed here, event by event from the generated columns, with its own sketches.
 */

const DAYS = 7
const gen = new SiteGenerator(SITE_SIZES.small, 4242, 3_000, DAYS)
const batches: DayBatch[] = Array.from({ length: DAYS }, (_, d) => gen.day(d))
const queries = querySet(DAYS, [1, 7])

function truth(q: FilterQuery): Answer {
  const groups = new Map<string, { events: number; pageviews: number; sketch: HyperLogLog }>()
  for (const b of batches) {
    if (b.day < q.fromDay || b.day > q.toDay) continue
    for (let i = 0; i < b.n; i++) {
      const value = (dim: (typeof FILTER_DIMENSIONS)[number]) => gen.dicts[dim][b.codes[dim][i]!]!
      if (!q.filters.every((f) => value(f.dimension) === f.value)) continue
      const key = q.kind === 'totals' ? '' : q.kind === 'timeseries' ? String(b.day) : value(q.by ?? 'path')
      let g = groups.get(key)
      if (!g) {
        g = { events: 0, pageviews: 0, sketch: new HyperLogLog() }
        groups.set(key, g)
      }
      g.events++
      if (value('event') === 'pageview') g.pageviews++
      g.sketch.addHalves(b.hashHi[i]!, b.hashLo[i]!)
    }
  }
  const row = (key: string): AnswerRow => {
    const g = groups.get(key)
    return g
      ? { key, events: g.events, pageviews: g.pageviews, visitors: Math.round(g.sketch.estimate()) }
      : { key, events: 0, pageviews: 0, visitors: Math.round(new HyperLogLog().estimate()) }
  }
  if (q.kind === 'totals') return { id: q.id, rows: [row('')] }
  if (q.kind === 'timeseries') {
    const rows: AnswerRow[] = []
    for (let d = q.fromDay; d <= q.toDay; d++) rows.push(row(String(d)))
    return { id: q.id, rows }
  }
  const rows = [...groups.keys()].map(row)
  rows.sort((a, b) => b.events - a.events || (a.key < b.key ? -1 : 1))
  return { id: q.id, rows: rows.slice(0, q.limit) }
}

describe('filters study prototypes', () => {
  let dir: string
  let arrow: ArrowDesign
  let duck: DuckDesign
  let tuples: TupleDesign

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tally-filters-test-'))
    const writer = await ParquetWriter.open(dir, gen.dicts)
    const rows = new Map<number, TupleRow[]>()
    for (const b of batches) {
      await writeArrowDay(dir, b, gen.dicts)
      await writer.write(b)
      rows.set(b.day, rollupDay(b, gen.dicts))
    }
    writer.close()
    arrow = new ArrowDesign({ dir })
    duck = new DuckDesign(dir)
    tuples = new TupleDesign(memorySource(rows))
  })

  afterAll(async () => {
    duck?.dropCache()
    if (dir) await rm(dir, { recursive: true, force: true })
  })

  it('the query set has totals, timeseries and breakdowns under 0 to 3 filters', () => {
    expect(queries).toHaveLength(2 * 4 * 3)
    expect(new Set(queries.map((q) => q.filters.length))).toEqual(new Set([0, 1, 2, 3]))
  })

  it('the truth is not trivial: every query matches events, filters narrow them', () => {
    for (const q of queries)
      expect(
        truth(q).rows.some((r) => r.events > 0),
        q.id,
      ).toBe(true)
    const total = (f: number) => truth(queries.find((q) => q.id === `totals/${f}f/7d`)!).rows[0]!.events
    expect(total(0)).toBe(DAYS * 3_000)
    expect(total(1)).toBeLessThan(total(0))
    expect(total(3)).toBeLessThan(total(2))
    expect(total(3)).toBeGreaterThan(0)
  })

  for (const [name, design] of [
    ['a. tuple rollup', () => tuples],
    ['b. Arrow files', () => arrow],
    ['c. DuckDB over Parquet', () => duck],
  ] as const) {
    it(`${name} answers every query as the truth`, async () => {
      for (const q of queries) expect(await design().answer(q), q.id).toEqual(truth(q))
    })
  }

  it('cold queries (caches dropped) answer the same', async () => {
    const q = queries.find((x) => x.id === 'breakdown/2f/7d')!
    arrow.dropCache()
    duck.dropCache()
    expect(await arrow.answer(q)).toEqual(truth(q))
    expect(await duck.answer(q)).toEqual(truth(q))
  })
})
