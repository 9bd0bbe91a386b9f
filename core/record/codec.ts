import { Compile } from 'typebox/compile'
import { EVENT_TYPES, RAW_EVENT_SCHEMA_VERSION, RawEventV1 } from '../../schemas/events.js'
import { ERR } from '../error-codes.js'
import type { ConsumedRecord, LogRecord } from '../ports/event-log.js'
import { HEADERS } from './headers.js'
import { partitionKey } from './keys.js'
import type { RawEntry } from './packed.js'
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

/**
 * Bytes → JSON value: an empty record, an unknown schema version or bytes that are not JSON are
 * poison, and so is an entry of a record whose framing could not be unpacked (packed.ts).
 */
export function decodeValue(record: ConsumedRecord | RawEntry): StepResult<unknown, DeadLetter> {
  if ('problem' in record && record.problem !== undefined) return record.problem
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

const EVENT_TYPE_SET: ReadonlySet<unknown> = new Set(EVENT_TYPES)

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function optionalString(o: Record<string, unknown>, field: string): boolean {
  const v = o[field]
  return v === undefined || typeof v === 'string'
}

function invalid(where: string, message: string): DeadLetter {
  return deadLetter(ERR.SCHEMA_INVALID, `/${where}: ${message}`)
}

/**
 * JSON value → raw event, for the readers of the log (stream, archiver): ingest validated the event
 * with the full TypeBox schema before writing it (validateEvent), so a reader checks the version
 * and the fields it reads — their types, and two parseable dates — not the whole schema again (a
 * second full pass took ~8 % of the stream worker's CPU). What fails is poison, for both readers.
 */
export function checkEvent(value: unknown): StepResult<DecodedEvent, DeadLetter> {
  if (!isObject(value)) return deadLetter(ERR.SCHEMA_INVALID, 'event: not an object')
  const o = value
  if (o.v !== RAW_EVENT_SCHEMA_VERSION) return invalid('v', `expected ${RAW_EVENT_SCHEMA_VERSION}`)
  if (typeof o.siteId !== 'string' || o.siteId.length === 0)
    return invalid('siteId', 'expected a non-empty string')
  if (typeof o.messageId !== 'string' || o.messageId.length === 0)
    return invalid('messageId', 'expected a non-empty string')
  if (typeof o.messageIdAssigned !== 'boolean') return invalid('messageIdAssigned', 'expected a boolean')
  if (!EVENT_TYPE_SET.has(o.type)) return invalid('type', `expected one of ${EVENT_TYPES.join(', ')}`)
  for (const field of ['event', 'name', 'anonymousId', 'userId', 'country'])
    if (!optionalString(o, field)) return invalid(field, 'expected a string')
  if (!isObject(o.properties)) return invalid('properties', 'expected an object')
  if (!isObject(o.context)) return invalid('context', 'expected an object')
  const ua = o.ua
  if (
    !isObject(ua) ||
    typeof ua.browser !== 'string' ||
    typeof ua.os !== 'string' ||
    typeof ua.device !== 'string'
  )
    return invalid('ua', 'expected {browser, os, device} strings')
  if (typeof o.bot !== 'boolean') return invalid('bot', 'expected a boolean')
  if (o.imported !== undefined && typeof o.imported !== 'boolean')
    return invalid('imported', 'expected a boolean')
  if (typeof o.timestamp !== 'string' || typeof o.receivedAt !== 'string')
    return deadLetter(ERR.SCHEMA_INVALID, 'timestamp or receivedAt is not a date')
  const receivedMs = Date.parse(o.receivedAt)
  const timestampMs = Date.parse(o.timestamp)
  if (Number.isNaN(receivedMs) || Number.isNaN(timestampMs))
    return deadLetter(ERR.SCHEMA_INVALID, 'timestamp or receivedAt is not a date')
  return ok({ event: o as unknown as RawEventV1, receivedMs, timestampMs })
}

/** A record (or one event of a packed record) → raw event: decodeValue then checkEvent. */
export function decodeEvent(record: ConsumedRecord | RawEntry): StepResult<DecodedEvent, DeadLetter> {
  const value = decodeValue(record)
  return value.ok ? checkEvent(value.event) : value
}
