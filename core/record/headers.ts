import { randomFillSync } from 'node:crypto'
import { RAW_EVENT_SCHEMA_VERSION } from '../../schemas/events.js'

/**
 * Kafka header names carried with raw events. `x-request-id` is written only when the request id
 * is not the trace id of `traceparent`: ingest makes the two the same unless the client sent an
 * `x-request-id` of its own, and every header costs the producer a few microseconds per record.
 * Read the request id with requestIdOf.
 */
export const HEADERS = {
  traceparent: 'traceparent',
  requestId: 'x-request-id',
  schemaVersion: 'tally-schema-version',
  siteId: 'tally-site-id',
  /** On dead-letter records only: the code of the poison record's rejection. */
  deadLetterCode: 'tally-dlq-code',
} as const

const TRACEPARENT = /^00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/
/** The trace id W3C reserves as invalid. */
export const ZERO_TRACE_ID = '0'.repeat(32)

/** The trace id of a valid W3C traceparent (version 00, trace id not all zeros), else undefined. */
export function traceIdOf(traceparent: string | undefined): string | undefined {
  const m = traceparent === undefined ? null : TRACEPARENT.exec(traceparent)
  return m && m[1] !== ZERO_TRACE_ID ? m[1] : undefined
}

/** A raw record's request id: its `x-request-id` header, else the trace id of its traceparent. */
export function requestIdOf(headers: Readonly<Record<string, string | undefined>>): string | undefined {
  return headers[HEADERS.requestId] ?? traceIdOf(headers[HEADERS.traceparent])
}

const TRACE_ID = /^[0-9a-f]{32}$/

// Ids come from a pool filled 4 KiB at a time: one randomBytes call per id costs a system call
// and a buffer each, several per request.
const pool = Buffer.alloc(4096)
let poolOffset = pool.length

function randomHex(bytes: number): string {
  if (poolOffset + bytes > pool.length) {
    randomFillSync(pool)
    poolOffset = 0
  }
  poolOffset += bytes
  return pool.toString('hex', poolOffset - bytes, poolOffset)
}

/** A new random W3C trace id (32 hex digits, never all zeros). */
function newTraceId(): string {
  const id = randomHex(16)
  return id === ZERO_TRACE_ID ? newTraceId() : id
}

/**
 * A W3C trace context: the incoming one when valid, else a new one whose trace id is
 * `fallbackTraceId` when that is a valid trace id (the request id, so logs and Kafka headers share
 * one id), else a random one.
 */
export function traceContext(
  header: string | string[] | undefined,
  fallbackTraceId?: string,
): {
  traceparent: string
  traceId: string
} {
  const value = Array.isArray(header) ? header[0] : header
  const given = traceIdOf(value)
  if (given !== undefined) return { traceparent: value!, traceId: given }
  const traceId =
    fallbackTraceId !== undefined && TRACE_ID.test(fallbackTraceId) && fallbackTraceId !== ZERO_TRACE_ID
      ? fallbackTraceId
      : newTraceId()
  return { traceparent: `00-${traceId}-${randomHex(8)}-01`, traceId }
}

/** The trace id of a valid incoming traceparent, else a new one (no span id is made for it). */
export function traceIdOrNew(header: string | string[] | undefined): string {
  return traceIdOf(Array.isArray(header) ? header[0] : header) ?? newTraceId()
}

const SCHEMA_VERSION = String(RAW_EVENT_SCHEMA_VERSION)

/**
 * The headers of the records of one request (ingest) or one import: its trace context, the schema
 * version, the site, and the request id only when it is not the trace id (see HEADERS). Built once
 * and shared by every record of the request.
 */
export function recordHeaders(
  siteId: string,
  trace: { traceparent: string; traceId: string },
  requestId: string,
): Record<string, string> {
  const headers: Record<string, string> = {
    [HEADERS.traceparent]: trace.traceparent,
    [HEADERS.schemaVersion]: SCHEMA_VERSION,
    [HEADERS.siteId]: siteId,
  }
  if (requestId !== trace.traceId) headers[HEADERS.requestId] = requestId
  return headers
}
