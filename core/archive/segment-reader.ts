import { readFile } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { crc32 } from 'node:zlib'
import { type Data, type Table, tableFromIPC } from 'apache-arrow'
import {
  COLUMNS,
  DIMENSION_COLUMNS,
  dimensionColumnsOf,
  rawSegmentFields,
  SEGMENT_METADATA,
  type SegmentFormatVersion,
  schemaProblem,
  segmentFields,
  segmentVersionOf,
} from '../../schemas/arrow.js'
import { dimensionsOf } from '../aggregate/definition.js'
import { ERR } from '../error-codes.js'
import { TallyError } from '../errors.js'
import { decodeEvent } from '../record/codec.js'
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
  /**
   * In DIMENSION_COLUMNS order (the dimensions' order), every one of them whatever the file's format
   * version: readSegment derives those a version-1 file lacks (see completeV1Segment).
   */
  dims: DictColumn[]
  /** The file's format version (schemas/arrow.ts). */
  version: SegmentFormatVersion
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

/**
 * Reads and checks a segment of format version 1 or 2 (see readChecked, decodeSegment). The columns
 * are always of the current shape: for a version-1 segment the dimensions it lacks are derived from
 * its raw sidecar (completeV1Segment).
 */
export async function readSegment(ref: SegmentRef): Promise<SegmentColumns> {
  const bytes = await readChecked(ref.path, ref.crc32, 'the name')
  let cols: SegmentColumns
  try {
    cols = decodeSegment(ref, bytes)
  } catch (err) {
    if (err instanceof CorruptSegmentError) throw err
    throw new CorruptSegmentError(ref.path, (err as Error).message, err)
  }
  return cols.version === 1 ? completeV1Segment(cols) : cols
}

/**
 * Decodes and checks segment bytes (see readSegment); throws plain errors on problems. For a
 * version-1 segment `dims` holds only the columns the file has (the first seven): readSegment
 * completes them.
 */
export function decodeSegment(ref: SegmentRef, bytes: Uint8Array): SegmentColumns {
  const table = tableFromIPC(bytes)
  const problem = schemaProblem(table.schema, segmentFields)
  if (problem) throw new Error(problem)
  // schemaProblem refused a schema without a version a reader takes.
  const version = segmentVersionOf(table.schema)!
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
    dims: dimensionColumnsOf(version).map((d) => dictColumn(table, d, rows)),
    version,
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
    const problem = schemaProblem(table.schema, rawSegmentFields)
    if (problem) throw new Error(problem)
    const version = segmentVersionOf(table.schema)
    if (version !== cols.version)
      throw new Error(`format version ${version}, the segment's is ${cols.version}`)
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

/** A dictionary column of `values` (dictionary in order of first appearance, as the writer makes). */
function dictOf(values: readonly string[]): DictColumn {
  const index = new Map<string, number>()
  const dictionary: string[] = []
  const indices = new Int32Array(values.length)
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!
    let k = index.get(v)
    if (k === undefined) {
      k = dictionary.length
      index.set(v, k)
      dictionary.push(v)
    }
    indices[i] = k
  }
  return { indices, dictionary }
}

/**
 * A version-1 segment lacks the dimension columns added in version 2 (country, source, channel, the
 * rest of the UTM set). They are derived exactly as the archiver writes them (batch/decode.ts):
 * each row's Kafka value from the raw sidecar (read once, checked against the segment), decoded by
 * the raw-record module, its dimensions from the definitions module. An event logged before
 * countries existed has none, so its country is what the definitions give for none, `(unknown)`.
 * One segment at a time: the sidecar is dropped once the columns are built.
 */
async function completeV1Segment(cols: SegmentColumns): Promise<SegmentColumns> {
  const raw = (await readRawSegment(cols)).getChild(COLUMNS.raw)!
  const missing = DIMENSION_COLUMNS.slice(cols.dims.length)
  const values = missing.map(() => new Array<string>(cols.rows))
  for (let i = 0; i < cols.rows; i++) {
    const bytes = raw.get(i) as Uint8Array
    const decoded = decodeEvent({
      offset: int64At(cols.offset, i),
      key: undefined,
      value: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength),
      // The schema-version header was checked when the record was archived; the sidecar keeps the
      // value only.
      headers: {},
      timestampMs: 0,
    })
    if (!decoded.ok) {
      throw new CorruptSegmentError(
        rawSidecarPath(cols.ref),
        `row ${i} is not a raw event the archiver would have kept: ${decoded.reason}`,
      )
    }
    const dims = dimensionsOf(decoded.event.event)
    missing.forEach((d, k) => {
      values[k]![i] = dims[d]
    })
  }
  const derived = values.map(dictOf)
  // Held beside the file's bytes: count their indices too.
  const derivedBytes = derived.reduce((n, c) => n + c.indices.byteLength, 0)
  return { ...cols, dims: [...cols.dims, ...derived], byteLength: cols.byteLength + derivedBytes }
}
