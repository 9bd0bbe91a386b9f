import { dimensionsOf, visitorId } from '../core/aggregate/definition.js'
import type { ArchivedEvent } from '../core/archive/segment-writer.js'
import { hash64 } from '../core/hll.js'
import type { ConsumedRecord } from '../core/ports/event-log.js'
import { decodeEvent } from '../core/record/codec.js'
import { HEADERS, requestIdOf } from '../core/record/headers.js'
import { dedupKey } from '../core/record/keys.js'
import { type DeadLetter, ok, type StepResult } from '../core/record/result.js'

/**
 * A raw-log record → the event as archived, with the values the rebuild needs precomputed by the
 * shared definitions (dimensions, visitor id hash, dedup key hash). The checks are the stream's
 * (decodeEvent of the raw-record module); records failing them are poison for both, and the
 * stream's dead-letter topic keeps them.
 */
export function decodeRecord(record: ConsumedRecord): StepResult<ArchivedEvent, DeadLetter> {
  const decoded = decodeEvent(record)
  if (!decoded.ok) return decoded
  const { event: value, timestampMs, receivedMs } = decoded.event
  const visitor = visitorId(value)
  return ok({
    siteId: value.siteId,
    messageId: value.messageId,
    messageIdAssigned: value.messageIdAssigned,
    dedupHash: hash64(dedupKey(value)),
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
    // decodeEvent refused a record without a value.
    raw: record.value!,
  })
}
