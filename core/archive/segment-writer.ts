import { crc32 } from 'node:zlib'
import {
  Binary,
  type Data,
  type Field,
  makeData,
  RecordBatch,
  type Schema,
  Struct,
  Table,
  tableToIPC,
  Utf8,
  vectorFromArray,
} from 'apache-arrow'
import {
  COLUMNS,
  DIMENSION_COLUMNS,
  rawSegmentSchema,
  type SegmentMetadata,
  segmentSchema,
} from '../../schemas/arrow.js'
import type { Dimension } from '../aggregate/definition.js'

/** One raw-log event as the archiver keeps it until its segment is written. */
export interface ArchivedEvent {
  siteId: string
  messageId: string
  messageIdAssigned: boolean
  /** hash64(`${siteId}\u0001${messageId}`): the stream's dedup key. */
  dedupHash: bigint
  type: string
  dims: Record<Dimension, string>
  visitorId: string
  /** hash64(visitorId): what the `visitors` sketches take. */
  visitorHash: bigint
  timestampMs: number
  receivedMs: number
  bot: boolean
  imported: boolean
  offset: number
  traceparent: string | undefined
  requestId: string | undefined
  /** The Kafka value, as it was. */
  raw: Buffer
}

export interface EncodedSegment {
  /** The segment file (what a rebuild reads). */
  bytes: Uint8Array
  rows: number
  crc32: number
  /** Its raw sidecar (`….raw.arrow`). */
  raw: { bytes: Uint8Array; crc32: number }
}

function dictionaryData(field: Field, values: readonly string[]): Data {
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
  return makeData({
    type: field.type,
    length: values.length,
    nullCount: 0,
    data: indices,
    dictionary: vectorFromArray(dictionary, new Utf8()),
  })
}

function boolData(field: Field, values: readonly boolean[]): Data {
  const bits = new Uint8Array(Math.ceil(values.length / 8))
  for (let i = 0; i < values.length; i++) if (values[i]) bits[i >>> 3]! |= 1 << (i & 7)
  return makeData({ type: field.type, length: values.length, nullCount: 0, data: bits })
}

function plainData(field: Field, values: BigInt64Array | BigUint64Array): Data {
  return makeData({ type: field.type, length: values.length, nullCount: 0, data: values } as never)
}

function utf8Data(values: ReadonlyArray<string | undefined>): Data {
  // Arrow's builder takes null (not undefined) as a missing value.
  return vectorFromArray(
    values.map((v) => v ?? null),
    new Utf8(),
  ).data[0]!
}

function batchBytes(schema: Schema, n: number, children: Data[]): Uint8Array {
  const batch = new RecordBatch(
    schema,
    makeData({ type: new Struct(schema.fields), length: n, nullCount: 0, children }),
  )
  return tableToIPC(new Table(schema, [batch]), 'file')
}

/**
 * Encodes the events of one partition and one event hour as a segment file and its raw sidecar
 * (schemas/arrow.ts). Rows are sorted by site, then offset, so each site is one run of rows; both
 * files have the same rows in the same order.
 */
export function encodeSegment(events: readonly ArchivedEvent[], meta: SegmentMetadata): EncodedSegment {
  const rows = [...events].sort((a, b) =>
    a.siteId < b.siteId ? -1 : a.siteId > b.siteId ? 1 : a.offset - b.offset,
  )
  const n = rows.length
  const dedup = new BigUint64Array(n)
  const visitor = new BigUint64Array(n)
  const timestamp = new BigInt64Array(n)
  const received = new BigInt64Array(n)
  const offset = new BigInt64Array(n)
  for (let i = 0; i < n; i++) {
    const e = rows[i]!
    dedup[i] = e.dedupHash
    visitor[i] = e.visitorHash
    timestamp[i] = BigInt(e.timestampMs)
    received[i] = BigInt(e.receivedMs)
    offset[i] = BigInt(e.offset)
  }

  const rawSchema = rawSegmentSchema(meta)
  const rawField = fieldsOf(rawSchema)
  const rawBytes = batchBytes(rawSchema, n, [
    plainData(rawField(COLUMNS.offset), offset),
    utf8Data(rows.map((e) => e.messageId)),
    utf8Data(rows.map((e) => e.visitorId)),
    plainData(rawField(COLUMNS.receivedAt), received),
    boolData(
      rawField(COLUMNS.imported),
      rows.map((e) => e.imported),
    ),
    utf8Data(rows.map((e) => e.traceparent)),
    utf8Data(rows.map((e) => e.requestId)),
    vectorFromArray(
      rows.map((e) => new Uint8Array(e.raw.buffer, e.raw.byteOffset, e.raw.byteLength)),
      new Binary(),
    ).data[0]!,
  ])
  const rawCrc = crc32(rawBytes) >>> 0

  const schema = segmentSchema(meta, rawCrc)
  const field = fieldsOf(schema)
  const bytes = batchBytes(schema, n, [
    dictionaryData(
      field(COLUMNS.site),
      rows.map((e) => e.siteId),
    ),
    dictionaryData(
      field(COLUMNS.type),
      rows.map((e) => e.type),
    ),
    ...DIMENSION_COLUMNS.map((d) =>
      dictionaryData(
        field(d),
        rows.map((e) => e.dims[d]),
      ),
    ),
    boolData(
      field(COLUMNS.messageIdAssigned),
      rows.map((e) => e.messageIdAssigned),
    ),
    plainData(field(COLUMNS.dedupHash), dedup),
    plainData(field(COLUMNS.visitorHash), visitor),
    plainData(field(COLUMNS.timestamp), timestamp),
    boolData(
      field(COLUMNS.bot),
      rows.map((e) => e.bot),
    ),
    plainData(field(COLUMNS.offset), offset),
  ])
  return { bytes, rows: n, crc32: crc32(bytes) >>> 0, raw: { bytes: rawBytes, crc32: rawCrc } }
}

function fieldsOf(schema: Schema): (name: string) => Field {
  const fields = new Map(schema.fields.map((f) => [f.name, f]))
  return (name) => fields.get(name)!
}
