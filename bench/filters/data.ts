import {
  DEFAULT_PRECISION,
  type HashHalves,
  HLL_FORMAT_VERSION,
  HyperLogLog,
  hashHalves,
} from '../../core/hll.js'
import { pathCatalog, Rng, USER_AGENTS, zipfSampler } from '../workload.js'

/**
 * The filters study (issue 21): the data every prototype stores and the query set every one answers.
 *
 * The generator is columnar: a day of a site is a set of typed arrays of dictionary codes, one per
 * dimension, plus the visitor's XXH64 hash, so the three designs are fed the same values and 20 M
 * events a day fit in memory. It reuses the bench workload's PRNG, Zipf sampler, path catalog and
 * user-agent table (with the labels ua-parser-js gives them); the traffic is drawn by sessions: a
 * visitor (a country and a user agent of its own, the same every day) lands from a referrer or a
 * campaign and views Zipf-distributed paths, with track events among the pageviews. A visitor pool
 * five times a day's events over 30 days makes most visitors of a day new and some come back.
 * Session attribution: every event of a session carries the session's referrer and UTM set.
 */

export const FILTER_DIMENSIONS = [
  'event',
  'path',
  'referrer',
  'utm_source',
  'utm_medium',
  'utm_campaign',
  'country',
  'browser',
  'os',
  'device',
] as const
export type FilterDimension = (typeof FILTER_DIMENSIONS)[number]

/** The `event` value of a pageview (the others are track event names). */
export const PAGEVIEW = 'pageview'

export type SizeName = 'small' | 'medium' | 'large'

export interface SiteSize {
  name: SizeName
  eventsPerDay: number
  /** Distinct paths the Zipf draws from. */
  paths: number
  /** Distinct external referrer hosts. */
  referrers: number
}

export const SITE_SIZES: Readonly<Record<SizeName, SiteSize>> = {
  small: { name: 'small', eventsPerDay: 10_000, paths: 10_000, referrers: 200 },
  medium: { name: 'medium', eventsPerDay: 1_000_000, paths: 30_000, referrers: 400 },
  large: { name: 'large', eventsPerDay: 20_000_000, paths: 100_000, referrers: 600 },
}

/** Dictionary of each dimension: code → value. Codes are ranks (0 is the most frequent for Zipf ones). */
export type Dictionaries = Readonly<Record<FilterDimension, readonly string[]>>

export type CodeArray = Uint8Array | Uint16Array | Uint32Array

/** One site-day as typed columns. */
export interface DayBatch {
  /** Day index from the start of the 30 days (0-based). */
  day: number
  n: number
  /** Seconds since the start of the day. */
  second: Uint32Array
  codes: Readonly<Record<FilterDimension, CodeArray>>
  /** XXH64 of the visitor id, high and low 32 bits (what core/hll.ts adds). */
  hashHi: Uint32Array
  hashLo: Uint32Array
}

const TRACK_EVENTS = [
  ['Product Viewed', 30],
  ['Clicked CTA', 20],
  ['Added to Cart', 15],
  ['Searched', 10],
  ['Video Played', 8],
  ['Signed Up', 6],
] as const
const CAMPAIGNS = [
  ['google', 'cpc', 5],
  ['newsletter', 'email', 4],
  ['twitter', 'social', 3],
  ['facebook', 'paid_social', 2],
  ['linkedin', 'social', 1],
  ['producthunt', 'referral', 1],
] as const
const CAMPAIGN_NAMES = ['spring_sale', 'launch', 'weekly_digest', 'retargeting', 'black_friday']
const TOP_REFERRERS = [
  'google.com',
  't.co',
  'news.ycombinator.com',
  'bing.com',
  'duckduckgo.com',
  'facebook.com',
  'reddit.com',
  'linkedin.com',
  'github.com',
  'google.co.uk',
  'search.yahoo.com',
  'producthunt.com',
  'lobste.rs',
  'dev.to',
  'medium.com',
  'stackoverflow.com',
]
const TOP_COUNTRIES = 'US DE GB FR IN CA NL BR ES IT AU PL SE JP CH'.split(' ')
const LETTERS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ'
const HUMAN_UAS = USER_AGENTS.filter((u) => !u.isBot)
/** Share of sessions without a referrer, and from a campaign. */
const DIRECT_SHARE = 0.35
const CAMPAIGN_SHARE = 0.15
const PAGEVIEW_SHARE = 0.75
const MEAN_EXTRA_EVENTS = 2.5

function uniqueValues(values: readonly string[]): string[] {
  return [...new Set(values)]
}

/** The dictionaries of a site size: every value the generator can draw, in code order. */
export function dictionaries(size: SiteSize): Dictionaries {
  const countries = [...TOP_COUNTRIES]
  for (let i = 0; countries.length < 200; i++) {
    const code = `${LETTERS[Math.floor(i / 26) % 26]}${LETTERS[i % 26]}`
    if (!countries.includes(code)) countries.push(code)
  }
  const referrers = ['(direct)', 'site.example', ...TOP_REFERRERS]
  for (let i = 1; referrers.length < size.referrers + 2; i++) referrers.push(`blog${i}.example.org`)
  return {
    event: [PAGEVIEW, ...TRACK_EVENTS.map(([name]) => name)],
    path: pathCatalog(size.paths),
    referrer: referrers,
    utm_source: ['(none)', ...CAMPAIGNS.map(([s]) => s)],
    utm_medium: uniqueValues(['(none)', ...CAMPAIGNS.map(([, m]) => m)]),
    utm_campaign: ['(none)', ...CAMPAIGN_NAMES],
    country: countries,
    browser: uniqueValues(HUMAN_UAS.map((u) => u.browser ?? '(unknown)')),
    os: uniqueValues(HUMAN_UAS.map((u) => u.os ?? '(unknown)')),
    device: uniqueValues(HUMAN_UAS.map((u) => u.device)),
  }
}

/** A code array wide enough for `cardinality` values. */
export function codeArray(cardinality: number, n: number): CodeArray {
  if (cardinality <= 0x100) return new Uint8Array(n)
  if (cardinality <= 0x10000) return new Uint16Array(n)
  return new Uint32Array(n)
}

/** Inverse CDF over weights, driven by a uniform number (so a visitor's hash can pick its attributes). */
class Cdf {
  private readonly cdf: Float64Array
  constructor(weights: readonly number[]) {
    this.cdf = new Float64Array(weights.length)
    let sum = 0
    weights.forEach((w, i) => {
      sum += w
      this.cdf[i] = sum
    })
    for (let i = 0; i < this.cdf.length; i++) this.cdf[i]! /= sum
  }
  at(u: number): number {
    let lo = 0
    let hi = this.cdf.length - 1
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (this.cdf[mid]! > u) hi = mid
      else lo = mid + 1
    }
    return lo
  }
}

/** A well-mixed uniform in [0, 1) from an integer and a salt (splitmix-style finaliser). */
function mixUniform(x: number, salt: number): number {
  let z = (Math.imul(x | 0, 0x9e3779b1) ^ salt) | 0
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b)
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35)
  return ((z ^ (z >>> 16)) >>> 0) / 4294967296
}

/** Everything drawn once per site size (samplers, lookup tables). */
export class SiteGenerator {
  readonly dicts: Dictionaries
  private readonly pathZipf
  private readonly referrerZipf
  private readonly countryCdf: Cdf
  private readonly uaCdf: Cdf
  private readonly trackCdf: Cdf
  private readonly campaignCdf: Cdf
  private readonly uaBrowser: number[]
  private readonly uaOs: number[]
  private readonly uaDevice: number[]
  private readonly campaignMedium: number[]
  private readonly pool: number

  constructor(
    readonly size: SiteSize,
    readonly seed: number,
    /** Events per day, when not the size's (the unit test's small datasets). */
    readonly eventsPerDay: number = size.eventsPerDay,
    days = 30,
  ) {
    this.dicts = dictionaries(size)
    const d = this.dicts
    this.pathZipf = zipfSampler(d.path.length, 1.0)
    // External referrers only: codes 0 and 1 are (direct) and the site itself.
    this.referrerZipf = zipfSampler(d.referrer.length - 2, 1.1)
    this.countryCdf = new Cdf(d.country.map((_, i) => 1 / (i + 1) ** 1.3))
    this.uaCdf = new Cdf(HUMAN_UAS.map((u) => u.weight))
    this.trackCdf = new Cdf(TRACK_EVENTS.map(([, w]) => w))
    this.campaignCdf = new Cdf(CAMPAIGNS.map(([, , w]) => w))
    this.uaBrowser = HUMAN_UAS.map((u) => d.browser.indexOf(u.browser ?? '(unknown)'))
    this.uaOs = HUMAN_UAS.map((u) => d.os.indexOf(u.os ?? '(unknown)'))
    this.uaDevice = HUMAN_UAS.map((u) => d.device.indexOf(u.device))
    this.campaignMedium = CAMPAIGNS.map(([, m]) => d.utm_medium.indexOf(m))
    this.pool = Math.max(1, Math.round((eventsPerDay * days) / 5))
  }

  /** The events of day `day` (deterministic for seed, size, events per day and day). */
  day(day: number): DayBatch {
    const n = this.eventsPerDay
    const d = this.dicts
    const rng = new Rng(this.seed * 64 + day)
    const codes = Object.fromEntries(
      FILTER_DIMENSIONS.map((dim) => [dim, codeArray(d[dim].length, n)]),
    ) as Record<FilterDimension, CodeArray>
    const second = new Uint32Array(n)
    const hashHi = new Uint32Array(n)
    const hashLo = new Uint32Array(n)
    const halves: HashHalves = { hi: 0, lo: 0 }
    let i = 0
    while (i < n) {
      const visitor = rng.int(this.pool)
      hashHalves(`v${this.seed}-${visitor}`, halves)
      const country = this.countryCdf.at(mixUniform(visitor, 0x51ed))
      const ua = this.uaCdf.at(mixUniform(visitor, 0x2f1b))
      let referrer = 0
      let source = 0
      let medium = 0
      let campaign = 0
      const r = rng.next()
      if (r < CAMPAIGN_SHARE) {
        const c = this.campaignCdf.at(rng.next())
        source = c + 1
        medium = this.campaignMedium[c]!
        campaign = 1 + rng.int(CAMPAIGN_NAMES.length)
        referrer = source === 2 ? 0 : 2 + this.referrerZipf.sample(rng)
      } else if (r >= CAMPAIGN_SHARE + DIRECT_SHARE) referrer = 2 + this.referrerZipf.sample(rng)
      const len = Math.min(n - i, 1 + Math.floor(rng.exp(MEAN_EXTRA_EVENTS)))
      let at = rng.int(86_400)
      let path = this.pathZipf.sample(rng)
      for (let k = 0; k < len; k++, i++) {
        const pageview = k === 0 || rng.chance(PAGEVIEW_SHARE)
        if (pageview && k > 0) path = this.pathZipf.sample(rng)
        codes.event[i] = pageview ? 0 : 1 + this.trackCdf.at(rng.next())
        codes.path[i] = path
        // The first pageview has the session's referrer; the pages after it the site itself.
        codes.referrer[i] = k === 0 ? referrer : 1
        codes.utm_source[i] = source
        codes.utm_medium[i] = medium
        codes.utm_campaign[i] = campaign
        codes.country[i] = country
        codes.browser[i] = this.uaBrowser[ua]!
        codes.os[i] = this.uaOs[ua]!
        codes.device[i] = this.uaDevice[ua]!
        second[i] = at
        hashHi[i] = halves.hi
        hashLo[i] = halves.lo
        at = Math.min(86_399, at + 5 + rng.int(60))
      }
    }
    return { day, n, second, codes, hashHi, hashLo }
  }
}

// ---------------------------------------------------------------------------------------------------
// Query set and answers
// ---------------------------------------------------------------------------------------------------

export type QueryKind = 'totals' | 'timeseries' | 'breakdown'

export interface Filter {
  dimension: FilterDimension
  value: string
}

export interface FilterQuery {
  /** e.g. `breakdown/2f/7d`. */
  id: string
  kind: QueryKind
  /** Inclusive day range. */
  fromDay: number
  toDay: number
  filters: readonly Filter[]
  /** Breakdown dimension (kind breakdown). */
  by?: FilterDimension
  /** Breakdown rows kept: top by events, then by value. */
  limit: number
}

export interface AnswerRow {
  /** '' for totals, the day index for a timeseries, the value for a breakdown. */
  key: string
  events: number
  pageviews: number
  /** HyperLogLog estimate (p = 14), rounded. */
  visitors: number
}

export interface Answer {
  id: string
  rows: AnswerRow[]
}

/** Filters on different dimensions, in the order the query set adds them. */
export const FILTER_CHAIN: readonly Filter[] = [
  { dimension: 'country', value: 'US' },
  { dimension: 'browser', value: 'Chrome' },
  { dimension: 'referrer', value: 'site.example' },
]
export const RANGES_DAYS = [1, 7, 30] as const

/**
 * The query set: totals, a timeseries by day and a top-10 breakdown of paths, under 0 to 3 filters on
 * different dimensions, over the last 1, 7 and 30 days of the `days` days that end with day `lastDay`
 * (ranges longer than `days` left out).
 */
export function querySet(
  days: number,
  ranges: readonly number[] = RANGES_DAYS,
  lastDay: number = days - 1,
): FilterQuery[] {
  const out: FilterQuery[] = []
  for (const range of ranges) {
    if (range > days) continue
    for (let f = 0; f <= FILTER_CHAIN.length; f++) {
      for (const kind of ['totals', 'timeseries', 'breakdown'] as const) {
        out.push({
          id: `${kind}/${f}f/${range}d`,
          kind,
          fromDay: lastDay - range + 1,
          toDay: lastDay,
          filters: FILTER_CHAIN.slice(0, f),
          ...(kind === 'breakdown' ? { by: 'path' as const } : {}),
          limit: 10,
        })
      }
    }
  }
  return out
}

export const HLL_PRECISION = DEFAULT_PRECISION
const REGISTER_SHIFT = 32 - HLL_PRECISION

/** Register index of a visitor hash at p = 14 (as HyperLogLog.addHalves computes it). */
export function registerIndex(hi: number): number {
  return hi >>> REGISTER_SHIFT
}

/** Register value (rank) of a visitor hash at p = 14 (as HyperLogLog.addHalves computes it). */
export function registerRank(hi: number, lo: number): number {
  const rest = hi << HLL_PRECISION
  return rest !== 0 ? Math.clz32(rest) + 1 : REGISTER_SHIFT + 1 + Math.clz32(lo)
}

/** Fresh dense registers (2^14 bytes). */
export function newRegisters(): Uint8Array {
  return new Uint8Array(1 << HLL_PRECISION)
}

/** Raises `regs` to a serialized sketch (core/hll.ts toBytes, either encoding) without building it. */
export function raiseFromBytes(regs: Uint8Array, bytes: Uint8Array): void {
  if (bytes[2] === 0) {
    for (let i = 0; i < regs.length; i++) if (bytes[3 + i]! > regs[i]!) regs[i] = bytes[3 + i]!
    return
  }
  const n = ((bytes[3]! << 24) | (bytes[4]! << 16) | (bytes[5]! << 8) | bytes[6]!) >>> 0
  for (let k = 0, at = 7; k < n; k++, at += 3) {
    const entry = (bytes[at]! << 16) | (bytes[at + 1]! << 8) | bytes[at + 2]!
    const index = entry >>> 6
    const value = entry & 63
    if (value > regs[index]!) regs[index] = value
  }
}

/** The visitors estimate of dense registers, by core/hll.ts (so every design rounds the same number). */
export function estimateOf(regs: Uint8Array): number {
  const bytes = new Uint8Array(3 + regs.length)
  bytes[0] = HLL_FORMAT_VERSION
  bytes[1] = HLL_PRECISION
  bytes[2] = 0
  bytes.set(regs, 3)
  return Math.round(HyperLogLog.fromBytes(bytes).estimate())
}

/**
 * The estimate of any registers whose histogram (how many registers hold each value) is `counts`:
 * the estimator depends only on that histogram, so an engine that returns it (DuckDB) gets the same
 * number as one that holds the registers.
 */
export function estimateOfHistogram(counts: ReadonlyMap<number, number>): number {
  const regs = newRegisters()
  let at = 0
  for (const [value, count] of [...counts].sort((a, b) => a[0] - b[0])) {
    if (value === 0) continue
    regs.fill(value, at, at + count)
    at += count
  }
  return estimateOf(regs)
}

/** Breakdown order: events descending, then value ascending. */
export function byEventsThenKey(a: AnswerRow, b: AnswerRow): number {
  return b.events - a.events || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0)
}

/** Timeseries rows for every day of the range, zero where a day has no event. */
export function fillDays(q: FilterQuery, rows: readonly AnswerRow[]): AnswerRow[] {
  const byDay = new Map(rows.map((r) => [r.key, r]))
  const out: AnswerRow[] = []
  for (let d = q.fromDay; d <= q.toDay; d++)
    out.push(byDay.get(String(d)) ?? { key: String(d), events: 0, pageviews: 0, visitors: 0 })
  return out
}

/** First difference between two designs' answers to the same query, or undefined when equal. */
export function answerDifference(a: Answer, b: Answer): string | undefined {
  if (a.rows.length !== b.rows.length) return `${a.id}: ${a.rows.length} rows vs ${b.rows.length}`
  for (let i = 0; i < a.rows.length; i++) {
    const x = a.rows[i]!
    const y = b.rows[i]!
    if (x.key !== y.key || x.events !== y.events || x.pageviews !== y.pageviews || x.visitors !== y.visitors)
      return `${a.id} row ${i}: ${JSON.stringify(x)} vs ${JSON.stringify(y)}`
  }
  return undefined
}
