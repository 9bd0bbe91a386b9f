import { type GeneratedEvent, type Truth, truthCounts, windowKey } from '../../bench/workload.js'
import { DIMENSION_GRANULARITIES, DIMENSIONS, GRANULARITIES } from '../../core/aggregate/definition.js'
import { HyperLogLog, hllErrorBound } from '../../core/hll.js'
import type { AggregateReader } from '../../core/ports/aggregate-store.js'
import { type Mismatch, visitorSets } from '../helpers/stream.js'

/**
 * test/helpers/stream.ts compareWithTruth, over any AggregateReader (Cassandra or embedded):
 * every window (minute/hour/day totals) and every breakdown (hour and day) against the truth,
 * counts exactly, visitors register-exact per window when `events` is given, else within the
 * HyperLogLog bound.
 */
export async function compareReaderWithTruth(
  reader: AggregateReader,
  precision: number,
  truth: Truth,
  sites: readonly string[],
  fromMs: number,
  toMs: number,
  events?: readonly GeneratedEvent[],
): Promise<Mismatch[]> {
  const sets = events ? visitorSets(events) : undefined
  const bound = hllErrorBound(precision)
  const out: Mismatch[] = []
  const check = (where: string, expected: number, actual: number, approx = false) => {
    const ok = approx
      ? Math.abs(actual - expected) <= Math.max(2, Math.ceil(expected * bound))
      : actual === expected
    if (!ok) out.push({ where, expected, actual })
  }
  for (const site of sites) {
    for (const g of GRANULARITIES) {
      const windows = await reader.totals(site, g, fromMs, toMs)
      const byStart = new Map(windows.map((w) => [w.windowStart, w]))
      const expectedWindows = Object.keys(truth.sites[site]?.windows[g] ?? {})
      const starts = new Set([...expectedWindows.map((k) => Date.parse(k)), ...byStart.keys()])
      for (const ws of starts) {
        if (ws < fromMs || ws >= toMs) continue
        const t = truthCounts(truth, site, { granularity: g, window: ws })
        const a = byStart.get(ws)
        const est = a ? Math.round(HyperLogLog.fromBytes(a.visitors).estimate()) : 0
        const where = `${site} ${g} ${windowKey(ws, g)}`
        check(`${where} events`, t.events, a?.events ?? 0)
        check(`${where} pageviews`, t.pageviews, a?.pageviews ?? 0)
        const set = sets?.get(`${site}|${g}|${ws}`)
        if (set) {
          check(`${where} visitor set size`, t.visitors, set.size)
          const exact = new HyperLogLog(precision)
          for (const id of set) exact.add(id)
          check(`${where} visitors (registers)`, Math.round(exact.estimate()), est)
        } else {
          check(`${where} visitors`, t.visitors, est, true)
        }
      }
    }
    for (const g of DIMENSION_GRANULARITIES) {
      for (const d of DIMENSIONS) {
        const merged = await reader.breakdown(site, g, d, fromMs, toMs)
        const expected = new Map<string, { events: number; pageviews: number }>()
        for (const [key, w] of Object.entries(truth.sites[site]?.windows[g] ?? {})) {
          const ws = Date.parse(key)
          if (ws < fromMs || ws >= toMs) continue
          for (const [value, c] of Object.entries(w.breakdown[d])) {
            const e = expected.get(value) ?? { events: 0, pageviews: 0 }
            e.events += c.events
            e.pageviews += c.pageviews
            expected.set(value, e)
          }
        }
        const rangeTruth = truth.sites[site]?.breakdown[d] ?? {}
        for (const value of new Set([...expected.keys(), ...merged.keys()])) {
          const e = expected.get(value) ?? { events: 0, pageviews: 0 }
          const a = merged.get(value)
          const est = a ? Math.round(HyperLogLog.fromBytes(a.visitors).estimate()) : 0
          check(`${site} ${g} ${d}=${value} visitors`, rangeTruth[value]?.visitors ?? 0, est, true)
          check(`${site} ${g} ${d}=${value} events`, e.events, a?.events ?? 0)
          check(`${site} ${g} ${d}=${value} pageviews`, e.pageviews, a?.pageviews ?? 0)
        }
      }
    }
  }
  return out
}
