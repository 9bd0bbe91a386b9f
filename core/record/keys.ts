import type { RawEventV1 } from '../../schemas/events.js'

/**
 * The dedup key of an event: a messageId seen twice for one site is a client retry. The stream
 * remembers it as is; the archive stores its XXH64 (`dedup_hash`), so the rebuild and the raw
 * export drop the same copies as the stream.
 */
export function dedupKey(event: Pick<RawEventV1, 'siteId' | 'messageId'>): string {
  return `${event.siteId}\u0001${event.messageId}`
}

/**
 * The log's partitioning key, `siteId:visitor`: one visitor's events (and every retry of one event)
 * share a partition, so they stay in order and one stream worker sees them all.
 */
export function partitionKey(
  event: Pick<RawEventV1, 'siteId' | 'anonymousId' | 'userId' | 'messageId'>,
): string {
  return `${event.siteId}:${event.anonymousId ?? event.userId ?? event.messageId}`
}
