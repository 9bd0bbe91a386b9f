import { Compile } from 'typebox/compile'
import { dimensionsOf, visitorId } from '../core/aggregate/definition.js'
import type { ArchivedEvent } from '../core/archive/segment-writer.js'
import { hash64 } from '../core/hll.js'
import type { ConsumedRecord } from '../core/ports/event-log.js'
import { HEADERS, RAW_EVENT_SCHEMA_VERSION, RawEventV1, requestIdOf } from '../schemas/events.js'

const rawEvent = Compile(RawEventV1)

export type DecodeResult =
  | { ok: true; event: ArchivedEvent }
  | {
      ok: false
      code:
        | 'TALLY_ERR_EMPTY_RECORD'
        | 'TALLY_ERR_SCHEMA_VERSION'
        | 'TALLY_ERR_UNDECODABLE'
        | 'TALLY_ERR_SCHEMA_INVALID'
      reason: string
    }

/**
 * A raw-log record → the event as archived, with the values the rebuild needs precomputed by the
 * shared definitions (dimensions, visitor id hash, dedup key hash). The checks are the stream's
 * (same schema, same version header); records failing them are poison for both, and the stream's
 * dead-letter topic keeps them.
 */
export function decodeRecord(record: ConsumedRecord): DecodeResult {
  if (!record.value || record.value.length === 0)
    return { ok: false, code: 'TALLY_ERR_EMPTY_RECORD', reason: 'record has no value' }
  const version = record.headers[HEADERS.schemaVersion]
  if (version !== undefined && version !== String(RAW_EVENT_SCHEMA_VERSION))
    return { ok: false, code: 'TALLY_ERR_SCHEMA_VERSION', reason: `unknown schema version ${version}` }
  let value: unknown
  try {
    value = JSON.parse(record.value.toString('utf8'))
  } catch (err) {
    return {
      ok: false,
      code: 'TALLY_ERR_UNDECODABLE',
      reason: `value is not JSON: ${(err as Error).message}`,
    }
  }
  if (!rawEvent.Check(value)) {
    const first = rawEvent.Errors(value)[0]
    return {
      ok: false,
      code: 'TALLY_ERR_SCHEMA_INVALID',
      reason: `${first?.instancePath || 'event'}: ${first?.message ?? 'does not match RawEventV1'}`,
    }
  }
  const timestampMs = Date.parse(value.timestamp)
  const receivedMs = Date.parse(value.receivedAt)
  if (Number.isNaN(timestampMs) || Number.isNaN(receivedMs))
    return { ok: false, code: 'TALLY_ERR_SCHEMA_INVALID', reason: 'timestamp or receivedAt is not a date' }
  const visitor = visitorId(value)
  return {
    ok: true,
    event: {
      siteId: value.siteId,
      messageId: value.messageId,
      messageIdAssigned: value.messageIdAssigned,
      dedupHash: hash64(`${value.siteId}\u0001${value.messageId}`),
      type: value.type,
      dims: dimensionsOf(value),
      visitorId: visitor,
      visitorHash: hash64(visitor),
      timestampMs,
      receivedMs,
      bot: value.bot,
      imported: value.imported === true,
      offset: record.offset,
      traceparent: record.headers[HEADERS.traceparent],
      requestId: requestIdOf(record.headers),
      raw: record.value,
    },
  }
}
