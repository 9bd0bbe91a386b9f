/**
 * Seeded, reproducible workload generator with ground truth.
 *
 * `generateWorkload` produces Segment HTTP Tracking API payloads (page / track / identify, optionally
 * screen) for a set of sites, as a client would send them — including bot traffic, client retries
 * (duplicates, same messageId), out-of-order and late sends — together with the exact aggregates Tally
 * must report for them. The truth is computed from the generator's own knowledge (no product code), with
 * these definitions:
 *
 * - only non-bot events, de-duplicated by messageId, count; bot events are counted apart (`bots`);
 * - `events` = track + page + screen calls (identify/group/alias do not count); `pageviews` = page calls;
 *   `visitors` = distinct `anonymousId` among counted events;
 * - windows are UTC tumbling windows (minute, hour, day) of the event `timestamp`, keyed by the window
 *   start as an ISO string (`2024-05-01T13:05:00.000Z`);
 * - breakdown dimensions: `event` (track → event name, page → "pageview", screen → "screen"), `path`
 *   (context.page.path, "(none)" when absent), `referrer` (host of context.page.referrer, lower-case,
 *   without leading "www.", "(direct)" when empty/absent), `utm_source` (context.campaign.source, "(none)"
 *   when absent), `browser`, `os`, `device` (ua-parser-js@1 `browser.name`, `os.name`,
 *   `device.type ?? 'desktop'`, "(unknown)" when the parser returns nothing), `country` (of the
 *   visitor's `context.ip`, from the generator's own IP table; "(unknown)" for none or a private one),
 *   `source` and `channel` (from the generator's own table of its referrers and campaigns: a
 *   campaign's source and GA4 channel, else the referrer's named source, else "Direct / None" and
 *   "Direct"; a referrer on the site's own host is no source), `utm_medium`, `utm_campaign`,
 *   `utm_content`, `utm_term` (context.campaign medium, name, content, term; "(none)" when absent).
 *
 * Everything is driven by one inline PRNG (sfc32 seeded through splitmix32): same options → identical
 * output. No Math.random, no clock. Changing any option (even a share) changes the whole stream.
 *
 * Worth knowing when consuming it:
 * - `events` is in send order (`sendAt`), not timestamp order. Replay it in that order; `sendAt` is virtual
 *   time (it lies in the workload's span, or up to lateByMs + 31 s after it), not wall-clock time.
 * - Only the first page of a session has an external referrer (or none); later pages have the previous
 *   page of the same site as referrer, so each site's own host (`<slug>.example`) is a big `referrer` value.
 *   A landing page with utm_* parameters carries `context.campaign` for the events sent from that page only.
 * - Sub-objects of payloads (context.page, page `properties` — the same object —, context.campaign,
 *   context.library) are frozen and shared between events: treat payloads as read-only, or
 *   `structuredClone` one before changing it.
 * - The stream-only expectation is `truthOf(events.filter((e) => !e.isLate))`: late events arrive at least
 *   lateByMs after their timestamp, out-of-order ones at most min(120 s, lateByMs / 2) after it, so a stream
 *   whose allowed lateness lies between the two keeps the latter and drops the former (provided later
 *   traffic moved its watermark past the window in the meantime).
 */
import { createWriteStream } from 'node:fs'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'

// ---------------------------------------------------------------------------------------------------
// PRNG and samplers
// ---------------------------------------------------------------------------------------------------

const HEX_CODES = Array.from('0123456789abcdef', (ch) => ch.charCodeAt(0))
const UUID_CODES: number[] = Array.from('00000000-0000-0000-0000-000000000000', (ch) => ch.charCodeAt(0))

/** Small seeded PRNG: sfc32, state initialised with splitmix32 from a 53-bit integer seed. */
export class Rng {
  private a: number
  private b: number
  private c: number
  private d: number

  constructor(seed: number) {
    if (!Number.isSafeInteger(seed)) throw new RangeError(`seed must be a safe integer, got ${seed}`)
    const lo = seed >>> 0
    const hi = Math.floor(seed / 2 ** 32) >>> 0
    let s = lo
    const splitmix = (): number => {
      s = (s + 0x9e3779b9) | 0
      let z = s
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b)
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35)
      return (z ^ (z >>> 16)) >>> 0
    }
    this.a = splitmix()
    this.b = splitmix() ^ hi
    this.c = splitmix()
    this.d = splitmix()
    for (let i = 0; i < 16; i++) this.u32()
  }

  /** Uniform 32-bit unsigned integer. */
  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0
    this.d = (this.d + 1) | 0
    this.a = this.b ^ (this.b >>> 9)
    this.b = (this.c + (this.c << 3)) | 0
    this.c = (this.c << 21) | (this.c >>> 11)
    this.c = (this.c + t) | 0
    return t >>> 0
  }

  /** Uniform float in [0, 1). */
  next(): number {
    return this.u32() / 4294967296
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n)
  }

  chance(p: number): boolean {
    return this.next() < p
  }

  /** Exponential variate with the given mean. */
  exp(mean: number): number {
    return -Math.log(1 - this.next()) * mean
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!
  }

  /** RFC 4122 version-4-shaped id from the PRNG. */
  uuid(): string {
    const c = UUID_CODES
    let w = 0
    for (let i = 0; i < 36; i++) {
      if (i === 8 || i === 13 || i === 18 || i === 23) continue
      if ((i & 7) === 0 || i === 9 || i === 19 || i === 24) w = this.u32()
      // Version nibble 4, variant bits 10xx.
      c[i] = HEX_CODES[i === 14 ? 4 : i === 19 ? 8 | (w & 3) : w & 15]!
      w >>>= 4
    }
    return String.fromCharCode.apply(null, c)
  }

  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(i + 1)
      const tmp = items[i]!
      items[i] = items[j]!
      items[j] = tmp
    }
    return items
  }
}

/** Samples indexes 0..n-1 proportionally to the given weights (binary search over the CDF). */
export class WeightedSampler {
  private readonly cdf: Float64Array

  constructor(weights: readonly number[]) {
    if (weights.length === 0) throw new RangeError('WeightedSampler needs at least one weight')
    this.cdf = new Float64Array(weights.length)
    let sum = 0
    weights.forEach((w, i) => {
      sum += w
      this.cdf[i] = sum
    })
    if (!(sum > 0)) throw new RangeError('WeightedSampler weights must sum to a positive number')
  }

  get size(): number {
    return this.cdf.length
  }

  sample(rng: Rng): number {
    const x = rng.next() * this.cdf[this.cdf.length - 1]!
    let lo = 0
    let hi = this.cdf.length - 1
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (this.cdf[mid]! > x) hi = mid
      else lo = mid + 1
    }
    return lo
  }
}

/** Zipf over ranks 1..n with exponent s: P(rank k) ∝ 1 / k^s. Returns 0-based ranks. */
export function zipfSampler(n: number, s: number): WeightedSampler {
  return new WeightedSampler(Array.from({ length: n }, (_, k) => 1 / (k + 1) ** s))
}

// ---------------------------------------------------------------------------------------------------
// User agents
// ---------------------------------------------------------------------------------------------------

export interface UaLabels {
  /** ua-parser-js@1 `getResult().browser.name` (undefined when it returns none). */
  browser: string | undefined
  /** ua-parser-js@1 `getResult().os.name`. */
  os: string | undefined
  /** ua-parser-js@1 `getResult().device.type ?? 'desktop'`. */
  device: string
  /** npm isbot v5 `isbot(ua)`. */
  isBot: boolean
}

export interface UaEntry extends UaLabels {
  ua: string
  /** Relative frequency among humans (or among bots, for bot entries). */
  weight: number
}

/**
 * Fixed user-agent table. The labels are what ua-parser-js@1 and isbot@5 return for each string; the unit
 * test checks them against the libraries so the table cannot drift.
 */
export const USER_AGENTS: readonly UaEntry[] = Object.freeze([
  {
    ua: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36',
    browser: 'Chrome',
    os: 'Windows',
    device: 'desktop',
    isBot: false,
    weight: 30,
  },
  {
    ua: 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1',
    browser: 'Mobile Safari',
    os: 'iOS',
    device: 'mobile',
    isBot: false,
    weight: 20,
  },
  {
    ua: 'Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36',
    browser: 'Chrome',
    os: 'Android',
    device: 'mobile',
    isBot: false,
    weight: 12,
  },
  {
    ua: 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36',
    browser: 'Chrome',
    os: 'Mac OS',
    device: 'desktop',
    isBot: false,
    weight: 10,
  },
  {
    ua: 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15',
    browser: 'Safari',
    os: 'Mac OS',
    device: 'desktop',
    isBot: false,
    weight: 7,
  },
  {
    ua: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80',
    browser: 'Edge',
    os: 'Windows',
    device: 'desktop',
    isBot: false,
    weight: 6,
  },
  {
    ua: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0',
    browser: 'Firefox',
    os: 'Windows',
    device: 'desktop',
    isBot: false,
    weight: 4,
  },
  {
    ua: 'Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36',
    browser: 'Samsung Internet',
    os: 'Android',
    device: 'mobile',
    isBot: false,
    weight: 3,
  },
  {
    ua: 'Mozilla/5.0 (iPad; CPU OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1',
    browser: 'Mobile Safari',
    os: 'iOS',
    device: 'tablet',
    isBot: false,
    weight: 3,
  },
  {
    ua: 'Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0',
    browser: 'Firefox',
    os: 'Linux',
    device: 'desktop',
    isBot: false,
    weight: 2,
  },
  {
    ua: 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1',
    browser: 'Chrome',
    os: 'iOS',
    device: 'mobile',
    isBot: false,
    weight: 2,
  },
  {
    ua: 'Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36',
    browser: 'Chrome',
    os: 'Android',
    device: 'tablet',
    isBot: false,
    weight: 1,
  },
  {
    ua: 'Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36',
    browser: 'Chrome',
    os: 'Chromium OS',
    device: 'desktop',
    isBot: false,
    weight: 1,
  },
  {
    ua: 'Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.118 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)',
    browser: 'Chrome',
    os: 'Android',
    device: 'mobile',
    isBot: true,
    weight: 4,
  },
  {
    ua: 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)',
    browser: undefined,
    os: undefined,
    device: 'desktop',
    isBot: true,
    weight: 3,
  },
  {
    ua: 'Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)',
    browser: undefined,
    os: undefined,
    device: 'desktop',
    isBot: true,
    weight: 3,
  },
  {
    ua: 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36',
    browser: 'Chrome Headless',
    os: 'Linux',
    device: 'desktop',
    isBot: true,
    weight: 2,
  },
  {
    ua: 'curl/8.5.0',
    browser: undefined,
    os: undefined,
    device: 'desktop',
    isBot: true,
    weight: 1,
  },
] satisfies UaEntry[]).map((e) => Object.freeze(e))

// ---------------------------------------------------------------------------------------------------
// Segment payloads
// ---------------------------------------------------------------------------------------------------

export interface SegmentPageContext {
  path: string
  url: string
  referrer: string
  title: string
  search: string
}

export interface SegmentCampaign {
  source: string
  medium: string
  name: string
  content?: string
  term?: string
}

export interface SegmentContext {
  /** Absent on `screen` calls. */
  page?: SegmentPageContext
  userAgent: string
  locale: string
  /** The visitor's IP (Segment's context.ip), absent for some visitors; ingest looks its country up and drops it. */
  ip?: string
  /** Only on events sent from a landing page whose URL carried utm_* parameters. */
  campaign?: SegmentCampaign
  library: { name: string; version: string }
}

type Props = Record<string, string | number | boolean>

interface SegmentBase {
  messageId: string
  anonymousId: string
  userId?: string
  context: SegmentContext
  /** ISO 8601, the event time. */
  timestamp: string
  /** ISO 8601, when the client (first) sent it; a retry re-sends the identical payload. */
  sentAt: string
}

export interface SegmentPage extends SegmentBase {
  type: 'page'
  name?: string
  properties: SegmentPageContext
}

export interface SegmentTrack extends SegmentBase {
  type: 'track'
  event: string
  properties: Props
}

export interface SegmentIdentify extends SegmentBase {
  type: 'identify'
  userId: string
  traits: Props
}

export interface SegmentScreen extends SegmentBase {
  type: 'screen'
  name: string
  properties: Props
}

export type SegmentPayload = SegmentPage | SegmentTrack | SegmentIdentify | SegmentScreen

// ---------------------------------------------------------------------------------------------------
// Options and generated events
// ---------------------------------------------------------------------------------------------------

export interface WorkloadOptions {
  seed: number
  /** Site ids. Traffic is skewed: site i gets weight 1/(i+1)^0.7. */
  sites: string[]
  /** Number of distinct logical events (all types, bots included, duplicates excluded). */
  events: number
  /** Earliest event timestamp; every event timestamp lies in [start, start + spanMs). */
  start: Date
  spanMs: number
  /** Size of the (human) visitor pool, split across sites; default round(events / 8). Not all get used. */
  visitors?: number
  /** Number of distinct paths in the catalog (Zipf s=1.1 over it); default 200. */
  paths?: number
  /** Number of referrer sources (Zipf s=1.1 over them); default 40. */
  referrers?: number
  /** Expected share of logical events sent by bots; default 0.05. */
  botShare?: number
  /** Share of logical events re-sent once with the identical payload (client retry); default 0.03. */
  duplicateShare?: number
  /** Share of logical events held back by the client for 2 s .. min(120 s, lateByMs / 2); default 0.05. */
  outOfOrderShare?: number
  /** Share of logical events sent lateByMs (+ up to 1 s) after their timestamp; default 0.01. */
  lateShare?: number
  /** Default 10 minutes. */
  lateByMs?: number
  /** Share of human sessions whose landing URL carries utm_* parameters; default 0.2. */
  campaignShare?: number
  /** Share of non-campaign human sessions landing without a referrer; default 0.35. */
  directShare?: number
  /** Share of non-landing human events that are `screen` calls (no context.page); default 0. */
  screenShare?: number
}

export type ResolvedWorkloadOptions = Required<WorkloadOptions>

export interface GeneratedEvent {
  siteId: string
  /** The JSON body a client would POST (to /v1/<type> or inside a /v1/batch). */
  payload: SegmentPayload
  /** Also in payload.context.userAgent; send it as the User-Agent header too. */
  userAgent: string
  /** Labels of userAgent from the UA table (what ua-parser-js / isbot return). */
  ua: UaLabels
  isBot: boolean
  /** A client retry: same payload (same messageId, same sentAt) as an earlier element, sent later. */
  isDuplicate: boolean
  /** Sent at least lateByMs after its timestamp (a stream with smaller allowed lateness drops it). */
  isLate: boolean
  /** Held back by the client for a while (but less than lateByMs / 2), so it overtakes nothing late. */
  isOutOfOrder: boolean
  /** Epoch ms at which a client would send it; `events` is sorted by it. */
  sendAt: number
}

export interface Workload {
  options: ResolvedWorkloadOptions
  /** Sorted by sendAt (ties: logical events in generation order, then duplicates). */
  events: GeneratedEvent[]
  truth: Truth
}

// ---------------------------------------------------------------------------------------------------
// Truth
// ---------------------------------------------------------------------------------------------------

export type Granularity = 'minute' | 'hour' | 'day'
export const GRANULARITIES: readonly Granularity[] = ['minute', 'hour', 'day']
export const GRANULARITY_MS: Readonly<Record<Granularity, number>> = {
  minute: 60_000,
  hour: 3_600_000,
  day: 86_400_000,
}

export type Dimension =
  | 'event'
  | 'path'
  | 'referrer'
  | 'utm_source'
  | 'browser'
  | 'os'
  | 'device'
  | 'country'
  | 'source'
  | 'channel'
  | 'utm_medium'
  | 'utm_campaign'
  | 'utm_content'
  | 'utm_term'
export const DIMENSIONS: readonly Dimension[] = [
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
]

export interface Counts {
  events: number
  pageviews: number
  /** Exact number of distinct anonymousIds. */
  visitors: number
}

/** dimension → value → counts. Every dimension key is present (possibly with an empty record). */
export type Breakdown = Record<Dimension, Record<string, Counts>>

export interface WindowTruth extends Counts {
  /** De-duplicated bot events (track/page/screen) in this window. */
  bots: number
  breakdown: Breakdown
}

export interface SiteTruth extends Counts {
  /** De-duplicated bot events (track/page/screen) over the whole range. */
  bots: number
  /** Whole range. */
  breakdown: Breakdown
  /**
   * granularity → window start ISO → window. Only windows holding at least one de-duplicated
   * track/page/screen event (human or bot) are present; keys are in chronological order.
   */
  windows: Record<Granularity, Record<string, WindowTruth>>
}

export interface Truth {
  /** siteId → truth. Sites passed to truthOf (or generateWorkload) are present even without events. */
  sites: Record<string, SiteTruth>
}

const COUNTED_TYPES = new Set(['track', 'page', 'screen'])

/** Start of the UTC window holding `time`, as an ISO string. */
export function windowKey(time: Date | number | string, granularity: Granularity): string {
  const ms = typeof time === 'number' ? time : typeof time === 'string' ? Date.parse(time) : time.getTime()
  const size = GRANULARITY_MS[granularity]
  return new Date(ms - (((ms % size) + size) % size)).toISOString()
}

/** The `referrer` dimension value of a referrer URL. */
export function referrerLabel(referrer: string | undefined): string {
  if (!referrer) return '(direct)'
  let host: string
  try {
    host = new URL(referrer).hostname
  } catch {
    return '(direct)'
  }
  host = host.toLowerCase()
  if (host.startsWith('www.')) host = host.slice(4)
  return host === '' ? '(direct)' : host
}

/** The `event` dimension value of a payload (undefined for calls that are not events). */
export function eventLabel(payload: SegmentPayload): string | undefined {
  switch (payload.type) {
    case 'track':
      return payload.event
    case 'page':
      return 'pageview'
    case 'screen':
      return 'screen'
    default:
      return undefined
  }
}

/** The `country` dimension value of a visitor IP (the generator's table; no product code). */
export function countryLabel(ip: string | undefined): string {
  return (ip !== undefined ? CLIENT_IPS.find((c) => c.ip === ip)?.country : undefined) ?? '(unknown)'
}

const hostLabel = (url: string): string => {
  const host = new URL(url).hostname.toLowerCase()
  return host.startsWith('www.') ? host.slice(4) : host
}

/**
 * The `source` and `channel` of an event sent from `page` with `campaign`: the campaign's (from
 * CAMPAIGN_SOURCES), else the landing referrer's (REFERRER_SOURCES; an unlisted host is its own
 * source, channel Referral), else Direct. The previous page of the same site is no source.
 */
export function sourceLabels(
  page: SegmentPageContext | undefined,
  campaign: SegmentCampaign | undefined,
): { source: string; channel: string } {
  if (campaign !== undefined) {
    const c = CAMPAIGN_SOURCES.find((x) => x.source === campaign.source)
    if (c) return { source: c.expectSource, channel: c.expectChannel }
  }
  if (page?.referrer && hostLabel(page.referrer) !== hostLabel(page.url)) {
    const host = hostLabel(page.referrer)
    const known = REFERRER_SOURCES[host]
    return known ? { source: known[0], channel: known[1] } : { source: host, channel: 'Referral' }
  }
  return { source: 'Direct / None', channel: 'Direct' }
}

/** Every breakdown dimension's value of one generated event, labelled as the truth labels it. */
export function dimensionValues(ev: GeneratedEvent): Record<Dimension, string> {
  const p = ev.payload
  const page = p.context.page
  const campaign = p.context.campaign
  const { source, channel } = sourceLabels(page, campaign)
  return {
    event: eventLabel(p) ?? '(none)',
    path: page?.path ?? '(none)',
    referrer: referrerLabel(page?.referrer),
    utm_source: campaign?.source ?? '(none)',
    browser: ev.ua.browser ?? '(unknown)',
    os: ev.ua.os ?? '(unknown)',
    device: ev.ua.device,
    country: countryLabel(p.context.ip),
    source,
    channel,
    utm_medium: campaign?.medium ?? '(none)',
    utm_campaign: campaign?.name ?? '(none)',
    utm_content: campaign?.content ?? '(none)',
    utm_term: campaign?.term ?? '(none)',
  }
}

/** Counters of one bucket. Events are fed grouped by visitor, so distinct visitors = changes of `last`. */
class Acc {
  events = 0
  pageviews = 0
  visitors = 0
  bots = 0
  last = -1

  add(visitor: number, isPage: boolean): void {
    this.events++
    if (isPage) this.pageviews++
    if (this.last !== visitor) {
      this.last = visitor
      this.visitors++
    }
  }

  counts(): Counts {
    return { events: this.events, pageviews: this.pageviews, visitors: this.visitors }
  }
}

/** One scope (whole range or one window): its total and, per dimension, value id → counters. */
class ScopeAcc {
  readonly total = new Acc()
  readonly dims: (Acc | undefined)[][] = DIMENSIONS.map(() => [])

  add(valueIds: Int32Array, at: number, visitor: number, isPage: boolean): void {
    this.total.add(visitor, isPage)
    for (let i = 0; i < DIMENSIONS.length; i++) {
      const accs = this.dims[i]!
      const id = valueIds[at + i]!
      let acc = accs[id]
      if (acc === undefined) {
        acc = new Acc()
        accs[id] = acc
      }
      acc.add(visitor, isPage)
    }
  }

  breakdown(names: readonly string[][]): Breakdown {
    const out = {} as Breakdown
    DIMENSIONS.forEach((dim, i) => {
      const dimNames = names[i]!
      const entries: [string, Acc][] = []
      this.dims[i]!.forEach((acc, id) => {
        if (acc !== undefined) entries.push([dimNames[id]!, acc])
      })
      entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
      const rec: Record<string, Counts> = {}
      for (const [name, acc] of entries) rec[name] = acc.counts()
      out[dim] = rec
    })
    return out
  }
}

/** Date.parse for the generator's `YYYY-MM-DDTHH:mm:ss.sssZ` timestamps, caching the day part. */
function timestampParser(): (iso: string) => number {
  let dayText = '\u0000' // matches no timestamp
  let dayMs = 0
  const digits = (s: string, from: number, n: number): number => {
    let v = 0
    for (let i = from; i < from + n; i++) v = v * 10 + s.charCodeAt(i) - 48
    return v
  }
  return (iso) => {
    if (iso.length !== 24 || iso.charCodeAt(10) !== 84 /* T */ || iso.charCodeAt(23) !== 90 /* Z */) {
      return Date.parse(iso)
    }
    if (!iso.startsWith(dayText)) {
      dayText = iso.slice(0, 11)
      dayMs = Date.parse(`${dayText}00:00:00.000Z`)
    }
    return (
      dayMs +
      digits(iso, 11, 2) * 3_600_000 +
      digits(iso, 14, 2) * 60_000 +
      digits(iso, 17, 2) * 1_000 +
      digits(iso, 20, 3)
    )
  }
}

/**
 * Ground truth for any subset of generated events (e.g. `events.filter(e => !e.isLate)` for what a
 * stream that drops late events should report). Order-independent; duplicates (same messageId) count once.
 */
export function truthOf(events: readonly GeneratedEvent[], sites: readonly string[] = []): Truth {
  interface SiteAcc {
    range: ScopeAcc
    /** Per granularity: window number (epoch ms / window size) → scope. */
    windows: Map<number, ScopeAcc>[]
  }
  const siteIds = [...new Set([...sites, ...events.map((e) => e.siteId)])].sort()
  const siteNo = new Map(siteIds.map((id, i) => [id, i]))
  const siteAccs: SiteAcc[] = siteIds.map(() => ({
    range: new ScopeAcc(),
    windows: GRANULARITIES.map(() => new Map()),
  }))
  const sizes = GRANULARITIES.map((g) => GRANULARITY_MS[g])
  const scopeOf = (s: SiteAcc, gi: number, ts: number): ScopeAcc => {
    const windowNo = Math.floor(ts / sizes[gi]!)
    const map = s.windows[gi]!
    let scope = map.get(windowNo)
    if (scope === undefined) {
      scope = new ScopeAcc()
      map.set(windowNo, scope)
    }
    return scope
  }

  // Dimension values are interned to small ids per dimension.
  const valueIdMaps = DIMENSIONS.map(() => new Map<string, number>())
  const valueNames = DIMENSIONS.map((): string[] => [])
  const intern = (dim: number, value: string): number => {
    const map = valueIdMaps[dim]!
    let id = map.get(value)
    if (id === undefined) {
      id = map.size
      map.set(value, id)
      valueNames[dim]!.push(value)
    }
    return id
  }
  const referrerIds = new Map<string | undefined, number>()

  // Pass 1: de-duplicate, count bots, and reduce each counted human event to numbers.
  const nDims = DIMENSIONS.length
  const parse = timestampParser()
  const seen = new Set<string>()
  const visitorIndex = new Map<string, number>()
  const evSite = new Int32Array(events.length)
  const evVisitor = new Int32Array(events.length)
  const evTs = new Float64Array(events.length)
  const evPage = new Uint8Array(events.length)
  const evValues = new Int32Array(events.length * nDims)
  let n = 0
  for (const ev of events) {
    const p = ev.payload
    if (seen.has(p.messageId)) continue
    seen.add(p.messageId)
    if (!COUNTED_TYPES.has(p.type)) continue
    const site = siteNo.get(ev.siteId)!
    const ts = parse(p.timestamp)
    if (ev.isBot) {
      const s = siteAccs[site]!
      s.range.total.bots++
      for (let gi = 0; gi < sizes.length; gi++) scopeOf(s, gi, ts).total.bots++
      continue
    }
    let visitor = visitorIndex.get(p.anonymousId)
    if (visitor === undefined) {
      visitor = visitorIndex.size
      visitorIndex.set(p.anonymousId, visitor)
    }
    const page = p.context.page
    let refId = referrerIds.get(page?.referrer)
    if (refId === undefined) {
      refId = intern(2, referrerLabel(page?.referrer))
      referrerIds.set(page?.referrer, refId)
    }
    const at = n * nDims
    const labels = sourceLabels(page, p.context.campaign)
    const campaign = p.context.campaign
    evValues[at + 7] = intern(7, countryLabel(p.context.ip))
    evValues[at + 8] = intern(8, labels.source)
    evValues[at + 9] = intern(9, labels.channel)
    evValues[at + 10] = intern(10, campaign?.medium ?? '(none)')
    evValues[at + 11] = intern(11, campaign?.name ?? '(none)')
    evValues[at + 12] = intern(12, campaign?.content ?? '(none)')
    evValues[at + 13] = intern(13, campaign?.term ?? '(none)')
    evValues[at] = intern(0, eventLabel(p)!)
    evValues[at + 1] = intern(1, page?.path ?? '(none)')
    evValues[at + 2] = refId
    evValues[at + 3] = intern(3, p.context.campaign?.source ?? '(none)')
    evValues[at + 4] = intern(4, ev.ua.browser ?? '(unknown)')
    evValues[at + 5] = intern(5, ev.ua.os ?? '(unknown)')
    evValues[at + 6] = intern(6, ev.ua.device)
    evSite[n] = site
    evVisitor[n] = visitor
    evTs[n] = ts
    evPage[n] = p.type === 'page' ? 1 : 0
    n++
  }

  // Pass 2: feed the counters visitor by visitor (counting sort), so distinct counting is exact and free.
  const starts = new Int32Array(visitorIndex.size + 1)
  for (let i = 0; i < n; i++) starts[evVisitor[i]! + 1]!++
  for (let v = 0; v < visitorIndex.size; v++) starts[v + 1]! += starts[v]!
  const order = new Int32Array(n)
  for (let i = 0; i < n; i++) order[starts[evVisitor[i]!]!++] = i
  for (const i of order) {
    const s = siteAccs[evSite[i]!]!
    const visitor = evVisitor[i]!
    const isPage = evPage[i] === 1
    const at = i * nDims
    s.range.add(evValues, at, visitor, isPage)
    for (let gi = 0; gi < sizes.length; gi++) scopeOf(s, gi, evTs[i]!).add(evValues, at, visitor, isPage)
  }

  const out: Truth = { sites: {} }
  siteIds.forEach((siteId, si) => {
    const s = siteAccs[si]!
    const windows = {} as Record<Granularity, Record<string, WindowTruth>>
    GRANULARITIES.forEach((g, gi) => {
      const rec: Record<string, WindowTruth> = {}
      const map = s.windows[gi]!
      for (const windowNo of [...map.keys()].sort((a, b) => a - b)) {
        const scope = map.get(windowNo)!
        rec[new Date(windowNo * sizes[gi]!).toISOString()] = {
          ...scope.total.counts(),
          bots: scope.total.bots,
          breakdown: scope.breakdown(valueNames),
        }
      }
      windows[g] = rec
    })
    out.sites[siteId] = {
      ...s.range.total.counts(),
      bots: s.range.total.bots,
      breakdown: s.range.breakdown(valueNames),
      windows,
    }
  })
  return out
}

export interface TruthQuery {
  /** With `window`: one window of that granularity. Without: the whole range. */
  granularity?: Granularity
  /** Any instant inside the window (it is floored to the window start). */
  window?: Date | number | string
  dimension?: Dimension
  value?: string
}

/** Counts for one site / window / dimension value; zeros when the truth has no such entry. */
export function truthCounts(truth: Truth, siteId: string, q: TruthQuery = {}): Counts {
  const zero: Counts = { events: 0, pageviews: 0, visitors: 0 }
  const site = truth.sites[siteId]
  if (site === undefined) return zero
  let scope: (Counts & { breakdown: Breakdown }) | undefined = site
  if (q.window !== undefined) {
    if (q.granularity === undefined) throw new TypeError('truthCounts: window needs a granularity')
    scope = site.windows[q.granularity][windowKey(q.window, q.granularity)]
  }
  if (scope === undefined) return zero
  if (q.dimension === undefined)
    return { events: scope.events, pageviews: scope.pageviews, visitors: scope.visitors }
  if (q.value === undefined) throw new TypeError('truthCounts: dimension needs a value')
  const c = scope.breakdown[q.dimension][q.value]
  return c === undefined ? zero : { ...c }
}

// ---------------------------------------------------------------------------------------------------
// Catalogs
// ---------------------------------------------------------------------------------------------------

const BASE_PATHS = [
  '/',
  '/pricing',
  '/features',
  '/blog',
  '/docs',
  '/about',
  '/signup',
  '/login',
  '/docs/getting-started',
  '/contact',
  '/changelog',
  '/integrations',
  '/docs/api',
  '/careers',
  '/security',
  '/customers',
]
const PATH_PREFIXES = ['/blog/post-', '/docs/guide-', '/products/item-', '/customers/story-']

function buildPaths(n: number): string[] {
  const out = BASE_PATHS.slice(0, n)
  for (let i = 1; out.length < n; i++) out.push(`${PATH_PREFIXES[i % PATH_PREFIXES.length]}${i}`)
  return out
}

/** The catalog of `n` paths a workload with `paths: n` draws from (each site ranks it in its own order). */
export function pathCatalog(n: number): string[] {
  return buildPaths(n)
}

function titleOf(path: string): string {
  if (path === '/') return 'Home'
  const last = path.split('/').filter(Boolean).join(' ')
  return last.replace(/[-_]/g, ' ').replace(/\b\w/g, (c) => c.toUpperCase())
}

/** Referrer sources; one source may show up under several URLs (and hosts). */
const KNOWN_REFERRERS: readonly (readonly string[])[] = [
  ['https://www.google.com/', 'https://google.com/'],
  ['https://t.co/Ab12Cd34'],
  ['https://news.ycombinator.com/', 'https://news.ycombinator.com/item?id=40123456'],
  ['https://www.bing.com/', 'https://WWW.Bing.com/search?q=tally+analytics'],
  ['https://duckduckgo.com/'],
  ['https://www.facebook.com/', 'https://m.facebook.com/'],
  ['https://www.reddit.com/r/webdev/', 'https://old.reddit.com/r/analytics/'],
  ['https://www.linkedin.com/feed/'],
  ['https://github.com/tally-analytics/tally'],
  ['https://www.google.co.uk/'],
  ['https://search.yahoo.com/'],
  ['https://www.producthunt.com/posts/tally'],
  ['https://lobste.rs/'],
  ['https://dev.to/someone/privacy-friendly-analytics'],
  ['https://medium.com/@writer/event-pipelines'],
  ['https://stackoverflow.com/questions/12345678'],
]

function buildReferrers(n: number): (readonly string[])[] {
  const out = KNOWN_REFERRERS.slice(0, n)
  for (let i = 1; out.length < n; i++) out.push([`https://blog${i}.example.org/posts/${i}`])
  return out
}

interface CampaignSource {
  source: string
  medium: string
  content?: string
  term?: string
  referrer: string
  weight: number
  /** The `source` and GA4 `channel` Tally must report for it (utm_source names the source). */
  expectSource: string
  expectChannel: string
}
const CAMPAIGN_SOURCES: readonly CampaignSource[] = [
  {
    source: 'google',
    medium: 'cpc',
    term: 'web analytics',
    content: 'ad_a',
    referrer: 'https://www.google.com/',
    weight: 5,
    expectSource: 'Google',
    expectChannel: 'Paid Search',
  },
  {
    source: 'newsletter',
    medium: 'email',
    content: 'header_link',
    referrer: '',
    weight: 4,
    expectSource: 'newsletter',
    expectChannel: 'Email',
  },
  {
    source: 'twitter',
    medium: 'social',
    referrer: 'https://t.co/Xy98Zw76',
    weight: 3,
    expectSource: 'Twitter',
    expectChannel: 'Organic Social',
  },
  {
    source: 'facebook',
    medium: 'paid_social',
    referrer: 'https://l.facebook.com/',
    weight: 2,
    expectSource: 'Facebook',
    expectChannel: 'Paid Social',
  },
  {
    source: 'linkedin',
    medium: 'social',
    referrer: 'https://www.linkedin.com/',
    weight: 1,
    expectSource: 'LinkedIn',
    expectChannel: 'Organic Social',
  },
  {
    source: 'producthunt',
    medium: 'referral',
    referrer: 'https://www.producthunt.com/',
    weight: 1,
    expectSource: 'producthunt',
    expectChannel: 'Referral',
  },
]

/**
 * Named source and GA4 channel of the hosts of KNOWN_REFERRERS that the referrer database knows
 * (what Tally must report for them); any other host is its own source, channel Referral.
 */
const REFERRER_SOURCES: Readonly<Record<string, readonly [string, string]>> = {
  'google.com': ['Google', 'Organic Search'],
  'google.co.uk': ['Google', 'Organic Search'],
  'bing.com': ['Bing', 'Organic Search'],
  'duckduckgo.com': ['DuckDuckGo', 'Organic Search'],
  'search.yahoo.com': ['Yahoo!', 'Organic Search'],
  't.co': ['Twitter', 'Organic Social'],
  'news.ycombinator.com': ['Hacker News', 'Organic Social'],
  'facebook.com': ['Facebook', 'Organic Social'],
  'm.facebook.com': ['Facebook', 'Organic Social'],
  'reddit.com': ['Reddit', 'Organic Social'],
  'old.reddit.com': ['Reddit', 'Organic Social'],
  'linkedin.com': ['LinkedIn', 'Organic Social'],
  'github.com': ['GitHub', 'Organic Social'],
  'stackoverflow.com': ['StackOverflow', 'Organic Social'],
}

/**
 * Visitor IPs and their countries in the pinned IP database (checked against it by the unit test):
 * public IPv4 and IPv6, a private address and none at all (both `(unknown)`). A visitor's entry is
 * chosen by a hash of its anonymousId, so adding IPs drew nothing from the PRNG.
 */
export const CLIENT_IPS: readonly { ip: string | undefined; country: string }[] = [
  { ip: '8.8.8.8', country: 'US' },
  { ip: '216.160.83.56', country: 'US' },
  { ip: '2001:4860:4860::8888', country: 'US' },
  { ip: '81.2.69.142', country: 'GB' },
  { ip: '2.125.160.216', country: 'GB' },
  { ip: '89.160.20.112', country: 'SE' },
  { ip: '1.1.1.1', country: 'AU' },
  { ip: '175.16.199.1', country: 'CN' },
  { ip: '2a02:ff0::1', country: 'TR' },
  { ip: '2a02:cf40::1', country: 'DK' },
  { ip: '10.20.30.40', country: '(unknown)' },
  { ip: undefined, country: '(unknown)' },
]

/** FNV-1a of a string: picks a visitor's IP without drawing from the PRNG. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193)
  return h >>> 0
}

function ipOf(anonymousId: string): string | undefined {
  return CLIENT_IPS[fnv1a(anonymousId) % CLIENT_IPS.length]!.ip
}
const CAMPAIGN_NAMES = ['spring_sale', 'launch', 'weekly_digest', 'retargeting']

const TRACK_EVENTS: readonly { name: string; weight: number }[] = [
  { name: 'Product Viewed', weight: 30 },
  { name: 'Clicked CTA', weight: 20 },
  { name: 'Added to Cart', weight: 15 },
  { name: 'Searched', weight: 10 },
  { name: 'Video Played', weight: 8 },
  { name: 'Checkout Started', weight: 7 },
  { name: 'Signed Up', weight: 6 },
  { name: 'Order Completed', weight: 4 },
]
const PRODUCTS = Array.from({ length: 24 }, (_, i) => ({
  id: `sku-${1000 + i}`,
  name: `Product ${i + 1}`,
  price: Math.round((5 + ((i * 37) % 95) + 0.99) * 100) / 100,
  category: ['books', 'games', 'tools', 'garden'][i % 4]!,
}))
const SCREENS = ['Home', 'Feed', 'Product', 'Cart', 'Settings', 'Profile']
const FIRST_NAMES = ['Ada', 'Grace', 'Alan', 'Linus', 'Margaret', 'Ken', 'Barbara', 'Dennis']
const LAST_NAMES = ['Lovelace', 'Hopper', 'Turing', 'Torvalds', 'Hamilton', 'Thompson', 'Liskov', 'Ritchie']
const LIBRARY: SegmentContext['library'] = Object.freeze({ name: 'analytics.js', version: 'npm:next-1.72.0' })
const LOCALES = ['en-US', 'en-US', 'en-GB', 'de-DE', 'fr-FR', 'es-ES']

function siteHost(siteId: string): string {
  const slug =
    siteId
      .toLowerCase()
      .replace(/[^a-z0-9-]+/g, '-')
      .replace(/^-+|-+$/g, '') || 'site'
  return `www.${slug}.example`
}

// ---------------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------------

function resolveOptions(opts: WorkloadOptions): ResolvedWorkloadOptions {
  const o: ResolvedWorkloadOptions = {
    seed: opts.seed,
    sites: [...opts.sites],
    events: opts.events,
    start: new Date(opts.start.getTime()),
    spanMs: opts.spanMs,
    visitors: opts.visitors ?? Math.max(1, Math.round(opts.events / 8)),
    paths: opts.paths ?? 200,
    referrers: opts.referrers ?? 40,
    botShare: opts.botShare ?? 0.05,
    duplicateShare: opts.duplicateShare ?? 0.03,
    outOfOrderShare: opts.outOfOrderShare ?? 0.05,
    lateShare: opts.lateShare ?? 0.01,
    lateByMs: opts.lateByMs ?? 600_000,
    campaignShare: opts.campaignShare ?? 0.2,
    directShare: opts.directShare ?? 0.35,
    screenShare: opts.screenShare ?? 0,
  }
  if (!Number.isSafeInteger(o.seed)) throw new RangeError('seed must be a safe integer')
  if (o.sites.length === 0) throw new RangeError('sites must not be empty')
  if (new Set(o.sites).size !== o.sites.length) throw new RangeError('sites must be distinct')
  if (!Number.isInteger(o.events) || o.events < 0) throw new RangeError('events must be an integer >= 0')
  if (!Number.isFinite(o.start.getTime())) throw new RangeError('start must be a valid Date')
  if (!Number.isInteger(o.spanMs) || o.spanMs < 1) throw new RangeError('spanMs must be an integer >= 1')
  for (const k of ['visitors', 'paths', 'referrers'] as const) {
    if (!Number.isInteger(o[k]) || o[k] < 1) throw new RangeError(`${k} must be an integer >= 1`)
  }
  for (const k of [
    'botShare',
    'duplicateShare',
    'outOfOrderShare',
    'lateShare',
    'campaignShare',
    'directShare',
    'screenShare',
  ] as const) {
    if (!(o[k] >= 0 && o[k] <= 1)) throw new RangeError(`${k} must be in [0, 1]`)
  }
  if (o.lateShare + o.outOfOrderShare > 1) throw new RangeError('lateShare + outOfOrderShare must be <= 1')
  if (!Number.isInteger(o.lateByMs) || o.lateByMs < 1)
    throw new RangeError('lateByMs must be an integer >= 1')
  return o
}

interface Visitor {
  anonymousId: string
  ua: UaEntry
  willIdentify: boolean
  userId: string | undefined
  /** Timestamp of the identify call; userId is attached to events from then on. */
  identifiedAt: number
  locale: string
  ip: string | undefined
}

type Kind = 'page' | 'track' | 'identify' | 'screen'

interface SessionPlan {
  start: number
  len: number
  bot: boolean
  site: number
  seq: number
}

const HUMAN_UAS = USER_AGENTS.filter((u) => !u.isBot)
const BOT_UAS = USER_AGENTS.filter((u) => u.isBot)

/** Generate the workload and its truth. Deterministic in the options. */
export function generateWorkload(opts: WorkloadOptions): Workload {
  const o = resolveOptions(opts)
  const rng = new Rng(o.seed)
  const startMs = o.start.getTime()
  const endMs = startMs + o.spanMs

  const siteWeights = o.sites.map((_, i) => 1 / (i + 1) ** 0.7)
  const siteSampler = new WeightedSampler(siteWeights)
  const weightSum = siteWeights.reduce((a, b) => a + b, 0)
  const pools: (Visitor | undefined)[][] = siteWeights.map((w) =>
    new Array(Math.max(1, Math.round((o.visitors * w) / weightSum))).fill(undefined),
  )
  const hosts = o.sites.map(siteHost)

  const paths = buildPaths(o.paths)
  // Per site, a different popularity order of the catalog ("/" stays the most popular).
  const pathOrder = o.sites.map(() => [
    0,
    ...rng.shuffle(Array.from({ length: paths.length - 1 }, (_, i) => i + 1)),
  ])
  const pathZipf = zipfSampler(paths.length, 1.1)
  const referrers = buildReferrers(o.referrers)
  const refZipf = zipfSampler(referrers.length, 1.1)
  const humanUa = new WeightedSampler(HUMAN_UAS.map((u) => u.weight))
  const botUa = new WeightedSampler(BOT_UAS.map((u) => u.weight))
  const campaignSampler = new WeightedSampler(CAMPAIGN_SOURCES.map((c) => c.weight))
  const trackSampler = new WeightedSampler(TRACK_EVENTS.map((t) => t.weight))

  const iso = isoFormatter()
  const titles = new Map(paths.map((p) => [p, titleOf(p)]))
  const uaLabels = new Map<UaEntry, UaLabels>(
    USER_AGENTS.map((u) => [
      u,
      Object.freeze({ browser: u.browser, os: u.os, device: u.device, isBot: u.isBot }),
    ]),
  )
  const usedIds = new Set<string>()
  const uniqueId = (): string => {
    for (;;) {
      const id = rng.uuid()
      if (!usedIds.has(id)) {
        usedIds.add(id)
        return id
      }
    }
  }
  const oooMaxMs = Math.max(2_001, Math.min(120_000, Math.floor(o.lateByMs / 2)))

  // 1. Plan sessions (length, bot or human, site, start), then play them in chronological order so that
  //    a visitor's userId only appears after their identify call.
  const plans: SessionPlan[] = []
  for (let remaining = o.events, seq = 0; remaining > 0; seq++) {
    // 1 + geometric(p = 0.2): mean 5 events, capped.
    const len = Math.min(remaining, 1 + Math.min(59, Math.floor(Math.log(1 - rng.next()) / Math.log(0.8))))
    plans.push({
      start: startMs + rng.int(o.spanMs),
      len,
      bot: rng.chance(o.botShare),
      site: siteSampler.sample(rng),
      seq,
    })
    remaining -= len
  }
  plans.sort((a, b) => a.start - b.start || a.seq - b.seq)

  const logical: GeneratedEvent[] = []
  const kinds: Kind[] = []
  const times: number[] = []

  for (const plan of plans) {
    const siteId = o.sites[plan.site]!
    const base = `https://${hosts[plan.site]}`
    let visitor: Visitor
    if (plan.bot) {
      visitor = {
        anonymousId: uniqueId(),
        ua: BOT_UAS[botUa.sample(rng)]!,
        willIdentify: false,
        userId: undefined,
        identifiedAt: Number.POSITIVE_INFINITY,
        locale: 'en-US',
        ip: undefined,
      }
      visitor.ip = ipOf(visitor.anonymousId)
    } else {
      const pool = pools[plan.site]!
      const slot = rng.int(pool.length)
      let v = pool[slot]
      if (v === undefined) {
        v = {
          anonymousId: uniqueId(),
          ua: HUMAN_UAS[humanUa.sample(rng)]!,
          willIdentify: rng.chance(0.3),
          userId: undefined,
          identifiedAt: Number.POSITIVE_INFINITY,
          locale: rng.pick(LOCALES),
          ip: undefined,
        }
        v.ip = ipOf(v.anonymousId)
        pool[slot] = v
      }
      visitor = v
    }

    // Kinds and times of this session's events.
    kinds.length = 0
    times.length = 0
    let identifyPending = visitor.willIdentify && visitor.userId === undefined
    let t = 0
    for (let k = 0; k < plan.len; k++) {
      let kind: Kind = 'page'
      if (k > 0 && !plan.bot) {
        if (identifyPending && rng.chance(0.3)) {
          kind = 'identify'
          identifyPending = false
        } else if (o.screenShare > 0 && rng.chance(o.screenShare)) kind = 'screen'
        else if (rng.chance(0.3)) kind = 'track'
      }
      if (k > 0) {
        if (plan.bot) t += 500 + rng.exp(3_000)
        else if (kind === 'track') t += 1_000 + rng.exp(8_000)
        else if (kind === 'identify') t += 1_000 + rng.exp(5_000)
        else if (kind === 'screen') t += 2_000 + rng.exp(20_000)
        else t += 3_000 + rng.exp(40_000)
      }
      kinds.push(kind)
      times.push(Math.floor(t))
    }
    // Fit the session into [start, end).
    let dur = times[times.length - 1]!
    if (dur > o.spanMs - 1) {
      const f = (o.spanMs - 1) / dur
      for (let k = 0; k < times.length; k++) times[k] = Math.floor(times[k]! * f)
      dur = times[times.length - 1]!
    }
    const sessionStart = Math.max(startMs, Math.min(plan.start, endMs - 1 - dur))

    // Landing page: referrer and campaign. Page / campaign objects are frozen and shared by the events
    // sent from that page (read-only payload parts keep 100k+ events cheap to build and hold).
    let campaign: SegmentCampaign | undefined
    let landingReferrer = ''
    let search = ''
    if (!plan.bot) {
      if (rng.chance(o.campaignShare)) {
        const c = CAMPAIGN_SOURCES[campaignSampler.sample(rng)]!
        const name = rng.pick(CAMPAIGN_NAMES)
        const fields: SegmentCampaign = { source: c.source, medium: c.medium, name }
        if (c.content !== undefined) fields.content = c.content
        if (c.term !== undefined) fields.term = c.term
        campaign = Object.freeze(fields)
        landingReferrer = c.referrer
        search = `?utm_source=${c.source}&utm_medium=${c.medium}&utm_campaign=${name}`
        if (c.content !== undefined) search += `&utm_content=${encodeURIComponent(c.content)}`
        if (c.term !== undefined) search += `&utm_term=${encodeURIComponent(c.term)}`
      } else if (!rng.chance(o.directShare)) {
        landingReferrer = rng.pick(referrers[refZipf.sample(rng)]!)
      }
    }
    let page: SegmentPageContext | undefined
    const ua = visitor.ua
    const labels = uaLabels.get(ua)!

    for (let k = 0; k < kinds.length; k++) {
      const kind = kinds[k]!
      const ts = sessionStart + times[k]!
      if (kind === 'page') {
        const path = plan.bot ? rng.pick(paths) : paths[pathOrder[plan.site]![pathZipf.sample(rng)]!]!
        const title = titles.get(path)!
        if (page === undefined) {
          page = Object.freeze({
            path,
            url: `${base}${path}${search}`,
            referrer: landingReferrer,
            title,
            search,
          })
        } else {
          campaign = undefined
          page = Object.freeze({ path, url: `${base}${path}`, referrer: page.url, title, search: '' })
        }
      }

      let sendAt: number
      let isLate = false
      let isOutOfOrder = false
      const r = rng.next()
      if (r < o.lateShare) {
        isLate = true
        sendAt = ts + o.lateByMs + rng.int(1_000)
      } else if (r < o.lateShare + o.outOfOrderShare) {
        isOutOfOrder = true
        sendAt = ts + 2_000 + rng.int(oooMaxMs - 2_000)
      } else {
        sendAt = ts + 20 + rng.int(480)
      }

      let context: SegmentContext
      if (kind === 'screen' || page === undefined) {
        context = { userAgent: ua.ua, locale: visitor.locale, library: LIBRARY }
      } else if (campaign === undefined) {
        context = { page, userAgent: ua.ua, locale: visitor.locale, library: LIBRARY }
      } else {
        context = { page, userAgent: ua.ua, locale: visitor.locale, campaign, library: LIBRARY }
      }
      if (visitor.ip !== undefined) context.ip = visitor.ip
      const messageId = uniqueId()
      const anonymousId = visitor.anonymousId
      const timestamp = iso(ts)
      const sentAt = iso(sendAt)
      const userId = visitor.userId !== undefined && ts >= visitor.identifiedAt ? visitor.userId : undefined
      let payload: SegmentPayload
      switch (kind) {
        case 'page': {
          const p: SegmentPage = {
            type: 'page',
            messageId,
            anonymousId,
            properties: page!,
            context,
            timestamp,
            sentAt,
          }
          if (userId !== undefined) p.userId = userId
          if (rng.chance(0.5)) p.name = page!.title
          payload = p
          break
        }
        case 'track': {
          const event = TRACK_EVENTS[trackSampler.sample(rng)]!.name
          const properties = trackProperties(rng, event)
          const p: SegmentTrack = {
            type: 'track',
            messageId,
            anonymousId,
            event,
            properties,
            context,
            timestamp,
            sentAt,
          }
          if (userId !== undefined) p.userId = userId
          payload = p
          break
        }
        case 'identify': {
          const newUserId = `user_${rng.uuid().slice(0, 8)}${rng.uuid().slice(9, 13)}`
          visitor.userId = newUserId
          visitor.identifiedAt = ts
          const first = rng.pick(FIRST_NAMES)
          const last = rng.pick(LAST_NAMES)
          const traits = {
            email: `${first.toLowerCase()}.${last.toLowerCase()}.${newUserId.slice(5, 11)}@example.com`,
            name: `${first} ${last}`,
            plan: rng.pick(['free', 'free', 'pro', 'team']),
            createdAt: timestamp,
          }
          payload = {
            type: 'identify',
            messageId,
            anonymousId,
            userId: newUserId,
            traits,
            context,
            timestamp,
            sentAt,
          }
          break
        }
        case 'screen': {
          const name = rng.pick(SCREENS)
          const p: SegmentScreen = {
            type: 'screen',
            messageId,
            anonymousId,
            name,
            properties: { name },
            context,
            timestamp,
            sentAt,
          }
          if (userId !== undefined) p.userId = userId
          payload = p
          break
        }
      }
      logical.push({
        siteId,
        payload,
        userAgent: ua.ua,
        ua: labels,
        isBot: ua.isBot,
        isDuplicate: false,
        isLate,
        isOutOfOrder,
        sendAt,
      })
    }
  }

  // 2. Client retries: the identical payload again, 1..30 s after the first send.
  const all: GeneratedEvent[] = [...logical]
  for (const ev of logical) {
    if (!rng.chance(o.duplicateShare)) continue
    all.push({
      ...ev,
      payload: structuredClone(ev.payload),
      isDuplicate: true,
      sendAt: ev.sendAt + 1_000 + rng.int(29_000),
    })
  }
  // Array.prototype.sort is stable: equal sendAt keeps generation order.
  all.sort((a, b) => a.sendAt - b.sendAt)

  return { options: o, events: all, truth: truthOf(all, o.sites) }
}

/** Same output as `new Date(ms).toISOString()` (years 0..9999), several times faster, one flat string. */
function isoFormatter(): (ms: number) => string {
  const codes = Array.from('0000-00-00T00:00:00.000Z', (ch) => ch.charCodeAt(0))
  let day = Number.NaN
  const put = (at: number, value: number, width: number): void => {
    for (let i = at + width - 1; i >= at; i--) {
      codes[i] = 48 + (value % 10)
      value = Math.floor(value / 10)
    }
  }
  return (ms) => {
    const d = Math.floor(ms / 86_400_000)
    if (d !== day) {
      const date = new Date(d * 86_400_000)
      const year = date.getUTCFullYear()
      if (year < 0 || year > 9999) return new Date(ms).toISOString()
      day = d
      put(0, year, 4)
      put(5, date.getUTCMonth() + 1, 2)
      put(8, date.getUTCDate(), 2)
    }
    let r = ms - d * 86_400_000
    const h = Math.floor(r / 3_600_000)
    r -= h * 3_600_000
    const m = Math.floor(r / 60_000)
    r -= m * 60_000
    const sec = Math.floor(r / 1_000)
    put(11, h, 2)
    put(14, m, 2)
    put(17, sec, 2)
    put(20, r - sec * 1_000, 3)
    return String.fromCharCode.apply(null, codes)
  }
}

function trackProperties(rng: Rng, event: string): Props {
  const product = rng.pick(PRODUCTS)
  switch (event) {
    case 'Product Viewed':
      return { product_id: product.id, name: product.name, category: product.category, price: product.price }
    case 'Added to Cart':
      return { product_id: product.id, price: product.price, quantity: 1 + rng.int(3), currency: 'USD' }
    case 'Checkout Started':
      return { value: Math.round(product.price * (1 + rng.int(4)) * 100) / 100, currency: 'USD' }
    case 'Order Completed':
      return {
        order_id: `ord_${rng.u32().toString(36)}`,
        revenue: Math.round(product.price * (1 + rng.int(4)) * 100) / 100,
        currency: 'USD',
      }
    case 'Signed Up':
      return { method: rng.pick(['email', 'google', 'github']), plan: rng.pick(['free', 'pro']) }
    case 'Video Played':
      return { video_id: `vid_${1 + rng.int(12)}`, position: rng.int(300) }
    case 'Searched':
      return { query: rng.pick(['pricing', 'api', 'export', 'retention', 'funnels', 'gdpr']) }
    default:
      return { label: rng.pick(['hero', 'pricing', 'footer', 'nav']), location: rng.pick(['top', 'bottom']) }
  }
}

// ---------------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------------

export interface WorkloadFiles {
  /** One GeneratedEvent per line, in send order (`siteId`, `payload`, `userAgent`, flags, `sendAt`). */
  events: string
  truth: string
  options: string
}

export function workloadFiles(dir: string): WorkloadFiles {
  return {
    events: join(dir, 'events.ndjson'),
    truth: join(dir, 'truth.json'),
    options: join(dir, 'options.json'),
  }
}

/** Write events.ndjson, truth.json and options.json into `dir` (created if needed). */
export async function writeWorkload(dir: string, workload: Workload): Promise<WorkloadFiles> {
  const files = workloadFiles(dir)
  await mkdir(dir, { recursive: true })
  await new Promise<void>((resolve, reject) => {
    const out = createWriteStream(files.events)
    out.on('error', reject)
    out.on('finish', resolve)
    let i = 0
    const pump = (): void => {
      while (i < workload.events.length) {
        let chunk = ''
        for (const end = Math.min(i + 2_000, workload.events.length); i < end; i++) {
          chunk += `${JSON.stringify(workload.events[i])}\n`
        }
        if (!out.write(chunk)) {
          out.once('drain', pump)
          return
        }
      }
      out.end()
    }
    pump()
  })
  await writeFile(files.truth, JSON.stringify(workload.truth))
  await writeFile(files.options, `${JSON.stringify(workload.options, null, 2)}\n`)
  return files
}

/** Read back what writeWorkload wrote. */
export async function readWorkload(dir: string): Promise<Workload> {
  const files = workloadFiles(dir)
  const [eventsBuf, truthText, optionsText] = await Promise.all([
    readFile(files.events),
    readFile(files.truth, 'utf8'),
    readFile(files.options, 'utf8'),
  ])
  // Line by line from the buffer: the file may be larger than the longest string V8 can hold.
  const events: GeneratedEvent[] = []
  for (let from = 0; from < eventsBuf.length; ) {
    let to = eventsBuf.indexOf(0x0a, from)
    if (to === -1) to = eventsBuf.length
    if (to > from) events.push(JSON.parse(eventsBuf.toString('utf8', from, to)) as GeneratedEvent)
    from = to + 1
  }
  const raw = JSON.parse(optionsText) as Omit<ResolvedWorkloadOptions, 'start'> & { start: string }
  return { options: { ...raw, start: new Date(raw.start) }, events, truth: JSON.parse(truthText) as Truth }
}
