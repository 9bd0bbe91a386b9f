import {
  Binary,
  Bool,
  type DataType,
  Dictionary,
  Field,
  Int32,
  Int64,
  Schema,
  TimestampMillisecond,
  Uint64,
  Utf8,
} from 'apache-arrow'
import type { Dimension } from '../core/aggregate/definition.js'

/**
 * The columnar schema of an archive segment: the raw-log events of one source partition whose event
 * `timestamp` falls in one UTC hour, from one archiver flush, as two Arrow IPC files with the same
 * rows in the same order:
 * - the segment file, what a rebuild reads — values precomputed with the shared definitions
 *   (core/aggregate/definition.ts) when the event is archived, so a rebuild works on typed arrays and
 *   dictionaries only: `site`, `type` and every dimension dictionary-encoded (a segment holds few
 *   distinct values), `timestamp` (ms), `bot`, `visitor_hash` (XXH64 of the visitor id, what the
 *   HyperLogLog sketches take), `dedup_hash` (XXH64 of `siteId \u0001 messageId`, the stream's dedup
 *   key), `message_id_assigned` (server-assigned ids are never deduplicated) and `offset`;
 * - its raw sidecar (`….raw.arrow`), what keeps the archive a faithful copy of the raw log:
 *   `offset`, `message_id`, `visitor_id`, `received_at`, `imported`, the trace headers and `raw`, the
 *   Kafka value bytes as they were. Kept apart so a rebuild reads ~70 bytes per event, not the
 *   ~300 of the JSON; the segment's metadata carries the sidecar's CRC-32.
 *
 * Rows are sorted by site (then offset): a site's rows are one run, so a rebuild of one site reads
 * one slice. The file name carries the partition, the offset range of the flush, the row count and
 * a CRC-32 of the file (see core/archive/segment-file.ts).
 */

/**
 * Written into the schema metadata of both files. Version 1 had the first seven dimension columns
 * only (event … device); version 2 added country, source, channel and the rest of the UTM set. The
 * sidecar's fields are the same in both.
 */
export const SEGMENT_FORMAT_VERSION = 2

/** The versions a reader takes; it refuses any other (and a file without one) as corrupt. */
export const SEGMENT_FORMAT_VERSIONS = [1, 2] as const
export type SegmentFormatVersion = (typeof SEGMENT_FORMAT_VERSIONS)[number]

/** Dimension columns, named after the dimensions and in their order. */
export const DIMENSION_COLUMNS = [
  'event',
  'path',
  'referrer',
  'utm_source',
  'browser',
  'os',
  'device',
  'country',
  'source',
  'channel',
  'utm_medium',
  'utm_campaign',
  'utm_content',
  'utm_term',
] as const satisfies readonly Dimension[]

/** How many of DIMENSION_COLUMNS a segment of format version 1 holds (the first ones). */
export const DIMENSION_COLUMNS_V1_COUNT = 7

/** The dimension columns a segment of `version` holds, in file order. */
export function dimensionColumnsOf(version: SegmentFormatVersion): readonly Dimension[] {
  return version === 1 ? DIMENSION_COLUMNS.slice(0, DIMENSION_COLUMNS_V1_COUNT) : DIMENSION_COLUMNS
}

export const COLUMNS = {
  site: 'site',
  messageId: 'message_id',
  messageIdAssigned: 'message_id_assigned',
  dedupHash: 'dedup_hash',
  type: 'type',
  visitorId: 'visitor_id',
  visitorHash: 'visitor_hash',
  timestamp: 'timestamp',
  receivedAt: 'received_at',
  bot: 'bot',
  imported: 'imported',
  offset: 'offset',
  traceparent: 'traceparent',
  requestId: 'request_id',
  raw: 'raw',
} as const

/** Keys of the schema's custom metadata. */
export const SEGMENT_METADATA = {
  version: 'tally.segment.version',
  topic: 'tally.topic',
  partition: 'tally.partition',
  hour: 'tally.hour',
  firstOffset: 'tally.first_offset',
  lastOffset: 'tally.last_offset',
  /** CRC-32 of the raw sidecar (hex), on the segment file. */
  rawCrc32: 'tally.raw_crc32',
} as const

function dictionary(id: number): Dictionary<Utf8, Int32> {
  return new Dictionary(new Utf8(), new Int32(), id)
}

/**
 * Every field of a segment file of `version` (default: the one written), in file order. Dictionary
 * ids are fixed per column.
 */
export function segmentFields(version: SegmentFormatVersion = SEGMENT_FORMAT_VERSION): Field[] {
  return [
    new Field(COLUMNS.site, dictionary(0), false),
    new Field(COLUMNS.type, dictionary(1), false),
    ...dimensionColumnsOf(version).map((name, i) => new Field(name, dictionary(2 + i), false)),
    new Field(COLUMNS.messageIdAssigned, new Bool(), false),
    new Field(COLUMNS.dedupHash, new Uint64(), false),
    new Field(COLUMNS.visitorHash, new Uint64(), false),
    new Field(COLUMNS.timestamp, new TimestampMillisecond(), false),
    new Field(COLUMNS.bot, new Bool(), false),
    new Field(COLUMNS.offset, new Int64(), false),
  ]
}

/** Every field of a raw sidecar, in file order (the same in versions 1 and 2). */
export function rawSegmentFields(): Field[] {
  return [
    new Field(COLUMNS.offset, new Int64(), false),
    new Field(COLUMNS.messageId, new Utf8(), false),
    new Field(COLUMNS.visitorId, new Utf8(), false),
    new Field(COLUMNS.receivedAt, new TimestampMillisecond(), false),
    new Field(COLUMNS.imported, new Bool(), false),
    new Field(COLUMNS.traceparent, new Utf8(), true),
    new Field(COLUMNS.requestId, new Utf8(), true),
    new Field(COLUMNS.raw, new Binary(), false),
  ]
}

export interface SegmentMetadata {
  topic: string
  partition: number
  /** Start of the event-time hour (ms, UTC). */
  hourStartMs: number
  firstOffset: number
  lastOffset: number
}

function metadata(meta: SegmentMetadata, extra: Array<[string, string]> = []): Map<string, string> {
  return new Map([
    [SEGMENT_METADATA.version, String(SEGMENT_FORMAT_VERSION)],
    [SEGMENT_METADATA.topic, meta.topic],
    [SEGMENT_METADATA.partition, String(meta.partition)],
    [SEGMENT_METADATA.hour, new Date(meta.hourStartMs).toISOString()],
    [SEGMENT_METADATA.firstOffset, String(meta.firstOffset)],
    [SEGMENT_METADATA.lastOffset, String(meta.lastOffset)],
    ...extra,
  ])
}

/** The segment file's schema; it names the CRC-32 of its raw sidecar. */
export function segmentSchema(meta: SegmentMetadata, rawCrc32: number): Schema {
  return new Schema(
    segmentFields(),
    metadata(meta, [[SEGMENT_METADATA.rawCrc32, (rawCrc32 >>> 0).toString(16).padStart(8, '0')]]),
  )
}

export function rawSegmentSchema(meta: SegmentMetadata): Schema {
  return new Schema(rawSegmentFields(), metadata(meta))
}

/** The format version in a schema's metadata, if it is one a reader takes. */
export function segmentVersionOf(schema: Schema): SegmentFormatVersion | undefined {
  const version = schema.metadata.get(SEGMENT_METADATA.version)
  return SEGMENT_FORMAT_VERSIONS.find((v) => String(v) === version)
}

/**
 * Why a schema read from a file is not an expected one (undefined when it is): a version a reader
 * takes (SEGMENT_FORMAT_VERSIONS), and the field names and types of that version (`fieldsOf`:
 * segmentFields or rawSegmentFields) in the same order.
 */
export function schemaProblem(
  schema: Schema,
  fieldsOf: (version: SegmentFormatVersion) => readonly Field[],
): string | undefined {
  const version = segmentVersionOf(schema)
  if (version === undefined)
    return `segment format version ${schema.metadata.get(SEGMENT_METADATA.version) ?? '(none)'}, expected ${SEGMENT_FORMAT_VERSIONS.join(' or ')}`
  const expected = fieldsOf(version)
  if (schema.fields.length !== expected.length)
    return `${schema.fields.length} columns, expected ${expected.length} (format version ${version})`
  for (let i = 0; i < expected.length; i++) {
    const want = expected[i]!
    const got = schema.fields[i]!
    if (got.name !== want.name) return `column ${i} is ${got.name}, expected ${want.name}`
    if (!sameType(got.type, want.type))
      return `column ${got.name} has type ${got.type}, expected ${want.type}`
  }
  return undefined
}

function sameType(a: DataType, b: DataType): boolean {
  return a.typeId === b.typeId && String(a) === String(b)
}
