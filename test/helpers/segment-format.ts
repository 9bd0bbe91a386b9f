import { readFile, rm, writeFile } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { crc32 } from 'node:zlib'
import { makeData, RecordBatch, Schema, Struct, Table, tableFromIPC, tableToIPC } from 'apache-arrow'
import { parseSegmentFileName, rawSidecarName, segmentFileName } from '../../core/archive/segment-file.js'
import { DIMENSION_COLUMNS, DIMENSION_COLUMNS_V1_COUNT, SEGMENT_METADATA } from '../../schemas/arrow.js'

/** The dimension columns format version 2 added (a version-1 segment has none of them). */
export const V2_ONLY_COLUMNS: readonly string[] = DIMENSION_COLUMNS.slice(DIMENSION_COLUMNS_V1_COUNT)

function withMetadata(meta: Map<string, string>, version: string | undefined): Map<string, string> {
  const out = new Map(meta)
  if (version === undefined) out.delete(SEGMENT_METADATA.version)
  else out.set(SEGMENT_METADATA.version, version)
  return out
}

/** The same rows as a new IPC file: `dropColumns` left out, the metadata given. */
function rewritten(
  bytes: Uint8Array,
  metadata: Map<string, string>,
  dropColumns: readonly string[],
): Uint8Array {
  const table = tableFromIPC(bytes)
  const keep = table.schema.fields.flatMap((f, i) => (dropColumns.includes(f.name) ? [] : [i]))
  const fields = keep.map((i) => table.schema.fields[i]!)
  const schema = new Schema(fields, metadata)
  const batches = table.batches.map(
    (b) =>
      new RecordBatch(
        schema,
        makeData({
          type: new Struct(fields),
          length: b.numRows,
          nullCount: 0,
          children: keep.map((i) => b.data.children[i]!),
        }),
      ),
  )
  return tableToIPC(new Table(schema, batches), 'file')
}

/**
 * Rewrites a segment written by today's writer (and its raw sidecar) as another format would have
 * written it: `version` in both files' metadata (undefined: none), `dropColumns` left out of the
 * segment, the sidecar's CRC-32 in the segment's metadata and the segment's own CRC-32 in its new
 * name. Returns the new segment path (the old files are removed).
 */
export async function rewriteSegment(
  path: string,
  version: string | undefined,
  dropColumns: readonly string[] = [],
): Promise<string> {
  const name = parseSegmentFileName(basename(path))
  if (!name) throw new Error(`${path} is not a segment name`)
  const rawPath = join(dirname(path), rawSidecarName(basename(path)))
  const rawBefore = await readFile(rawPath)
  const raw = rewritten(rawBefore, withMetadata(tableFromIPC(rawBefore).schema.metadata, version), [])
  const rawCrc = crc32(raw) >>> 0
  const segBefore = await readFile(path)
  const meta = withMetadata(tableFromIPC(segBefore).schema.metadata, version)
  meta.set(SEGMENT_METADATA.rawCrc32, rawCrc.toString(16).padStart(8, '0'))
  const seg = rewritten(segBefore, meta, dropColumns)
  const newPath = join(dirname(path), segmentFileName({ ...name, crc32: crc32(seg) >>> 0 }))
  await rm(path)
  await rm(rawPath)
  await writeFile(newPath, seg)
  await writeFile(join(dirname(newPath), rawSidecarName(basename(newPath))), raw)
  return newPath
}

/** A segment and its sidecar as format version 1 wrote them (see rewriteSegment). */
export function toFormatV1(path: string): Promise<string> {
  return rewriteSegment(path, '1', V2_ONLY_COLUMNS)
}
