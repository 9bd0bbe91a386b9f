import { kindOf } from '../core/aggregate/definition.js'
import { type DecodedEvent, decodeValue, validateEvent } from '../core/record/codec.js'
import { dedupKey } from '../core/record/keys.js'
import { drop, ok, type StepResult } from '../core/record/result.js'
import type { DedupSet } from './dedup.js'

/**
 * The per-record pipeline of the stream worker: decode → validate → dedup → classify. Each step
 * returns the raw-record module's StepResult: ok, dead-letter (poison: goes to the DLQ with its
 * reason) or drop (counted, not an error).
 */

/** Step 1: bytes → JSON object. Step 2: the raw-event schema (the same TypeBox schema ingest writes with). */
export { decodeValue as decode, validateEvent as validate }

/** Step 3: a messageId seen within the horizon is a client retry. */
export function dedup(d: DecodedEvent, seen: DedupSet): StepResult<DecodedEvent> {
  // Server-assigned ids are unique by construction: no need to remember them.
  if (d.event.messageIdAssigned) return ok(d)
  return seen.addId(dedupKey(d.event), d.receivedMs) ? ok(d) : drop('duplicate')
}

/**
 * Step 4: identify/group/alias are not activity; events whose windows closed go to batch, and so do
 * events timed after `futureAfterMs` (ingest clamps those since issue 19, but the log may hold older
 * records or other writers' ones): their windows would stay open in memory until that time comes.
 */
export function classify(
  d: DecodedEvent,
  lateBeforeMs: number,
  futureAfterMs: number,
): StepResult<DecodedEvent> {
  if (kindOf(d.event) === 'ignored') return drop('not_counted')
  // An event is late when its minute window ended before the grace line.
  const minuteEnd = Math.floor(d.timestampMs / 60_000) * 60_000 + 60_000
  if (minuteEnd <= lateBeforeMs) return drop('late')
  if (d.timestampMs > futureAfterMs) return drop('future')
  return ok(d)
}
