import { Compile } from 'typebox/compile'
import { RAW_EVENT_SCHEMA_VERSION, RawEventV1 } from '../../schemas/events.js'
import { ERR } from '../error-codes.js'
import type { ConsumedRecord, LogRecord } from '../ports/event-log.js'
import { HEADERS } from './headers.js'
import { partitionKey } from './keys.js'
import { type DeadLetter, deadLetter, ok, type StepResult } from './result.js'

/**
 * The raw log's record format, version 1: one record per event, its value the RawEventV1 as JSON,
 * its key the partition key, its headers those of recordHeaders. Ingest and `tally import` write
 * it with toLogRecord; the stream and the archiver read it with decodeValue and validateEvent, so
 * a record is poison for both or for neither (the stream's dead-letter topic keeps it).
 */

const rawEvent = Compile(RawEventV1)
const SCHEMA_VERSION = String(RAW_EVENT_SCHEMA_VERSION)

/** A raw event as read back from the log, with its two times parsed. */
export interface DecodedEvent {
  event: RawEventV1
  receivedMs: number
  timestampMs: number
}

/** The log record of an event, appended at `receivedAtMs` with the request's headers. */
export function toLogRecord(
  event: RawEventV1,
  headers: Record<string, string>,
  receivedAtMs: number,
): LogRecord {
  return {
    key: partitionKey(event),
    value: Buffer.from(JSON.stringify(event)),
    headers,
    timestampMs: receivedAtMs,
  }
}

/** Bytes → JSON value: an empty record, an unknown schema version or bytes that are not JSON are poison. */
export function decodeValue(record: ConsumedRecord): StepResult<unknown, DeadLetter> {
  if (!record.value || record.value.length === 0) return deadLetter(ERR.EMPTY_RECORD, 'record has no value')
  const version = record.headers[HEADERS.schemaVersion]
  if (version !== undefined && version !== SCHEMA_VERSION)
    return deadLetter(ERR.SCHEMA_VERSION, `unknown schema version ${version}`)
  try {
    return ok(JSON.parse(record.value.toString('utf8')))
  } catch (err) {
    return deadLetter(ERR.UNDECODABLE, `value is not JSON: ${(err as Error).message}`)
  }
}

/** JSON value → raw event: the TypeBox schema ingest writes with, and two parseable dates. */
export function validateEvent(value: unknown): StepResult<DecodedEvent, DeadLetter> {
  if (!rawEvent.Check(value)) {
    const first = rawEvent.Errors(value)[0]
    return deadLetter(
      ERR.SCHEMA_INVALID,
      `${first?.instancePath || 'event'}: ${first?.message ?? 'does not match RawEventV1'}`,
    )
  }
  const receivedMs = Date.parse(value.receivedAt)
  const timestampMs = Date.parse(value.timestamp)
  if (Number.isNaN(receivedMs) || Number.isNaN(timestampMs))
    return deadLetter(ERR.SCHEMA_INVALID, 'timestamp or receivedAt is not a date')
  return ok({ event: value, receivedMs, timestampMs })
}

/** A record → raw event: decodeValue then validateEvent. */
export function decodeEvent(record: ConsumedRecord): StepResult<DecodedEvent, DeadLetter> {
  const value = decodeValue(record)
  return value.ok ? validateEvent(value.event) : value
}
