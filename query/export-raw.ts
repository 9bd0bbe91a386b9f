import { join } from 'node:path'
import { Readable } from 'node:stream'
import {
  AsyncByteQueue,
  Bool,
  type Data,
  Field,
  Int32,
  Int64,
  makeData,
  RecordBatch,
  RecordBatchStreamWriter,
  Schema,
  Struct,
  TimestampMillisecond,
  Utf8,
  vectorFromArray,
} from 'apache-arrow'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { type ArchivedRow, openArchiveRange } from '../core/archive/archive-range.js'
import { archiveKey, batchPaths } from '../core/archive/paths.js'
import { CorruptSegmentError } from '../core/archive/segment-reader.js'
import type { TallyConfig } from '../core/config.js'
import { ERR } from '../core/error-codes.js'
import { errorMessage, ServiceUnavailableError, TallyError } from '../core/errors.js'
import type { ArchiveStateStore } from '../core/ports/batch-store.js'
import type { LogOffsets } from '../core/ports/event-log.js'
import { makePrivateDir } from '../core/private-files.js'
import { DIMENSION_COLUMNS } from '../schemas/arrow.js'
import { EXPORT_CONTENT_TYPES } from './export.js'
import type { ExportFormat, ParsedQuery } from './params.js'
import { badParameter, iso } from './range.js'

/**
 * Bulk export of raw events (GET /v1/export/events), read from the archive of the raw topic: the
 * Arrow segments the archiver writes by event hour and partition (batch/archiver.ts).
 *
 * Before the answer starts, the segments of the event hours overlapping [from, to) are listed and
 * read once to find duplicate messageIds (core/archive/archive-range.ts, the rebuild's dedup: bounded
 * memory, spill files beyond a budget), and the archive's progress is read for `complete_through`.
 * A corrupt segment found then is an error answer (500 TALLY_ERR_CORRUPT_SEGMENT naming the file).
 * Then the body streams: segments are read again one at a time, with their raw sidecars, and the
 * site's events whose `timestamp` is in [from, to) are written; the next segment is read only when
 * the client has taken the bytes before it, so memory stays flat whatever the range.
 *
 * NDJSON: a first line `{"type":"meta",…}`, one `{"type":"event",…}` line per event, a last line
 * `{"type":"end","events":N}`. An error after the answer started (a raw sidecar that fails its
 * checks, a segment gone) ends the body with `{"type":"error","code":…,"message":…,"events":N}` and
 * no end line: a body without its end line is incomplete.
 *
 * Arrow IPC stream: the schema ({@link rawExportSchema}; the meta as JSON under the schema metadata
 * key `tally.meta`), record batches, the end-of-stream marker. An error after the answer started
 * aborts the connection before the chunked body is complete (no end-of-stream marker, no final
 * chunk): HTTP clients report the transfer as failed.
 */

/** Rows per Arrow record batch (a batch is also closed at {@link ARROW_BATCH_BYTES} of raw JSON). */
export const RAW_ARROW_BATCH_ROWS = 1024
export const ARROW_BATCH_BYTES = 1024 * 1024
const NDJSON_CHUNK_BYTES = 64 * 1024
const HOUR_MS = 3_600_000

export interface RawExportRequest {
  siteId: string
  /** Exact range of event time (`timestamp`), half-open. */
  fromMs: number
  toMs: number
  format: ExportFormat
  /** Aborts the preparation (client gone). */
  signal?: AbortSignal
  /** An error after the answer started (to log: the client sees an error line or an aborted body). */
  onStreamError?: (err: unknown) => void
}

export interface ArchivePartitionMeta {
  partition: number
  /** Every record of the partition below this offset is archived. */
  next_offset: number
  /** Latest receivedAt among its archived events (null: none yet). */
  watermark: string | null
  /** End offset of the log when asked (present when the source knows the log's offsets). */
  end_offset?: number
}

export interface RawExportMeta {
  site: string
  from: string
  to: string
  format: ExportFormat
  /**
   * Receive time through which the archive holds every event: the lowest archive watermark (latest
   * receivedAt archived) over the partitions still behind the log (all partitions when the log's end
   * offsets are not known). Events received later may be missing from the export; null when some
   * partition has archived nothing yet.
   */
  complete_through: string | null
  archive: {
    /** Latest receivedAt archived, over all partitions. */
    received_through: string | null
    partitions_expected: number
    partitions_reporting: number
    partitions: ArchivePartitionMeta[]
  }
  /** Archive segments of the event hours read, and of them those holding events of the range. */
  segments: number
  segments_with_events: number
  /**
   * Copies of an event (same messageId) dropped among the site's events of the hours read: of the
   * copies, the first one the log received (lowest partition, offset) is the event.
   */
  duplicates: number
}

export interface PreparedRawExport {
  contentType: string
  meta: RawExportMeta
  body: Readable
}

/** Where raw events for an export come from; buildQueryApp answers 501 without one. */
export interface RawEventSource {
  /** Checks the request against the source's limits, reads what the meta needs, returns the body. */
  prepare(request: RawExportRequest): Promise<PreparedRawExport>
}

export interface ArchiveRawEventSourceOptions {
  /** The archive folder of the raw topic, `batchPaths(config).topicDir`. */
  topicDir: string
  /** Parent folder of the dedup spill folders (one per export, removed when its dedup is done). */
  spillDir: string
  /** The archive's committed progress per partition (read only). */
  archive: Pick<ArchiveStateStore, 'progress'>
  /** The archive's commit-row key: archiveKey(TALLY_ARCHIVE_GROUP, raw topic). */
  archiveKey: string
  /** Partitions of the raw topic (KAFKA_PARTITIONS), when `offsets` is not given. */
  partitions: number
  /**
   * End offsets of the log: a partition whose archive reached its end counts as complete through
   * the moment of the request, so an idle partition does not hold `complete_through` back.
   */
  offsets?: { log: LogOffsets; topic: string }
  /** Longest range (from → to) of one export. Default 744 hours (31 days). */
  maxRangeHours?: number
  /** Exports running at once; beyond, 503 TALLY_ERR_EXPORT_BUSY. Default 2. */
  maxConcurrent?: number
  /** Dedup candidates of one export kept in memory (28 bytes each) before spilling. Default 500 000. */
  maxDedupRowsInMemory?: number
  /** Called once per event written (metrics). */
  onEvent?: () => void
  /** After each segment file read: pass 1 (dedup) or 2 (events). Tests. */
  onSegmentRead?: (pass: 1 | 2, relPath: string) => void
  /** Clock (tests). Default Date.now. */
  now?: () => number
}

export const DEFAULT_RAW_EXPORT_MAX_RANGE_HOURS = 744

/** The archive's raw-event source as the query role builds it from the configuration. */
export function archiveRawEventSource(
  config: Pick<TallyConfig, 'dataDir' | 'kafka' | 'archive'>,
  ports: { archive: Pick<ArchiveStateStore, 'progress'>; offsets?: LogOffsets },
  options: Pick<
    ArchiveRawEventSourceOptions,
    'maxRangeHours' | 'maxConcurrent' | 'maxDedupRowsInMemory' | 'onEvent'
  > & { archiveDir?: string; stagingDir?: string; archiveGroup?: string } = {},
): ArchiveRawEventSource {
  const paths = batchPaths(config, {
    ...(options.archiveDir === undefined ? {} : { archiveDir: options.archiveDir }),
    ...(options.stagingDir === undefined ? {} : { stagingDir: options.stagingDir }),
  })
  const { archiveDir: _a, stagingDir: _s, archiveGroup, ...rest } = options
  return new ArchiveRawEventSource({
    ...rest,
    topicDir: paths.topicDir,
    spillDir: join(paths.stagingDir, 'export-spill'),
    archive: ports.archive,
    archiveKey: archiveKey(archiveGroup ?? config.archive.group, config.kafka.topicRaw),
    partitions: config.kafka.partitions,
    ...(ports.offsets ? { offsets: { log: ports.offsets, topic: config.kafka.topicRaw } } : {}),
  })
}

/** The client's view of a corrupt segment: its path inside the archive, not the server's. */
function corruptError(err: CorruptSegmentError, topicDir: string): TallyError {
  const rel = err.path.startsWith(`${topicDir}/`) ? err.path.slice(topicDir.length + 1) : err.path
  return new TallyError(ERR.CORRUPT_SEGMENT, err.message.split(err.path).join(rel), {
    where: rel,
    cause: err,
  })
}

export class ArchiveRawEventSource implements RawEventSource {
  private running = 0
  private readonly maxRangeMs: number
  private readonly maxConcurrent: number
  private readonly now: () => number

  constructor(private readonly o: ArchiveRawEventSourceOptions) {
    this.maxRangeMs = (o.maxRangeHours ?? DEFAULT_RAW_EXPORT_MAX_RANGE_HOURS) * HOUR_MS
    this.maxConcurrent = o.maxConcurrent ?? 2
    this.now = o.now ?? Date.now
  }

  /** Exports in progress (preparing or streaming). */
  get active(): number {
    return this.running
  }

  async prepare(request: RawExportRequest): Promise<PreparedRawExport> {
    const { siteId, fromMs, toMs } = request
    if (toMs - fromMs > this.maxRangeMs) {
      throw badParameter(
        'to',
        `the range ${iso(fromMs)} .. ${iso(toMs)} is longer than ${this.maxRangeMs / HOUR_MS} hours, the most one raw-event export reads; split it`,
        ERR.RANGE_TOO_LARGE,
      )
    }
    if (this.running >= this.maxConcurrent) {
      throw new TallyError(
        ERR.EXPORT_BUSY,
        `${this.running} raw-event exports are running, the most this server runs at once; retry later`,
        { retriable: true },
      )
    }
    this.running++
    let released = false
    const release = () => {
      if (!released) {
        released = true
        this.running--
      }
    }
    try {
      const archive = await this.completeness()
      let range: Awaited<ReturnType<typeof openArchiveRange>>
      try {
        // Spill files hold events: owner-only, like the archive they come from.
        await makePrivateDir(this.o.spillDir)
        range = await openArchiveRange({
          topicDir: this.o.topicDir,
          siteId,
          fromMs,
          toMs,
          spillDir: this.o.spillDir,
          ...(this.o.maxDedupRowsInMemory === undefined
            ? {}
            : { maxDedupRowsInMemory: this.o.maxDedupRowsInMemory }),
          ...(request.signal ? { signal: request.signal } : {}),
          ...(this.o.onSegmentRead
            ? { onSegmentRead: (pass, ref) => this.o.onSegmentRead!(pass, ref.relPath) }
            : {}),
        })
      } catch (err) {
        throw err instanceof CorruptSegmentError ? corruptError(err, this.o.topicDir) : err
      }
      const meta: RawExportMeta = {
        site: siteId,
        from: iso(fromMs),
        to: iso(toMs),
        format: request.format,
        ...archive,
        segments: range.segments.length,
        segments_with_events: range.segmentsWithRows,
        duplicates: range.duplicates,
      }
      const topicDir = this.o.topicDir
      const onEvent = this.o.onEvent
      async function* events(): AsyncGenerator<ArchivedRow> {
        try {
          for await (const e of range.events()) {
            onEvent?.()
            yield e
          }
        } catch (err) {
          throw err instanceof CorruptSegmentError ? corruptError(err, topicDir) : err
        }
      }
      const chunks =
        request.format === 'arrow'
          ? rawArrowStream(meta, events())
          : rawNdjsonStream(meta, events(), (err) => request.onStreamError?.(err))
      const body = Readable.from(chunks, { objectMode: false })
      body.once('close', release)
      if (request.format === 'arrow') body.once('error', (err) => request.onStreamError?.(err))
      return { contentType: EXPORT_CONTENT_TYPES[request.format], meta, body }
    } catch (err) {
      release()
      throw err
    }
  }

  private async completeness(): Promise<Pick<RawExportMeta, 'complete_through' | 'archive'>> {
    const askedAt = this.now()
    let ends: Map<number, number> | undefined
    let progress: Awaited<ReturnType<ArchiveStateStore['progress']>>
    try {
      // End offsets first: a partition whose archive has reached them holds every event received
      // before this request.
      ends = this.o.offsets ? await this.o.offsets.log.endOffsets(this.o.offsets.topic) : undefined
      const partitions = ends ? Math.max(-1, ...ends.keys()) + 1 : this.o.partitions
      progress = await this.o.archive.progress(this.o.archiveKey, partitions)
    } catch (err) {
      throw new ServiceUnavailableError(
        'archive state',
        `cannot read the archive's progress: ${errorMessage(err)}`,
        err,
      )
    }
    const byPartition = new Map(progress.map((p) => [p.partition, p]))
    const partitions = ends ? [...ends.keys()].sort((a, b) => a - b) : [...Array(this.o.partitions).keys()]
    // With the log's end offsets: a partition that reached its end is complete through the moment
    // of the request; one behind it, through its watermark (unknown when it archived nothing yet).
    // Without them, as the stream's freshness: the lowest watermark of the partitions that report.
    let limit: number | undefined
    let unknown = false
    let received: number | undefined
    const list: ArchivePartitionMeta[] = []
    for (const partition of partitions) {
      const p = byPartition.get(partition)
      const next = p?.nextOffset ?? 0
      const watermark = p && p.watermarkMs > 0 ? p.watermarkMs : undefined
      const end = ends?.get(partition)
      if (watermark !== undefined) received = Math.max(received ?? 0, watermark)
      const behind = ends === undefined || next < (end ?? 0)
      if (behind && watermark !== undefined) limit = Math.min(limit ?? watermark, watermark)
      else if (behind && ends !== undefined) unknown = true
      list.push({
        partition,
        next_offset: next,
        watermark: watermark === undefined ? null : iso(watermark),
        ...(end === undefined ? {} : { end_offset: end }),
      })
    }
    return {
      complete_through: unknown
        ? null
        : ends
          ? iso(Math.min(askedAt, limit ?? askedAt))
          : limit === undefined
            ? null
            : iso(limit),
      archive: {
        received_through: received === undefined ? null : iso(received),
        partitions_expected: partitions.length,
        partitions_reporting: progress.length,
        partitions: list,
      },
    }
  }
}

// --- encodings -------------------------------------------------------------------------------------

const NEWLINE = 0x0a
const RETURN = 0x0d

/** The raw event JSON, re-serialized only if it holds a line break (JSON whitespace). */
function oneLine(raw: Uint8Array): Buffer {
  const bytes = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength)
  if (bytes.indexOf(NEWLINE) < 0 && bytes.indexOf(RETURN) < 0) return bytes
  return Buffer.from(JSON.stringify(JSON.parse(bytes.toString('utf8'))))
}

function errorLine(err: unknown, events: number): string {
  const e =
    err instanceof TallyError
      ? { code: err.code, message: err.message, ...(err.where ? { where: err.where } : {}) }
      : { code: ERR.INTERNAL, message: 'internal error' }
  return `${JSON.stringify({ type: 'error', ...e, events })}\n`
}

/**
 * NDJSON: `{"type":"meta",…}`, then per event `{"type":"event","partition":P,"offset":O,
 * "traceparent":…,"request_id":…,"event":<the raw event as the log holds it>}`, then
 * `{"type":"end","events":N}`; on an error, `{"type":"error",…}` instead of the end line.
 */
export async function* rawNdjsonStream(
  meta: RawExportMeta,
  events: AsyncIterable<ArchivedRow>,
  onError?: (err: unknown) => void,
): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [Buffer.from(`${JSON.stringify({ type: 'meta', ...meta })}\n`)]
  let size = parts[0]!.length
  let n = 0
  try {
    for await (const e of events) {
      const head = Buffer.from(
        `{"type":"event","partition":${e.partition},"offset":${e.offset},"traceparent":${JSON.stringify(
          e.traceparent ?? null,
        )},"request_id":${JSON.stringify(e.requestId ?? null)},"event":`,
      )
      const raw = oneLine(e.raw)
      parts.push(head, raw, CLOSE_LINE)
      size += head.length + raw.length + CLOSE_LINE.length
      n++
      if (size >= NDJSON_CHUNK_BYTES) {
        yield Buffer.concat(parts, size)
        parts = []
        size = 0
      }
    }
  } catch (err) {
    onError?.(err)
    parts.push(Buffer.from(errorLine(err, n)))
    yield Buffer.concat(parts)
    return
  }
  parts.push(Buffer.from(`${JSON.stringify({ type: 'end', events: n })}\n`))
  yield Buffer.concat(parts)
}

const CLOSE_LINE = Buffer.from('}\n')

/**
 * The columns of a raw-event Arrow export: the event's identity and time, the values the aggregates
 * count it under (dimension columns named after the dimensions), its place in the log, and `json`,
 * the raw event as the log holds it (RawEventV1).
 */
export function rawExportSchema(meta: RawExportMeta): Schema {
  const ts = () => new TimestampMillisecond('UTC')
  return new Schema(
    [
      new Field('site', new Utf8(), false),
      new Field('message_id', new Utf8(), false),
      new Field('message_id_assigned', new Bool(), false),
      new Field('type', new Utf8(), false),
      new Field('timestamp', ts(), false),
      new Field('received_at', ts(), false),
      new Field('visitor_id', new Utf8(), false),
      new Field('bot', new Bool(), false),
      new Field('imported', new Bool(), false),
      ...DIMENSION_COLUMNS.map((d) => new Field(d, new Utf8(), false)),
      new Field('partition', new Int32(), false),
      new Field('offset', new Int64(), false),
      new Field('traceparent', new Utf8(), true),
      new Field('request_id', new Utf8(), true),
      new Field('json', new Utf8(), false),
    ],
    new Map([['tally.meta', JSON.stringify(meta)]]),
  )
}

function utf8(values: ReadonlyArray<string | undefined>): Data {
  return vectorFromArray(
    values.map((v) => v ?? null),
    new Utf8(),
  ).data[0]!
}

/** A Utf8 column from UTF-8 bytes as they are (no decoding). */
function utf8Bytes(values: readonly Uint8Array[]): Data {
  const offsets = new Int32Array(values.length + 1)
  let total = 0
  for (let i = 0; i < values.length; i++) {
    total += values[i]!.byteLength
    offsets[i + 1] = total
  }
  const data = new Uint8Array(total)
  for (let i = 0; i < values.length; i++) data.set(values[i]!, offsets[i]!)
  return makeData({ type: new Utf8(), length: values.length, nullCount: 0, valueOffsets: offsets, data })
}

function rawBatch(schema: Schema, rows: readonly ArchivedRow[]): RecordBatch {
  const ts = (f: (r: ArchivedRow) => number) =>
    vectorFromArray(rows.map(f), new TimestampMillisecond('UTC')).data[0]!
  const bool = (f: (r: ArchivedRow) => boolean) => vectorFromArray(rows.map(f), new Bool()).data[0]!
  const children: Data[] = [
    utf8(rows.map((r) => r.siteId)),
    utf8(rows.map((r) => r.messageId)),
    bool((r) => r.messageIdAssigned),
    utf8(rows.map((r) => r.type)),
    ts((r) => r.timestampMs),
    ts((r) => r.receivedMs),
    utf8(rows.map((r) => r.visitorId)),
    bool((r) => r.bot),
    bool((r) => r.imported),
    ...DIMENSION_COLUMNS.map((d) => utf8(rows.map((r) => r.dims[d]))),
    makeData({ type: new Int32(), length: rows.length, data: Int32Array.from(rows, (r) => r.partition) }),
    makeData({
      type: new Int64(),
      length: rows.length,
      data: BigInt64Array.from(rows, (r) => BigInt(r.offset)),
    }),
    utf8(rows.map((r) => r.traceparent)),
    utf8(rows.map((r) => r.requestId)),
    utf8Bytes(rows.map((r) => r.raw)),
  ]
  return new RecordBatch(
    schema,
    makeData({ type: new Struct(schema.fields), length: rows.length, nullCount: 0, children }),
  )
}

/** Receives the writer's bytes synchronously, so each batch's bytes can be handed on at once. */
class ChunkCollector extends AsyncByteQueue<Uint8Array> {
  private chunks: Buffer[] = []

  override write(value: Uint8Array): void {
    // Copied: the writer may hand out views of buffers it reuses.
    this.chunks.push(Buffer.from(value))
  }

  take(): Buffer {
    const out = Buffer.concat(this.chunks)
    this.chunks = []
    return out
  }
}

/**
 * Arrow IPC stream: the schema, record batches of up to {@link RAW_ARROW_BATCH_ROWS} events (or
 * {@link ARROW_BATCH_BYTES} of raw JSON), the end-of-stream marker. An error is thrown on, which
 * aborts the response.
 */
export async function* rawArrowStream(
  meta: RawExportMeta,
  events: AsyncIterable<ArchivedRow>,
): AsyncGenerator<Buffer> {
  const schema = rawExportSchema(meta)
  const sink = new ChunkCollector()
  const writer = new RecordBatchStreamWriter()
  writer.reset(sink, schema)
  yield sink.take()
  let batch: ArchivedRow[] = []
  let bytes = 0
  for await (const e of events) {
    batch.push(e)
    bytes += e.raw.byteLength
    if (batch.length >= RAW_ARROW_BATCH_ROWS || bytes >= ARROW_BATCH_BYTES) {
      writer.write(rawBatch(schema, batch))
      batch = []
      bytes = 0
      yield sink.take()
    }
  }
  if (batch.length > 0) writer.write(rawBatch(schema, batch))
  writer.close()
  yield sink.take()
}

// --- HTTP ----------------------------------------------------------------------------------------

/**
 * Serves GET /v1/export/events with `source` (the route has authorized the caller and parsed `q`).
 * The range must be given (from/to or period): an export of a default range is never what was meant.
 */
export async function sendRawExport(
  source: RawEventSource,
  raw: Record<string, unknown>,
  q: ParsedQuery,
  req: FastifyRequest,
  reply: FastifyReply,
): Promise<FastifyReply> {
  if (raw.from === undefined && raw.period === undefined) {
    throw badParameter('from', 'from is required (with to), or period', ERR.MISSING_PARAMETER)
  }
  const range = q.range!
  // The dedup pass runs before the answer starts: the connection's inactivity timeout must not cut
  // it, and a client that leaves stops it.
  const socket = req.raw.socket as Partial<typeof req.raw.socket> | undefined
  const idleTimeout = socket?.timeout
  socket?.setTimeout?.(0)
  const gone = new AbortController()
  const onClose = () => gone.abort(new TallyError(ERR.CANCELLED, 'the client went away'))
  reply.raw.once('close', onClose)
  let prepared: PreparedRawExport
  try {
    prepared = await source.prepare({
      siteId: q.siteId,
      fromMs: range.fromMs,
      toMs: range.toMs,
      // parseQuery gives the raw-event export ndjson or arrow only.
      format: q.format as ExportFormat,
      signal: gone.signal,
      onStreamError: (err) => req.log.error({ err }, 'raw-event export failed after the answer started'),
    })
  } finally {
    reply.raw.off('close', onClose)
    if (!socket?.destroyed && idleTimeout !== undefined) socket?.setTimeout?.(idleTimeout)
  }
  const name = `${q.siteId}-events-${iso(range.fromMs)}`.replace(/[^A-Za-z0-9._-]/g, '_')
  return reply
    .header('content-type', prepared.contentType)
    .header('cache-control', 'private, no-cache')
    .header(
      'content-disposition',
      `attachment; filename="${name}.${q.format === 'arrow' ? 'arrows' : 'ndjson'}"`,
    )
    .send(prepared.body)
}
