import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { COLUMNS, DIMENSION_COLUMNS } from '../../schemas/arrow.js'
import type { Dimension } from '../aggregate/definition.js'
import { ERR } from '../error-codes.js'
import { TallyError } from '../errors.js'
import { findDuplicates, forEachSiteRun } from './dedup.js'
import { listSegments, type SegmentRef } from './segment-file.js'
import {
  bit,
  CorruptSegmentError,
  int64At,
  readRawSegment,
  readSegment,
  type SegmentColumns,
} from './segment-reader.js'

/**
 * The archived events of one site over an exact time range, deduplicated, read lazily: what a
 * raw-event export streams.
 *
 * `openArchiveRange` lists the segments of the event hours overlapping [fromMs, toMs) and runs the
 * rebuild's dedup pass over them (core/archive/dedup.ts: bounded memory, candidates spill to files beyond
 * `maxDedupRowsInMemory`); it also notes which segments hold rows of the site inside the exact range.
 * `events()` then reads those segments again one at a time, with their raw sidecars, and yields
 * their rows: the next segment is read only when the consumer asks for more, so memory holds one
 * segment (an archiver flush) whatever the range.
 *
 * Dedup is the rebuild's: of the copies of a messageId among the hours read, the one with the
 * lowest (partition, offset) is the event; server-assigned ids are never deduplicated. A copy
 * inside the range whose first copy lies outside it (same hours, other minutes) is not exported,
 * so ranges that split the same hours never both hold one event.
 *
 * Order: event hour, then partition, then offset (log order within a partition); not sorted by
 * timestamp inside an hour.
 */

/** One archived event as a range read yields it. */
export interface ArchivedRow {
  partition: number
  offset: number
  siteId: string
  messageId: string
  messageIdAssigned: boolean
  type: string
  /** The dimension values the aggregates count it under. */
  dims: Record<Dimension, string>
  visitorId: string
  timestampMs: number
  receivedMs: number
  bot: boolean
  imported: boolean
  traceparent: string | undefined
  requestId: string | undefined
  /** The raw-log value as it was (RawEventV1 JSON, UTF-8); a view, valid until the next row is asked for. */
  raw: Uint8Array
}

export interface ArchiveRangeOptions {
  /** The archive folder of the raw topic (`<archiveDir>/<topic>`). */
  topicDir: string
  siteId: string
  /** Exact range of event time (`timestamp`), half-open. */
  fromMs: number
  toMs: number
  /** Parent folder of this read's dedup spill folder (created; the spill folder is removed). */
  spillDir: string
  /** Dedup candidates kept in memory (28 bytes each) before spilling to files. Default 500 000. */
  maxDedupRowsInMemory?: number
  /** Stops the read (checked before each segment). */
  signal?: AbortSignal
  /** Called after each segment file is read: pass 1 (dedup) or 2 (events). Tests and metrics. */
  onSegmentRead?: (pass: 1 | 2, ref: SegmentRef) => void
}

export interface ArchiveRange {
  /** Segments of the hours overlapping the range. */
  segments: SegmentRef[]
  /** Of them, those holding rows of the site inside the range (the ones `events()` reads). */
  segmentsWithRows: number
  /** Rows of the site (with a client messageId) in the hours read. */
  candidates: number
  /** Copies dropped by messageId among them. */
  duplicates: number
  /** Events of the range, deduplicated, one segment in memory at a time. Throws CorruptSegmentError. */
  events(): AsyncGenerator<ArchivedRow>
}

function stopped(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    throw signal.reason instanceof Error
      ? signal.reason
      : new TallyError(ERR.CANCELLED, 'the archive read was cancelled')
  }
}

/** Calls `fn` for each row of `siteId` whose timestamp is in [fromMs, toMs) (a site's rows are in offset order). */
function siteRowsInRange(
  cols: SegmentColumns,
  siteId: string,
  fromMs: number,
  toMs: number,
  fn: (row: number) => void,
): void {
  forEachSiteRun(cols, siteId, (from, to) => {
    for (let i = from; i < to; i++) {
      const ts = int64At(cols.timestamp, i)
      if (ts >= fromMs && ts < toMs) fn(i)
    }
  })
}

/**
 * Lists the segments of the range and finds its duplicates (pass 1). A misnamed `.arrow` file in
 * an hour folder or a segment that fails its checks throws CorruptSegmentError before anything is
 * yielded.
 */
export async function openArchiveRange(o: ArchiveRangeOptions): Promise<ArchiveRange> {
  const listing = await listSegments(o.topicDir, o.fromMs, o.toMs)
  const misnamed = listing.misnamed[0]
  if (misnamed !== undefined) throw new CorruptSegmentError(misnamed, 'the file name is not a segment name')
  const segments = listing.segments
  const withRows = new Uint8Array(segments.length)
  await mkdir(o.spillDir, { recursive: true })
  const spill = await mkdtemp(join(o.spillDir, 'range-'))
  let dedup: Awaited<ReturnType<typeof findDuplicates>>
  try {
    dedup = await findDuplicates(
      segments.length,
      (i) => segments[i]!.rows,
      async (i) => {
        stopped(o.signal)
        const cols = await readSegment(segments[i]!)
        o.onSegmentRead?.(1, segments[i]!)
        siteRowsInRange(cols, o.siteId, o.fromMs, o.toMs, () => {
          withRows[i] = 1
        })
        return cols
      },
      {
        siteId: o.siteId,
        maxRowsInMemory: o.maxDedupRowsInMemory ?? 500_000,
        spillDir: spill,
      },
    )
  } finally {
    await rm(spill, { recursive: true, force: true })
  }
  const losers = dedup.losers
  let segmentsWithRows = 0
  for (const w of withRows) segmentsWithRows += w

  async function* events(): AsyncGenerator<ArchivedRow> {
    for (let s = 0; s < segments.length; s++) {
      if (withRows[s] === 0) continue
      stopped(o.signal)
      const ref = segments[s]!
      const cols = await readSegment(ref)
      const rawTable = await readRawSegment(cols)
      o.onSegmentRead?.(2, ref)
      const lost = losers.get(s)
      const rows: number[] = []
      siteRowsInRange(cols, o.siteId, o.fromMs, o.toMs, (i) => {
        if (!lost || !bit(lost, i)) rows.push(i)
      })
      if (rows.length === 0) continue
      const type = cols.type
      const dims = cols.dims
      const messageId = rawTable.getChild(COLUMNS.messageId)!
      const visitorId = rawTable.getChild(COLUMNS.visitorId)!
      const receivedAt = rawTable.getChild(COLUMNS.receivedAt)!
      const imported = rawTable.getChild(COLUMNS.imported)!
      const traceparent = rawTable.getChild(COLUMNS.traceparent)!
      const requestId = rawTable.getChild(COLUMNS.requestId)!
      const raw = rawTable.getChild(COLUMNS.raw)!
      const site = o.siteId
      for (const i of rows) {
        const d = {} as Record<Dimension, string>
        DIMENSION_COLUMNS.forEach((name, k) => {
          d[name] = dims[k]!.dictionary[dims[k]!.indices[i]!]!
        })
        yield {
          partition: ref.partition,
          offset: int64At(cols.offset, i),
          siteId: site,
          messageId: messageId.get(i) as string,
          messageIdAssigned: bit(cols.messageIdAssigned, i),
          type: type.dictionary[type.indices[i]!]!,
          dims: d,
          visitorId: visitorId.get(i) as string,
          timestampMs: int64At(cols.timestamp, i),
          receivedMs: Number(receivedAt.get(i)),
          bot: bit(cols.bot, i),
          imported: imported.get(i) === true,
          traceparent: (traceparent.get(i) as string | null) ?? undefined,
          requestId: (requestId.get(i) as string | null) ?? undefined,
          raw: raw.get(i) as Uint8Array,
        }
      }
    }
  }

  return {
    segments,
    segmentsWithRows,
    candidates: dedup.candidates,
    duplicates: dedup.duplicates,
    events,
  }
}
