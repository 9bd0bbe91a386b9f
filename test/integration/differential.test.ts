import { join } from 'node:path'
import { Analytics, type TrackParams } from '@segment/analytics-node'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventGoal, pageGoal } from '../../core/aggregate/goals.js'
import { createLogger } from '../../core/log.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildIngestApp } from '../../ingest/app.js'
import { createIngestMetrics } from '../../ingest/metrics.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import { CheckpointFreshness } from '../../query/freshness.js'
import { createQueryMetrics } from '../../query/metrics.js'
import { PropKeyCache } from '../../stream/prop-keys.js'
import type { tempDataDir } from '../contract/backends.js'
import type { EventLogHarness } from '../contract/event-log.js'
import { archiveWholeLog, rebuildFromArchive } from '../helpers/archive-log.js'
import { testConfig } from '../helpers/context.js'
import { backends, closePipeline, type Harness, openPipeline } from '../helpers/pipeline-backends.js'
import { seeded } from '../helpers/processes.js'
import { streamToEnd } from '../helpers/stream.js'

/**
 * A differential audit of the numbers: a seeded workload goes through the real clients
 * (`@segment/analytics-node`, HTTP posts to /v1/batch and /v1/track, Plausible's /api/event) to
 * three sites (UTC, America/New_York, Asia/Kolkata) on both backends, through the stream and then a
 * rebuild, and many reads of /v1/stats/*, Plausible's Stats API and /v1/export/aggregates are
 * compared with a reference computed here from the events sent. The reference follows the
 * definitions of docs/design.md (counted events, visits, goals, zones, breakdown order) and
 * calls none of Tally's code. Visitors are compared within three standard errors of the
 * HyperLogLog (docs/design.md "Uniques"), everything else exactly.
 */

const MIN = 60_000
const HOUR = 60 * MIN
const DAY = 24 * HOUR
const GAP = 30 * MIN
const GRACE_MS = 4 * DAY
const logger = createLogger('silent')

/**
 * "Today" must be the same local date for the reference and the reads of the whole file (both
 * backends, a few minutes): a run that would start within 12 minutes of a local midnight of one of
 * the zones waits until it has passed.
 */
async function pastLocalMidnights(zones: ReadonlyArray<string | undefined>): Promise<void> {
  for (;;) {
    const now = Date.now()
    const next = zones.map((z) => localMidnight(addDays(localDate(now, z), 1), z) - now)
    const soonest = Math.min(...next)
    if (soonest > 12 * 60_000) return
    await new Promise((r) => setTimeout(r, soonest + 1000))
  }
}
await pastLocalMidnights([undefined, 'America/New_York', 'Asia/Kolkata'])
const NOW = Date.now()
const TODAY = Math.floor(NOW / DAY) * DAY
/** Generated traffic: from midnight UTC two days ago to 20 minutes ago. */
const START = TODAY - 2 * DAY
const END = NOW - 20 * MIN
const HLL_BOUND = 3 * (1.04 / Math.sqrt(2 ** 14))

const HUMAN_UA =
  'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36'
const BOT_UA = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'
const PATHS = ['/', '/pricing', '/blog/a', '/blog/b', '/blog/2026/x', '/docs', '/about']
const REFERRERS = [
  '',
  'https://www.google.com/search',
  'https://news.ycombinator.com/item',
  'https://Example.org/x',
]
const UTMS = [undefined, 'newsletter', 'twitter']
const PLANS = [undefined, 'free', 'pro', 'team']
const TRACKS = ['Signup', 'Click', 'Download']
const GOALS = [eventGoal('Signup'), pageGoal('/blog/*')]

// ---------------------------------------------------------------------------------------------
// The workload (seeded)

type Channel = 'segment' | 'batch' | 'track' | 'plausible'

/** One call sent. `type` identify counts nowhere; `bot` is sent with a crawler's user agent. */
interface Sent {
  site: string
  channel: Channel
  type: 'page' | 'track' | 'identify'
  visitor: string
  ts: number
  messageId: string
  path: string
  referrer: string
  utm: string | undefined
  name: string | undefined
  plan: string | undefined
  bot: boolean
}

interface SiteSpec {
  id: string
  domain: string
  zone: string | undefined
}

function generate(site: SiteSpec, seed: number): { sent: Sent[]; duplicates: Sent[] } {
  const rnd = seeded(seed)
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!
  const sent: Sent[] = []
  let n = 0
  const channels: Channel[] = ['segment', 'batch', 'track']
  for (let v = 0; v < 45; v++) {
    const visitor = `v${v}-${site.id}`
    const channel = channels[v % 3]!
    const bot = channel === 'batch' && v % 9 === 1
    let t = START + Math.floor(rnd() * (END - START - 6 * HOUR))
    const visits = 1 + Math.floor(rnd() * 3)
    for (let k = 0; k < visits && t < END; k++) {
      const referrer = pick(REFERRERS)
      const utm = pick(UTMS)
      const len = 1 + Math.floor(rnd() * 5)
      for (let i = 0; i < len && t < END; i++) {
        const r = rnd()
        const type = r < 0.65 ? 'page' : r < 0.95 ? 'track' : 'identify'
        // The Segment client's events are shifted by ingest's clock-skew correction (receivedAt −
        // sentAt, milliseconds): they sit mid-second, away from every window edge.
        const ts = channel === 'segment' ? Math.floor(t / MIN) * MIN + 30_000 : t
        sent.push({
          site: site.id,
          channel,
          type,
          visitor,
          ts,
          messageId: `m${n++}-${site.id}`,
          path: pick(PATHS),
          // Only the visit's first event says where it came from; later pages have the site itself.
          referrer: i === 0 ? referrer : '',
          utm: i === 0 ? utm : undefined,
          name: type === 'track' ? pick(TRACKS) : undefined,
          plan: pick(PLANS),
          bot,
        })
        // Gaps well away from the 30-minute visit gap, whole seconds plus a few milliseconds.
        t += 5_000 + Math.floor(rnd() * 20) * 60_000 + Math.floor(rnd() * 997)
      }
      t += 45 * MIN + Math.floor(rnd() * 10 * HOUR)
    }
  }
  // Events exactly on window edges (minute, hour, midnight UTC, local midnight), sent through
  // /v1/batch without sentAt (their time is taken as given).
  const yesterday = TODAY - DAY
  const edges = [
    yesterday + 10 * HOUR, // an hour's first millisecond
    yesterday + 10 * HOUR - 1, // the hour before's last
    yesterday + 13 * HOUR + 17 * MIN, // a minute's first millisecond
    yesterday + 13 * HOUR + 17 * MIN - 1,
    yesterday, // midnight UTC
    yesterday - 1, // one millisecond before: the same visitor, yet two visits (midnight ends one)
    yesterday - 2 * MIN,
  ]
  if (site.zone) {
    const local = localMidnight(localDate(yesterday + 12 * HOUR, site.zone), site.zone)
    edges.push(local, local - 1, local + 1)
  }
  // In time order: the stream's conversions by a visit's values are provisional for an event
  // timed before its visit's first one that arrives after it (docs/design.md, Goals, out of order).
  edges.sort((a, b) => a - b)
  for (const [i, ts] of edges.entries())
    sent.push({
      site: site.id,
      channel: 'batch',
      type: i % 3 === 1 ? 'track' : 'page',
      visitor: `edge-${site.id}`,
      ts,
      messageId: `edge${i}-${site.id}`,
      path: i % 2 === 0 ? '/blog/a' : '/pricing',
      referrer: i === 0 ? 'https://news.ycombinator.com/' : '',
      utm: undefined,
      name: i % 3 === 1 ? 'Signup' : undefined,
      plan: undefined,
      bot: false,
    })
  // Out of order: a visitor's events arrive 10:40, 10:00, 10:20, in one /v1/batch request: two
  // visits until the last joins them into one (entry /docs, source google.com, not a bounce).
  for (const [k, [minutes, path, type]] of (
    [
      [40, '/about', 'page'],
      [0, '/docs', 'page'],
      [20, '/pricing', 'track'],
    ] as const
  ).entries())
    sent.push({
      site: site.id,
      channel: 'batch',
      type,
      visitor: `ooo-${site.id}`,
      ts: yesterday + 10 * HOUR + minutes * MIN + 123,
      messageId: `ooo${k}-${site.id}`,
      path,
      referrer: minutes === 0 ? 'https://www.google.com/' : '',
      utm: undefined,
      name: type === 'track' ? 'Click' : undefined,
      plan: minutes === 0 ? 'team' : undefined,
      bot: false,
    })
  // A tie in visits: two visitors with the same count on every metric of a breakdown (order by value).
  for (const who of ['tie-a', 'tie-b'])
    sent.push({
      site: site.id,
      channel: 'track',
      type: 'page',
      visitor: `${who}-${site.id}`,
      ts: yesterday + 15 * HOUR,
      messageId: `${who}-${site.id}`,
      path: who === 'tie-a' ? '/tie/b' : '/tie/a',
      referrer: '',
      utm: undefined,
      name: undefined,
      plan: undefined,
      bot: false,
    })
  // Duplicates: every 17th event posted again through /v1/batch with the same messageId.
  const duplicates = sent.filter((e, i) => i % 17 === 3 && e.channel !== 'segment')
  return { sent, duplicates }
}

// ---------------------------------------------------------------------------------------------
// Zones (the reference's own, from Intl)

function offsetMs(ms: number, zone: string): number {
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat('en-US', {
      timeZone: zone,
      hourCycle: 'h23',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
    })
      .formatToParts(ms)
      .map((p) => [p.type, p.value]),
  )
  const asUtc = Date.UTC(
    +parts.year!,
    +parts.month! - 1,
    +parts.day!,
    +parts.hour!,
    +parts.minute!,
    +parts.second!,
  )
  return asUtc - Math.floor(ms / 1000) * 1000
}

function localDate(ms: number, zone: string | undefined): string {
  return new Date(ms + (zone ? offsetMs(ms, zone) : 0)).toISOString().slice(0, 10)
}

/** The instant a local date begins (no DST gap at midnight in the zones used here). */
function localMidnight(date: string, zone: string | undefined): number {
  const utc = Date.parse(`${date}T00:00:00Z`)
  if (!zone) return utc
  let t = utc - offsetMs(utc, zone)
  t = utc - offsetMs(t, zone)
  return t
}

function addDays(date: string, n: number): string {
  return new Date(Date.parse(`${date}T00:00:00Z`) + n * DAY).toISOString().slice(0, 10)
}

// ---------------------------------------------------------------------------------------------
// The reference

interface Counted {
  visitor: string
  ts: number
  page: boolean
  path: string
  referrer: string
  utm_source: string
  source: string
  event: string
  plan: string
  goals: string[]
}

interface Visit {
  start: number
  events: Counted[]
  pageviews: number
  duration: number
  bounce: boolean
  first: Counted
  entry: string | undefined
  exit: string | undefined
}

function referrerLabel(url: string): string {
  if (!url) return '(direct)'
  const host = new URL(url).hostname.toLowerCase().replace(/^www\./, '')
  return host || '(direct)'
}

/**
 * README, `source`: utm_source names the source (by its name in the referrer database when it
 * is one there: twitter → Twitter, as Plausible names utm_source), else the referrer host by its
 * name there (google.com → Google, news.ycombinator.com → Hacker News), else the host itself;
 * neither → Direct / None.
 */
function sourceOf(e: Sent): string {
  const names: Record<string, string> = {
    twitter: 'Twitter',
    'google.com': 'Google',
    'news.ycombinator.com': 'Hacker News',
  }
  if (e.utm) return names[e.utm] ?? e.utm
  const host = referrerLabel(e.referrer)
  if (host === '(direct)') return 'Direct / None'
  return names[host] ?? host
}

function goalsOf(type: 'page' | 'track', name: string | undefined, path: string): string[] {
  const reached: string[] = []
  if (type === 'track' && name === 'Signup') reached.push(GOALS[0]!.name)
  if (type === 'page' && /^\/blog\/[^/]*$/.test(path)) reached.push(GOALS[1]!.name)
  return reached
}

/** Counted events: first copy of each messageId, not bots, track and page only. */
function countedOf(sent: readonly Sent[]): Counted[] {
  const seen = new Set<string>()
  const out: Counted[] = []
  for (const e of sent) {
    if (seen.has(e.messageId)) continue
    seen.add(e.messageId)
    if (e.bot || e.type === 'identify') continue
    out.push({
      visitor: e.visitor,
      ts: e.ts,
      page: e.type === 'page',
      path: e.path,
      referrer: referrerLabel(e.referrer),
      utm_source: e.utm ?? '(none)',
      source: sourceOf(e),
      event: e.type === 'page' ? 'pageview' : e.name!,
      plan: e.plan ?? '(none)',
      goals: goalsOf(e.type, e.name, e.path),
    })
  }
  return out
}

const SESSION = ['referrer', 'utm_source', 'plan'] as const

/** Visits: per visitor and UTC day, runs with gaps under 30 minutes; ties by content. */
function visitsOf(counted: readonly Counted[]): Visit[] {
  const byKey = new Map<string, Counted[]>()
  for (const c of counted) {
    const key = `${c.visitor}|${Math.floor(c.ts / DAY)}`
    byKey.set(key, [...(byKey.get(key) ?? []), c])
  }
  const visits: Visit[] = []
  for (const list of byKey.values()) {
    list.sort((a, b) => a.ts - b.ts)
    let run: Counted[] = []
    const close = () => {
      if (run.length === 0) return
      const pages = run.filter((c) => c.page)
      const t0 = run[0]!.ts
      const firsts = run.filter((c) => c.ts === t0)
      const sessionKey = (c: Counted) => SESSION.map((d) => c[d]).join('\u0000')
      firsts.sort((a, b) => (sessionKey(a) < sessionKey(b) ? -1 : sessionKey(a) > sessionKey(b) ? 1 : 0))
      visits.push({
        start: t0,
        events: run,
        pageviews: pages.length,
        duration: run[run.length - 1]!.ts - t0,
        bounce: run.length === 1 && pages.length === 1,
        first: firsts[0]!,
        // Ties in time by content: entry the least path, exit the greatest.
        entry: pages
          .filter((c) => c.ts === pages[0]!.ts)
          .map((c) => c.path)
          .sort()[0],
        exit: pages
          .filter((c) => c.ts === pages[pages.length - 1]!.ts)
          .map((c) => c.path)
          .sort()
          .at(-1),
      })
      run = []
    }
    for (const c of list) {
      if (run.length > 0 && c.ts - run[run.length - 1]!.ts >= GAP) close()
      run.push(c)
    }
    close()
  }
  return visits
}

interface Cell {
  visitors: Set<string>
  events: number
  pageviews: number
  visits: number
  bounces: number
  durationMs: number
  visitPageviews: number
}

const cell = (): Cell => ({
  visitors: new Set(),
  events: 0,
  pageviews: 0,
  visits: 0,
  bounces: 0,
  durationMs: 0,
  visitPageviews: 0,
})

function addEvent(c: Cell, e: Counted): void {
  c.visitors.add(e.visitor)
  c.events++
  if (e.page) c.pageviews++
}

function addVisit(c: Cell, v: Visit): void {
  c.visits++
  if (v.bounce) c.bounces++
  c.durationMs += v.duration
  c.visitPageviews += v.pageviews
}

/** The metrics of a cell as the API writes them (Plausible's roundings, docs/design.md). */
function metricsOf(c: Cell): Record<string, number> {
  return {
    visitors: c.visitors.size,
    events: c.events,
    pageviews: c.pageviews,
    visits: c.visits,
    bounce_rate: c.visits === 0 ? 0 : Math.round((100 * c.bounces) / c.visits),
    visit_duration: c.visits === 0 ? 0 : Math.round(c.durationMs / 1000 / c.visits),
    views_per_visit: c.visits === 0 ? 0 : Math.round((100 * c.visitPageviews) / c.visits) / 100,
  }
}

type Dim = 'path' | 'event' | 'referrer' | 'utm_source' | 'source' | 'plan' | 'entry_page' | 'exit_page'

class Reference {
  readonly counted: Counted[]
  readonly visits: Visit[]
  /** Times of bot events (track and page, first copy of each messageId): bot_events. */
  readonly bots: number[]
  constructor(sent: readonly Sent[]) {
    this.counted = countedOf(sent)
    this.visits = visitsOf(this.counted)
    const seen = new Set<string>()
    this.bots = []
    for (const e of sent) {
      if (seen.has(e.messageId)) continue
      seen.add(e.messageId)
      if (e.bot && e.type !== 'identify') this.bots.push(e.ts)
    }
  }

  botEvents(from: number, to: number): number {
    return this.bots.filter((t) => t >= from && t < to).length
  }

  total(
    from: number,
    to: number,
    filter?: { dim: 'referrer' | 'utm_source' | 'plan' | 'path'; value: string | readonly string[] },
  ) {
    const c = cell()
    const values =
      filter === undefined ? [] : typeof filter.value === 'string' ? [filter.value] : filter.value
    for (const e of this.counted)
      if (e.ts >= from && e.ts < to && (!filter || values.includes(e[filter.dim]))) addEvent(c, e)
    for (const v of this.visits)
      if (
        v.start >= from &&
        v.start < to &&
        (!filter || (filter.dim !== 'path' && values.includes(v.first[filter.dim])))
      )
        addVisit(c, v)
    return c
  }

  breakdown(from: number, to: number, dim: Dim): Map<string, Cell> {
    const rows = new Map<string, Cell>()
    const at = (value: string) => rows.get(value) ?? rows.set(value, cell()).get(value)!
    if (dim !== 'entry_page' && dim !== 'exit_page')
      for (const e of this.counted) if (e.ts >= from && e.ts < to) addEvent(at(e[dim]), e)
    for (const v of this.visits) {
      if (v.start < from || v.start >= to) continue
      if (dim === 'entry_page' || dim === 'exit_page') {
        const page = dim === 'entry_page' ? v.entry : v.exit
        if (page !== undefined) addVisit(at(page), v)
      } else if (dim === 'referrer' || dim === 'utm_source' || dim === 'source' || dim === 'plan')
        addVisit(at(v.first[dim]), v)
    }
    return rows
  }

  /** Completions and converters of a goal in [from, to), optionally by a session dimension of the converting visit. */
  goal(name: string, from: number, to: number, by?: 'referrer' | 'path') {
    const rows = new Map<string, { converters: Set<string>; completions: number }>()
    for (const v of this.visits)
      for (const e of v.events) {
        if (e.ts < from || e.ts >= to || !e.goals.includes(name)) continue
        const key = by === undefined ? '' : by === 'path' ? e.path : v.first[by]
        const r = rows.get(key) ?? rows.set(key, { converters: new Set(), completions: 0 }).get(key)!
        r.converters.add(e.visitor)
        r.completions++
      }
    return rows
  }
}

// ---------------------------------------------------------------------------------------------
// Comparisons

interface Diff {
  where: string
  got: unknown
  want: unknown
}

function near(got: number, want: number): boolean {
  return Math.abs(got - want) <= Math.ceil(HLL_BOUND * want)
}

/**
 * A conversion rate is a ratio of two HyperLogLog estimates (converters over visitors), percent to
 * one decimal: it must lie between the ratios of the estimates' bounds.
 */
function checkRate(where: string, got: unknown, converters: number, visitors: number, diffs: Diff[]): void {
  const b = (n: number) => Math.ceil(HLL_BOUND * n)
  const lo = visitors === 0 ? 0 : Math.max(0, converters - b(converters)) / (visitors + b(visitors))
  const hi = visitors === 0 ? 0 : (converters + b(converters)) / Math.max(1, visitors - b(visitors))
  const value = typeof got === 'object' && got !== null ? (got as { value: unknown }).value : got
  if (typeof value !== 'number' || value < Math.floor(1000 * lo) / 10 || value > Math.ceil(1000 * hi) / 10)
    diffs.push({
      where: `${where} conversion_rate`,
      got: value,
      want: [Math.floor(1000 * lo) / 10, Math.ceil(1000 * hi) / 10],
    })
}

/** Compares an answer's metrics with the reference's (visitors/conversions within the HLL bound). */
function compareMetrics(
  where: string,
  got: Record<string, unknown>,
  want: Record<string, number>,
  diffs: Diff[],
): void {
  for (const [m, w] of Object.entries(want)) {
    // An aggregate's metric is {value}; a point's or a row's is the number.
    const raw = got[m]
    const g = typeof raw === 'object' && raw !== null ? (raw as { value: unknown }).value : raw
    const ok = m === 'visitors' || m === 'conversions' ? typeof g === 'number' && near(g, w) : g === w
    if (!ok) diffs.push({ where: `${where} ${m}`, got: g, want: w })
  }
}

const pick = (m: Record<string, number>, names: readonly string[]) =>
  Object.fromEntries(names.map((n) => [n, m[n]!]))

const ALL_METRICS = [
  'visitors',
  'visits',
  'pageviews',
  'events',
  'bounce_rate',
  'visit_duration',
  'views_per_visit',
]
const EVENT_METRICS = ['visitors', 'events', 'pageviews']

// ---------------------------------------------------------------------------------------------

describe.each(backends)(
  'differential audit against an independent reference (%s)',
  (_name, openStore, openLog) => {
    let store: Harness
    let log: EventLogHarness
    let topic: string
    let data: ReturnType<typeof tempDataDir>
    let config = testConfig()
    let query: FastifyInstance | undefined
    const stamp = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`
    const specs: SiteSpec[] = [
      { id: `diff-utc-${stamp}.test`, domain: `diff-utc-${stamp}.test`, zone: undefined },
      { id: `diff-ny-${stamp}.test`, domain: `diff-ny-${stamp}.test`, zone: 'America/New_York' },
      { id: `diff-kol-${stamp}.test`, domain: `diff-kol-${stamp}.test`, zone: 'Asia/Kolkata' },
    ]
    const sites = new Map<string, { site: Site; token: string }>()
    const sentBySite = new Map<string, Sent[]>()
    const refs = new Map<string, Reference>()
    const group = () => `diff-${topic}`

    beforeAll(async () => {
      ;({ store, log, topic, config, data } = await openPipeline(openStore, openLog, {
        dataPrefix: 'tally-diff-',
        env: { TALLY_GRACE_MS: String(GRACE_MS), TALLY_FLUSH_INTERVAL_MS: '100' },
      }))
      for (const spec of specs) {
        const created = await store.sites.create({
          siteId: spec.id,
          domain: spec.domain,
          origins: [],
          ...(spec.zone ? { timezone: spec.zone } : {}),
        })
        for (const g of GOALS) await store.sites.addGoal(spec.id, g)
        await store.sites.addPropKey(spec.id, 'plan')
        sites.set(spec.id, { site: created.site, token: created.readToken })
      }
      await sendAll()
      await streamToEnd(log, store, {
        topic,
        group: group(),
        stream: config.stream,
        logger,
        propKeys: new PropKeyCache(store.sites, 60_000, logger),
      })
    }, 240_000)

    afterAll(async () => {
      await query?.close()
      await closePipeline({ log, store, data })
    })

    /** Sends every site's workload through a real ingest server and the real clients. */
    async function sendAll(): Promise<void> {
      const writer = log.writer()
      const byKey = new Map([...sites.values()].map((s) => [s.site.writeKey, s.site]))
      const byDomain = new Map(specs.map((s) => [s.domain, sites.get(s.id)!.site]))
      const salt = Buffer.alloc(32, 7)
      const app = await buildIngestApp({
        config: { ...config.ingest, rateLimitClientPerSec: 0, rateLimitSitePerSec: 0 },
        topic,
        log: writer,
        sites: { byWriteKey: async (k) => byKey.get(k), isKnownOrigin: async () => true },
        plausible: { sites: { byDomain: async (d) => byDomain.get(d) }, salt: { current: async () => salt } },
        metrics: createIngestMetrics(),
        logger,
      })
      const url = await app.listen({ host: '127.0.0.1', port: 0 })
      try {
        for (const [i, spec] of specs.entries()) {
          const { site } = sites.get(spec.id)!
          const auth = `Basic ${Buffer.from(`${site.writeKey}:`).toString('base64')}`
          const { sent, duplicates } = generate(spec, 1000 + i)
          const payloadOf = (e: Sent) => {
            const query = e.utm ? `?utm_source=${e.utm}` : ''
            const base = {
              type: e.type,
              anonymousId: e.visitor,
              messageId: e.messageId,
              timestamp: new Date(e.ts).toISOString(),
              context: {
                userAgent: e.bot ? BOT_UA : HUMAN_UA,
                page: { path: e.path, referrer: e.referrer, url: `https://${spec.domain}${e.path}${query}` },
                ...(e.utm ? { campaign: { source: e.utm } } : {}),
              },
              properties: e.plan ? { plan: e.plan } : {},
            }
            return e.type === 'track'
              ? { ...base, event: e.name }
              : e.type === 'identify'
                ? { ...base, traits: {} }
                : base
          }
          const post = async (path: string, body: unknown) => {
            const res = await fetch(`${url}${path}`, {
              method: 'POST',
              headers: { 'content-type': 'application/json', authorization: auth },
              body: JSON.stringify(body),
            })
            expect(res.status, await res.text()).toBe(200)
          }
          // /v1/batch: a visitor's events in batches of 50, then /v1/track, /v1/page and /v1/identify one call each.
          const batch = sent.filter((e) => e.channel === 'batch')
          for (let k = 0; k < batch.length; k += 50)
            await post('/v1/batch', { batch: batch.slice(k, k + 50).map(payloadOf) })
          for (const e of sent.filter((x) => x.channel === 'track')) await post(`/v1/${e.type}`, payloadOf(e))
          // The Segment client: one client per visitor, all its calls in one request (flushAt), so
          // the skew correction shifts the visitor's events together.
          const byVisitor = new Map<string, Sent[]>()
          for (const e of sent.filter((x) => x.channel === 'segment'))
            byVisitor.set(e.visitor, [...(byVisitor.get(e.visitor) ?? []), e])
          for (const list of byVisitor.values()) {
            const requests: number[] = []
            const analytics = new Analytics({
              writeKey: site.writeKey,
              host: url,
              path: '/v1/batch',
              flushAt: list.length,
              flushInterval: 60_000,
              httpClient: {
                async makeRequest(req) {
                  const res = await fetch(req.url, {
                    method: req.method,
                    headers: req.headers,
                    body: req.body,
                  })
                  requests.push(res.status)
                  await res.arrayBuffer()
                  return res
                },
              },
            })
            const errors: unknown[] = []
            const cb = (err?: unknown) => {
              if (err) errors.push(err)
            }
            for (const e of list) {
              const p = payloadOf(e)
              const common = {
                anonymousId: e.visitor,
                messageId: e.messageId,
                timestamp: new Date(e.ts),
                // Segment's Campaign type asks for name and medium; Tally takes any of the fields.
                context: p.context as TrackParams['context'],
                properties: p.properties,
              }
              if (e.type === 'page') analytics.page(common, cb)
              else if (e.type === 'track') analytics.track({ ...common, event: e.name! }, cb)
              else
                analytics.identify(
                  { anonymousId: e.visitor, messageId: e.messageId, timestamp: new Date(e.ts) },
                  cb,
                )
            }
            await analytics.closeAndFlush({ timeout: 20_000 })
            expect(errors).toEqual([])
            expect(requests).toEqual([200])
          }
          await post('/v1/batch', { batch: duplicates.map(payloadOf) })
          // Plausible's event API: one event per visitor (user agents differ, so do the cookieless
          // ids), received now. Sent away from an hour's edge so all fall in one hour.
          while (Date.now() % HOUR > HOUR - 20_000) await new Promise((r) => setTimeout(r, 1000))
          const t0 = Date.now()
          for (let k = 0; k < 12; k++) {
            const path = PATHS[k % PATHS.length]!
            const utm = UTMS[k % UTMS.length]
            const plan = PLANS[k % PLANS.length]
            const custom = k % 4 === 3
            const res = await fetch(`${url}/api/event`, {
              method: 'POST',
              headers: {
                'content-type': 'text/plain',
                'user-agent': HUMAN_UA.replace('120.0.0.0', `120.0.${k}.0`),
              },
              body: JSON.stringify({
                n: custom ? 'Signup' : 'pageview',
                u: `https://${spec.domain}${path}${utm ? `?utm_source=${utm}` : ''}`,
                d: spec.domain,
                r: REFERRERS[k % REFERRERS.length] || null,
                ...(plan ? { p: { plan } } : {}),
              }),
            })
            expect(res.status, await res.text()).toBe(202)
            sent.push({
              site: spec.id,
              channel: 'plausible',
              type: custom ? 'track' : 'page',
              visitor: `plausible-${k}-${spec.id}`,
              ts: t0,
              messageId: `plausible-${k}-${spec.id}`,
              path,
              referrer: REFERRERS[k % REFERRERS.length]!,
              utm,
              name: custom ? 'Signup' : undefined,
              plan,
              bot: false,
            })
          }
          expect(Math.floor(Date.now() / HOUR)).toBe(Math.floor(t0 / HOUR))
          sentBySite.set(spec.id, [...sent, ...duplicates])
          refs.set(spec.id, new Reference([...sent, ...duplicates]))
        }
      } finally {
        await app.close()
        await writer.close()
      }
    }

    const queryApp = async () =>
      (query ??= await buildQueryApp({
        reader: store.reader,
        auth: new ReadAccessCache(store.sites),
        sites: store.sites,
        freshness: new CheckpointFreshness(store.reader, {
          group: group(),
          topic,
          partitions: 3,
          graceMs: GRACE_MS,
          cacheMs: 0,
        }),
        logger,
        hllPrecision: store.precision,
        metrics: createQueryMetrics(),
      }))

    async function get(siteId: string, path: string, params: Record<string, string | number>) {
      const app = await queryApp()
      const qs = new URLSearchParams({
        site: siteId,
        ...Object.fromEntries(Object.entries(params).map(([k, v]) => [k, String(v)])),
      })
      const res = await app.inject({
        method: 'GET',
        url: `${path}?${qs}`,
        headers: { authorization: `Bearer ${sites.get(siteId)!.token}` },
      })
      const json = res.headers['content-type']?.toString().startsWith('application/json')
      return { status: res.statusCode, body: (json ? res.json() : {}) as Record<string, any>, text: res.body }
    }

    async function ok(siteId: string, path: string, params: Record<string, string | number>) {
      const r = await get(siteId, path, params)
      expect(r.status, `${path} ${JSON.stringify(params)}: ${r.text}`).toBe(200)
      return r.body
    }

    /** The instants a local-date range covers, from the reference's own zone arithmetic. */
    const localRange = (zone: string | undefined, from: string, to: string): [number, number] => [
      localMidnight(from, zone),
      localMidnight(addDays(to, 1), zone),
    ]

    /**
     * The range the answer covers: the requested one, or (`meta.time_zone.day_edges` not exact) an
     * edge moved to the UTC hour where the windows it needs are not kept (docs/design.md, "The
     * non-whole-hour rule"): floored for stats, widened to whole windows for an export.
     */
    function answered(
      meta: Record<string, any>,
      want: [number, number],
      where: string,
      diffs: Diff[],
      moved: 'floor' | 'widen' = 'floor',
    ): [number, number] {
      const from = Date.parse(meta.from)
      const to = Date.parse(meta.to)
      // An export says a widened range by `requested` (it has no time_zone meta).
      const edges = meta.time_zone?.day_edges ?? (meta.requested ? 'widened' : 'exact')
      const floor = (t: number) => Math.floor(t / HOUR) * HOUR
      const ceil = (t: number) => Math.ceil(t / HOUR) * HOUR
      const fromOk = from === want[0] || (edges !== 'exact' && from === floor(want[0]))
      const toOk = to === want[1] || (edges !== 'exact' && to === (moved === 'floor' ? floor : ceil)(want[1]))
      if (!fromOk || !toOk)
        diffs.push({
          where: `${where} range (${edges})`,
          got: [meta.from, meta.to],
          want: want.map((x) => new Date(x).toISOString()),
        })
      return [from, to]
    }

    async function checkAll(mode: 'stream' | 'rebuild'): Promise<Diff[]> {
      const diffs: Diff[] = []
      for (const spec of specs) {
        const ref = refs.get(spec.id)!
        const s = spec.id
        const zone = spec.zone
        const today = localDate(NOW, zone)
        const yesterday = addDays(today, -1)
        const tag = (x: string) => `[${mode} ${zone ?? 'UTC'}] ${x}`

        // Aggregates: every metric together, over period=day, 7d, custom local dates and instants.
        const ranges: Array<[string, Record<string, string>, [number, number]]> = [
          ['period=day', { period: 'day' }, localRange(zone, today, today)],
          ['period=7d', { period: '7d' }, localRange(zone, addDays(today, -6), today)],
          [
            'custom 2 days',
            { from: addDays(today, -2), to: yesterday },
            localRange(zone, addDays(today, -2), yesterday),
          ],
          [
            'instants',
            {
              from: new Date(TODAY - DAY + 3 * HOUR).toISOString(),
              to: new Date(TODAY - 2 * HOUR - 7 * MIN).toISOString(),
            },
            [TODAY - DAY + 3 * HOUR, TODAY - 2 * HOUR - 7 * MIN],
          ],
          // Instants on the edge events: an hour's first millisecond is out of a range ending there,
          // a minute's first one in a range starting there; midnight UTC starts the day.
          ...(
            [
              [TODAY - DAY + 10 * HOUR, TODAY - DAY + 13 * HOUR + 17 * MIN],
              [TODAY - DAY, TODAY - DAY + 10 * HOUR],
              [TODAY - DAY - 10 * MIN, TODAY - DAY + 13 * HOUR + 17 * MIN],
            ] as const
          ).map(([a, b]): [string, Record<string, string>, [number, number]] => [
            `instants ${new Date(a).toISOString()}–${new Date(b).toISOString()}`,
            { from: new Date(a).toISOString(), to: new Date(b).toISOString() },
            [a, b],
          ]),
        ]
        for (const [name, params, want] of ranges) {
          const body = await ok(s, '/v1/stats/aggregate', { ...params, metrics: ALL_METRICS.join(',') })
          const [from, to] = answered(body.meta, want, tag(`aggregate ${name}`), diffs)
          compareMetrics(
            tag(`aggregate ${name}`),
            body.results,
            pick(metricsOf(ref.total(from, to)), ALL_METRICS),
            diffs,
          )
        }

        // compare=previous_period over yesterday: the day before.
        {
          const body = await ok(s, '/v1/stats/aggregate', {
            from: yesterday,
            to: yesterday,
            compare: 'previous_period',
            metrics: ALL_METRICS.join(','),
          })
          const cur = metricsOf(ref.total(...localRange(zone, yesterday, yesterday)))
          const prev = metricsOf(
            ref.total(...localRange(zone, addDays(yesterday, -1), addDays(yesterday, -1))),
          )
          for (const m of ALL_METRICS) {
            const r = body.results[m] as { value: number; comparison_value: number; change: number | null }
            compareMetrics(tag(`compare ${m}`), { [m]: r.value }, { [m]: cur[m]! }, diffs)
            compareMetrics(
              tag(`compare ${m} (previous)`),
              { [m]: r.comparison_value },
              { [m]: prev[m]! },
              diffs,
            )
            if (m !== 'visitors') {
              const change = prev[m] === 0 ? null : Math.round(((cur[m]! - prev[m]!) / prev[m]!) * 100)
              if (r.change !== change)
                diffs.push({ where: tag(`compare ${m} change`), got: r.change, want: change })
            }
          }
        }

        // One filter on a session property, every metric (its visits by the visit's first event).
        for (const [dim, value] of [
          ['referrer', 'news.ycombinator.com'],
          ['utm_source', '(none)'],
          ['prop:plan', 'pro'],
          ['referrer', '(direct)'],
        ] as const) {
          const body = await ok(s, '/v1/stats/aggregate', {
            from: addDays(today, -2),
            to: today,
            filters: `${dim}==${value}`,
            metrics: ALL_METRICS.join(','),
          })
          const refDim = dim === 'prop:plan' ? 'plan' : dim
          const [from, to] = answered(
            body.meta,
            localRange(zone, addDays(today, -2), today),
            tag(`filter ${dim}`),
            diffs,
          )
          compareMetrics(
            tag(`aggregate ${dim}==${value}`),
            body.results,
            pick(metricsOf(ref.total(from, to, { dim: refDim, value })), ALL_METRICS),
            diffs,
          )
        }

        // Filters of several values (`a|b`): visitors merged across the values, never summed; bots
        // apart in bot_events.
        for (const [dim, values] of [
          ['referrer', ['news.ycombinator.com', '(direct)']],
          ['prop:plan', ['free', 'pro', '(none)']],
          ['path', ['/blog/a', '/pricing']],
        ] as const) {
          const metrics = dim === 'path' ? EVENT_METRICS : ALL_METRICS
          const body = await ok(s, '/v1/stats/aggregate', {
            from: addDays(today, -2),
            to: today,
            filters: `${dim}==${values.join('|')}`,
            metrics: metrics.join(','),
          })
          const refDim = dim === 'prop:plan' ? 'plan' : dim
          const [from, to] = answered(
            body.meta,
            localRange(zone, addDays(today, -2), today),
            tag(`filter ${dim}`),
            diffs,
          )
          compareMetrics(
            tag(`aggregate ${dim}==${values.join('|')}`),
            body.results,
            pick(metricsOf(ref.total(from, to, { dim: refDim, value: values })), metrics),
            diffs,
          )
        }
        {
          const body = await ok(s, '/v1/stats/aggregate', { period: '7d', metrics: 'events,bot_events' })
          const [from, to] = answered(
            body.meta,
            localRange(zone, addDays(today, -6), today),
            tag('bots'),
            diffs,
          )
          compareMetrics(
            tag('aggregate bot_events'),
            body.results,
            { events: ref.total(from, to).events, bot_events: ref.botEvents(from, to) },
            diffs,
          )
        }

        // A daily timeseries compared with the previous period: points paired by position.
        {
          const body = await ok(s, '/v1/stats/timeseries', {
            from: addDays(today, -1),
            to: today,
            interval: 'day',
            compare: 'previous_period',
            metrics: 'visitors,pageviews,visits,views_per_visit',
          })
          const points = body.results as Array<Record<string, any>>
          if (points.length !== 2) diffs.push({ where: tag('compared points'), got: points.length, want: 2 })
          for (const [k, p] of points.entries()) {
            const date = addDays(today, k - 1)
            const cur = metricsOf(ref.total(...localRange(zone, date, date)))
            const prev = metricsOf(ref.total(...localRange(zone, addDays(date, -2), addDays(date, -2))))
            const names = ['visitors', 'pageviews', 'visits', 'views_per_visit']
            compareMetrics(tag(`compared point ${date}`), p, pick(cur, names), diffs)
            compareMetrics(
              tag(`compared point ${date} (previous)`),
              p.comparison ?? {},
              pick(prev, names),
              diffs,
            )
            for (const m of names.filter((x) => x !== 'visitors')) {
              const change = prev[m] === 0 ? null : Math.round(((cur[m]! - prev[m]!) / prev[m]!) * 100)
              if (p.change?.[m] !== change)
                diffs.push({
                  where: tag(`compared point ${date} change ${m}`),
                  got: p.change?.[m],
                  want: change,
                })
            }
          }
        }

        // Timeseries: hourly over yesterday (local), daily over 7d.
        {
          const body = await ok(s, '/v1/stats/timeseries', {
            from: yesterday,
            to: yesterday,
            interval: 'hour',
            metrics: 'visitors,pageviews,events,visits,bounce_rate',
          })
          const points = body.results as Array<Record<string, any>>
          const [from, to] = localRange(zone, yesterday, yesterday)
          const wantPoints = Math.round((to - from) / HOUR) + (zone === 'Asia/Kolkata' ? 1 : 0)
          if (points.length !== wantPoints)
            diffs.push({ where: tag('hourly points'), got: points.length, want: wantPoints })
          for (const p of points) {
            const t = Date.parse(p.date)
            // A point is its whole UTC hour window, also at the edges of a +5:30 day (documented:
            // the UTC hours around the local day, where Plausible buckets by local hour).
            const a = t
            const b = t + HOUR
            compareMetrics(
              tag(`hourly ${p.date}`),
              p,
              pick(metricsOf(ref.total(a, b)), ['visitors', 'pageviews', 'events', 'visits', 'bounce_rate']),
              diffs,
            )
          }
        }
        {
          const body = await ok(s, '/v1/stats/timeseries', {
            period: '7d',
            interval: 'day',
            metrics: ALL_METRICS.join(','),
          })
          const points = body.results as Array<Record<string, any>>
          if (points.length !== 7) diffs.push({ where: tag('daily points'), got: points.length, want: 7 })
          for (const [k, p] of points.entries()) {
            const date = addDays(today, k - 6)
            compareMetrics(
              tag(`daily ${date}`),
              p,
              pick(metricsOf(ref.total(...localRange(zone, date, date))), ALL_METRICS),
              diffs,
            )
          }
        }

        // Breakdowns: every property, pages of 3 rows, order by the first metric then by value.
        const bdims: Array<[string, Dim, string[]]> = [
          ['path', 'path', ['pageviews', 'events', 'visitors']],
          ['event', 'event', ['events', 'pageviews', 'visitors']],
          ['referrer', 'referrer', ['visits', ...ALL_METRICS.filter((m) => m !== 'visits')]],
          ['utm_source', 'utm_source', ['events', ...ALL_METRICS.filter((m) => m !== 'events')]],
          ['source', 'source', ['visits', ...ALL_METRICS.filter((m) => m !== 'visits')]],
          ['prop:plan', 'plan', ['pageviews', ...ALL_METRICS.filter((m) => m !== 'pageviews')]],
          ['entry_page', 'entry_page', ['visits', 'bounce_rate', 'visit_duration', 'views_per_visit']],
          ['exit_page', 'exit_page', ['visits', 'bounce_rate', 'visit_duration']],
        ]
        for (const [property, dim, metrics] of bdims) {
          const rows: Array<Record<string, any>> = []
          let meta: Record<string, any> = {}
          for (let page = 1; page <= 10; page++) {
            const body = await ok(s, '/v1/stats/breakdown', {
              from: addDays(today, -2),
              to: yesterday,
              property,
              metrics: metrics.join(','),
              limit: 3,
              page,
            })
            meta = body.meta
            rows.push(...(body.results as Array<Record<string, any>>))
            if ((body.results as unknown[]).length < 3) break
          }
          const [from, to] = answered(
            meta,
            localRange(zone, addDays(today, -2), yesterday),
            tag(`breakdown ${property}`),
            diffs,
          )
          const want = [...ref.breakdown(from, to, dim)].map(([value, c]) => ({ value, m: metricsOf(c) }))
          const first = metrics[0]!
          want.sort(
            (a, b) => b.m[first]! - a.m[first]! || (a.value < b.value ? -1 : a.value > b.value ? 1 : 0),
          )
          const got = rows.map((r) => r[property] ?? r.value)
          const order = want.map((w) => w.value)
          if (JSON.stringify(got) !== JSON.stringify(order))
            diffs.push({ where: tag(`breakdown ${property} order`), got, want: order })
          for (const w of want) {
            const r = rows.find((x) => (x[property] ?? x.value) === w.value)
            if (r) compareMetrics(tag(`breakdown ${property}=${w.value}`), r, pick(w.m, metrics), diffs)
          }
        }

        // Goals: the aggregate and its rate, the breakdown by goal, conversions by referrer and path.
        const [gFrom, gTo] = localRange(zone, addDays(today, -2), today)
        for (const g of GOALS) {
          const body = await ok(s, '/v1/stats/aggregate', {
            from: addDays(today, -2),
            to: today,
            filters: `goal==${g.name}`,
            metrics: 'conversions,conversion_rate,events',
          })
          const [from, to] = answered(body.meta, [gFrom, gTo], tag(`goal ${g.name}`), diffs)
          const conv = ref.goal(g.name, from, to).get('') ?? { converters: new Set(), completions: 0 }
          const visitors = ref.total(from, to).visitors.size
          compareMetrics(
            tag(`goal ${g.name}`),
            body.results,
            {
              conversions: conv.converters.size,
              events: conv.completions,
            },
            diffs,
          )
          checkRate(
            tag(`goal ${g.name}`),
            body.results.conversion_rate,
            conv.converters.size,
            visitors,
            diffs,
          )
          for (const by of ['referrer', 'path'] as const) {
            const b = await ok(s, '/v1/stats/breakdown', {
              from: addDays(today, -2),
              to: today,
              property: by,
              filters: `goal==${g.name}`,
              metrics: 'conversions,events,conversion_rate',
              limit: 100,
            })
            const [f2, t2] = answered(b.meta, [gFrom, gTo], tag(`goal ${g.name} by ${by}`), diffs)
            const want = ref.goal(g.name, f2, t2, by)
            const own = ref.breakdown(f2, t2, by)
            const got = b.results as Array<Record<string, any>>
            if (got.length !== want.size)
              diffs.push({
                where: tag(`goal ${g.name} by ${by} rows`),
                got: got.map((r) => r[by]),
                want: [...want.keys()],
              })
            for (const [value, w] of want) {
              const r = got.find((x) => x[by] === value)
              const base = own.get(value)?.visitors.size ?? 0
              if (!r) continue
              compareMetrics(
                tag(`goal ${g.name} by ${by}=${value}`),
                r,
                {
                  conversions: w.converters.size,
                  events: w.completions,
                },
                diffs,
              )
              checkRate(
                tag(`goal ${g.name} by ${by}=${value}`),
                r.conversion_rate,
                w.converters.size,
                base,
                diffs,
              )
            }
          }
        }

        // A goal with a filter on another property (the conversions of that value, the rate over
        // that value's own visitors), and a goal's daily timeseries.
        for (const g of GOALS) {
          const body = await ok(s, '/v1/stats/aggregate', {
            from: addDays(today, -2),
            to: today,
            filters: `goal==${g.name};referrer==(direct)`,
            metrics: 'conversions,events,conversion_rate',
          })
          const [from, to] = answered(body.meta, [gFrom, gTo], tag(`goal ${g.name} and referrer`), diffs)
          const w = ref.goal(g.name, from, to, 'referrer').get('(direct)') ?? {
            converters: new Set(),
            completions: 0,
          }
          const base = ref.breakdown(from, to, 'referrer').get('(direct)')?.visitors.size ?? 0
          compareMetrics(
            tag(`goal ${g.name};referrer==(direct)`),
            body.results,
            { conversions: w.converters.size, events: w.completions },
            diffs,
          )
          checkRate(
            tag(`goal ${g.name};referrer==(direct)`),
            body.results.conversion_rate,
            w.converters.size,
            base,
            diffs,
          )
          const series = await ok(s, '/v1/stats/timeseries', {
            period: '7d',
            interval: 'day',
            filters: `goal==${g.name}`,
            metrics: 'conversions,events,conversion_rate',
          })
          for (const [k, p] of (series.results as Array<Record<string, any>>).entries()) {
            const date = addDays(today, k - 6)
            // Goal rows have no minute windows: a +5:30 day's edges are floored to the hour (meta says so).
            const floored = series.meta.time_zone?.day_edges === 'rounded_to_hour'
            const edge = (t: number) => (floored ? Math.floor(t / HOUR) * HOUR : t)
            const [a, b] = localRange(zone, date, date).map(edge) as [number, number]
            const c = ref.goal(g.name, a, b).get('') ?? { converters: new Set(), completions: 0 }
            compareMetrics(
              tag(`goal ${g.name} daily ${date}`),
              p,
              { conversions: c.converters.size, events: c.completions },
              diffs,
            )
            checkRate(
              tag(`goal ${g.name} daily ${date}`),
              p.conversion_rate,
              c.converters.size,
              ref.total(a, b).visitors.size,
              diffs,
            )
          }
        }

        // Plausible's aggregate compared with the previous period, and its daily timeseries.
        {
          const body = await ok(s, '/api/v1/stats/aggregate', {
            site_id: s,
            period: 'day',
            date: yesterday,
            compare: 'previous_period',
            metrics: 'visitors,pageviews,visits,bounce_rate,visit_duration',
          })
          const cur = metricsOf(ref.total(...localRange(zone, yesterday, yesterday)))
          const prev = metricsOf(
            ref.total(...localRange(zone, addDays(yesterday, -1), addDays(yesterday, -1))),
          )
          for (const m of ['visitors', 'pageviews', 'visits', 'bounce_rate', 'visit_duration']) {
            const r = body.results[m] as { value: number; change: number | null }
            compareMetrics(tag(`plausible compare ${m}`), { [m]: r.value }, { [m]: cur[m]! }, diffs)
            if (m !== 'visitors') {
              // Plausible: the change of a rate (bounce_rate) is the difference in points, of the others the percent change.
              const change =
                m === 'bounce_rate'
                  ? cur[m]! - prev[m]!
                  : prev[m] === 0
                    ? null
                    : Math.round(((cur[m]! - prev[m]!) / prev[m]!) * 100)
              if (r.change !== change)
                diffs.push({ where: tag(`plausible compare ${m} change`), got: r.change, want: change })
            }
          }
          const ts = await ok(s, '/api/v1/stats/timeseries', {
            site_id: s,
            period: '7d',
            metrics: 'visitors,pageviews,visits,views_per_visit',
          })
          const points = ts.results as Array<Record<string, any>>
          if (points.length !== 7)
            diffs.push({ where: tag('plausible 7d points'), got: points.length, want: 7 })
          // Plausible's Stats API v1: 7d is the 7 days ending with `date` (today), today included.
          for (const p of points) {
            const want = metricsOf(ref.total(...localRange(zone, p.date, p.date)))
            compareMetrics(
              tag(`plausible daily ${p.date}`),
              p,
              pick(want, ['visitors', 'pageviews', 'visits', 'views_per_visit']),
              diffs,
            )
          }
          const dates = points.map((p) => p.date)
          const wantDates = Array.from({ length: 7 }, (_, k) => addDays(today, k - 6))
          if (JSON.stringify(dates) !== JSON.stringify(wantDates))
            diffs.push({ where: tag('plausible 7d dates'), got: dates, want: wantDates })
        }

        // year_over_year: nothing a year before, so every comparison is 0 and every change null.
        {
          const body = await ok(s, '/v1/stats/aggregate', {
            from: yesterday,
            to: yesterday,
            compare: 'year_over_year',
            metrics: 'pageviews,events,visits',
          })
          const cur = metricsOf(ref.total(...localRange(zone, yesterday, yesterday)))
          for (const m of ['pageviews', 'events', 'visits']) {
            const r = body.results[m] as { value: number; comparison_value: number; change: number | null }
            if (r.value !== cur[m] || r.comparison_value !== 0 || r.change !== null)
              diffs.push({
                where: tag(`year_over_year ${m}`),
                got: r,
                want: { value: cur[m], comparison_value: 0, change: null },
              })
          }
        }

        // Plausible's goal breakdown: per goal its converters (visitors) and completions (events).
        {
          const body = await ok(s, '/api/v1/stats/breakdown', {
            site_id: s,
            period: 'custom',
            date: `${addDays(today, -2)},${today}`,
            property: 'event:goal',
            metrics: 'visitors,events',
          })
          // Goal rows have no minute windows: a +5:30 day's edges are floored to the hour.
          const floored = zone === 'Asia/Kolkata'
          const [a, b] = localRange(zone, addDays(today, -2), today).map((t) =>
            floored ? Math.floor(t / HOUR) * HOUR : t,
          ) as [number, number]
          const got = body.results as Array<Record<string, any>>
          for (const g of GOALS) {
            const w = ref.goal(g.name, a, b).get('') ?? { converters: new Set(), completions: 0 }
            const r = got.find((x) => x.goal === g.name)
            if (!r) diffs.push({ where: tag(`plausible goal ${g.name}`), got: 'no row', want: w.completions })
            else
              compareMetrics(
                tag(`plausible goal ${g.name}`),
                r,
                { visitors: w.converters.size, events: w.completions },
                diffs,
              )
          }
        }

        // A filter on one property with a breakdown on another: refused with its code, not answered wrong.
        {
          const r = await get(s, '/v1/stats/breakdown', {
            period: '7d',
            property: 'referrer',
            filters: 'path==/pricing',
          })
          if (r.status !== 400 || r.body.code !== 'TALLY_ERR_FILTER_UNSUPPORTED')
            diffs.push({
              where: tag('filter on another property'),
              got: [r.status, r.body.code],
              want: [400, 'TALLY_ERR_FILTER_UNSUPPORTED'],
            })
        }

        // Plausible's Stats API v1: the same numbers under its names.
        {
          const body = await ok(s, '/api/v1/stats/aggregate', {
            site_id: s,
            period: 'custom',
            date: `${addDays(today, -2)},${yesterday}`,
            metrics: 'visitors,visits,pageviews,events,bounce_rate,visit_duration,views_per_visit',
          })
          const want = metricsOf(ref.total(...localRange(zone, addDays(today, -2), yesterday)))
          const flat = Object.fromEntries(
            Object.entries(body.results).map(([k, v]) => [k, (v as { value: number }).value]),
          )
          compareMetrics(tag('plausible aggregate'), flat, pick(want, ALL_METRICS), diffs)
          const bd = await ok(s, '/api/v1/stats/breakdown', {
            site_id: s,
            period: 'custom',
            date: `${addDays(today, -2)},${yesterday}`,
            property: 'event:props:plan',
            metrics: 'visitors,pageviews,events',
            limit: 100,
          })
          // No meta here: a +5:30 day's edges are floored to the hour (breakdowns have no minute
          // rows), as docs/design.md says of Plausible's Stats API.
          const [pf, pt] = localRange(zone, addDays(today, -2), yesterday)
          const floored = zone === 'Asia/Kolkata'
          const own = ref.breakdown(
            floored ? Math.floor(pf / HOUR) * HOUR : pf,
            floored ? Math.floor(pt / HOUR) * HOUR : pt,
            'plan',
          )
          const got = bd.results as Array<Record<string, any>>
          if (got.length !== own.size)
            diffs.push({
              where: tag('plausible props rows'),
              got: got.map((r) => r.plan),
              want: [...own.keys()],
            })
          for (const r of got) {
            const c = own.get(r.plan)
            compareMetrics(
              tag(`plausible plan=${r.plan}`),
              r,
              c ? pick(metricsOf(c), EVENT_METRICS) : { events: -1 },
              diffs,
            )
          }
        }

        // The aggregates export: one NDJSON row per hour window of the local day (totals, visits),
        // each equal to the reference's counts of that hour.
        {
          const res = await get(s, '/v1/export/aggregates', {
            from: yesterday,
            to: yesterday,
            interval: 'hour',
            visits: 'true',
          })
          if (res.status !== 200) diffs.push({ where: tag('export status'), got: res.status, want: 200 })
          else {
            const lines = res.text
              .trim()
              .split('\n')
              .map((l) => JSON.parse(l) as Record<string, any>)
            const meta = lines[0]!
            const rows = lines.filter((l) => l.type === 'row')
            const [from, to] = answered(
              meta,
              localRange(zone, yesterday, yesterday),
              tag('export'),
              diffs,
              'widen',
            )
            const end = lines[lines.length - 1]!
            if (end.type !== 'end' || end.rows !== rows.length)
              diffs.push({
                where: tag('export end line'),
                got: end,
                want: { type: 'end', rows: rows.length },
              })
            for (let t = from; t < to; t += HOUR) {
              const want = pick(metricsOf(ref.total(t, t + HOUR)), [
                'events',
                'pageviews',
                'visitors',
                'visits',
              ])
              const row = rows.find((r) => Date.parse(r.window_start) === t)
              const empty = want.events === 0 && want.visits === 0
              if (!row) {
                if (!empty)
                  diffs.push({ where: tag(`export ${new Date(t).toISOString()}`), got: 'no row', want })
              } else compareMetrics(tag(`export ${row.window_start}`), row, want, diffs)
            }
          }
        }
      }
      return diffs
    }

    it('the stream answers every read as the reference computes it', async () => {
      const diffs = await checkAll('stream')
      expect(diffs).toEqual([])
    }, 240_000)

    it('after a rebuild of the days, every read is the same', async () => {
      await archiveWholeLog(log, store, {
        topic,
        archiveDir: join(data.dir, 'archive'),
        owner: 'diff-test',
        logger,
      })
      for (const spec of specs) {
        const result = await rebuildFromArchive(
          store,
          {
            topic,
            dataDir: data.dir,
            owner: 'diff-test',
            logger,
            visitGapMs: config.stream.visitGapMs,
            propKeys: true,
          },
          { fromMs: START - DAY, toMs: TODAY + DAY, siteId: spec.id },
        )
        expect(result.status).toBe('succeeded')
      }
      const diffs = await checkAll('rebuild')
      expect(diffs).toEqual([])
    }, 240_000)
  },
)
