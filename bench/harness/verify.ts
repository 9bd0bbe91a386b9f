import {
  DIMENSION_GRANULARITIES,
  DIMENSIONS,
  type Dimension,
  GRANULARITIES,
} from '../../core/aggregate/definition.js'
import { HyperLogLog } from '../../core/hll.js'
import type { AggregateReader } from '../../core/ports/aggregate-store.js'
import {
  type Counts,
  dimensionValues,
  type GeneratedEvent,
  GRANULARITY_MS,
  DIMENSIONS as TRUTH_DIMENSIONS,
  type Truth,
} from '../workload.js'
import type { Check } from './report.js'

/**
 * Compares what a stage wrote with the workload's truth: counts (events, pageviews, bot events)
 * exactly; `visitors` exactly too, against the HyperLogLog estimate of the true set of visitors
 * (a sketch depends only on its set, so Tally's merged registers must give that very estimate).
 */

export class Comparison {
  compared = 0
  /** Largest |actual − expected| / expected among approximate comparisons. */
  maxRelativeError = 0
  private readonly mismatches: string[] = []
  private mismatchCount = 0

  constructor(readonly label: string) {}

  exact(where: string, expected: number, actual: number): void {
    this.compared++
    if (expected !== actual) this.miss(`${where}: expected ${expected}, got ${actual}`)
  }

  approx(where: string, expected: number, actual: number, relativeBound: number): void {
    this.compared++
    if (expected > 0)
      this.maxRelativeError = Math.max(this.maxRelativeError, Math.abs(actual - expected) / expected)
    if (Math.abs(actual - expected) > Math.max(2, Math.ceil(expected * relativeBound)))
      this.miss(`${where}: expected ${expected} ± ${Math.round(relativeBound * 1000) / 10} %, got ${actual}`)
  }

  private miss(text: string): void {
    this.mismatchCount++
    if (this.mismatches.length < 5) this.mismatches.push(text)
  }

  check(): Check {
    return this.mismatchCount === 0
      ? { ok: true, detail: `${this.label}: ${this.compared} numbers equal the truth` }
      : {
          ok: false,
          detail: `${this.label}: ${this.mismatchCount} of ${this.compared} numbers differ from the truth, e.g. ${this.mismatches.join('; ')}`,
        }
  }
}

const DAY_MS = 86_400_000

const ZERO: Counts & { bots: number } = { events: 0, pageviews: 0, visitors: 0, bots: 0 }

const COUNTED = new Set(['track', 'page', 'screen'])

/**
 * The true visitor sets of a workload — per site and window, and per site and dimension value over
 * the whole workload — and the estimate a HyperLogLog of the given precision gives for each.
 */
export class VisitorSketches {
  private readonly sets = new Map<string, Set<string>>()
  private readonly estimates = new Map<string, number>()

  constructor(
    events: readonly GeneratedEvent[],
    private readonly precision: number,
  ) {
    const seen = new Set<string>()
    const add = (key: string, id: string) => {
      let set = this.sets.get(key)
      if (!set) {
        set = new Set()
        this.sets.set(key, set)
      }
      set.add(id)
    }
    for (const e of events) {
      const p = e.payload
      const id = `${e.siteId}\u0001${p.messageId}`
      if (seen.has(id)) continue
      seen.add(id)
      if (e.isBot || !COUNTED.has(p.type)) continue
      const ts = Date.parse(p.timestamp)
      for (const g of GRANULARITIES) {
        const size = GRANULARITY_MS[g]
        add(`${e.siteId}|${g}|${Math.floor(ts / size) * size}`, p.anonymousId)
      }
      const values = dimensionValues(e)
      for (const d of TRUTH_DIMENSIONS) add(`${e.siteId}|${d}=${values[d]}`, p.anonymousId)
    }
  }

  private estimate(key: string): number {
    let v = this.estimates.get(key)
    if (v === undefined) {
      const hll = new HyperLogLog(this.precision)
      for (const id of this.sets.get(key) ?? []) hll.add(id)
      v = Math.round(hll.estimate())
      this.estimates.set(key, v)
    }
    return v
  }

  /** Estimate for the visitors of one window. */
  window(siteId: string, granularity: 'minute' | 'hour' | 'day', windowStartMs: number): number {
    return this.estimate(`${siteId}|${granularity}|${windowStartMs}`)
  }

  /** Estimate for the visitors with one value of a dimension, over the whole workload. */
  value(siteId: string, dimension: string, value: string): number {
    return this.estimate(`${siteId}|${dimension}=${value}`)
  }
}

function visitorsOf(bytes: Uint8Array): number {
  return bytes.length === 0 ? 0 : Math.round(HyperLogLog.fromBytes(bytes).estimate())
}

/**
 * Every window of every granularity, and every breakdown value over the whole range, of `sites`
 * as the reader returns them (merged partials), against the truth. The range must hold the whole
 * workload (so the truth's site-wide breakdown is what a breakdown over the range merges to); it is
 * widened to whole UTC days, so a workload just before midnight keeps its day windows in range.
 */
export async function compareStore(
  reader: AggregateReader,
  truth: Truth,
  sketches: VisitorSketches,
  sites: readonly string[],
  fromMs: number,
  toMs: number,
  /** The breakdowns aggregated (TALLY_BREAKDOWNS): the others must have no row. Default all. */
  kept: readonly Dimension[] = DIMENSIONS,
): Promise<Check> {
  const c = new Comparison('aggregates read back (every window, every breakdown value)')
  fromMs = Math.floor(fromMs / DAY_MS) * DAY_MS
  toMs = Math.ceil(toMs / DAY_MS) * DAY_MS
  for (const site of sites) {
    const st = truth.sites[site]
    for (const g of GRANULARITIES) {
      const windows = await reader.totals(site, g, fromMs, toMs)
      const byStart = new Map(windows.map((w) => [w.windowStart, w]))
      const keys = new Set([
        ...Object.keys(st?.windows[g] ?? {}).map((k) => Date.parse(k)),
        ...byStart.keys(),
      ])
      for (const ws of keys) {
        const t = st?.windows[g][new Date(ws).toISOString()] ?? ZERO
        const a = byStart.get(ws)
        const where = `${site} ${g} ${new Date(ws).toISOString()}`
        c.exact(`${where} events`, t.events, a?.events ?? 0)
        c.exact(`${where} pageviews`, t.pageviews, a?.pageviews ?? 0)
        c.exact(`${where} bot events`, t.bots, a?.botEvents ?? 0)
        c.exact(
          `${where} visitors (sketch of the ${t.visitors} true visitors)`,
          sketches.window(site, g, ws),
          a ? visitorsOf(a.visitors) : 0,
        )
      }
    }
    for (const g of DIMENSION_GRANULARITIES) {
      for (const d of DIMENSIONS) {
        const merged = await reader.breakdown(site, g, d, fromMs, toMs)
        if (!kept.includes(d)) {
          c.exact(`${site} ${g} ${d} rows (not aggregated)`, 0, merged.size)
          continue
        }
        const expected = st?.breakdown[d] ?? {}
        for (const value of new Set([...Object.keys(expected), ...merged.keys()])) {
          const t = expected[value] ?? ZERO
          const a = merged.get(value)
          const where = `${site} ${g} ${d}=${value}`
          c.exact(`${where} events`, t.events, a?.events ?? 0)
          c.exact(`${where} pageviews`, t.pageviews, a?.pageviews ?? 0)
          c.exact(
            `${where} visitors (sketch of the ${t.visitors} true visitors)`,
            sketches.value(site, d, value),
            a ? visitorsOf(a.visitors) : 0,
          )
        }
      }
    }
  }
  return c.check()
}

/** Totals of a site over every window of a range (when windows moved, e.g. by clock-skew correction). */
export async function compareSiteTotals(
  reader: AggregateReader,
  truth: Truth,
  sites: readonly string[],
  fromMs: number,
  toMs: number,
): Promise<Check> {
  const c = new Comparison('site totals read back')
  for (const site of sites) {
    const t = truth.sites[site] ?? { ...ZERO }
    const windows = await reader.totals(site, 'day', fromMs, toMs, { visitors: false })
    const sum = (f: (w: (typeof windows)[number]) => number) => windows.reduce((n, w) => n + f(w), 0)
    c.exact(
      `${site} events`,
      t.events,
      sum((w) => w.events),
    )
    c.exact(
      `${site} pageviews`,
      t.pageviews,
      sum((w) => w.pageviews),
    )
    c.exact(
      `${site} bot events`,
      t.bots,
      sum((w) => w.botEvents),
    )
  }
  return c.check()
}
