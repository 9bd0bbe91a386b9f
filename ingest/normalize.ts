import { randomUUID } from 'node:crypto'
import { Compile } from 'typebox/compile'
import { ERR } from '../core/error-codes.js'
import { type DeadLetter, deadLetter, ok, type StepResult } from '../core/record/result.js'
import { EVENT_TYPES, type EventType, type RawEventV1, SegmentEventV1 } from '../schemas/events.js'
import { type CountryLookup, sharedCountryLookup } from './geo.js'
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
  /** A corrected timestamp further ahead of receivedAt takes receivedAt (flagged timestampClamped). Default 23 h. */
  maxFutureMs: number
  /** A live event's corrected timestamp further before receivedAt is rejected. Default 7 days. */
  maxPastMs: number
  /** The same for imported events. Default 1830 days. */
  importMaxPastMs: number
}

const DAY_MS = 86_400_000

const validator = Compile(SegmentEventV1)

/** Depth of nested objects/arrays, stopping early once past `limit`. */
export function depthExceeds(value: unknown, limit: number): boolean {
  return jsonBound(value, 1, limit) === DEEP
}

const DEEP = -1
// Longest JSON text of a number ("-1.2345678901234567e-308"), of true/false/null.
const NUMBER_BYTES = 24
const LITERAL_BYTES = 5

/**
 * An upper bound of the UTF-8 bytes of `JSON.stringify(value)`, or DEEP once objects and arrays
 * nest deeper than `limit` (the root is depth 1). One walk instead of serializing every event a
 * second time only to measure it: a UTF-16 unit never takes more than 6 bytes in JSON (`\u001f`).
 * Values JSON.stringify treats specially (toJSON, as in Date) give Infinity, i.e. "measure it".
 */
function jsonBound(value: unknown, depth: number, limit: number): number {
  if (typeof value === 'string') return 6 * value.length + 2
  if (value === null || typeof value !== 'object')
    return typeof value === 'number' ? NUMBER_BYTES : LITERAL_BYTES
  if (depth > limit) return DEEP
  let bytes = 2
  if (Array.isArray(value)) {
    for (const item of value) {
      const b = jsonBound(item, depth + 1, limit)
      if (b === DEEP) return DEEP
      bytes += b + 1
    }
    return bytes
  }
  for (const key in value) {
    if (!Object.hasOwn(value, key)) continue
    const b = jsonBound((value as Record<string, unknown>)[key], depth + 1, limit)
    if (b === DEEP) return DEEP
    bytes += b + 6 * key.length + 4
  }
  return typeof (value as { toJSON?: unknown }).toJSON === 'function' ? Number.POSITIVE_INFINITY : bytes
}

function idString(v: unknown): string | undefined {
  if (typeof v === 'string') return v
  if (typeof v === 'number' && Number.isFinite(v)) return String(v)
  return undefined
}

// Date.parse alone also takes free text ("yesterday at 5" → 2001-05-01), so the shape is checked first.
const ISO_8601 =
  /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(?:[Zz]|[+-](\d{2})(?::?(\d{2}))?)?)?$/

const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

function daysInMonth(year: number, month: number): number {
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0)
  return month === 2 && leap ? 29 : DAYS_IN_MONTH[month - 1]!
}

/** The number of the ASCII digits of `s` from `at` to `end` (exclusive); -1 when one is no digit. */
function digits(s: string, at: number, end: number): number {
  let n = 0
  for (let i = at; i < end; i++) {
    const d = s.charCodeAt(i) - 48
    if (d < 0 || d > 9) return -1
    n = n * 10 + d
  }
  return n
}

/**
 * True when `v` has the form `toISOString` writes (`2024-05-01T12:34:56.789Z`, what Segment's
 * libraries send): such a string, once it parsed, is its own `toISOString()`.
 */
function isIsoShape(v: unknown): v is string {
  return (
    typeof v === 'string' &&
    v.length === 24 &&
    v.charCodeAt(4) === 45 && // -
    v.charCodeAt(7) === 45 &&
    v.charCodeAt(10) === 84 && // T
    v.charCodeAt(13) === 58 && // :
    v.charCodeAt(16) === 58 &&
    v.charCodeAt(19) === 46 && // .
    v.charCodeAt(23) === 90 && // Z
    digits(v, 0, 4) >= 0 &&
    digits(v, 20, 23) >= 0
  )
}

/**
 * The ms of a string of isIsoShape, or undefined when it is no real day and time: a character walk
 * instead of ISO_8601's match, which allocated an array and eight strings per timestamp (two
 * timestamps an event), with the same range checks.
 */
function isoShapeMs(v: string): number | undefined {
  const month = digits(v, 5, 7)
  const day = digits(v, 8, 10)
  const hour = digits(v, 11, 13)
  const minute = digits(v, 14, 16)
  const second = digits(v, 17, 19)
  if (hour < 0 || minute < 0 || second < 0) return undefined
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(digits(v, 0, 4), month)) return undefined
  if (hour > 23 || minute > 59 || second > 59) return undefined
  const t = Date.parse(v)
  return Number.isNaN(t) ? undefined : t
}

/**
 * An ISO 8601 date-time in ms, or undefined. The fields are range-checked first: Date.parse rolls
 * impossible dates over (2024-02-30 → 2024-03-01, T24:00 → the next day) instead of refusing them.
 */
function parseTime(v: unknown): number | undefined {
  if (typeof v !== 'string') return undefined
  if (isIsoShape(v)) return isoShapeMs(v)
  const m = ISO_8601.exec(v)
  if (!m) return undefined
  const [year, month, day] = [Number(m[1]), Number(m[2]), Number(m[3])]
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) return undefined
  // Absent time and zone fields are undefined, and Number(undefined) > n is false.
  if (Number(m[4]) > 23 || Number(m[5]) > 59 || Number(m[6]) > 59) return undefined
  if (Number(m[7]) > 23 || Number(m[8]) > 59) return undefined
  const t = Date.parse(v)
  return Number.isNaN(t) ? undefined : t
}

function hasNullField(o: object): boolean {
  for (const key in o) if (Object.hasOwn(o, key) && (o as Record<string, unknown>)[key] === null) return true
  return false
}

// ES2024 string methods (Node 20+), which the project's TypeScript lib (ES2023) does not declare.
interface WellFormedString {
  isWellFormed(): boolean
  toWellFormed(): string
}

function wellFormed(s: string): string {
  const w = s as unknown as WellFormedString
  return w.isWellFormed() ? s : w.toWellFormed()
}

/**
 * `value` with every lone UTF-16 surrogate (a JSON `\ud800` escape without its pair) in its strings
 * and keys, at any depth, replaced by U+FFFD. Stored as is, such a string is JSON no strict parser
 * reads (jq refuses the export line) while the UTF-8 encoders downstream each replace it their own
 * way; scrubbed here once, the log, the archive and the aggregates all hold the same U+FFFD.
 * Returns `value` itself when every string is well formed (the usual case: nothing is copied).
 */
export function withWellFormedStrings(value: unknown): unknown {
  if (typeof value === 'string') return wellFormed(value)
  if (value === null || typeof value !== 'object') return value
  if (Array.isArray(value)) {
    let out: unknown[] | undefined
    for (let i = 0; i < value.length; i++) {
      const item = value[i]
      const fixed = withWellFormedStrings(item)
      if (fixed !== item) {
        out ??= value.slice()
        out[i] = fixed
      }
    }
    return out ?? value
  }
  const o = value as Record<string, unknown>
  // Entries are collected only from the first key or value that changes (the keys before it are
  // taken as they are): an object with nothing to fix allocates nothing.
  let entries: Array<[string, unknown]> | undefined
  for (const key in o) {
    if (!Object.hasOwn(o, key)) continue
    const item = o[key]
    const fixedKey = wellFormed(key)
    const fixed = withWellFormedStrings(item)
    if (entries === undefined && (fixedKey !== key || fixed !== item)) {
      entries = []
      for (const before in o) {
        if (before === key) break
        if (Object.hasOwn(o, before)) entries.push([before, o[before]])
      }
    }
    entries?.push([fixedKey, fixed])
  }
  // fromEntries defines own properties, so no key (not even "__proto__") reaches the prototype.
  return entries ? Object.fromEntries(entries) : value
}

/** A shallow copy without `ip`; built without `delete`, which would slow the object down. */
function withoutIp(context: Record<string, unknown> | undefined): Record<string, unknown> {
  if (context === undefined) return {}
  if (!Object.hasOwn(context, 'ip')) return { ...context }
  const { ip: _ip, ...rest } = context
  return rest
}

// Every event of one request shares its receive time: format it once.
let lastReceivedAtMs = Number.NaN
let lastReceivedAtIso = ''
function isoOfReceivedAt(ms: number): string {
  if (ms !== lastReceivedAtMs) {
    lastReceivedAtIso = new Date(ms).toISOString()
    lastReceivedAtMs = ms
  }
  return lastReceivedAtIso
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
  /**
   * The visitor's address as the request shows it (the socket's, or X-Forwarded-For's as far as
   * TALLY_TRUST_PROXY trusts it); undefined for server-side calls, whose socket is the sender's.
   * An event's own context.ip (Segment's field for server-side calls) comes first.
   */
  clientIp?: string
}

/** The raw-log event, or the reason it was rejected (a dead letter: ingest never drops an event). */
export type NormalizeResult = StepResult<RawEventV1, DeadLetter>

// An event ingest refuses is a dead letter of the raw-record module; the API answers it with rejectionOf.
const reject = deadLetter

/** A dead letter as the API answers it, in `rejected` or as the request's error. */
export function rejectionOf(d: DeadLetter): Rejection {
  return d.where === undefined
    ? { code: d.code, message: d.reason }
    : { code: d.code, message: d.reason, where: d.where }
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
  geo: CountryLookup = sharedCountryLookup(),
): NormalizeResult {
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
    return reject(ERR.INVALID_EVENT, 'an event must be a JSON object')
  }
  // Segment clients send null for absent fields (analytics.js posts userId: null before identify).
  if (hasNullField(payload)) {
    payload = Object.fromEntries(Object.entries(payload).filter(([, v]) => v !== null))
  }
  const bound = jsonBound(payload, 1, limits.maxDepth)
  if (bound === DEEP) {
    return reject(ERR.NESTING_TOO_DEEP, `objects and arrays nest deeper than ${limits.maxDepth} levels`)
  }
  // Only an event that might be too large is serialized to measure it exactly.
  if (bound > limits.maxEventBytes) {
    const size = Buffer.byteLength(JSON.stringify(payload))
    if (size > limits.maxEventBytes) {
      return reject(ERR.EVENT_TOO_LARGE, `event is ${size} bytes; the limit is ${limits.maxEventBytes}`)
    }
  }
  // After the depth check, which bounds its recursion; U+FFFD replaces one UTF-16 unit by one.
  payload = withWellFormedStrings(payload)
  const claimedType = (payload as { type?: unknown }).type
  if (claimedType !== undefined && !(EVENT_TYPES as readonly unknown[]).includes(claimedType)) {
    return reject(ERR.INVALID_EVENT, `type must be one of ${EVENT_TYPES.join(', ')}`, '/type')
  }
  if (!validator.Check(payload)) {
    const first = validator.Errors(payload)[0]
    const where = first?.instancePath ? first.instancePath : undefined
    return reject(
      ERR.INVALID_EVENT,
      `${where ?? 'event'}: ${first?.message ?? 'does not match the schema'}`,
      where,
    )
  }
  const e = payload
  const type = input.routeType ?? e.type
  if (type === undefined) return reject(ERR.MISSING_FIELD, 'type is required in a batch item', '/type')
  if (input.routeType !== undefined && e.type !== undefined && e.type !== input.routeType) {
    return reject(
      ERR.INVALID_EVENT,
      `type "${e.type}" does not match the endpoint /v1/${input.routeType}`,
      '/type',
    )
  }
  const anonymousId = idString(e.anonymousId)
  const userId = idString(e.userId)
  if (anonymousId === undefined && userId === undefined) {
    return reject(ERR.MISSING_IDENTITY, 'anonymousId or userId is required', '/anonymousId')
  }
  if (type === 'track' && !e.event) return reject(ERR.MISSING_FIELD, 'track requires event', '/event')
  if (type === 'group' && e.groupId === undefined)
    return reject(ERR.MISSING_FIELD, 'group requires groupId', '/groupId')
  if (type === 'alias' && (e.previousId === undefined || userId === undefined)) {
    return reject(ERR.MISSING_FIELD, 'alias requires previousId and userId', '/previousId')
  }

  const eventTime = parseTime(e.timestamp ?? e.originalTimestamp)
  const timeWhere = e.timestamp ? '/timestamp' : '/originalTimestamp'
  if ((e.timestamp ?? e.originalTimestamp) !== undefined && eventTime === undefined) {
    return reject(
      ERR.INVALID_TIMESTAMP,
      `${timeWhere.slice(1)} is not an ISO 8601 date-time of a real calendar day and time`,
      timeWhere,
    )
  }
  const sentAtRaw = e.sentAt ?? input.batchSentAt
  const sentAt = sentAtRaw instanceof Date ? sentAtRaw.getTime() : parseTime(sentAtRaw)
  if (e.sentAt !== undefined && sentAt === undefined) {
    return reject(
      ERR.INVALID_TIMESTAMP,
      'sentAt is not an ISO 8601 date-time of a real calendar day and time',
      '/sentAt',
    )
  }
  // Client clocks drift: trust the client's offset between event and send, not its wall clock.
  // Imported history keeps its original timestamps.
  let timestampMs = eventTime ?? input.receivedAtMs
  if (!input.imported && eventTime !== undefined && sentAt !== undefined) {
    timestampMs = input.receivedAtMs - (sentAt - eventTime)
  }
  // A timestamp far ahead would hold stream windows and archive buffers open until that time comes
  // (PostHog clamps the same way); the event still counts, now.
  const timestampClamped = timestampMs - input.receivedAtMs > limits.maxFutureMs
  if (timestampClamped) timestampMs = input.receivedAtMs
  // Live events older than the raw log keeps could leave it before the archiver read them;
  // imports are history, with a limit of their own.
  const maxPastMs = input.imported ? limits.importMaxPastMs : limits.maxPastMs
  if (input.receivedAtMs - timestampMs > maxPastMs) {
    const days = Math.round((maxPastMs / DAY_MS) * 100) / 100
    return reject(
      ERR.TIMESTAMP_TOO_OLD,
      input.imported
        ? `timestamp ${new Date(timestampMs).toISOString()} is more than ${days} days before the import; older history is not accepted`
        : `timestamp ${new Date(timestampMs).toISOString()} is more than ${days} days before receipt; send older events through /v1/import`,
      timeWhere,
    )
  }

  // The client IP serves the country lookup and rate limiting only; it is never stored.
  const contextIp = e.context?.ip
  const country = geo.country(typeof contextIp === 'string' && contextIp !== '' ? contextIp : input.clientIp)
  const context = withoutIp(e.context)
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
    receivedAt: isoOfReceivedAt(input.receivedAtMs),
    ua: ua.info,
    bot: ua.bot,
    country,
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
  // A time that parsed and was sent as toISOString writes it is kept as sent: the same text.
  if (eventTime !== undefined) {
    const sent = e.timestamp ?? e.originalTimestamp
    event.originalTimestamp = isIsoShape(sent) ? sent : new Date(eventTime).toISOString()
  }
  if (sentAt !== undefined) event.sentAt = isIsoShape(sentAtRaw) ? sentAtRaw : new Date(sentAt).toISOString()
  if (input.imported) event.imported = true
  if (timestampClamped) event.timestampClamped = true
  return ok(event)
}
