import type { Client, types } from 'cassandra-driver'
import { type Dimension, type Granularity, totalsBucket, windowMs } from '../aggregate/definition.js'
import { HyperLogLog } from '../hll.js'
import type { AggregateReader, MergedValues, MergedWindow } from '../ports/aggregate-store.js'

interface Partial {
  events: number
  pageviews: number
  botEvents: number
  visitors: Buffer | null
  final: boolean
}

function partialOf(row: types.Row): Partial {
  return {
    events: Number(row.get('events') ?? 0),
    pageviews: Number(row.get('pageviews') ?? 0),
    botEvents: Number(row.get('bot_events') ?? 0),
    visitors: row.get('visitors') as Buffer | null,
    final: row.get('source_partition') === -1,
  }
}

/**
 * Merges the rows of one window: a final (batch) row replaces the stream partials; otherwise the
 * partials of all source partitions add up (counts) and merge (HyperLogLog registers).
 */
export function mergePartials(
  parts: readonly Partial[],
  precision: number,
): MergedValues & { final: boolean } {
  const final = parts.find((p) => p.final)
  const use = final ? [final] : parts
  const hll = new HyperLogLog(precision)
  let events = 0
  let pageviews = 0
  let botEvents = 0
  for (const p of use) {
    events += p.events
    pageviews += p.pageviews
    botEvents += p.botEvents
    if (p.visitors && p.visitors.length > 0) hll.merge(HyperLogLog.fromBytes(p.visitors))
  }
  return { events, pageviews, botEvents, visitors: hll.toBytes(), final: final !== undefined }
}

function bucketsBetween(fromMs: number, toMs: number, g: Granularity): string[] {
  const out = new Set<string>()
  const step = windowMs(g)
  for (let t = Math.floor(fromMs / step) * step; t < toMs; t += step) out.add(totalsBucket(t, g))
  return [...out]
}

/** Reads merged aggregates from Cassandra: single-partition reads, a few per query. */
export class CassandraAggregateReader implements AggregateReader {
  constructor(
    private readonly client: Client,
    private readonly precision: number,
  ) {}

  async totals(
    siteId: string,
    granularity: Granularity,
    fromMs: number,
    toMs: number,
  ): Promise<MergedWindow[]> {
    const byWindow = new Map<number, Partial[]>()
    await Promise.all(
      bucketsBetween(fromMs, toMs, granularity).map(async (bucket) => {
        const rows = this.client.stream(
          'SELECT window_start, source_partition, events, pageviews, bot_events, visitors FROM agg_totals WHERE site_id = ? AND granularity = ? AND bucket = ? AND window_start >= ? AND window_start < ?',
          [siteId, granularity, bucket, new Date(fromMs), new Date(toMs)],
          { prepare: true, fetchSize: 5000 },
        )
        for await (const row of rows as unknown as AsyncIterable<types.Row>) {
          const ws = (row.get('window_start') as Date).getTime()
          const list = byWindow.get(ws) ?? []
          list.push(partialOf(row))
          byWindow.set(ws, list)
        }
      }),
    )
    return [...byWindow.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([windowStart, parts]) => ({ windowStart, ...mergePartials(parts, this.precision) }))
  }

  async breakdown(
    siteId: string,
    granularity: Granularity,
    dimension: Dimension,
    fromMs: number,
    toMs: number,
  ): Promise<Map<string, MergedValues & { final: boolean }>> {
    const step = windowMs(granularity)
    const windows: number[] = []
    for (let t = Math.ceil(fromMs / step) * step; t < toMs; t += step) windows.push(t)
    // value → window → partials; a window's final row replaces its partials before windows merge.
    const byValue = new Map<string, Map<number, Partial[]>>()
    await Promise.all(
      windows.map(async (ws) => {
        const rows = this.client.stream(
          'SELECT value, source_partition, events, pageviews, bot_events, visitors FROM agg_dims WHERE site_id = ? AND granularity = ? AND dimension = ? AND window_start = ?',
          [siteId, granularity, dimension, new Date(ws)],
          { prepare: true, fetchSize: 5000 },
        )
        for await (const row of rows as unknown as AsyncIterable<types.Row>) {
          const value = String(row.get('value'))
          let w = byValue.get(value)
          if (!w) {
            w = new Map()
            byValue.set(value, w)
          }
          const list = w.get(ws) ?? []
          list.push(partialOf(row))
          w.set(ws, list)
        }
      }),
    )
    const out = new Map<string, MergedValues & { final: boolean }>()
    for (const [value, perWindow] of byValue) {
      const merged = [...perWindow.values()].map((parts) => mergePartials(parts, this.precision))
      const hll = new HyperLogLog(this.precision)
      let events = 0
      let pageviews = 0
      let botEvents = 0
      for (const m of merged) {
        events += m.events
        pageviews += m.pageviews
        botEvents += m.botEvents
        if (m.visitors.length > 0) hll.merge(HyperLogLog.fromBytes(m.visitors))
      }
      out.set(value, {
        events,
        pageviews,
        botEvents,
        visitors: hll.toBytes(),
        final: merged.every((m) => m.final),
      })
    }
    return out
  }
}
