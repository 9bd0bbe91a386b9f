import { existsSync } from 'node:fs'
import { open, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { type DuckDBConnection, DuckDBInstance } from '@duckdb/node-api'
import {
  type Answer,
  type AnswerRow,
  type DayBatch,
  type Dictionaries,
  estimateOfHistogram,
  FILTER_DIMENSIONS,
  type FilterQuery,
  fillDays,
  PAGEVIEW,
  registerIndex,
  registerRank,
} from './data.js'

/**
 * Design c of the filters study: DuckDB (`@duckdb/node-api`) over the same site-days written as
 * Parquet (zstd; Parquet dictionary-encodes the string columns itself). DuckDB reads Parquet, CSV and
 * JSON with its built-in extensions; Arrow IPC would need the `arrow` extension, downloaded at run
 * time, so the files are Parquet, made by DuckDB from the day's codes (a CSV of integers joined
 * with the dictionaries). Visitors: DuckDB returns, per group, the histogram of the HyperLogLog
 * registers (max rank per register index); the estimate is computed by core/hll.ts from it, so it is
 * the same number the other designs compute from the registers themselves.
 */

export function parquetFileName(day: number): string {
  return `day-${String(day).padStart(2, '0')}.parquet`
}

const sql = (s: string) => `'${s.replaceAll("'", "''")}'`
const csvValue = (s: string) => `"${s.replaceAll('"', '""')}"`

/** A DuckDB instance with the settings every use here shares (no extension downloads). */
export async function openDuck(threads: number): Promise<DuckDBConnection> {
  const db = await DuckDBInstance.create(':memory:', {
    threads: String(threads),
    autoinstall_known_extensions: 'false',
    autoload_known_extensions: 'false',
  })
  return db.connect()
}

/** Writes Parquet files of site-days: the dictionaries are loaded once per writer. */
export class ParquetWriter {
  private constructor(
    private readonly conn: DuckDBConnection,
    private readonly dir: string,
  ) {}

  static async open(dir: string, dicts: Dictionaries, threads = 1): Promise<ParquetWriter> {
    const conn = await openDuck(threads)
    for (const dim of FILTER_DIMENSIONS) {
      const file = join(dir, `dict-${dim}.csv`)
      await writeFile(file, `code,v\n${dicts[dim].map((v, i) => `${i},${csvValue(v)}`).join('\n')}\n`)
      await conn.run(
        `CREATE TABLE d_${dim} AS SELECT * FROM read_csv(${sql(file)}, header = true, quote = '"', escape = '"',
         columns = {'code': 'INTEGER', 'v': 'VARCHAR'})`,
      )
      await rm(file)
    }
    return new ParquetWriter(conn, dir)
  }

  /** Writes one site-day; returns the Parquet file's size in bytes. */
  async write(batch: DayBatch): Promise<number> {
    const csv = join(this.dir, `codes-${batch.day}.csv`)
    const columns = FILTER_DIMENSIONS.map((d) => batch.codes[d])
    // Written in slices: a 20 M-events day as one string would not fit in a V8 string.
    const file = await open(csv, 'w')
    try {
      const lines: string[] = []
      for (let i = 0; i < batch.n; i++) {
        const hi = batch.hashHi[i]!
        lines.push(
          `${batch.second[i]},${columns.map((c) => c[i]).join(',')},${registerIndex(hi)},${registerRank(hi, batch.hashLo[i]!)}`,
        )
        if (lines.length === 65_536 || i === batch.n - 1) {
          await file.write(`${lines.join('\n')}\n`)
          lines.length = 0
        }
      }
    } finally {
      await file.close()
    }
    const types = {
      second: 'UINTEGER',
      ...Object.fromEntries(FILTER_DIMENSIONS.map((d) => [d, 'INTEGER'])),
      reg: 'USMALLINT',
      rank: 'UTINYINT',
    }
    const spec = `{${Object.entries(types)
      .map(([k, v]) => `'${k}': '${v}'`)
      .join(', ')}}`
    const out = join(this.dir, parquetFileName(batch.day))
    await this.conn.run(
      `COPY (SELECT ${batch.day}::USMALLINT AS day, e.second,
         ${FILTER_DIMENSIONS.map((d) => `d_${d}.v AS ${d}`).join(', ')}, e.reg, e.rank
       FROM read_csv(${sql(csv)}, header = false, columns = ${spec}) e
       ${FILTER_DIMENSIONS.map((d) => `JOIN d_${d} ON d_${d}.code = e.${d}`).join(' ')}
       ORDER BY e.second)
       TO ${sql(out)} (FORMAT parquet, COMPRESSION zstd)`,
    )
    await rm(csv)
    return (await stat(out)).size
  }

  close(): void {
    this.conn.closeSync()
  }
}

/** Answers the query set with SQL over the Parquet files of a folder. */
export class DuckDesign {
  private conn: DuckDBConnection | undefined

  constructor(
    private readonly dir: string,
    private readonly threads = 1,
  ) {}

  /** A new DuckDB instance for the next query (nothing of the files kept: a cold query). */
  dropCache(): void {
    this.conn?.closeSync()
    this.conn = undefined
  }

  private async connection(): Promise<DuckDBConnection> {
    this.conn ??= await openDuck(this.threads)
    return this.conn
  }

  async answer(q: FilterQuery): Promise<Answer> {
    const files: string[] = []
    for (let d = q.fromDay; d <= q.toDay; d++) {
      const f = join(this.dir, parquetFileName(d))
      if (existsSync(f)) files.push(sql(f))
    }
    const empty = q.kind === 'totals' ? [{ key: '', events: 0, pageviews: 0, visitors: 0 }] : []
    if (files.length === 0) return { id: q.id, rows: q.kind === 'timeseries' ? fillDays(q, []) : empty }
    const conn = await this.connection()
    const src = `read_parquet([${files.join(', ')}])`
    const where = q.filters.map((f) => `${f.dimension} = ${sql(f.value)}`)
    const group = q.kind === 'totals' ? "''" : q.kind === 'timeseries' ? 'day::VARCHAR' : (q.by ?? 'path')
    const counts = (
      await conn.runAndReadAll(
        `SELECT ${group} AS k, count(*)::DOUBLE AS events,
           count(*) FILTER (WHERE event = ${sql(PAGEVIEW)})::DOUBLE AS pageviews
         FROM ${src} ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''}
         GROUP BY k ${q.kind === 'breakdown' ? `ORDER BY events DESC, k ASC LIMIT ${q.limit}` : ''}`,
      )
    ).getRowObjectsJS() as Array<{ k: string; events: number; pageviews: number }>
    if (q.kind === 'totals' && counts.length === 0) return { id: q.id, rows: empty }
    const keys = counts.map((r) => r.k)
    if (q.kind === 'breakdown' && keys.length > 0) where.push(`${group} IN (${keys.map(sql).join(', ')})`)
    const histogram = (
      await conn.runAndReadAll(
        `SELECT k, r::INTEGER AS r, count(*)::DOUBLE AS n FROM (
           SELECT ${group} AS k, reg, max(rank) AS r FROM ${src}
           ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''} GROUP BY k, reg)
         GROUP BY k, r`,
      )
    ).getRowObjectsJS() as Array<{ k: string; r: number; n: number }>
    const byKey = new Map<string, Map<number, number>>()
    for (const h of histogram) {
      let m = byKey.get(h.k)
      if (!m) {
        m = new Map()
        byKey.set(h.k, m)
      }
      m.set(h.r, h.n)
    }
    const rows: AnswerRow[] = counts.map((r) => ({
      key: r.k,
      events: r.events,
      pageviews: r.pageviews,
      visitors: estimateOfHistogram(byKey.get(r.k) ?? new Map()),
    }))
    if (q.kind === 'timeseries') return { id: q.id, rows: fillDays(q, rows) }
    return { id: q.id, rows }
  }
}
