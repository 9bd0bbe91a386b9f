import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import {
  Dictionary,
  makeData,
  makeVector,
  Table,
  tableFromIPC,
  tableToIPC,
  Uint8,
  Uint16,
  Uint32,
  Utf8,
  type Vector,
  vectorFromArray,
} from 'apache-arrow'
import {
  type Answer,
  type AnswerRow,
  byEventsThenKey,
  type CodeArray,
  codeArray,
  type DayBatch,
  type Dictionaries,
  estimateOf,
  FILTER_DIMENSIONS,
  type FilterDimension,
  type FilterQuery,
  fillDays,
  newRegisters,
  PAGEVIEW,
  registerIndex,
  registerRank,
} from './data.js'

/**
 * Design b of the filters study: one compacted Arrow IPC file per site-day, as a rebuild would write
 * it once the day is final. Every dimension is a dictionary-encoded column whose dictionary holds only
 * the values present that day (so a small site's file does not carry 10⁵ paths); the visitor is kept
 * as its HyperLogLog register index and value (3 bytes), which is all a sketch needs. A query reads
 * the day files of its range and scans their typed arrays: each filter narrows a selection vector,
 * then counts and registers are gathered over it, per day or per breakdown value.
 */

export function arrowFileName(day: number): string {
  return `day-${String(day).padStart(2, '0')}.arrow`
}

function indexType(codes: CodeArray): Uint8 | Uint16 | Uint32 {
  if (codes instanceof Uint8Array) return new Uint8()
  if (codes instanceof Uint16Array) return new Uint16()
  return new Uint32()
}

/** The Arrow table of one site-day: dictionaries of the values present, codes renumbered to them. */
export function arrowTableOfDay(batch: DayBatch, dicts: Dictionaries): Table {
  const columns: Record<string, Vector> = { second: makeVector(batch.second) }
  for (const dim of FILTER_DIMENSIONS) {
    const source = batch.codes[dim]
    const remap = new Int32Array(dicts[dim].length).fill(-1)
    const values: string[] = []
    for (let i = 0; i < batch.n; i++) {
      const c = source[i]!
      if (remap[c] === -1) {
        remap[c] = values.length
        values.push(dicts[dim][c]!)
      }
    }
    const codes = codeArray(values.length, batch.n)
    for (let i = 0; i < batch.n; i++) codes[i] = remap[source[i]!]!
    const type = new Dictionary(new Utf8(), indexType(codes))
    const dictionary = vectorFromArray(values, new Utf8())
    columns[dim] = makeVector(makeData({ type, length: batch.n, nullCount: 0, data: codes, dictionary }))
  }
  const reg = new Uint16Array(batch.n)
  const rank = new Uint8Array(batch.n)
  for (let i = 0; i < batch.n; i++) {
    reg[i] = registerIndex(batch.hashHi[i]!)
    rank[i] = registerRank(batch.hashHi[i]!, batch.hashLo[i]!)
  }
  columns.reg = makeVector(reg)
  columns.rank = makeVector(rank)
  return new Table(columns)
}

/** Writes a site-day file; returns its size in bytes. */
export async function writeArrowDay(dir: string, batch: DayBatch, dicts: Dictionaries): Promise<number> {
  const bytes = tableToIPC(arrowTableOfDay(batch, dicts), 'file')
  await writeFile(join(dir, arrowFileName(batch.day)), bytes)
  return bytes.byteLength
}

/** A loaded site-day: its columns as typed arrays, dictionaries as strings. */
export interface DayColumns {
  day: number
  n: number
  codes: Record<FilterDimension, ArrayLike<number>>
  values: Record<FilterDimension, string[]>
  reg: ArrayLike<number>
  rank: ArrayLike<number>
  /** value → code, built on first use per dimension. */
  index: Partial<Record<FilterDimension, Map<string, number>>>
  bytes: number
}

/** The columns of an Arrow table written by {@link arrowTableOfDay} (one record batch). */
export function columnsOf(table: Table, day: number, bytes: number): DayColumns {
  if (table.batches.length !== 1)
    throw new Error(`day ${day}: expected one record batch, got ${table.batches.length}`)
  const data = (name: string) => {
    const child = table.getChild(name)
    if (!child) throw new Error(`day ${day}: no column ${name}`)
    return child.data[0]!
  }
  const codes = {} as Record<FilterDimension, ArrayLike<number>>
  const values = {} as Record<FilterDimension, string[]>
  for (const dim of FILTER_DIMENSIONS) {
    const d = data(dim)
    codes[dim] = d.values as ArrayLike<number>
    values[dim] = (d.dictionary?.toArray() ?? []) as string[]
  }
  return {
    day,
    n: table.numRows,
    codes,
    values,
    reg: data('reg').values as ArrayLike<number>,
    rank: data('rank').values as ArrayLike<number>,
    index: {},
    bytes,
  }
}

function codeOf(cols: DayColumns, dim: FilterDimension, value: string): number | undefined {
  let index = cols.index[dim]
  if (!index) {
    index = new Map(cols.values[dim].map((v, i) => [v, i]))
    cols.index[dim] = index
  }
  return index.get(value)
}

/** Rows of a day that pass every filter (undefined: all rows). Empty when a value is absent that day. */
function select(cols: DayColumns, q: FilterQuery): Uint32Array | undefined {
  let selection: Uint32Array | undefined
  for (const f of q.filters) {
    const code = codeOf(cols, f.dimension, f.value)
    if (code === undefined) return new Uint32Array(0)
    const column = cols.codes[f.dimension]
    if (!selection) {
      let k = 0
      const out = new Uint32Array(cols.n)
      for (let i = 0; i < cols.n; i++) if (column[i] === code) out[k++] = i
      selection = out.subarray(0, k)
    } else {
      let k = 0
      for (let j = 0; j < selection.length; j++) {
        const i = selection[j]!
        if (column[i] === code) selection[k++] = i
      }
      selection = selection.subarray(0, k)
    }
  }
  return selection
}

/** Calls `each(i)` for every selected row (all rows when there is no filter). */
function forSelected(cols: DayColumns, selection: Uint32Array | undefined, each: (i: number) => void): void {
  if (!selection) for (let i = 0; i < cols.n; i++) each(i)
  else for (let j = 0; j < selection.length; j++) each(selection[j]!)
}

/** Answers the query set from the day files of a folder; keeps the loaded days while `cache` is on. */
export class ArrowDesign {
  private readonly loaded = new Map<number, DayColumns>()

  constructor(
    private readonly source: { dir: string } | { tables: ReadonlyMap<number, Table> },
    private readonly cache = true,
  ) {}

  /** Forgets the loaded days (the next query reads its files again: a cold query). */
  dropCache(): void {
    this.loaded.clear()
  }

  /** Bytes of the columns held in memory. */
  cachedBytes(): number {
    let n = 0
    for (const c of this.loaded.values()) n += c.bytes
    return n
  }

  private async day(day: number): Promise<DayColumns | undefined> {
    const hit = this.loaded.get(day)
    if (hit) return hit
    let cols: DayColumns
    if ('tables' in this.source) {
      const table = this.source.tables.get(day)
      if (!table) return undefined
      cols = columnsOf(table, day, 0)
    } else {
      let bytes: Buffer
      try {
        bytes = await readFile(join(this.source.dir, arrowFileName(day)))
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
        throw err
      }
      cols = columnsOf(tableFromIPC(bytes), day, bytes.byteLength)
    }
    if (this.cache) this.loaded.set(day, cols)
    return cols
  }

  async answer(q: FilterQuery): Promise<Answer> {
    const days: DayColumns[] = []
    for (let d = q.fromDay; d <= q.toDay; d++) {
      const cols = await this.day(d)
      if (cols) days.push(cols)
    }
    const selections = days.map((cols) => select(cols, q))
    if (q.kind === 'breakdown') return { id: q.id, rows: this.breakdown(q, days, selections) }
    const rows: AnswerRow[] = []
    let regs = newRegisters()
    let events = 0
    let pageviews = 0
    days.forEach((cols, k) => {
      const pv = codeOf(cols, 'event', PAGEVIEW) ?? -1
      const event = cols.codes.event
      const { reg, rank } = cols
      forSelected(cols, selections[k], (i) => {
        events++
        if (event[i] === pv) pageviews++
        const r = reg[i]!
        if (rank[i]! > regs[r]!) regs[r] = rank[i]!
      })
      if (q.kind === 'timeseries') {
        if (events > 0) rows.push({ key: String(cols.day), events, pageviews, visitors: estimateOf(regs) })
        regs = newRegisters()
        events = 0
        pageviews = 0
      }
    })
    if (q.kind === 'timeseries') return { id: q.id, rows: fillDays(q, rows) }
    return { id: q.id, rows: [{ key: '', events, pageviews, visitors: estimateOf(regs) }] }
  }

  private breakdown(
    q: FilterQuery,
    days: DayColumns[],
    selections: (Uint32Array | undefined)[],
  ): AnswerRow[] {
    const by = q.by ?? 'path'
    const totals = new Map<string, AnswerRow>()
    days.forEach((cols, k) => {
      const values = cols.values[by]
      const events = new Float64Array(values.length)
      const pageviews = new Float64Array(values.length)
      const pv = codeOf(cols, 'event', PAGEVIEW) ?? -1
      const column = cols.codes[by]
      const event = cols.codes.event
      forSelected(cols, selections[k], (i) => {
        const c = column[i]!
        events[c]!++
        if (event[i] === pv) pageviews[c]!++
      })
      for (let c = 0; c < values.length; c++) {
        if (events[c] === 0) continue
        const key = values[c]!
        const row = totals.get(key)
        if (row) {
          row.events += events[c]!
          row.pageviews += pageviews[c]!
        } else totals.set(key, { key, events: events[c]!, pageviews: pageviews[c]!, visitors: 0 })
      }
    })
    const top = [...totals.values()].sort(byEventsThenKey).slice(0, q.limit)
    // Second pass: registers for the top values only (a sketch per value of 10⁵ would not fit).
    const regs = top.map(() => newRegisters())
    days.forEach((cols, k) => {
      const slot = new Int16Array(cols.values[by].length).fill(-1)
      top.forEach((row, s) => {
        const c = codeOf(cols, by, row.key)
        if (c !== undefined) slot[c] = s
      })
      const column = cols.codes[by]
      const { reg, rank } = cols
      forSelected(cols, selections[k], (i) => {
        const s = slot[column[i]!]!
        if (s < 0) return
        const r = reg[i]!
        const target = regs[s]!
        if (rank[i]! > target[r]!) target[r] = rank[i]!
      })
    })
    return top.map((row, s) => ({ ...row, visitors: estimateOf(regs[s]!) }))
  }
}
