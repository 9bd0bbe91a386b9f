import type { Client, types } from 'cassandra-driver'
import { type Granularity, type RowDimension, totalsBucket, windowMs } from '../aggregate/definition.js'
import { CommittedGenerations, scopeOf, spanRange } from '../aggregate/final.js'
import { isRebuiltOnly } from '../aggregate/goals.js'
import {
  BreakdownCollector,
  generationOfRow,
  mergePartials,
  type PartialValues as Partial,
  visitCountsOf,
  WindowsCollector,
} from '../aggregate/merge.js'
import type {
  AggregateReader,
  BreakdownResult,
  MergedDimensionRow,
  MergedValues,
  MergedWindow,
  ReadOptions,
  StreamProgress,
} from '../ports/aggregate-store.js'
import { asServiceError } from './client.js'
import { VISIT_COLUMNS, visitValuesOf } from './stream-store.js'

function partialOf(row: types.Row): Partial {
  // Rows written before visits existed have null visit columns: no visit data.
  const visits = visitCountsOf(visitValuesOf(row))
  return {
    events: Number(row.get('events') ?? 0),
    pageviews: Number(row.get('pageviews') ?? 0),
    botEvents: Number(row.get('bot_events') ?? 0),
    visitors: (row.get('visitors') as Buffer | null | undefined) ?? null,
    generation: generationOfRow(Number(row.get('source_partition'))),
    visits: visits ?? null,
  }
}

function bucketsBetween(fromMs: number, toMs: number, g: Granularity): string[] {
  const out = new Set<string>()
  const step = windowMs(g)
  for (let t = Math.floor(fromMs / step) * step; t < toMs; t += step) out.add(totalsBucket(t, g))
  return [...out]
}

/** Starts of the windows of `g` that start in [fromMs, toMs). */
function windowStarts(fromMs: number, toMs: number, g: Granularity): number[] {
  const step = windowMs(g)
  const out: number[] = []
  for (let t = Math.ceil(fromMs / step) * step; t < toMs; t += step) out.push(t)
  return out
}

/** Runs `fn` over `items` with at most `limit` calls in flight. */
async function forEachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>) {
  let next = 0
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++]!
      await fn(item)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
}

const COUNT_COLUMNS = `source_partition, events, pageviews, bot_events, ${VISIT_COLUMNS}`

function columns(withVisitors: boolean): string {
  return withVisitors ? `${COUNT_COLUMNS}, visitors` : COUNT_COLUMNS
}

export interface CassandraAggregateReaderOptions {
  /** Partition reads in flight per query (breakdowns read one partition per window). Default 32. */
  concurrency?: number
  /** Rows per page of a read. Default 5000. */
  fetchSize?: number
}

/** Reads merged aggregates from Cassandra: single-partition reads, a few per query. */
export class CassandraAggregateReader implements AggregateReader {
  private readonly concurrency: number
  private readonly fetchSize: number

  constructor(
    private readonly client: Client,
    private readonly precision: number,
    options: CassandraAggregateReaderOptions = {},
  ) {
    this.concurrency = options.concurrency ?? 32
    this.fetchSize = options.fetchSize ?? 5000
  }

  private async *rows(query: string, params: unknown[]): AsyncIterable<types.Row> {
    try {
      yield* this.client.stream(query, params, {
        prepare: true,
        fetchSize: this.fetchSize,
      }) as unknown as AsyncIterable<types.Row>
    } catch (err) {
      throw asServiceError(err)
    }
  }

  private async execute(query: string, params: unknown[]): Promise<types.ResultSet> {
    try {
      return await this.client.execute(query, params, { prepare: true })
    } catch (err) {
      throw asServiceError(err)
    }
  }

  async totals(
    siteId: string,
    granularity: Granularity,
    fromMs: number,
    toMs: number,
    options: ReadOptions = {},
  ): Promise<MergedWindow[]> {
    const withVisitors = options.visitors ?? true
    const byWindow = new Map<number, Partial[]>()
    const generations = await this.committed(siteId, granularity, fromMs, toMs)
    await Promise.all(
      bucketsBetween(fromMs, toMs, granularity).map(async (bucket) => {
        const rows = this.rows(
          `SELECT window_start, ${columns(withVisitors)} FROM agg_totals WHERE site_id = ? AND granularity = ? AND bucket = ? AND window_start >= ? AND window_start < ?`,
          [siteId, granularity, bucket, new Date(fromMs), new Date(toMs)],
        )
        for await (const row of rows) {
          const ws = (row.get('window_start') as Date).getTime()
          const list = byWindow.get(ws) ?? []
          list.push(partialOf(row))
          byWindow.set(ws, list)
        }
      }),
    )
    const out: MergedWindow[] = []
    for (const [windowStart, parts] of [...byWindow.entries()].sort((a, b) => a[0] - b[0])) {
      const merged = mergePartials(
        parts,
        this.precision,
        withVisitors,
        generations.of(granularity, windowStart),
        generations.provisional(granularity, windowStart),
      )
      if (merged) out.push({ windowStart, ...merged })
    }
    return out
  }

  async breakdown(
    siteId: string,
    granularity: Granularity,
    dimension: RowDimension,
    fromMs: number,
    toMs: number,
  ): Promise<Map<string, MergedValues & { final: boolean }>> {
    return (await this.breakdownDetailed(siteId, granularity, dimension, fromMs, toMs)).values
  }

  async breakdownDetailed(
    siteId: string,
    granularity: Granularity,
    dimension: RowDimension,
    fromMs: number,
    toMs: number,
    options: ReadOptions & { values?: readonly string[] } = {},
  ): Promise<BreakdownResult> {
    const withVisitors = options.visitors ?? true
    const only = options.values
    const out = new BreakdownCollector(this.precision, withVisitors)
    if (only && only.length === 0) return out.result()
    const generations = await this.committed(siteId, granularity, fromMs, toMs)
    const rebuiltOnly = isRebuiltOnly(dimension)
    // One partition per window; a window's final row replaces its partials before windows merge.
    // Each window is merged as it arrives, so memory holds one window's rows plus the accumulators.
    await forEachLimited(windowStarts(fromMs, toMs, granularity), this.concurrency, async (ws) => {
      const perValue = new Map<string, Partial[]>()
      const rows = this.rows(
        `SELECT value, ${columns(withVisitors)} FROM agg_dims WHERE site_id = ? AND granularity = ? AND dimension = ? AND window_start = ?${only ? ' AND value IN ?' : ''}`,
        only
          ? [siteId, granularity, dimension, new Date(ws), [...only]]
          : [siteId, granularity, dimension, new Date(ws)],
      )
      for await (const row of rows) {
        const value = String(row.get('value'))
        const list = perValue.get(value) ?? []
        list.push(partialOf(row))
        perValue.set(value, list)
      }
      if (perValue.size === 0) return
      const generation = generations.of(granularity, ws)
      const provisional = generations.provisional(granularity, ws)
      for (const [value, parts] of perValue) {
        const merged = mergePartials(
          parts,
          this.precision,
          withVisitors,
          generation,
          provisional,
          rebuiltOnly,
        )
        if (merged) out.add(ws, value, merged)
      }
    })
    return out.result()
  }

  async dimensionWindows(
    siteId: string,
    granularity: Granularity,
    dimension: RowDimension,
    values: readonly string[],
    fromMs: number,
    toMs: number,
    options: ReadOptions = {},
  ): Promise<MergedWindow[]> {
    const withVisitors = options.visitors ?? true
    const out = new WindowsCollector(this.precision, withVisitors)
    if (values.length === 0) return out.result()
    const generations = await this.committed(siteId, granularity, fromMs, toMs)
    const rebuiltOnly = isRebuiltOnly(dimension)
    await forEachLimited(windowStarts(fromMs, toMs, granularity), this.concurrency, async (ws) => {
      const perValue = new Map<string, Partial[]>()
      const rows = this.rows(
        `SELECT value, ${columns(withVisitors)} FROM agg_dims WHERE site_id = ? AND granularity = ? AND dimension = ? AND window_start = ? AND value IN ?`,
        [siteId, granularity, dimension, new Date(ws), [...values]],
      )
      for await (const row of rows) {
        const value = String(row.get('value'))
        const list = perValue.get(value) ?? []
        list.push(partialOf(row))
        perValue.set(value, list)
      }
      if (perValue.size === 0) return
      const generation = generations.of(granularity, ws)
      const provisional = generations.provisional(granularity, ws)
      for (const parts of perValue.values()) {
        const merged = mergePartials(
          parts,
          this.precision,
          withVisitors,
          generation,
          provisional,
          rebuiltOnly,
        )
        if (merged) out.add(ws, merged)
      }
    })
    return out.result()
  }

  async *streamTotals(
    siteId: string,
    granularity: Granularity,
    fromMs: number,
    toMs: number,
  ): AsyncIterable<MergedWindow> {
    // Buckets in time order, rows clustered by (window_start, source_partition): the partials of a
    // window are adjacent, so one window is held at a time.
    const generations = await this.committed(siteId, granularity, fromMs, toMs)
    const merge = (ws: number, parts: Partial[]): MergedWindow | undefined => {
      const merged = mergePartials(
        parts,
        this.precision,
        true,
        generations.of(granularity, ws),
        generations.provisional(granularity, ws),
      )
      return merged && { windowStart: ws, ...merged }
    }
    for (const bucket of bucketsBetween(fromMs, toMs, granularity)) {
      let current: number | undefined
      let parts: Partial[] = []
      const rows = this.rows(
        `SELECT window_start, ${columns(true)} FROM agg_totals WHERE site_id = ? AND granularity = ? AND bucket = ? AND window_start >= ? AND window_start < ?`,
        [siteId, granularity, bucket, new Date(fromMs), new Date(toMs)],
      )
      for await (const row of rows) {
        const ws = (row.get('window_start') as Date).getTime()
        if (current !== undefined && ws !== current) {
          const merged = merge(current, parts)
          if (merged) yield merged
          parts = []
        }
        current = ws
        parts.push(partialOf(row))
      }
      const merged = current === undefined ? undefined : merge(current, parts)
      if (merged) yield merged
    }
  }

  async *streamDimension(
    siteId: string,
    granularity: Granularity,
    dimension: RowDimension,
    fromMs: number,
    toMs: number,
  ): AsyncIterable<MergedDimensionRow> {
    const generations = await this.committed(siteId, granularity, fromMs, toMs)
    const rebuiltOnly = isRebuiltOnly(dimension)
    for (const ws of windowStarts(fromMs, toMs, granularity)) {
      const generation = generations.of(granularity, ws)
      const provisional = generations.provisional(granularity, ws)
      const merge = (value: string, parts: Partial[]): MergedDimensionRow | undefined => {
        const merged = mergePartials(parts, this.precision, true, generation, provisional, rebuiltOnly)
        return merged && { windowStart: ws, value, ...merged }
      }
      let current: string | undefined
      let parts: Partial[] = []
      const rows = this.rows(
        `SELECT value, ${columns(true)} FROM agg_dims WHERE site_id = ? AND granularity = ? AND dimension = ? AND window_start = ?`,
        [siteId, granularity, dimension, new Date(ws)],
      )
      for await (const row of rows) {
        const value = String(row.get('value'))
        if (current !== undefined && value !== current) {
          const merged = merge(current, parts)
          if (merged) yield merged
          parts = []
        }
        current = value
        parts.push(partialOf(row))
      }
      const merged = current === undefined ? undefined : merge(current, parts)
      if (merged) yield merged
    }
  }

  /**
   * The committed generations of the spans covering windows of `g` that start in [fromMs, toMs).
   * Read before the rows: a commit is written after every row of its generation, so rows read
   * afterwards hold the whole generation.
   */
  private async committed(
    siteId: string,
    g: Granularity,
    fromMs: number,
    toMs: number,
  ): Promise<CommittedGenerations> {
    const scope = scopeOf(g)
    const range = spanRange(g, fromMs, toMs)
    const entries: Array<[number, number, boolean]> = []
    for await (const row of this.rows(
      'SELECT span_start, generation, provisional FROM agg_final_commits WHERE site_id = ? AND scope = ? AND span_start >= ? AND span_start < ?',
      [siteId, scope, new Date(range.fromMs), new Date(range.toMs)],
    ))
      entries.push([
        (row.get('span_start') as Date).getTime(),
        Number(row.get('generation')),
        row.get('provisional') === true,
      ])
    return new CommittedGenerations(scope, entries)
  }

  async finalMark(siteId: string): Promise<string> {
    const rs = await this.execute('SELECT mark FROM agg_final_marks WHERE site_id = ?', [siteId])
    return String(rs.first()?.get('mark') ?? '')
  }

  async streamProgress(group: string, topic: string, partitions: number): Promise<StreamProgress[]> {
    if (partitions <= 0) return []
    // One Cassandra partition holds the group's checkpoints: one read, whatever the partition count.
    const rs = await this.execute(
      'SELECT partition, next_offset, watermark_ms, updated_at FROM stream_group_checkpoints WHERE consumer_group = ? AND topic = ?',
      [group, topic],
    )
    return rs.rows
      .map((row) => ({
        partition: Number(row.get('partition')),
        nextOffset: Number(row.get('next_offset') ?? 0),
        watermarkMs: Number(row.get('watermark_ms') ?? 0),
        updatedAtMs: (row.get('updated_at') as Date | null)?.getTime() ?? 0,
      }))
      .filter((p) => p.partition >= 0 && p.partition < partitions)
      .sort((a, b) => a.partition - b.partition)
  }
}
