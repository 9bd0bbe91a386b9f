import { createHmac } from 'node:crypto'

/**
 * Plausible's event API (`POST /api/event`): its body in the documented long form (`name`, `url`,
 * `domain`, `referrer`, `props`, `revenue`, `interactive`) and the short form its script and npm
 * tracker send (`n`, `u`, `d`, `r`, `p`, `$`, `i`, `h`; `m`/`meta` for props as a JSON string from
 * older scripts), read as Plausible reads it, and turned into a Segment-shaped payload for the
 * same normalization every other event goes through.
 */

/** Plausible's validation answer: field → messages (its changeset errors). */
export type PlausibleErrors = Record<string, string[]>

export interface PlausibleEvent {
  name: string
  url: URL
  /** Lower case, without a leading "www." (one or more: Plausible's `d` may list several, comma-separated). */
  domains: string[]
  /** The page path as Plausible records it: decoded, with the fragment in hash mode (`h: 1`). */
  pathname: string
  referrer: string | undefined
  props: Record<string, string | number | boolean>
  revenue: { amount: number; currency: string } | undefined
  /** false: the event does not end a bounce (Plausible's non-interactive events). */
  interactive: boolean
  /** The tracker's version (`v`), when it sends one. */
  version: string | undefined
}

export type PlausibleParse = { ok: true; event: PlausibleEvent } | { ok: false; errors: PlausibleErrors }

/** Plausible's own limits on the path and the referrer (characters). */
const MAX_LENGTH = 2000

type Body = Record<string, unknown>

function stripWww(host: string): string {
  return host
    .trim()
    .toLowerCase()
    .replace(/^www\./, '')
}

function decode(s: string): string {
  try {
    return decodeURIComponent(s)
  } catch {
    return s
  }
}

/**
 * Props as Plausible keeps them: an object (or its JSON text), scalar values that are not empty or
 * blank, under keys that are not blank (its Ingestion.Request drops a prop whose key or value is
 * only spaces).
 */
function propsOf(body: Body): Record<string, string | number | boolean> {
  let raw = body.m ?? body.meta ?? body.p ?? body.props
  if (typeof raw === 'string') {
    try {
      raw = JSON.parse(raw)
    } catch {
      return {}
    }
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return {}
  const out: Record<string, string | number | boolean> = {}
  for (const [k, v] of Object.entries(raw as Body)) {
    if (v === null || v === undefined || typeof v === 'object' || k.trim() === '') continue
    if (typeof v === 'string' && v.trim() === '') continue
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') out[k] = v
  }
  return out
}

/** `{amount, currency}` with a finite amount and an ISO 4217 code; anything else is ignored, as Plausible does. */
function revenueOf(raw: unknown): PlausibleEvent['revenue'] {
  if (raw === null || typeof raw !== 'object') return undefined
  const { amount, currency } = raw as Body
  const n = typeof amount === 'number' ? amount : typeof amount === 'string' ? Number(amount) : Number.NaN
  if (!Number.isFinite(n) || typeof currency !== 'string' || !/^[A-Za-z]{3}$/.test(currency)) return undefined
  return { amount: n, currency: currency.toUpperCase() }
}

/** Reads a Plausible body; the errors are the ones Plausible answers (400 `{"errors": …}`). */
export function parsePlausibleBody(body: unknown): PlausibleParse {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    return { ok: false, errors: { request: ['Unable to parse request body as json'] } }
  }
  const b = body as Body
  const errors: PlausibleErrors = {}
  const add = (field: string, message: string) => {
    errors[field] = [...(errors[field] ?? []), message]
  }
  const name = b.n ?? b.name
  if (typeof name !== 'string' || name.trim() === '') add('event_name', "can't be blank")
  const rawUrl = b.u ?? b.url
  let url: URL | undefined
  if (rawUrl === undefined || rawUrl === null) add('url', 'is required')
  else if (typeof rawUrl !== 'string') add('url', 'must be a string')
  else if (!URL.canParse(rawUrl)) add('url', 'must be an absolute URL')
  else {
    url = new URL(rawUrl)
    if (url.protocol === 'data:') add('url', 'scheme is not allowed')
  }
  const rawDomain = b.d ?? b.domain
  let domains: string[] = []
  if (typeof rawDomain === 'string' && rawDomain.trim() !== '') {
    domains = [...new Set(rawDomain.split(',').map(stripWww))].filter((d) => d !== '')
  } else if ((rawDomain === undefined || rawDomain === null) && url?.hostname) {
    domains = [stripWww(url.hostname)]
  }
  if (domains.length === 0) add('domain', "can't be blank")
  const hashMode = (b.h ?? b.hashMode) === 1 || (b.h ?? b.hashMode) === true
  let pathname = '/'
  if (url) {
    pathname = decode(url.pathname || '/').trimEnd() || '/'
    if (hashMode && url.hash.length > 1) pathname += `#${decode(url.hash.slice(1))}`
    if (pathname.length > MAX_LENGTH) add('pathname', `should be at most ${MAX_LENGTH} character(s)`)
  }
  const rawReferrer = b.r ?? b.referrer
  const referrer = typeof rawReferrer === 'string' && rawReferrer !== '' ? rawReferrer : undefined
  if (referrer !== undefined && referrer.length > MAX_LENGTH)
    add('referrer', `should be at most ${MAX_LENGTH} character(s)`)
  if (Object.keys(errors).length > 0 || !url) return { ok: false, errors }
  const version = b.v
  return {
    ok: true,
    event: {
      name: (name as string).trim(),
      url,
      domains,
      pathname,
      referrer,
      props: propsOf(b),
      revenue: revenueOf(b.$ ?? b.revenue),
      interactive: (b.i ?? b.interactive) !== false,
      version: typeof version === 'number' || typeof version === 'string' ? String(version) : undefined,
    },
  }
}

/**
 * The visitor id Plausible derives without cookies: a keyed hash of the day's salt, the site, the
 * IP and the user agent. The IP goes no further than this hash; with the salt deleted, the id cannot
 * be linked to the IP, nor to the same visitor's id of another day.
 */
export function cookielessVisitorId(salt: Buffer, siteId: string, ip: string, userAgent: string): string {
  const h = createHmac('sha256', salt).update(`${siteId}\n${ip}\n${userAgent}`).digest('hex')
  return `pl_${h.slice(0, 32)}`
}

/**
 * The event as a Segment payload: `pageview` → page, anything else → track named so; props →
 * properties (revenue as `revenue` and `currency`, Segment's names); url and referrer → context.page.
 */
export function segmentPayloadOf(e: PlausibleEvent, anonymousId: string): Body {
  const page: Body = { url: e.url.href, path: e.pathname, search: e.url.search }
  if (e.referrer !== undefined) page.referrer = e.referrer
  const properties: Body = { ...e.props }
  if (e.revenue) {
    properties.revenue = e.revenue.amount
    properties.currency = e.revenue.currency
  }
  const context: Body = {
    page,
    library: { name: 'plausible', version: e.version ?? 'unknown' },
  }
  if (!e.interactive) context.plausible = { interactive: false }
  if (e.name === 'pageview')
    return { type: 'page', anonymousId, properties: { ...page, ...properties }, context }
  return { type: 'track', event: e.name, anonymousId, properties, context }
}
