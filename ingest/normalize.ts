import { randomUUID } from 'node:crypto'
import { Compile } from 'typebox/compile'
import { EVENT_TYPES, type EventType, type RawEventV1, SegmentEventV1 } from '../schemas/events.js'
import type { UserAgentParser } from './user-agent.js'

/** A reason an event was not accepted; returned per event in `rejected`. */
export interface Rejection {
  code: string
  message: string
  /** JSON path inside the event, when the problem is one field. */
  where?: string
}

export interface IngestLimits {
  /** Max bytes of one event (serialized JSON). Default 32 KB. */
  maxEventBytes: number
  /** Max nesting depth of objects/arrays inside one event. Default 16. */
  maxDepth: number
}

const validator = Compile(SegmentEventV1)

/** Depth of nested objects/arrays, stopping early once past `limit`. */
export function depthExceeds(value: unknown, limit: number): boolean {
  const stack: Array<[unknown, number]> = [[value, 1]]
  while (stack.length > 0) {
    const [v, d] = stack.pop()!
    if (v === null || typeof v !== 'object') continue
    if (d > limit) return true
    for (const child of Array.isArray(v) ? v : Object.values(v)) {
      if (child !== null && typeof child === 'object') stack.push([child, d + 1])
    }
  }
  return false
}

function idString(v: unknown): string | undefined {
  if (typeof v === 'string') return v
  if (typeof v === 'number' && Number.isFinite(v)) return String(v)
  return undefined
}

// Date.parse alone also takes free text ("yesterday at 5" → 2001-05-01), so the shape is checked first.
const ISO_8601 =
  /^\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?)?$/

function parseTime(v: unknown): number | undefined {
  if (typeof v !== 'string' || !ISO_8601.test(v)) return undefined
  const t = Date.parse(v)
  return Number.isNaN(t) ? undefined : t
}

export interface NormalizeInput {
  siteId: string
  /** The request's own User-Agent header, used when the event has no context.userAgent. */
  userAgent: string | undefined
  receivedAtMs: number
  /** sentAt of the batch wrapper, applied to events without their own. */
  batchSentAt: unknown
  /** The route's type (/v1/track → track); batch items carry their own. */
  routeType: EventType | undefined
  imported: boolean
}

export type NormalizeResult = { ok: true; event: RawEventV1 } | { ok: false; rejection: Rejection }

function reject(code: string, message: string, where?: string): NormalizeResult {
  return { ok: false, rejection: where === undefined ? { code, message } : { code, message, where } }
}

/**
 * Validates one Segment payload and turns it into the raw-log event: server receive time,
 * skew-corrected timestamp (receivedAt − (sentAt − timestamp)), parsed user agent, bot flag, a
 * messageId when absent, and no client IP.
 */
export function normalizeEvent(
  payload: unknown,
  input: NormalizeInput,
  limits: IngestLimits,
  uaParser: UserAgentParser,
): NormalizeResult {
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
    return reject('TALLY_ERR_INVALID_EVENT', 'an event must be a JSON object')
  }
  // Segment clients send null for absent fields (analytics.js posts userId: null before identify).
  if (Object.values(payload).includes(null)) {
    payload = Object.fromEntries(Object.entries(payload).filter(([, v]) => v !== null))
  }
  if (depthExceeds(payload, limits.maxDepth)) {
    return reject(
      'TALLY_ERR_NESTING_TOO_DEEP',
      `objects and arrays nest deeper than ${limits.maxDepth} levels`,
    )
  }
  const size = Buffer.byteLength(JSON.stringify(payload))
  if (size > limits.maxEventBytes) {
    return reject('TALLY_ERR_EVENT_TOO_LARGE', `event is ${size} bytes; the limit is ${limits.maxEventBytes}`)
  }
  const claimedType = (payload as { type?: unknown }).type
  if (claimedType !== undefined && !(EVENT_TYPES as readonly unknown[]).includes(claimedType)) {
    return reject('TALLY_ERR_INVALID_EVENT', `type must be one of ${EVENT_TYPES.join(', ')}`, '/type')
  }
  if (!validator.Check(payload)) {
    const first = validator.Errors(payload)[0]
    const where = first?.instancePath ? first.instancePath : undefined
    return reject(
      'TALLY_ERR_INVALID_EVENT',
      `${where ?? 'event'}: ${first?.message ?? 'does not match the schema'}`,
      where,
    )
  }
  const e = payload
  const type = input.routeType ?? e.type
  if (type === undefined)
    return reject('TALLY_ERR_MISSING_FIELD', 'type is required in a batch item', '/type')
  if (input.routeType !== undefined && e.type !== undefined && e.type !== input.routeType) {
    return reject(
      'TALLY_ERR_INVALID_EVENT',
      `type "${e.type}" does not match the endpoint /v1/${input.routeType}`,
      '/type',
    )
  }
  const anonymousId = idString(e.anonymousId)
  const userId = idString(e.userId)
  if (anonymousId === undefined && userId === undefined) {
    return reject('TALLY_ERR_MISSING_IDENTITY', 'anonymousId or userId is required', '/anonymousId')
  }
  if (type === 'track' && !e.event) return reject('TALLY_ERR_MISSING_FIELD', 'track requires event', '/event')
  if (type === 'group' && e.groupId === undefined)
    return reject('TALLY_ERR_MISSING_FIELD', 'group requires groupId', '/groupId')
  if (type === 'alias' && (e.previousId === undefined || userId === undefined)) {
    return reject('TALLY_ERR_MISSING_FIELD', 'alias requires previousId and userId', '/previousId')
  }

  const eventTime = parseTime(e.timestamp ?? e.originalTimestamp)
  if ((e.timestamp ?? e.originalTimestamp) !== undefined && eventTime === undefined) {
    return reject(
      'TALLY_ERR_INVALID_TIMESTAMP',
      'timestamp is not an ISO 8601 date-time',
      e.timestamp ? '/timestamp' : '/originalTimestamp',
    )
  }
  const sentAtRaw = e.sentAt ?? input.batchSentAt
  const sentAt = sentAtRaw instanceof Date ? sentAtRaw.getTime() : parseTime(sentAtRaw)
  if (e.sentAt !== undefined && sentAt === undefined) {
    return reject('TALLY_ERR_INVALID_TIMESTAMP', 'sentAt is not an ISO 8601 date-time', '/sentAt')
  }
  // Client clocks drift: trust the client's offset between event and send, not its wall clock.
  // Imported history keeps its original timestamps.
  let timestampMs = eventTime ?? input.receivedAtMs
  if (!input.imported && eventTime !== undefined && sentAt !== undefined) {
    timestampMs = input.receivedAtMs - (sentAt - eventTime)
  }

  const context: Record<string, unknown> = { ...(e.context ?? {}) }
  // The client IP serves rate limiting only; it is never stored.
  delete context.ip
  const ua = uaParser.parse(typeof context.userAgent === 'string' ? context.userAgent : input.userAgent)

  const event: RawEventV1 = {
    v: 1,
    siteId: input.siteId,
    messageId: e.messageId ?? `srv-${randomUUID()}`,
    messageIdAssigned: e.messageId === undefined,
    type,
    properties: e.properties ?? {},
    context,
    timestamp: new Date(timestampMs).toISOString(),
    receivedAt: new Date(input.receivedAtMs).toISOString(),
    ua: { browser: ua.browser, os: ua.os, device: ua.device },
    bot: ua.bot,
  }
  if (e.event !== undefined) event.event = e.event
  if (e.name !== undefined) event.name = e.name
  if (e.category !== undefined) event.category = e.category
  if (anonymousId !== undefined) event.anonymousId = anonymousId
  if (userId !== undefined) event.userId = userId
  const groupId = idString(e.groupId)
  if (groupId !== undefined) event.groupId = groupId
  const previousId = idString(e.previousId)
  if (previousId !== undefined) event.previousId = previousId
  if (e.traits !== undefined) event.traits = e.traits
  if (e.integrations !== undefined) event.integrations = e.integrations
  if (eventTime !== undefined) event.originalTimestamp = new Date(eventTime).toISOString()
  if (sentAt !== undefined) event.sentAt = new Date(sentAt).toISOString()
  if (input.imported) event.imported = true
  return { ok: true, event }
}
