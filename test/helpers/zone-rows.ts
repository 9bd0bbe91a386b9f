import type { GeneratedEvent } from '../../bench/workload.js'
import {
  DIMENSION_GRANULARITIES,
  GRANULARITIES,
  type Granularity,
  type RowDimension,
  windowMs,
} from '../../core/aggregate/definition.js'
import { type FinalSpan, scopeOf, spanStartOf } from '../../core/aggregate/final.js'
import { HyperLogLog } from '../../core/hll.js'
import type { FinalRow, FinalRowStore } from '../../core/ports/batch-store.js'

/**
 * What the time-zone tests share: local dates and hours computed with Intl.DateTimeFormat (the
 * truth, independent of query/zone.ts), and a generated workload's rows written as committed final
 * rows, as the stream or a rebuild would write them.
 */

const HOUR = 3_600_000
const DAY = 86_400_000
const COUNTED = new Set(['track', 'page', 'screen'])

export const tsOf = (e: GeneratedEvent) => Date.parse(e.payload.timestamp)

/** The local date (YYYY-MM-DD) and hour (00–23) of an instant in a zone. */
export function local(ms: number, zone: string): { date: string; hour: string } {
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat('en-CA', {
      timeZone: zone,
      hourCycle: 'h23',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
    })
      .formatToParts(new Date(ms))
      .map((p) => [p.type, p.value]),
  )
  return { date: `${parts.year}-${parts.month}-${parts.day}`, hour: parts.hour! }
}

/** The first instant (on a quarter hour) whose local date is `date`. */
export function dayStart(date: string, zone: string): number {
  let t = Date.parse(`${date}T12:00:00Z`) - 36 * HOUR
  while (local(t, zone).date < date) t += 15 * 60_000
  return t
}

export function addDays(date: string, n: number): string {
  return new Date(Date.parse(`${date}T00:00:00Z`) + n * DAY).toISOString().slice(0, 10)
}

/**
 * Writes the rows the stream or a rebuild would write for these events (duplicates by messageId
 * once, bots in `botEvents`) as committed final rows: totals per minute, hour and day window, and
 * `dimension` per hour and day valued by `valueFor`.
 */
export async function writeFinalRowsOf(
  rows: FinalRowStore,
  siteId: string,
  events: readonly GeneratedEvent[],
  precision: number,
  dimension: RowDimension,
  valueFor: (e: GeneratedEvent) => string,
): Promise<void> {
  type Acc = {
    g: Granularity
    ws: number
    value: string | undefined
    events: number
    pageviews: number
    bots: number
    hll: HyperLogLog
  }
  const acc = new Map<string, Acc>()
  const seen = new Set<string>()
  for (const e of events) {
    const p = e.payload
    if (seen.has(p.messageId) || !COUNTED.has(p.type)) continue
    seen.add(p.messageId)
    for (const g of GRANULARITIES) {
      for (const value of DIMENSION_GRANULARITIES.includes(g) ? [undefined, valueFor(e)] : [undefined]) {
        const ws = Math.floor(tsOf(e) / windowMs(g)) * windowMs(g)
        const key = `${g}|${ws}|${value === undefined ? '' : `=${value}`}`
        let row = acc.get(key)
        if (!row) {
          row = { g, ws, value, events: 0, pageviews: 0, bots: 0, hll: new HyperLogLog(precision) }
          acc.set(key, row)
        }
        if (e.isBot) row.bots++
        else {
          row.events++
          if (p.type === 'page') row.pageviews++
          row.hll.add(p.anonymousId)
        }
      }
    }
  }
  const token = Date.now() * 1000
  const final: FinalRow[] = [...acc.values()].map((r) => ({
    siteId,
    granularity: r.g,
    windowStart: r.ws,
    dimension: r.value === undefined ? undefined : dimension,
    value: r.value ?? '',
    values: { events: r.events, pageviews: r.pageviews, botEvents: r.bots, visitors: r.hll.toBytes() },
  }))
  for (let i = 0; i < final.length; i += 2000) await rows.writeFinal(final.slice(i, i + 2000), token)
  const spans = new Map<string, FinalSpan>()
  for (const r of acc.values()) {
    const span: FinalSpan = { scope: scopeOf(r.g), startMs: spanStartOf(r.g, r.ws) }
    spans.set(`${span.scope}|${span.startMs}`, span)
  }
  await rows.commitFinal(siteId, [...spans.values()], token)
}
