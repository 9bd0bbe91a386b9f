import { Compile } from 'typebox/compile'
import { kindOf } from '../core/aggregate/definition.js'
import type { ConsumedRecord } from '../core/ports/event-log.js'
import { RAW_EVENT_SCHEMA_VERSION, RawEventV1 } from '../schemas/events.js'
import type { DedupSet } from './dedup.js'

/**
 * The per-record pipeline of the stream worker: decode → validate → dedup → classify. Each step
 * returns ok, dead-letter (poison: goes to the DLQ with its reason) or drop (counted, not an error).
 */
export type StepResult<T> =
  | { kind: 'ok'; value: T }
  | { kind: 'dlq'; code: string; reason: string }
  | { kind: 'drop'; reason: 'duplicate' | 'late' | 'future' | 'not_counted' }

const ok = <T>(value: T): StepResult<T> => ({ kind: 'ok', value })
const dlq = (code: string, reason: string): StepResult<never> => ({ kind: 'dlq', code, reason })

const rawEvent = Compile(RawEventV1)

export interface Decoded {
  event: RawEventV1
  receivedMs: number
  timestampMs: number
}

/** Step 1: bytes → JSON object. */
export function decode(record: ConsumedRecord): StepResult<unknown> {
  if (!record.value || record.value.length === 0) return dlq('TALLY_ERR_EMPTY_RECORD', 'record has no value')
  const version = record.headers['tally-schema-version']
  if (version !== undefined && version !== String(RAW_EVENT_SCHEMA_VERSION)) {
    return dlq('TALLY_ERR_SCHEMA_VERSION', `unknown schema version ${version}`)
  }
  try {
    return ok(JSON.parse(record.value.toString('utf8')))
  } catch (err) {
    return dlq('TALLY_ERR_UNDECODABLE', `value is not JSON: ${(err as Error).message}`)
  }
}

/** Step 2: the raw-event schema (the same TypeBox schema ingest writes with). */
export function validate(value: unknown): StepResult<Decoded> {
  if (!rawEvent.Check(value)) {
    const first = rawEvent.Errors(value)[0]
    return dlq(
      'TALLY_ERR_SCHEMA_INVALID',
      `${first?.instancePath || 'event'}: ${first?.message ?? 'does not match RawEventV1'}`,
    )
  }
  const receivedMs = Date.parse(value.receivedAt)
  const timestampMs = Date.parse(value.timestamp)
  if (Number.isNaN(receivedMs) || Number.isNaN(timestampMs))
    return dlq('TALLY_ERR_SCHEMA_INVALID', 'timestamp or receivedAt is not a date')
  return ok({ event: value, receivedMs, timestampMs })
}

/** Step 3: a messageId seen within the horizon is a client retry. */
export function dedup(d: Decoded, seen: DedupSet): StepResult<Decoded> {
  // Server-assigned ids are unique by construction: no need to remember them.
  if (d.event.messageIdAssigned) return ok(d)
  return seen.addId(`${d.event.siteId}\u0001${d.event.messageId}`, d.receivedMs)
    ? ok(d)
    : { kind: 'drop', reason: 'duplicate' }
}

/**
 * Step 4: identify/group/alias are not activity; events whose windows closed go to batch, and so do
 * events timed after `futureAfterMs` (ingest clamps those since issue 19, but the log may hold older
 * records or other writers' ones): their windows would stay open in memory until that time comes.
 */
export function classify(d: Decoded, lateBeforeMs: number, futureAfterMs: number): StepResult<Decoded> {
  if (kindOf(d.event) === 'ignored') return { kind: 'drop', reason: 'not_counted' }
  // An event is late when its minute window ended before the grace line.
  const minuteEnd = Math.floor(d.timestampMs / 60_000) * 60_000 + 60_000
  if (minuteEnd <= lateBeforeMs) return { kind: 'drop', reason: 'late' }
  if (d.timestampMs > futureAfterMs) return { kind: 'drop', reason: 'future' }
  return ok(d)
}
