import { HyperLogLog } from '../../core/hll.js'
import {
  type Answer,
  type AnswerRow,
  byEventsThenKey,
  type DayBatch,
  type Dictionaries,
  estimateOf,
  FILTER_DIMENSIONS,
  type FilterQuery,
  fillDays,
  newRegisters,
  PAGEVIEW,
  raiseFromBytes,
} from './data.js'

/**
 * Design a of the filters study: a rollup of full dimension tuples (Druid's model on Tally's store).
 * Each distinct combination of the ten dimension values of a site-day is one row with its event and
 * pageview counts and a HyperLogLog sketch of its visitors; a query reads every row of the days in its
 * range, keeps those that pass the filters and sums them (merging the sketches). The rollup is pure;
 * where the rows live (Cassandra in the bench, memory in the unit test) is a {@link TupleSource}.
 */

export interface TupleRow {
  /** One value per dimension, in FILTER_DIMENSIONS order. */
  values: readonly string[]
  events: number
  pageviews: number
  /** core/hll.ts `toBytes()` of the tuple's visitors. */
  visitors: Uint8Array
}

interface Accumulator {
  codes: number[]
  events: number
  pageviews: number
  sketch: HyperLogLog
}

/** The tuple rows of one site-day (what the stream would keep per site-hour and the rebuild per site-day). */
export function rollupDay(batch: DayBatch, dicts: Dictionaries): TupleRow[] {
  const tuples = new Map<string, Accumulator>()
  const columns = FILTER_DIMENSIONS.map((dim) => batch.codes[dim])
  const pageview = dicts.event.indexOf(PAGEVIEW)
  for (let i = 0; i < batch.n; i++) {
    const codes = columns.map((c) => c[i]!)
    const key = codes.join(',')
    let acc = tuples.get(key)
    if (!acc) {
      acc = { codes, events: 0, pageviews: 0, sketch: new HyperLogLog() }
      tuples.set(key, acc)
    }
    acc.events++
    if (codes[0] === pageview) acc.pageviews++
    acc.sketch.addHalves(batch.hashHi[i]!, batch.hashLo[i]!)
  }
  const rows: TupleRow[] = []
  for (const acc of tuples.values()) {
    rows.push({
      values: acc.codes.map((c, d) => dicts[FILTER_DIMENSIONS[d]!][c]!),
      events: acc.events,
      pageviews: acc.pageviews,
      visitors: acc.sketch.toBytes(),
    })
  }
  return rows
}

/** Distinct tuples of a day when the rollup is per site-hour (the not-yet-final part), without building them. */
export function hourlyTupleCount(batch: DayBatch): number {
  const keys = new Set<string>()
  const columns = FILTER_DIMENSIONS.map((dim) => batch.codes[dim])
  for (let i = 0; i < batch.n; i++)
    keys.add(`${Math.floor(batch.second[i]! / 3600)},${columns.map((c) => c[i]!).join(',')}`)
  return keys.size
}

/** Where the rows of a site-day are read from. */
export type TupleSource = (day: number) => AsyncIterable<TupleRow>

const DIM_INDEX = new Map<string, number>(FILTER_DIMENSIONS.map((d, i) => [d, i]))

export class TupleDesign {
  constructor(private readonly source: TupleSource) {}

  async answer(q: FilterQuery): Promise<Answer> {
    const filters = q.filters.map((f) => [DIM_INDEX.get(f.dimension)!, f.value] as const)
    const by = DIM_INDEX.get(q.by ?? 'path')!
    const rows: AnswerRow[] = []
    let regs = newRegisters()
    let events = 0
    let pageviews = 0
    const values = new Map<string, { row: AnswerRow; sketches: Uint8Array[] }>()
    for (let d = q.fromDay; d <= q.toDay; d++) {
      for await (const t of this.source(d)) {
        if (!filters.every(([i, v]) => t.values[i] === v)) continue
        if (q.kind === 'breakdown') {
          const key = t.values[by]!
          let v = values.get(key)
          if (!v) {
            v = { row: { key, events: 0, pageviews: 0, visitors: 0 }, sketches: [] }
            values.set(key, v)
          }
          v.row.events += t.events
          v.row.pageviews += t.pageviews
          v.sketches.push(t.visitors)
          continue
        }
        events += t.events
        pageviews += t.pageviews
        raiseFromBytes(regs, t.visitors)
      }
      if (q.kind === 'timeseries') {
        if (events > 0) rows.push({ key: String(d), events, pageviews, visitors: estimateOf(regs) })
        regs = newRegisters()
        events = 0
        pageviews = 0
      }
    }
    if (q.kind === 'timeseries') return { id: q.id, rows: fillDays(q, rows) }
    if (q.kind === 'totals')
      return { id: q.id, rows: [{ key: '', events, pageviews, visitors: estimateOf(regs) }] }
    const top = [...values.values()].sort((a, b) => byEventsThenKey(a.row, b.row)).slice(0, q.limit)
    return {
      id: q.id,
      rows: top.map(({ row, sketches }) => {
        const r = newRegisters()
        for (const s of sketches) raiseFromBytes(r, s)
        return { ...row, visitors: estimateOf(r) }
      }),
    }
  }
}

/** A source over rows held in memory (the unit test; the bench's sampled extrapolation). */
export function memorySource(days: ReadonlyMap<number, readonly TupleRow[]>): TupleSource {
  return async function* (day: number) {
    yield* days.get(day) ?? []
  }
}
