import type { Granularity, RowDimension } from '../aggregate/definition.js'
import { CommittedGenerations, scopeOf, spanRange } from '../aggregate/final.js'
import { isRebuiltOnly } from '../aggregate/goals.js'
// One definition of "a final row replaces the partials, partials add up and merge registers",
// shared with the Cassandra reader so that both backends answer alike.
import { BreakdownCollector, generationOfRow, mergePartials, WindowsCollector } from '../aggregate/merge.js'
import type {
  AggregateReader,
  BreakdownResult,
  MergedDimensionRow,
  MergedValues,
  MergedWindow,
  ReadOptions,
  StreamProgress,
} from '../ports/aggregate-store.js'
import type { Db } from './sqlite.js'

interface PartialRow {
  window_start: number
  value?: string
  source_partition: number
  events: number
  pageviews: number
  bot_events: number
  visitors?: Buffer
  /** Null in rows written before visits existed (no visit data). */
  visits: number | null
  bounces: number | null
  visit_duration_ms: number | null
  visit_pageviews: number | null
}

type Merged = MergedValues & { final: boolean }

function partialOf(r: PartialRow) {
  return {
    events: r.events,
    pageviews: r.pageviews,
    botEvents: r.bot_events,
    visitors: r.visitors ?? null,
    generation: generationOfRow(r.source_partition),
    visits:
      r.visits === null
        ? null
        : {
            visits: r.visits,
            bounces: r.bounces ?? 0,
            visitDurationMs: r.visit_duration_ms ?? 0,
            visitPageviews: r.visit_pageviews ?? 0,
          },
  }
}

/**
 * Calls `emit` once per run of consecutive rows with the same group key (rows come ordered by it),
 * with the run's rows: the partials of one window, or of one (window, value).
 */
function eachGroup(
  rows: Iterable<PartialRow>,
  keyOf: (r: PartialRow) => string,
  emit: (first: PartialRow, parts: PartialRow[]) => void,
): void {
  let key: string | undefined
  let parts: PartialRow[] = []
  for (const r of rows) {
    const k = keyOf(r)
    if (key !== undefined && k !== key) {
      emit(parts[0]!, parts)
      parts = []
    }
    key = k
    parts.push(r)
  }
  if (parts.length > 0) emit(parts[0]!, parts)
}

/** Merges one group's rows (one window, or one value in a window) under its committed generation. */
function mergeGroup(
  parts: readonly PartialRow[],
  precision: number,
  withVisitors: boolean,
  generations: CommittedGenerations,
  g: Granularity,
  rebuiltOnly = false,
) {
  return mergePartials(
    parts.map(partialOf),
    precision,
    withVisitors,
    generations.of(g, parts[0]!.window_start),
    generations.provisional(g, parts[0]!.window_start),
    rebuiltOnly,
  )
}

const byWindow = (r: PartialRow) => String(r.window_start)
const byWindowValue = (r: PartialRow) => `${r.window_start}\u0001${r.value}`

export interface EmbeddedAggregateReaderOptions {
  /** Rows per page of a bulk export read. Default 5000. */
  pageRows?: number
}

/**
 * Reads merged aggregates from the embedded store (AggregateReader): range scans on the primary
 * keys, merged window by window exactly like the Cassandra reader. Never writes.
 */
export class EmbeddedAggregateReader implements AggregateReader {
  private readonly pageRows: number
  private readonly stmt

  constructor(
    db: Db,
    private readonly precision: number,
    options: EmbeddedAggregateReaderOptions = {},
    private readonly now: () => number = Date.now,
  ) {
    this.pageRows = Math.max(2, options.pageRows ?? 5000)
    const live = '(expires_at_ms IS NULL OR expires_at_ms > @now)'
    const counts =
      'source_partition, events, pageviews, bot_events, visits, bounces, visit_duration_ms, visit_pageviews'
    const totals = (cols: string) =>
      `SELECT window_start, ${cols} FROM agg_totals WHERE site_id = @site AND granularity = @g AND window_start >= @from AND window_start < @to AND ${live}`
    const dims = (cols: string) =>
      `SELECT window_start, value, ${cols} FROM agg_dims WHERE site_id = @site AND granularity = @g AND dimension = @d AND window_start >= @from AND window_start < @to AND ${live}`
    const onlyValues = ' AND value IN (SELECT value FROM json_each(@values))'
    const withVisitors = `${counts}, visitors`
    this.stmt = {
      totals: db.prepare(`${totals(withVisitors)} ORDER BY window_start, source_partition`),
      totalsCounts: db.prepare(`${totals(counts)} ORDER BY window_start, source_partition`),
      totalsPage: db.prepare(
        `${totals(withVisitors)} AND window_start > @after ORDER BY window_start, source_partition LIMIT @limit`,
      ),
      totalsWindow: db.prepare(
        `SELECT window_start, ${withVisitors} FROM agg_totals WHERE site_id = @site AND granularity = @g AND window_start = @ws AND ${live} ORDER BY source_partition`,
      ),
      dims: db.prepare(`${dims(withVisitors)} ORDER BY window_start, value, source_partition`),
      dimsCounts: db.prepare(`${dims(counts)} ORDER BY window_start, value, source_partition`),
      dimsOnly: db.prepare(
        `${dims(withVisitors)}${onlyValues} ORDER BY window_start, value, source_partition`,
      ),
      dimsOnlyCounts: db.prepare(
        `${dims(counts)}${onlyValues} ORDER BY window_start, value, source_partition`,
      ),
      dimsFirstPage: db.prepare(
        `${dims(withVisitors)} ORDER BY window_start, value, source_partition LIMIT @limit`,
      ),
      dimsPage: db.prepare(
        `${dims(withVisitors)} AND (window_start, value) > (@afterWs, @afterValue) ORDER BY window_start, value, source_partition LIMIT @limit`,
      ),
      dimsOne: db.prepare(
        `SELECT window_start, value, ${withVisitors} FROM agg_dims WHERE site_id = @site AND granularity = @g AND dimension = @d AND window_start = @ws AND value = @value AND ${live} ORDER BY source_partition`,
      ),
      mark: db.prepare('SELECT mark FROM agg_final_marks WHERE site_id = ?'),
      commits: db.prepare(
        `SELECT span_start, generation, provisional FROM agg_final_commits WHERE site_id = @site AND scope = @scope AND span_start >= @from AND span_start < @to AND ${live}`,
      ),
      progress: db.prepare(
        'SELECT partition, next_offset, watermark_ms, updated_at_ms FROM stream_checkpoints WHERE consumer_group = ? AND topic = ? AND partition >= 0 AND partition < ? ORDER BY partition',
      ),
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
    const stmt = withVisitors ? this.stmt.totals : this.stmt.totalsCounts
    const generations = this.committed(siteId, granularity, fromMs, toMs)
    const out: MergedWindow[] = []
    eachGroup(
      stmt.iterate({
        site: siteId,
        g: granularity,
        from: fromMs,
        to: toMs,
        now: this.now(),
      }) as Iterable<PartialRow>,
      byWindow,
      (first, parts) => {
        const merged = mergeGroup(parts, this.precision, withVisitors, generations, granularity)
        if (merged) out.push({ windowStart: first.window_start, ...merged })
      },
    )
    return out
  }

  async breakdown(
    siteId: string,
    granularity: Granularity,
    dimension: RowDimension,
    fromMs: number,
    toMs: number,
  ): Promise<Map<string, Merged>> {
    return (await this.breakdownDetailed(siteId, granularity, dimension, fromMs, toMs)).values
  }

  private dimRows(
    siteId: string,
    granularity: Granularity,
    dimension: RowDimension,
    fromMs: number,
    toMs: number,
    withVisitors: boolean,
    only: readonly string[] | undefined,
  ): Iterable<PartialRow> {
    const params = { site: siteId, g: granularity, d: dimension, from: fromMs, to: toMs, now: this.now() }
    if (only) {
      const stmt = withVisitors ? this.stmt.dimsOnly : this.stmt.dimsOnlyCounts
      return stmt.iterate({ ...params, values: JSON.stringify(only) }) as Iterable<PartialRow>
    }
    const stmt = withVisitors ? this.stmt.dims : this.stmt.dimsCounts
    return stmt.iterate(params) as Iterable<PartialRow>
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
    // A (window, value)'s final row replaces its partials before windows merge.
    const generations = this.committed(siteId, granularity, fromMs, toMs)
    eachGroup(
      this.dimRows(siteId, granularity, dimension, fromMs, toMs, withVisitors, only),
      byWindowValue,
      (first, parts) => {
        const merged = mergeGroup(
          parts,
          this.precision,
          withVisitors,
          generations,
          granularity,
          isRebuiltOnly(dimension),
        )
        if (merged) out.add(first.window_start, String(first.value), merged)
      },
    )
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
    if (values.length === 0) return []
    const out = new WindowsCollector(this.precision, withVisitors)
    const generations = this.committed(siteId, granularity, fromMs, toMs)
    eachGroup(
      this.dimRows(siteId, granularity, dimension, fromMs, toMs, withVisitors, values),
      byWindowValue,
      (first, parts) => {
        const merged = mergeGroup(
          parts,
          this.precision,
          withVisitors,
          generations,
          granularity,
          isRebuiltOnly(dimension),
        )
        if (merged) out.add(first.window_start, merged)
      },
    )
    return out.result()
  }

  async *streamTotals(
    siteId: string,
    granularity: Granularity,
    fromMs: number,
    toMs: number,
  ): AsyncIterable<MergedWindow> {
    const base = { site: siteId, g: granularity, from: fromMs, to: toMs }
    const generations = this.committed(siteId, granularity, fromMs, toMs)
    let after = fromMs - 1
    for (;;) {
      const now = this.now()
      const rows = this.stmt.totalsPage.all({ ...base, now, after, limit: this.pageRows }) as PartialRow[]
      if (rows.length === 0) return
      const full = rows.length === this.pageRows
      const lastWs = rows[rows.length - 1]!.window_start
      // A full page may end inside a window: keep its last window for the next page, unless the
      // page holds that window only (then read the window whole).
      let page = full ? rows.filter((r) => r.window_start !== lastWs) : rows
      if (page.length === 0) {
        page = this.stmt.totalsWindow.all({ site: siteId, g: granularity, ws: lastWs, now }) as PartialRow[]
      }
      const out: MergedWindow[] = []
      eachGroup(page, byWindow, (first, parts) => {
        const merged = mergeGroup(parts, this.precision, true, generations, granularity)
        if (merged) out.push({ windowStart: first.window_start, ...merged })
      })
      for (const w of out) yield w
      if (!full) return
      after = page[page.length - 1]!.window_start
    }
  }

  async *streamDimension(
    siteId: string,
    granularity: Granularity,
    dimension: RowDimension,
    fromMs: number,
    toMs: number,
  ): AsyncIterable<MergedDimensionRow> {
    const base = { site: siteId, g: granularity, d: dimension, from: fromMs, to: toMs }
    const generations = this.committed(siteId, granularity, fromMs, toMs)
    let cursor: { ws: number; value: string } | undefined
    for (;;) {
      const now = this.now()
      const rows = (
        cursor
          ? this.stmt.dimsPage.all({
              ...base,
              now,
              afterWs: cursor.ws,
              afterValue: cursor.value,
              limit: this.pageRows,
            })
          : this.stmt.dimsFirstPage.all({ ...base, now, limit: this.pageRows })
      ) as PartialRow[]
      if (rows.length === 0) return
      const full = rows.length === this.pageRows
      const last = rows[rows.length - 1]!
      const lastKey = byWindowValue(last)
      let page = full ? rows.filter((r) => byWindowValue(r) !== lastKey) : rows
      if (page.length === 0) {
        page = this.stmt.dimsOne.all({
          site: siteId,
          g: granularity,
          d: dimension,
          ws: last.window_start,
          value: last.value,
          now,
        }) as PartialRow[]
      }
      const out: MergedDimensionRow[] = []
      eachGroup(page, byWindowValue, (first, parts) => {
        const merged = mergeGroup(
          parts,
          this.precision,
          true,
          generations,
          granularity,
          isRebuiltOnly(dimension),
        )
        if (merged) out.push({ windowStart: first.window_start, value: String(first.value), ...merged })
      })
      for (const r of out) yield r
      if (!full) return
      const end = page[page.length - 1]!
      cursor = { ws: end.window_start, value: String(end.value) }
    }
  }

  /**
   * The committed generations of the spans covering windows of `g` that start in [fromMs, toMs),
   * read before the rows (a commit follows every row of its generation).
   */
  private committed(siteId: string, g: Granularity, fromMs: number, toMs: number): CommittedGenerations {
    const scope = scopeOf(g)
    const range = spanRange(g, fromMs, toMs)
    const rows = this.stmt.commits.all({
      site: siteId,
      scope,
      from: range.fromMs,
      to: range.toMs,
      now: this.now(),
    }) as Array<{ span_start: number; generation: number; provisional: number }>
    return new CommittedGenerations(
      scope,
      rows.map((r) => [r.span_start, r.generation, r.provisional === 1] as const),
    )
  }

  async finalMark(siteId: string): Promise<string> {
    const row = this.stmt.mark.get(siteId) as { mark: string } | undefined
    return row?.mark ?? ''
  }

  async streamProgress(group: string, topic: string, partitions: number): Promise<StreamProgress[]> {
    if (partitions <= 0) return []
    const rows = this.stmt.progress.all(group, topic, partitions) as Array<{
      partition: number
      next_offset: number
      watermark_ms: number
      updated_at_ms: number
    }>
    return rows.map((r) => ({
      partition: r.partition,
      nextOffset: r.next_offset,
      watermarkMs: r.watermark_ms,
      updatedAtMs: r.updated_at_ms,
    }))
  }
}
