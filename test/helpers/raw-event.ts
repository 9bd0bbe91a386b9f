import { isbot } from 'isbot'
import { UAParser } from 'ua-parser-js'
import type { EventType, RawEventV1 } from '../../schemas/events.js'

/**
 * What ingest must write to the raw log for one posted Segment payload, worked out from the Segment
 * spec and the enrichment rules of DESIGN.md ("Ingest API"), independently of ingest's own code.
 * Tests compare the event read back from Kafka with this using `toEqual`, so a missing, extra or
 * changed field fails.
 */
export interface Expectation {
  siteId: string
  /** The receivedAt ingest stamped (read back from the log, checked against the request's time window). */
  receivedAt: string
  /** The user agent ingest saw: context.userAgent, else the request's User-Agent header. */
  userAgent: string | undefined
  /** Type given by the route (/v1/track → track); batch items carry their own. */
  routeType?: EventType
  /** sentAt of the batch wrapper (Segment batches carry one sentAt for all events). */
  batchSentAt?: string
  /** Context of the batch wrapper, merged under each event's own context. */
  batchContext?: Record<string, unknown>
  /** integrations of the batch wrapper, used when the event has none. */
  batchIntegrations?: Record<string, unknown>
  imported?: boolean
  /** A server-assigned messageId, taken from the log (the client sent none). */
  assignedMessageId?: string
}

type Sent = Record<string, unknown>

function idOf(v: unknown): string | undefined {
  if (typeof v === 'string') return v
  if (typeof v === 'number') return String(v)
  return undefined
}

function iso(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined
  return new Date(v as string).toISOString()
}

/** ua-parser-js and isbot, as the design names them: browser/os/device and a bot flag. */
export function expectedUa(ua: string | undefined): { ua: RawEventV1['ua']; bot: boolean } {
  if (!ua) return { ua: { browser: '(unknown)', os: '(unknown)', device: '(unknown)' }, bot: false }
  const r = new UAParser(ua).getResult()
  return {
    ua: {
      browser: r.browser.name ?? '(unknown)',
      os: r.os.name ?? '(unknown)',
      device: r.device.type ?? 'desktop',
    },
    bot: isbot(ua),
  }
}

export function expectedRawEvent(sent: Sent, x: Expectation): RawEventV1 {
  const context: Record<string, unknown> = {
    ...(x.batchContext ?? {}),
    ...((sent.context as Record<string, unknown> | null | undefined) ?? {}),
  }
  // The client IP serves rate limiting only and is never stored.
  delete context.ip
  const userAgent = typeof context.userAgent === 'string' ? context.userAgent : x.userAgent
  const eventTime = iso(sent.timestamp ?? sent.originalTimestamp)
  const sentAt = iso(sent.sentAt ?? x.batchSentAt)
  const receivedMs = Date.parse(x.receivedAt)
  let timestamp = eventTime ?? x.receivedAt
  if (!x.imported && eventTime !== undefined && sentAt !== undefined) {
    // Skew correction: timestamp = receivedAt − (sentAt − timestamp).
    timestamp = new Date(receivedMs - (Date.parse(sentAt) - Date.parse(eventTime))).toISOString()
  }
  const messageId = typeof sent.messageId === 'string' ? sent.messageId : x.assignedMessageId
  if (messageId === undefined) throw new Error('expectedRawEvent: no messageId sent and none assigned given')
  const out: RawEventV1 = {
    v: 1,
    siteId: x.siteId,
    messageId,
    messageIdAssigned: typeof sent.messageId !== 'string',
    type: (x.routeType ?? sent.type) as EventType,
    properties: (sent.properties as Record<string, unknown> | null | undefined) ?? {},
    context,
    timestamp,
    receivedAt: x.receivedAt,
    ...expectedUa(userAgent),
    // The tests' IPs are documentation addresses (RFC 5737) or loopback: no country.
    country: '(unknown)',
  }
  for (const k of ['event', 'name', 'category'] as const) {
    if (typeof sent[k] === 'string') out[k] = sent[k] as string
  }
  for (const k of ['anonymousId', 'userId', 'groupId', 'previousId'] as const) {
    const v = idOf(sent[k])
    if (v !== undefined) out[k] = v
  }
  if (sent.traits) out.traits = sent.traits as Record<string, unknown>
  const integrations = sent.integrations ?? x.batchIntegrations
  if (integrations) out.integrations = integrations as Record<string, unknown>
  if (eventTime !== undefined) out.originalTimestamp = eventTime
  if (sentAt !== undefined) out.sentAt = sentAt
  if (x.imported) out.imported = true
  return out
}

export const USER_AGENTS = {
  chromeDesktop:
    'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36',
  safariIphone:
    'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1',
  firefoxLinux: 'Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0',
  googlebot: 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)',
} as const
