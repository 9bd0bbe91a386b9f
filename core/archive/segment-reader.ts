import { readFile } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { crc32 } from 'node:zlib'
import { type Data, type Table, tableFromIPC } from 'apache-arrow'
import {
  COLUMNS,
  DIMENSION_COLUMNS,
  rawSegmentFields,
  SEGMENT_METADATA,
  schemaProblem,
  segmentFields,
} from '../../schemas/arrow.js'
import { ERR } from '../error-codes.js'
import { TallyError } from '../errors.js'
import { rawSidecarName, type SegmentRef } from './segment-file.js'

const HOUR_MS = 3_600_000

/** A segment that cannot be read as written: truncated, damaged, or not a segment at all. */
export class CorruptSegmentError extends TallyError {
  readonly path: string

  constructor(path: string, problem: string, cause?: unknown) {
    super(ERR.CORRUPT_SEGMENT, `corrupt archive segment ${path}: ${problem}`, {
      where: path,
      ...(cause === undefined ? {} : { cause }),
    })
    this.name = 'CorruptSegmentError'
    this.path = path
  }
}

/** A dictionary-encoded string column: one index per row into `dictionary`. */
export interface DictColumn {
  indices: Int32Array
  dictionary: string[]
}

// Int64 / Uint64 columns are read as pairs of 32-bit words to avoid a BigInt per row.
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1
/** Index of the low word of value i in a pair view is 2i + LO, of the high word 2i + HI. */
export const LO = LITTLE_ENDIAN ? 0 : 1
export const HI = LITTLE_ENDIAN ? 1 : 0

/** The columns a rebuild uses, as typed arrays (views into the file's bytes, no copies). */
export interface SegmentColumns {
  ref: SegmentRef
  rows: number
  site: DictColumn
  type: DictColumn
  /** In DIMENSION_COLUMNS order (the dimensions' order). */
  dims: DictColumn[]
  /** Bitmaps, bit i of byte i >> 3. */
  bot: Uint8Array
  messageIdAssigned: Uint8Array
  /** ms since epoch as 32-bit word pairs (see LO / HI). */
  timestamp: Int32Array
  visitorHash: Uint32Array
  dedupHash: BigUint64Array
  offset: Int32Array
  /** CRC-32 of the raw sidecar, from the metadata. */
  rawCrc32: number
  /** Size of the file (what holding these columns costs in memory). */
  byteLength: number
  table: Table
}

export function bit(bits: Uint8Array, i: number): boolean {
  return ((bits[i >>> 3]! >>> (i & 7)) & 1) === 1
}

/** A 64-bit integer read from a word-pair view (exact below 2^53). */
export function int64At(pairs: Int32Array, i: number): number {
  return pairs[2 * i + HI]! * 4294967296 + (pairs[2 * i + LO]! >>> 0)
}

function onlyData(table: Table, name: string): Data {
  const child = table.getChild(name)
  const data = child?.data.length === 1 ? child.data[0] : undefined
  if (!data) throw new Error(`column ${name} is missing or split`)
  if (data.offset !== 0) throw new Error(`column ${name} starts at offset ${data.offset}`)
  return data
}

function dictColumn(table: Table, name: string, rows: number): DictColumn {
  const data = onlyData(table, name)
  const indices = data.values as Int32Array
  const dictionary = (data.dictionary?.toArray() ?? []) as string[]
  if (!(indices instanceof Int32Array) || indices.length < rows)
    throw new Error(`column ${name} is malformed`)
  const size = dictionary.length
  for (let i = 0; i < rows; i++) {
    const k = indices[i]!
    if (k < 0 || k >= size) throw new Error(`column ${name} row ${i} points outside its dictionary`)
  }
  return { indices: indices.subarray(0, rows), dictionary }
}

function pairs<T extends Int32Array | Uint32Array>(
  table: Table,
  name: string,
  rows: number,
  View: { new (b: ArrayBufferLike, o: number, l: number): T },
): T {
  const values = onlyData(table, name).values as BigInt64Array | BigUint64Array
  if (values.length < rows) throw new Error(`column ${name} is short`)
  return new View(values.buffer, values.byteOffset, rows * 2)
}

function bits(table: Table, name: string, rows: number): Uint8Array {
  const values = onlyData(table, name).values as Uint8Array
  if (values.length * 8 < rows) throw new Error(`column ${name} is short`)
  return values
}

/**
 * Reads a closed segment and checks it completely before anything uses it: size and CRC-32 against
 * its name, the Arrow structure and schema, its metadata against its name, every dictionary index,
 * and every timestamp inside the segment's hour. Throws CorruptSegmentError naming the file.
 */
async function readChecked(path: string, expectedCrc: number, what: string): Promise<Buffer> {
  let bytes: Buffer
  try {
    bytes = await readFile(path)
  } catch (err) {
    throw new CorruptSegmentError(path, `cannot be read: ${(err as Error).message}`, err)
  }
  if (bytes.length === 0) throw new CorruptSegmentError(path, 'the file is empty')
  const sum = crc32(bytes) >>> 0
  if (sum !== expectedCrc) {
    throw new CorruptSegmentError(
      path,
      `checksum ${sum.toString(16).padStart(8, '0')} does not match ${what} (truncated or damaged, ${bytes.length} bytes)`,
    )
  }
  return bytes
}

export async function readSegment(ref: SegmentRef): Promise<SegmentColumns> {
  const bytes = await readChecked(ref.path, ref.crc32, 'the name')
  try {
    return decodeSegment(ref, bytes)
  } catch (err) {
    if (err instanceof CorruptSegmentError) throw err
    throw new CorruptSegmentError(ref.path, (err as Error).message, err)
  }
}

/** Decodes and checks segment bytes (see readSegment); throws plain errors on problems. */
export function decodeSegment(ref: SegmentRef, bytes: Uint8Array): SegmentColumns {
  const table = tableFromIPC(bytes)
  const problem = schemaProblem(table.schema, segmentFields())
  if (problem) throw new Error(problem)
  const meta = table.schema.metadata
  const rows = table.numRows
  if (rows !== ref.rows) throw new Error(`${rows} rows, the name says ${ref.rows}`)
  const expectMeta: Array<[string, string]> = [
    [SEGMENT_METADATA.partition, String(ref.partition)],
    [SEGMENT_METADATA.firstOffset, String(ref.firstOffset)],
    [SEGMENT_METADATA.lastOffset, String(ref.lastOffset)],
    [SEGMENT_METADATA.hour, new Date(ref.hourStartMs).toISOString()],
  ]
  for (const [key, want] of expectMeta) {
    if (meta.get(key) !== want) throw new Error(`metadata ${key} is ${meta.get(key)}, expected ${want}`)
  }
  const cols: SegmentColumns = {
    ref,
    rows,
    site: dictColumn(table, COLUMNS.site, rows),
    type: dictColumn(table, COLUMNS.type, rows),
    dims: DIMENSION_COLUMNS.map((d) => dictColumn(table, d, rows)),
    bot: bits(table, COLUMNS.bot, rows),
    messageIdAssigned: bits(table, COLUMNS.messageIdAssigned, rows),
    timestamp: pairs(table, COLUMNS.timestamp, rows, Int32Array),
    visitorHash: pairs(table, COLUMNS.visitorHash, rows, Uint32Array),
    dedupHash: (onlyData(table, COLUMNS.dedupHash).values as BigUint64Array).subarray(0, rows),
    offset: pairs(table, COLUMNS.offset, rows, Int32Array),
    rawCrc32: Number.parseInt(meta.get(SEGMENT_METADATA.rawCrc32) ?? '', 16),
    byteLength: bytes.byteLength,
    table,
  }
  if (!Number.isInteger(cols.rawCrc32)) throw new Error('no raw sidecar checksum in the metadata')
  const end = ref.hourStartMs + HOUR_MS
  for (let i = 0; i < rows; i++) {
    const ts = int64At(cols.timestamp, i)
    if (ts < ref.hourStartMs || ts >= end) throw new Error(`row ${i} has a timestamp outside the hour`)
    const off = int64At(cols.offset, i)
    if (off < ref.firstOffset || off > ref.lastOffset)
      throw new Error(`row ${i} has offset ${off}, outside ${ref.firstOffset}..${ref.lastOffset}`)
  }
  return cols
}

/** The path of a segment's raw sidecar. */
export function rawSidecarPath(ref: SegmentRef): string {
  return join(dirname(ref.path), rawSidecarName(basename(ref.path)))
}

/**
 * Reads a segment's raw sidecar (ids, receive times, trace headers, the original Kafka values),
 * checked against the segment: CRC-32 from its metadata, schema, and the same offsets row by row.
 */
export async function readRawSegment(cols: SegmentColumns): Promise<Table> {
  const path = rawSidecarPath(cols.ref)
  const bytes = await readChecked(path, cols.rawCrc32, 'the segment’s metadata')
  try {
    const table = tableFromIPC(bytes)
    const problem = schemaProblem(table.schema, rawSegmentFields())
    if (problem) throw new Error(problem)
    if (table.numRows !== cols.rows) throw new Error(`${table.numRows} rows, the segment has ${cols.rows}`)
    const offsets = pairs(table, COLUMNS.offset, cols.rows, Int32Array)
    for (let i = 0; i < cols.rows; i++) {
      if (int64At(offsets, i) !== int64At(cols.offset, i))
        throw new Error(`row ${i} is not the segment's row ${i}`)
    }
    return table
  } catch (err) {
    throw new CorruptSegmentError(path, (err as Error).message, err)
  }
}
