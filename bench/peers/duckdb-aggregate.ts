import { writeFile } from 'node:fs/promises'
import { DuckDBInstance } from '@duckdb/node-api'
import { DIMENSIONS } from '../workload.js'

/**
 * The batch benchmark's peer: DuckDB computing the aggregates a Tally rebuild computes, over the
 * same events, in its own process (so its peak RSS is its own).
 *
 * `prepare` turns the bench's flat NDJSON of the workload (the values a Tally archive segment holds:
 * dimensions already derived) into a Parquet file, DuckDB's own columnar format, the counterpart of
 * Tally's Arrow segments. `aggregate` then does, timed, on `threads` threads:
 * keep the first copy of each (site, messageId), keep track/page/screen, and compute per site the
 * minute/hour/day totals and the hour/day breakdowns of 14 dimensions — events, pageviews, bot
 * events, visitors (distinct anonymousId, exact or DuckDB's approx_count_distinct) — into a table,
 * then writes what the bench needs to check it. Variants: the events read from the Parquet file by
 * the query (default) or first loaded into a native DuckDB table (load timed apart), and every
 * grouping set or the hourly totals alone (DuckDB's speed at one GROUP BY). Usage: node duckdb-aggregate.js '<json spec>'.
 * Prints one line `{"done":true,…}` at the end.
 */

type Spec =
  | { mode: 'prepare'; ndjson: string; parquet: string }
  | {
      mode: 'aggregate'
      parquet: string
      distinct: 'exact' | 'approx'
      threads: number
      out: string
      /** `parquet` (default): the query reads the file; `table`: the file is first loaded (untimed) into a native table. */
      source?: 'parquet' | 'table'
      /** `all` (default): every grouping set Tally computes; `hour`: the hourly totals alone (one grouping set). */
      sets?: 'all' | 'hour'
    }

/** Every dimension Tally breaks down by (the truth's list: bench/workload.ts). */
const DIMENSION_COLUMNS = DIMENSIONS

const COLUMNS = {
  seq: 'BIGINT',
  site_id: 'VARCHAR',
  message_id: 'VARCHAR',
  type: 'VARCHAR',
  visitor: 'VARCHAR',
  ts: 'BIGINT',
  bot: 'BOOLEAN',
  ...Object.fromEntries(DIMENSION_COLUMNS.map((d) => [d, 'VARCHAR'])),
}

const sql = (s: string) => `'${s.replaceAll("'", "''")}'`

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '{}') as Spec
  const started = performance.now()
  if (spec.mode === 'prepare') {
    const db = await DuckDBInstance.create(':memory:')
    const c = await db.connect()
    const columns = `{${Object.entries(COLUMNS)
      .map(([k, v]) => `${k}: '${v}'`)
      .join(', ')}}`
    await c.run(
      `COPY (SELECT * FROM read_json(${sql(spec.ndjson)}, format = 'newline_delimited', columns = ${columns}))
       TO ${sql(spec.parquet)} (FORMAT parquet)`,
    )
    const n = await c.runAndReadAll(`SELECT count(*)::DOUBLE AS n FROM read_parquet(${sql(spec.parquet)})`)
    const rows = Number(n.getRowObjectsJS()[0]?.n)
    c.closeSync()
    process.stdout.write(
      `${JSON.stringify({ done: true, rows, seconds: (performance.now() - started) / 1000 })}\n`,
    )
    return
  }

  const db = await DuckDBInstance.create(':memory:', { threads: String(spec.threads) })
  const c = await db.connect()
  let src = `read_parquet(${sql(spec.parquet)})`
  let loadSeconds: number | undefined
  if (spec.source === 'table') {
    const l0 = performance.now()
    await c.run(`CREATE TABLE events AS SELECT * FROM ${src}`)
    loadSeconds = (performance.now() - l0) / 1000
    src = 'events'
  }
  const visitors = spec.distinct === 'exact' ? 'count(DISTINCT visitor)' : 'approx_count_distinct(visitor)'
  const sets =
    spec.sets === 'hour'
      ? ['(site_id, h)']
      : [
          '(site_id, m)',
          '(site_id, h)',
          '(site_id, d)',
          ...['h', 'd'].flatMap((g) => DIMENSION_COLUMNS.map((x) => `(site_id, ${g}, ${x})`)),
        ]
  // Columns outside the grouping sets are NULL, as GROUPING SETS leaves them (one set must say so).
  const keys =
    spec.sets === 'hour'
      ? `site_id, NULL::BIGINT AS m, h, NULL::BIGINT AS d, ${DIMENSION_COLUMNS.map((x) => `NULL::VARCHAR AS ${x}`).join(', ')}`
      : `site_id, m, h, d, ${DIMENSION_COLUMNS.join(', ')}`
  const t0 = performance.now()
  // Dedup: of the copies of one (site, messageId), the first received (lowest seq) counts.
  await c.run(
    `CREATE TEMP TABLE counted AS
     SELECT *, ts // 60000 AS m, ts // 3600000 AS h, ts // 86400000 AS d FROM ${src}
     WHERE type IN ('track', 'page', 'screen')
     QUALIFY row_number() OVER (PARTITION BY site_id, message_id ORDER BY seq) = 1`,
  )
  await c.run(
    `CREATE TEMP TABLE agg AS
     SELECT ${keys},
       count(*) FILTER (WHERE NOT bot) AS events,
       count(*) FILTER (WHERE NOT bot AND type = 'page') AS pageviews,
       count(*) FILTER (WHERE bot) AS bot_events,
       ${visitors} FILTER (WHERE NOT bot) AS visitors
     FROM counted GROUP BY GROUPING SETS (${sets.join(', ')})`,
  )
  const seconds = (performance.now() - t0) / 1000
  const input = Number(
    (await c.runAndReadAll(`SELECT count(*)::DOUBLE AS n FROM ${src}`)).getRowObjectsJS()[0]?.n ?? Number.NaN,
  )
  const rows = Number(
    (await c.runAndReadAll('SELECT count(*)::DOUBLE AS n FROM agg')).getRowObjectsJS()[0]?.n,
  )
  const num = (col: string) => `${col}::DOUBLE AS ${col}`
  // Every result row, for the bench to compare with the truth.
  const result = (
    await c.runAndReadAll(
      `SELECT site_id, m::DOUBLE AS m, h::DOUBLE AS h, d::DOUBLE AS d, ${DIMENSION_COLUMNS.join(', ')},
       ${['events', 'pageviews', 'bot_events', 'visitors'].map(num).join(', ')} FROM agg`,
    )
  ).getRowObjectsJS()
  c.closeSync()
  await writeFile(spec.out, JSON.stringify(result))
  process.stdout.write(
    `${JSON.stringify({
      done: true,
      seconds,
      groupingSets: sets.length,
      ...(loadSeconds !== undefined ? { loadSeconds } : {}),
      inputRows: input,
      resultRows: rows,
      maxRssBytes: process.resourceUsage().maxRSS * 1024,
    })}\n`,
  )
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
  process.exitCode = 1
})
