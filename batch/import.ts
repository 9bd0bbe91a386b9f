import { randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { createInterface } from 'node:readline'
import type { Readable } from 'node:stream'
import { createGunzip } from 'node:zlib'
import type { TallyConfig } from '../core/config.js'
import { ERR } from '../core/error-codes.js'
import { errorMessage, UsageError } from '../core/errors.js'
import type { Logger } from '../core/log.js'
import type { Ports } from '../core/ports/backend.js'
import type { EventLogWriter, LogRecord } from '../core/ports/event-log.js'
import { toLogRecord } from '../core/record/codec.js'
import { recordHeaders, traceContext } from '../core/record/headers.js'
import type { DeadLetter, StepResult } from '../core/record/result.js'
import type { RawEventV1 } from '../schemas/events.js'

/** What one Segment payload becomes: the raw-log event, or why it was rejected. */
export type NormalizeOutcome = StepResult<RawEventV1, DeadLetter>

/**
 * Ingest's normalization of one payload for a site (validation, user agent, bot flag, messageId,
 * no client IP), with `imported: true` so original timestamps are kept. batch/ does not import
 * ingest/; the caller passes it in (see the report / CLI wiring: `normalizeEvent` of
 * ingest/normalize.ts with `imported: true`).
 */
export type EventNormalizer = (payload: unknown, receivedAtMs: number) => NormalizeOutcome

/** Options of `tally import FILE.ndjson --site S`. */
export interface ImportOptions {
  /** NDJSON file of Segment payloads, one per line (`.gz` is decompressed). */
  file: string
  siteId: string
  normalize: EventNormalizer
  /** Events per append to the log. Default 500. */
  batchSize?: number
  /** Appends in flight at once. Default 4. */
  inFlight?: number
  /** Rejections listed in the result (all are counted). Default 100. */
  maxListedRejections?: number
  /** Refuse a site id that is not registered. Default true. */
  checkSite?: boolean
  onProgress?: (p: { lines: number; accepted: number; rejected: number }) => void
  /** The log to append to (tests); default a writer of the ports, closed at the end. */
  log?: EventLogWriter
  /** The backend (built by app/): its sites (checked unless checkSite is false) and log. */
  ports: Pick<Ports, 'writer' | 'sites'>
}

export interface ImportResult {
  lines: number
  accepted: number
  rejected: number
  /** First rejections: line number (1-based), code, message. */
  rejections: Array<{ line: number; code: string; message: string }>
}

function lines(file: string): AsyncIterable<string> {
  let input: Readable = createReadStream(file)
  if (file.endsWith('.gz')) input = input.pipe(createGunzip())
  return createInterface({ input, crlfDelay: Infinity })
}

/**
 * `tally import FILE.ndjson --site S`: appends historical events to the raw log with their original
 * timestamps, through ingest's normalization (`imported: true`), keyed and with headers as ingest
 * writes them. Like `POST /v1/import`, the stream leaves events older than its grace period to the
 * batch layer: the next rebuild of their range counts them.
 */
export async function importFile(
  config: TallyConfig,
  logger: Logger,
  options: ImportOptions,
): Promise<ImportResult> {
  const { ports } = options
  if ((options.checkSite ?? true) && (await ports.sites.get(options.siteId)) === undefined)
    throw new UsageError(`unknown site ${options.siteId}; create it with \`tally sites add\``)
  const own = options.log === undefined
  const log =
    options.log ??
    (await ports.writer({
      appendTimeoutMs: 60_000,
      lingerMs: 5,
      ...(config.ingest.pack ? { pack: config.ingest.pack } : {}),
    }))
  return importInto(config, logger, log, own, options)
}

async function importInto(
  config: TallyConfig,
  logger: Logger,
  log: EventLogWriter,
  own: boolean,
  options: ImportOptions,
): Promise<ImportResult> {
  const requestId = `import-${randomBytes(8).toString('hex')}`
  // A new trace: its id is never the import's request id, so the records carry both.
  const headers = recordHeaders(options.siteId, traceContext(undefined), requestId)
  const result: ImportResult = { lines: 0, accepted: 0, rejected: 0, rejections: [] }
  const maxListed = options.maxListedRejections ?? 100
  const batchSize = options.batchSize ?? 500
  const inFlight = new Set<Promise<void>>()
  let failure: unknown
  const reject = (line: number, code: string, message: string) => {
    result.rejected++
    if (result.rejections.length < maxListed) result.rejections.push({ line, code, message })
  }
  const send = async (records: LogRecord[]) => {
    while (inFlight.size >= (options.inFlight ?? 4)) await Promise.race(inFlight)
    if (failure) throw failure
    const p = log.append(config.kafka.topicRaw, records).then(
      () => {
        result.accepted += records.length
        options.onProgress?.({ lines: result.lines, accepted: result.accepted, rejected: result.rejected })
      },
      (err: unknown) => {
        failure ??= err
      },
    )
    inFlight.add(p)
    void p.finally(() => inFlight.delete(p))
  }
  try {
    let batch: LogRecord[] = []
    for await (const text of lines(options.file)) {
      const lineNo = ++result.lines
      if (text.trim() === '') continue
      let payload: unknown
      try {
        payload = JSON.parse(text)
      } catch (err) {
        reject(lineNo, ERR.MALFORMED_JSON, `not JSON: ${errorMessage(err)}`)
        continue
      }
      const receivedAtMs = Date.now()
      const normalized = options.normalize(payload, receivedAtMs)
      if (!normalized.ok) {
        reject(lineNo, normalized.code, normalized.reason)
        continue
      }
      // As ingest writes it: keyed so one visitor's events share a partition (and the stream's dedup).
      batch.push(toLogRecord(normalized.event, headers, receivedAtMs))
      if (batch.length >= batchSize) {
        await send(batch)
        batch = []
      }
    }
    if (batch.length > 0) await send(batch)
    await Promise.all(inFlight)
    if (failure) throw failure
    logger.info(
      { file: options.file, site: options.siteId, requestId, ...result, rejections: undefined },
      'import done',
    )
    return result
  } finally {
    if (own) await log.close()
  }
}
