import Type, { type Static } from 'typebox'

/**
 * Event schemas, versioned. `SegmentEventV1` is what clients post (the Segment HTTP Tracking API
 * spec); `RawEventV1` is what ingest writes to the raw log and what the stream and batch layers
 * decode. Both are TypeBox, so the routes validate with them and the types come from them.
 */

export const RAW_EVENT_SCHEMA_VERSION = 1

export const EVENT_TYPES = ['track', 'page', 'screen', 'identify', 'group', 'alias'] as const
export type EventType = (typeof EVENT_TYPES)[number]

const EventTypeSchema = Type.Union([
  Type.Literal('track'),
  Type.Literal('page'),
  Type.Literal('screen'),
  Type.Literal('identify'),
  Type.Literal('group'),
  Type.Literal('alias'),
])

const Id = Type.String({ minLength: 1, maxLength: 256 })
const IdOrNumber = Type.Union([Id, Type.Number()])
/** ISO 8601 date-time as sent by clients; parsed and checked after schema validation. */
const DateTime = Type.String({ minLength: 10, maxLength: 40 })
const FreeObject = Type.Record(Type.String(), Type.Unknown())

export const SegmentEventV1 = Type.Object(
  {
    type: Type.Optional(EventTypeSchema),
    messageId: Type.Optional(Id),
    anonymousId: Type.Optional(IdOrNumber),
    userId: Type.Optional(IdOrNumber),
    event: Type.Optional(Type.String({ minLength: 1, maxLength: 512 })),
    name: Type.Optional(Type.String({ maxLength: 512 })),
    category: Type.Optional(Type.String({ maxLength: 512 })),
    groupId: Type.Optional(IdOrNumber),
    previousId: Type.Optional(IdOrNumber),
    properties: Type.Optional(FreeObject),
    traits: Type.Optional(FreeObject),
    context: Type.Optional(FreeObject),
    integrations: Type.Optional(FreeObject),
    timestamp: Type.Optional(DateTime),
    originalTimestamp: Type.Optional(DateTime),
    sentAt: Type.Optional(DateTime),
    writeKey: Type.Optional(Type.String({ maxLength: 256 })),
  },
  { additionalProperties: true },
)
export type SegmentEventV1 = Static<typeof SegmentEventV1>

/** Browser, OS and device class as parsed from the user agent at ingest. */
export const UserAgentInfo = Type.Object({
  browser: Type.String(),
  os: Type.String(),
  device: Type.String(),
})
export type UserAgentInfo = Static<typeof UserAgentInfo>

/** One event as stored in the raw log (Kafka value, JSON). */
export const RawEventV1 = Type.Object({
  v: Type.Literal(1),
  siteId: Type.String({ minLength: 1 }),
  messageId: Type.String({ minLength: 1 }),
  /** True when the client sent no messageId and ingest made one up (retries of it cannot be deduplicated). */
  messageIdAssigned: Type.Boolean(),
  type: EventTypeSchema,
  event: Type.Optional(Type.String()),
  name: Type.Optional(Type.String()),
  category: Type.Optional(Type.String()),
  anonymousId: Type.Optional(Type.String()),
  userId: Type.Optional(Type.String()),
  groupId: Type.Optional(Type.String()),
  previousId: Type.Optional(Type.String()),
  properties: FreeObject,
  traits: Type.Optional(FreeObject),
  context: FreeObject,
  integrations: Type.Optional(FreeObject),
  /** Event time, corrected for client clock skew (ISO 8601, UTC). Windows are cut on this. */
  timestamp: Type.String(),
  originalTimestamp: Type.Optional(Type.String()),
  sentAt: Type.Optional(Type.String()),
  /** When ingest received it (ISO 8601, UTC). */
  receivedAt: Type.String(),
  ua: UserAgentInfo,
  bot: Type.Boolean(),
  /**
   * ISO 3166-1 alpha-2 country of the client IP, looked up at ingest before the IP is dropped
   * (ingest/geo.ts); `(unknown)` for no IP, a private address or no match. Absent on events logged
   * before countries existed (counted as `(unknown)`).
   */
  country: Type.Optional(Type.String({ maxLength: 16 })),
  /** Appended by bulk import (POST /v1/import, tally import) rather than sent live. */
  imported: Type.Optional(Type.Boolean()),
  /**
   * True when the sent timestamp lay more than TALLY_MAX_FUTURE_MS ahead of receivedAt and ingest
   * replaced it with receivedAt (originalTimestamp keeps what was sent).
   */
  timestampClamped: Type.Optional(Type.Boolean()),
})
export type RawEventV1 = Static<typeof RawEventV1>
