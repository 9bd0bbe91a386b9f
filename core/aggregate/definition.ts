import type { RawEventV1 } from '../../schemas/events.js'
import { classifySource } from './source.js'

/**
 * The one definition of every metric and dimension, shared by the stream workers and the batch
 * rebuild, so that both count the same events the same way (stream = batch).
 *
 * - Counted events are `track`, `page` and `screen` calls from non-bots; `identify`, `group` and
 *   `alias` describe people, not activity, and count nowhere.
 * - `events`: counted events; `pageviews`: counted `page` calls; `visitors`: distinct visitor ids
 *   (anonymousId, else userId) as HyperLogLog registers; `bot_events`: track/page/screen calls
 *   from bots, kept apart and excluded from the numbers above.
 * - Windows are UTC tumbling windows of the skew-corrected event `timestamp`.
 */

export const GRANULARITIES = ['minute', 'hour', 'day'] as const
export type Granularity = (typeof GRANULARITIES)[number]

export const DIMENSIONS = [
  'event',
  'path',
  'referrer',
  'utm_source',
  'browser',
  'os',
  'device',
  'country',
  'source',
  'channel',
  'utm_medium',
  'utm_campaign',
  'utm_content',
  'utm_term',
] as const
export type Dimension = (typeof DIMENSIONS)[number]

/**
 * Dimensions of a visit taken from its first event (see core/aggregate/visits.ts): visits, bounces
 * and durations are broken down by these. A dimension added to DIMENSIONS that describes the
 * session rather than the page or the event belongs here too.
 */
export const SESSION_DIMENSIONS = [
  'referrer',
  'utm_source',
  'browser',
  'os',
  'device',
  'country',
  'source',
  'channel',
  'utm_medium',
  'utm_campaign',
  'utm_content',
  'utm_term',
] as const satisfies readonly Dimension[]
export type SessionDimension = (typeof SESSION_DIMENSIONS)[number]

/**
 * Dimensions that only visits have: the path of a visit's first and of its last pageview. Their
 * rows carry visit counts only (events, pageviews and visitors stay zero/empty).
 */
export const VISIT_DIMENSIONS = ['entry_page', 'exit_page'] as const
export type VisitDimension = (typeof VISIT_DIMENSIONS)[number]

/** A site's declared custom property `KEY` as a dimension (core/aggregate/props.ts). */
export type PropDimension = `prop:${string}`

/**
 * The dimension of goal completions, valued by the goal's name, and of conversions by another
 * dimension, `goal|DIM` (core/aggregate/goals.ts).
 */
export type GoalDimension = 'goal' | `goal|${string}`

/** Every dimension a stored row can have: an event's, a visit's own, a custom property or goals. */
export type RowDimension = Dimension | VisitDimension | PropDimension | GoalDimension

/** Every dimension of stored rows, in one order: the event's, then the visit's own. */
export const ROW_DIMENSIONS: readonly RowDimension[] = [...DIMENSIONS, ...VISIT_DIMENSIONS]

/** Granularities that keep breakdowns by dimension (minute windows keep totals only). */
export const DIMENSION_GRANULARITIES: readonly Granularity[] = ['hour', 'day']

export const NONE = '(none)'
export const DIRECT = '(direct)'
/** Country of an event whose IP was missing, private or not in the database (ingest/geo.ts). */
export const UNKNOWN = '(unknown)'

const MINUTE_MS = 60_000
const HOUR_MS = 3_600_000
const DAY_MS = 86_400_000

export function windowMs(g: Granularity): number {
  return g === 'minute' ? MINUTE_MS : g === 'hour' ? HOUR_MS : DAY_MS
}

/** Start (ms since epoch, UTC) of the window of granularity `g` that contains `tsMs`. */
export function windowStart(tsMs: number, g: Granularity): number {
  const w = windowMs(g)
  return Math.floor(tsMs / w) * w
}

/**
 * The storage bucket of a totals window: a minute window lives in its day's partition, an hour
 * window in its month's, a day window in its year's, so a partition stays bounded.
 */
export function totalsBucket(windowStartMs: number, g: Granularity): string {
  const iso = new Date(windowStartMs).toISOString()
  return g === 'minute' ? iso.slice(0, 10) : g === 'hour' ? iso.slice(0, 7) : iso.slice(0, 4)
}

export type EventKind = 'event' | 'bot' | 'ignored'

/** Whether an event counts, counts as a bot event, or is not activity at all. */
export function kindOf(e: Pick<RawEventV1, 'type' | 'bot'>): EventKind {
  if (e.type !== 'track' && e.type !== 'page' && e.type !== 'screen') return 'ignored'
  return e.bot ? 'bot' : 'event'
}

export function isPageview(e: Pick<RawEventV1, 'type'>): boolean {
  return e.type === 'page'
}

export function visitorId(e: Pick<RawEventV1, 'anonymousId' | 'userId' | 'messageId'>): string {
  return e.anonymousId ?? e.userId ?? e.messageId
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined
}

function obj(v: unknown): Record<string, unknown> | undefined {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined
}

function urlOf(raw: string | undefined): URL | undefined {
  if (!raw) return undefined
  try {
    return new URL(raw)
  } catch {
    return undefined
  }
}

/**
 * Remembers the answers of a pure function of a string: events repeat the same few URLs and
 * referrers, and parsing a URL is the dearest part of deriving the dimensions. Bounded: emptied
 * when full.
 */
function memoized<T>(fn: (raw: string) => T, limit = 10_000): (raw: string) => T {
  const cache = new Map<string, T>()
  return (raw) => {
    const hit = cache.get(raw)
    if (hit !== undefined || cache.has(raw)) return hit as T
    const v = fn(raw)
    if (cache.size >= limit) cache.clear()
    cache.set(raw, v)
    return v
  }
}

function bareHost(u: URL | undefined): string | undefined {
  return u?.hostname ? u.hostname.toLowerCase().replace(/^www\./, '') : undefined
}

const hostOf = memoized((raw) => bareHost(urlOf(raw)) ?? DIRECT)

/** Host of a referrer URL, lower-case, without a leading "www."; (direct) when there is none. */
export function referrerHost(raw: string | undefined): string {
  return raw ? hostOf(raw) : DIRECT
}

interface PageParts {
  path: string | undefined
  host: string | undefined
  utm: Record<(typeof UTM_KEYS)[number], string | undefined>
  clickId: 'google' | 'microsoft' | undefined
}

const UTM_KEYS = ['source', 'medium', 'campaign', 'content', 'term'] as const

/** Path, host, utm_* and ad click id of a page URL (each undefined when the URL has none or does not parse). */
const partsOf = memoized((raw): PageParts => {
  const u = urlOf(raw)
  const q = u?.searchParams
  const utm = {} as PageParts['utm']
  for (const k of UTM_KEYS) utm[k] = q?.get(`utm_${k}`) || undefined
  const clickId =
    q && (q.has('gclid') || q.has('gbraid') || q.has('wbraid'))
      ? 'google'
      : q?.has('msclkid')
        ? 'microsoft'
        : undefined
  return { path: u?.pathname, host: bareHost(u), utm, clickId }
})

const MAX_VALUE_LENGTH = 256

function clip(v: string): string {
  return v.length > MAX_VALUE_LENGTH ? v.slice(0, MAX_VALUE_LENGTH) : v
}

/**
 * The value of every dimension for one event. UTM values come from `context.campaign` (Segment's
 * names: source, medium, name, content, term), else from the page URL's query; `source` and
 * `channel` from them and the referrer (core/aggregate/source.ts); `country` is what ingest looked
 * up from the IP (RawEventV1.country).
 */
export function dimensionsOf(e: RawEventV1): Record<Dimension, string> {
  const page = obj(e.context.page)
  const props = e.properties
  const url = str(props.url) ?? str(page?.url)
  const parts = url ? partsOf(url) : undefined
  const path = str(props.path) ?? str(page?.path) ?? parts?.path
  const referrer = str(props.referrer) ?? str(page?.referrer)
  const campaign = obj(e.context.campaign)
  const utm = str(campaign?.source) ?? parts?.utm.source
  const medium = str(campaign?.medium) ?? parts?.utm.medium
  const refHost = referrerHost(referrer)
  const { source, channel } = classifySource({
    referrerHost: refHost === DIRECT ? undefined : refHost,
    pageHost: parts?.host,
    utmSource: utm,
    utmMedium: medium,
    clickId: parts?.clickId,
  })
  return {
    event: clip(e.type === 'track' ? (e.event ?? NONE) : e.type === 'page' ? 'pageview' : 'screen'),
    path: clip(path ?? NONE),
    referrer: clip(refHost),
    utm_source: clip(utm || NONE),
    browser: e.ua.browser,
    os: e.ua.os,
    device: e.ua.device,
    country: e.country ?? UNKNOWN,
    source: clip(source),
    channel,
    utm_medium: clip(medium || NONE),
    utm_campaign: clip(str(campaign?.name) ?? parts?.utm.campaign ?? NONE),
    utm_content: clip(str(campaign?.content) ?? parts?.utm.content ?? NONE),
    utm_term: clip(str(campaign?.term) ?? parts?.utm.term ?? NONE),
  }
}
