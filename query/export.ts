import { Readable } from 'node:stream'
import {
  AsyncByteQueue,
  Binary,
  Bool,
  type Data,
  Field,
  Float64,
  Int64,
  makeData,
  RecordBatch,
  RecordBatchStreamWriter,
  Schema,
  Struct,
  TimestampMillisecond,
  Utf8,
  vectorFromArray,
} from 'apache-arrow'
import type { Granularity } from '../core/aggregate/definition.js'
import { visitCountsOf } from '../core/aggregate/merge.js'
import type {
  AggregateReader,
  MergedDimensionRow,
  MergedWindow,
  VisitCounts,
} from '../core/ports/aggregate-store.js'
import { CSV_CONTENT_TYPE, csvExportStream } from './csv.js'
import type { FreshnessSource } from './freshness.js'
import { accuracyOf, type FreshnessMeta, freshnessMeta, type MetricAccuracy, windowStatus } from './meta.js'
import type { AggregateExportFormat, ParsedQuery } from './params.js'
import { iso } from './range.js'
import { type StatsService, visitorsEstimate, visitRates } from './stats.js'

/**
 * Bulk export of aggregates for a range, streamed: rows are read one Cassandra page at a time and
 * written as they come (NDJSON lines, or Arrow IPC record batches of {@link ARROW_BATCH_ROWS}
 * rows), and the next page is read only when the client has taken the bytes before it, so memory
 * stays flat whatever the range.
 *
 * Rows are the windows of `interval` that hold data (empty windows are absent), totals or, with
 * `property`, one row per (window, value). `visitors` is the window's estimate; with
 * `sketches=true` the HyperLogLog registers come along (`visitors_sketch`, core/hll.ts format), so
 * a consumer can merge windows or values into exact-as-stored unions itself.
 *
 * With `visits=true` (`meta.visits`) rows carry the visits that started in the
 * window: the sums `visits`, `bounces`, `visit_duration_ms`, `visit_pageviews` (add them up to merge
 * windows or values) and the rates `bounce_rate`, `visit_duration`, `views_per_visit`; all null
 * for a window written before visits were counted.
 */

export const ARROW_BATCH_ROWS = 1024
const NDJSON_CHUNK_BYTES = 64 * 1024

export const EXPORT_CONTENT_TYPES: Readonly<Record<AggregateExportFormat, string>> = {
  ndjson: 'application/x-ndjson',
  arrow: 'application/vnd.apache.arrow.stream',
  csv: CSV_CONTENT_TYPE,
}

export interface ExportMeta {
  site: string
  from: string
  to: string
  requested?: { from: string; to: string }
  interval: Granularity
  property: string | null
  complete_through: string | null
  freshness: FreshnessMeta
  metrics: Record<string, MetricAccuracy>
  sketches: boolean
  /** Rows carry the visit columns. */
  visits?: boolean
}

export interface ExportRow {
  window_start: number
  value: string | null
  events: number
  pageviews: number
  bot_events: number
  visitors: number
  final: boolean
  status: string
  visitors_sketch: Uint8Array | null
  /** Visit counts of the row (meta.visits); null when its window has no visit data. */
  visit?: VisitCounts | null
}

export interface PreparedExport {
  contentType: string
  meta: ExportMeta
  body: Readable
}

export interface ExportDeps {
  stats: StatsService
  reader: AggregateReader
  freshness: FreshnessSource
  precision: number
  maxExportWindows: number
  maxExportDimensionWindows: number
  /** Called once per row written (metrics). */
  onRow?: () => void
}

/** Checks the parameters, reads the freshness, and returns the body to stream. */
export async function prepareExport(deps: ExportDeps, q: ParsedQuery): Promise<PreparedExport> {
  const property = q.property
  const { interval, range } = deps.stats.seriesRange(
    q,
    () => (property ? deps.maxExportDimensionWindows : deps.maxExportWindows),
    property !== undefined,
    'hour',
  )
  const freshness = await deps.freshness.current()
  const requested = q.range!
  const widened = requested.fromMs !== range.fromMs || requested.toMs !== range.toMs
  const meta: ExportMeta = {
    site: q.siteId,
    from: iso(range.fromMs),
    to: iso(range.toMs),
    ...(widened ? { requested: { from: iso(requested.fromMs), to: iso(requested.toMs) } } : {}),
    interval,
    property: property ?? null,
    complete_through: freshness.completeThroughMs === undefined ? null : iso(freshness.completeThroughMs),
    freshness: freshnessMeta(freshness),
    metrics: accuracyOf(
      [
        'events',
        'pageviews',
        'bot_events',
        'visitors',
        ...(q.visits ? (['visits', 'bounce_rate', 'visit_duration', 'views_per_visit'] as const) : []),
      ],
      deps.precision,
    ),
    sketches: q.sketches,
    ...(q.visits ? { visits: true } : {}),
  }
  const source: AsyncIterable<MergedWindow | MergedDimensionRow> = property
    ? deps.reader.streamDimension(q.siteId, interval, property, range.fromMs, range.toMs)
    : deps.reader.streamTotals(q.siteId, interval, range.fromMs, range.toMs)
  const sketches = q.sketches
  async function* rows(): AsyncGenerator<ExportRow> {
    for await (const w of source) {
      deps.onRow?.()
      yield {
        window_start: w.windowStart,
        value: 'value' in w ? w.value : null,
        events: w.events,
        pageviews: w.pageviews,
        bot_events: w.botEvents,
        visitors: visitorsEstimate(w.visitors),
        final: w.final,
        status: windowStatus(w.windowStart, interval, w.final, freshness.completeThroughMs),
        visitors_sketch: sketches ? w.visitors : null,
        visit: visitCountsOf(w) ?? null,
      }
    }
  }
  const format = q.format as AggregateExportFormat
  const body =
    format === 'arrow'
      ? Readable.from(arrowStream(meta, rows()), { objectMode: false })
      : format === 'csv'
        ? csvExportStream(meta, rows())
        : Readable.from(ndjsonStream(meta, rows()), { objectMode: false })
  return { contentType: EXPORT_CONTENT_TYPES[format], meta, body }
}

/**
 * NDJSON: a first line `{"type":"meta",…}`, one `{"type":"row",…}` line per row, and a last line
 * `{"type":"end","rows":N}`; a body without the end line was cut short.
 */
export async function* ndjsonStream(
  meta: ExportMeta,
  rows: AsyncIterable<ExportRow>,
): AsyncGenerator<Buffer> {
  let chunk = `${JSON.stringify({ type: 'meta', ...meta })}\n`
  let n = 0
  for await (const r of rows) {
    n++
    chunk += `${JSON.stringify({
      type: 'row',
      window_start: iso(r.window_start),
      ...(meta.property ? { [meta.property]: r.value } : {}),
      events: r.events,
      pageviews: r.pageviews,
      bot_events: r.bot_events,
      visitors: r.visitors,
      ...(meta.visits ? visitFields(r.visit) : {}),
      final: r.final,
      status: r.status,
      ...(r.visitors_sketch ? { visitors_sketch: Buffer.from(r.visitors_sketch).toString('base64') } : {}),
    })}\n`
    if (chunk.length >= NDJSON_CHUNK_BYTES) {
      yield Buffer.from(chunk)
      chunk = ''
    }
  }
  chunk += `${JSON.stringify({ type: 'end', rows: n })}\n`
  yield Buffer.from(chunk)
}

/** The visit columns of a row: sums and rates, null without visit data. */
function visitFields(v: VisitCounts | null | undefined): Record<string, number | null> {
  if (!v)
    return {
      visits: null,
      bounces: null,
      visit_duration_ms: null,
      visit_pageviews: null,
      bounce_rate: null,
      visit_duration: null,
      views_per_visit: null,
    }
  return {
    visits: v.visits,
    bounces: v.bounces,
    visit_duration_ms: v.visitDurationMs,
    visit_pageviews: v.visitPageviews,
    ...visitRates(v),
  }
}

const VISIT_INT_COLUMNS = ['visits', 'bounces', 'visit_duration_ms', 'visit_pageviews'] as const
const VISIT_RATE_COLUMNS = ['bounce_rate', 'visit_duration', 'views_per_visit'] as const

/** Receives the writer's bytes synchronously, so each batch's bytes can be handed on at once. */
class ChunkCollector extends AsyncByteQueue<Uint8Array> {
  readonly chunks: Buffer[] = []

  override write(value: Uint8Array): void {
    // Copied: the writer may hand out views of buffers it reuses.
    this.chunks.push(Buffer.from(value))
  }

  take(): Buffer {
    return Buffer.concat(this.chunks.splice(0))
  }
}

export function exportSchema(meta: ExportMeta): Schema {
  const fields = [
    new Field('window_start', new TimestampMillisecond('UTC'), false),
    ...(meta.property ? [new Field(meta.property, new Utf8(), false)] : []),
    new Field('events', new Int64(), false),
    new Field('pageviews', new Int64(), false),
    new Field('bot_events', new Int64(), false),
    new Field('visitors', new Int64(), false),
    ...(meta.visits
      ? [
          ...VISIT_INT_COLUMNS.map((c) => new Field(c, new Int64(), true)),
          ...VISIT_RATE_COLUMNS.map((c) => new Field(c, new Float64(), true)),
        ]
      : []),
    new Field('final', new Bool(), false),
    new Field('status', new Utf8(), false),
    ...(meta.sketches ? [new Field('visitors_sketch', new Binary(), false)] : []),
  ]
  return new Schema(fields, new Map([['tally.meta', JSON.stringify(meta)]]))
}

function int64(values: readonly number[]): Data {
  return makeData({ type: new Int64(), length: values.length, data: BigInt64Array.from(values, BigInt) })
}

function visitColumns(rows: readonly ExportRow[]): Data[] {
  const fields = rows.map((r) => visitFields(r.visit))
  return [
    ...VISIT_INT_COLUMNS.map(
      (c) =>
        vectorFromArray(
          fields.map((f) => (f[c] === null ? null : BigInt(f[c]!))),
          new Int64(),
        ).data[0]!,
    ),
    ...VISIT_RATE_COLUMNS.map(
      (c) =>
        vectorFromArray(
          fields.map((f) => f[c]),
          new Float64(),
        ).data[0]!,
    ),
  ]
}

function recordBatch(schema: Schema, meta: ExportMeta, rows: readonly ExportRow[]): RecordBatch {
  const children: Data[] = [
    vectorFromArray(
      rows.map((r) => r.window_start),
      new TimestampMillisecond('UTC'),
    ).data[0]!,
    ...(meta.property
      ? [
          vectorFromArray(
            rows.map((r) => r.value ?? ''),
            new Utf8(),
          ).data[0]!,
        ]
      : []),
    int64(rows.map((r) => r.events)),
    int64(rows.map((r) => r.pageviews)),
    int64(rows.map((r) => r.bot_events)),
    int64(rows.map((r) => r.visitors)),
    ...(meta.visits ? visitColumns(rows) : []),
    vectorFromArray(
      rows.map((r) => r.final),
      new Bool(),
    ).data[0]!,
    vectorFromArray(
      rows.map((r) => r.status),
      new Utf8(),
    ).data[0]!,
    ...(meta.sketches
      ? [
          vectorFromArray(
            rows.map((r) => r.visitors_sketch ?? new Uint8Array(0)),
            new Binary(),
          ).data[0]!,
        ]
      : []),
  ]
  const data = makeData({ type: new Struct(schema.fields), length: rows.length, nullCount: 0, children })
  return new RecordBatch(schema, data)
}

/**
 * Arrow IPC stream format: the schema (the export's meta as JSON under the `tally.meta` key of the
 * schema metadata), record batches of up to {@link ARROW_BATCH_ROWS} rows, the end-of-stream marker.
 */
export async function* arrowStream(meta: ExportMeta, rows: AsyncIterable<ExportRow>): AsyncGenerator<Buffer> {
  const schema = exportSchema(meta)
  const sink = new ChunkCollector()
  const writer = new RecordBatchStreamWriter()
  writer.reset(sink, schema)
  yield sink.take()
  let batch: ExportRow[] = []
  for await (const r of rows) {
    batch.push(r)
    if (batch.length >= ARROW_BATCH_ROWS) {
      writer.write(recordBatch(schema, meta, batch))
      batch = []
      yield sink.take()
    }
  }
  if (batch.length > 0) writer.write(recordBatch(schema, meta, batch))
  writer.close()
  yield sink.take()
}
