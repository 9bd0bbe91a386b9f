import { pipeline, Readable } from 'node:stream'
import { stringify } from 'csv-stringify'
import { stringify as stringifyRows } from 'csv-stringify/sync'
import type { VisitCounts } from '../core/ports/aggregate-store.js'
import type { Metric, ParsedQuery } from './params.js'
import { iso } from './range.js'
import { visitRates } from './stats.js'

/**
 * `format=csv`: the results of a timeseries or breakdown, and the rows of the aggregates export,
 * as RFC 4180 CSV written by csv-stringify (a header line, then one line per result; a value with a
 * comma, a quote or a line break is quoted, its quotes doubled). CSV carries the rows only: `meta`
 * (freshness, final windows, error bounds) stays with the JSON and NDJSON forms.
 *
 * Paths, event names, referrers, UTM and property values are a visitor's own text, and a cell that
 * begins with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to Excel, LibreOffice and
 * Google Sheets (CSV injection). csv-stringify's `escape_formulas` writes such a text behind a `'`
 * (shown as text, the quote mark hidden); numbers, negative ones included, are written as numbers.
 */

export const CSV_CONTENT_TYPE = 'text/csv; charset=utf-8'

type Cell = string | number | boolean | null | undefined

/** What the CSV export reads of query/export.ts' meta and rows (declared here: export.ts imports this file). */
interface ExportMeta {
  property: string | null
  sketches: boolean
  visits?: boolean
}
interface ExportRow {
  window_start: number
  value: string | null
  events: number
  pageviews: number
  bot_events: number
  visitors: number
  final: boolean
  status: string
  visitors_sketch: Uint8Array | null
  visit?: VisitCounts | null
}

/** A timeseries answer's points: `date`, the metrics asked for (in their order), `status`. */
export function timeseriesCsv(
  results: ReadonlyArray<Record<string, Cell>>,
  metrics: readonly Metric[],
): string {
  return rowsCsv(results, ['date', ...metrics, 'status'])
}

/** A breakdown answer's rows: the property's value, then the metrics asked for. */
export function breakdownCsv(
  results: ReadonlyArray<Record<string, Cell>>,
  property: string,
  metrics: readonly Metric[],
): string {
  return rowsCsv(results, [property, ...metrics])
}

function rowsCsv(results: ReadonlyArray<Record<string, Cell>>, columns: readonly string[]): string {
  return stringifyRows(
    results.map((r) => columns.map((c) => r[c] ?? null)),
    { header: true, columns: [...columns], escape_formulas: true },
  )
}

const VISIT_COLUMNS = [
  'visits',
  'bounces',
  'visit_duration_ms',
  'visit_pageviews',
  'bounce_rate',
  'visit_duration',
  'views_per_visit',
] as const

/** The columns of a CSV export: those of the NDJSON rows, in the same order. */
export function exportCsvColumns(meta: ExportMeta): string[] {
  return [
    'window_start',
    ...(meta.property ? [meta.property] : []),
    'events',
    'pageviews',
    'bot_events',
    'visitors',
    ...(meta.visits ? VISIT_COLUMNS : []),
    'final',
    'status',
    ...(meta.sketches ? ['visitors_sketch'] : []),
  ]
}

/**
 * The export's rows as CSV, streamed through csv-stringify: the next row is read when the client
 * has taken the bytes before it, as with NDJSON. A window without visit data has empty visit
 * cells; `visitors_sketch` is base64. A body that ends early was cut short (no end marker in CSV:
 * compare the row count with an NDJSON export when it matters).
 */
export function csvExportStream(meta: ExportMeta, rows: AsyncIterable<ExportRow>): Readable {
  async function* records(): AsyncGenerator<Cell[]> {
    for await (const r of rows) {
      const v = r.visit
      const rates = v ? visitRates(v) : undefined
      yield [
        iso(r.window_start),
        ...(meta.property ? [r.value] : []),
        r.events,
        r.pageviews,
        r.bot_events,
        r.visitors,
        ...(meta.visits
          ? [
              v?.visits,
              v?.bounces,
              v?.visitDurationMs,
              v?.visitPageviews,
              rates?.bounce_rate,
              rates?.visit_duration,
              rates?.views_per_visit,
            ]
          : []),
        r.final,
        r.status,
        ...(meta.sketches
          ? [r.visitors_sketch ? Buffer.from(r.visitors_sketch).toString('base64') : null]
          : []),
      ]
    }
  }
  const out = stringify({
    header: true,
    columns: exportCsvColumns(meta),
    cast: { boolean: String },
    escape_formulas: true,
  })
  // pipeline destroys `out` with the error of a failed read, so the HTTP answer is cut, not ended.
  pipeline(Readable.from(records()), out, () => {})
  return out
}

/** The CSV of a timeseries or breakdown answer (the only stats endpoints that take `format`). */
export function statsCsv(endpoint: string, q: ParsedQuery, answer: unknown): string {
  const results = (answer as { results: Array<Record<string, Cell>> }).results
  return endpoint === 'breakdown'
    ? breakdownCsv(results, q.property!, q.metrics)
    : timeseriesCsv(results, q.metrics)
}
