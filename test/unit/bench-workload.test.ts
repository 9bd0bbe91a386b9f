import { mkdtemp, rm } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isbot } from 'isbot'
import { describe, expect, it } from 'vitest'
import {
  type Counts,
  countryLabel,
  DIMENSIONS,
  type GeneratedEvent,
  GRANULARITIES,
  generateWorkload,
  Rng,
  readWorkload,
  referrerLabel,
  sourceLabels,
  type Truth,
  truthCounts,
  truthOf,
  USER_AGENTS,
  type WorkloadOptions,
  windowKey,
  writeWorkload,
} from '../../bench/workload.js'

// ua-parser-js@1 ships no type declarations: load it through require and type the part we use.
interface UaResult {
  browser: { name?: string }
  os: { name?: string }
  device: { type?: string }
}
const UAParser = createRequire(import.meta.url)('ua-parser-js') as new (
  ua: string,
) => { getResult(): UaResult }

function parseUa(ua: string): { browser: string | undefined; os: string | undefined; device: string } {
  const r = new UAParser(ua).getResult()
  return { browser: r.browser.name, os: r.os.name, device: r.device.type ?? 'desktop' }
}

const base: WorkloadOptions = {
  seed: 42,
  sites: ['site-a', 'site-b', 'site-c'],
  events: 20_000,
  start: new Date('2024-05-01T22:30:00.000Z'),
  spanMs: 4 * 3_600_000,
}

describe('Rng', () => {
  it('is deterministic and roughly uniform', () => {
    const a = new Rng(7)
    const b = new Rng(7)
    const xs = Array.from({ length: 10_000 }, () => a.next())
    expect(Array.from({ length: 10_000 }, () => b.next())).toEqual(xs)
    expect(new Rng(8).next()).not.toBe(xs[0])
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length
    expect(mean).toBeGreaterThan(0.48)
    expect(mean).toBeLessThan(0.52)
    expect(xs.every((x) => x >= 0 && x < 1)).toBe(true)
    expect(a.uuid()).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
  })
})

describe('USER_AGENTS table', () => {
  it('agrees with ua-parser-js and isbot', () => {
    expect(USER_AGENTS.length).toBeGreaterThanOrEqual(13)
    for (const e of USER_AGENTS) {
      expect({ ua: e.ua, ...parseUa(e.ua), isBot: isbot(e.ua) }).toEqual({
        ua: e.ua,
        browser: e.browser,
        os: e.os,
        device: e.device,
        isBot: e.isBot,
      })
    }
    const humans = USER_AGENTS.filter((e) => !e.isBot)
    expect(new Set(humans.map((e) => e.device))).toEqual(new Set(['desktop', 'mobile', 'tablet']))
    expect(USER_AGENTS.filter((e) => e.isBot).length).toBeGreaterThanOrEqual(3)
  })
})

describe('generateWorkload', () => {
  const w = generateWorkload(base)

  it('is deterministic for a seed and differs across seeds', () => {
    const again = generateWorkload({ ...base, start: new Date(base.start) })
    expect(JSON.stringify(again.events)).toBe(JSON.stringify(w.events))
    expect(JSON.stringify(again.truth)).toBe(JSON.stringify(w.truth))
    const other = generateWorkload({ ...base, seed: 43 })
    expect(other.events[0]!.payload.messageId).not.toBe(w.events[0]!.payload.messageId)
    expect(JSON.stringify(other.truth)).not.toBe(JSON.stringify(w.truth))
  })

  it('produces the requested number of logical events, in send order, within the span', () => {
    const logical = w.events.filter((e) => !e.isDuplicate)
    expect(logical).toHaveLength(base.events)
    expect(new Set(logical.map((e) => e.payload.messageId)).size).toBe(base.events)
    const start = base.start.getTime()
    const problems: string[] = []
    for (let i = 0; i < w.events.length; i++) {
      const e = w.events[i]!
      const ts = Date.parse(e.payload.timestamp)
      const where = `#${i} ${e.payload.messageId}`
      if (new Date(ts).toISOString() !== e.payload.timestamp) problems.push(`${where}: timestamp format`)
      if (new Date(e.sendAt).toISOString() !== e.payload.sentAt && !e.isDuplicate)
        problems.push(`${where}: sentAt`)
      if (ts < start || ts >= start + base.spanMs) problems.push(`${where}: timestamp outside the span`)
      if (Date.parse(e.payload.sentAt) < ts) problems.push(`${where}: sentAt before timestamp`)
      if (e.sendAt < Date.parse(e.payload.sentAt)) problems.push(`${where}: sendAt before sentAt`)
      if (i > 0 && e.sendAt < w.events[i - 1]!.sendAt) problems.push(`${where}: not in send order`)
      if (e.userAgent !== e.payload.context.userAgent) problems.push(`${where}: userAgent`)
      if (e.isBot !== isbot(e.userAgent) || e.ua.isBot !== e.isBot) problems.push(`${where}: isBot`)
    }
    expect(problems).toEqual([])
  })

  it('respects the requested shares', () => {
    const opts = {
      ...base,
      botShare: 0.1,
      duplicateShare: 0.05,
      outOfOrderShare: 0.08,
      lateShare: 0.02,
      lateByMs: 15 * 60_000,
    }
    const x = generateWorkload(opts)
    const logical = x.events.filter((e) => !e.isDuplicate)
    const share = (f: (e: GeneratedEvent) => boolean): number => logical.filter(f).length / logical.length
    expect(share((e) => e.isBot)).toBeGreaterThan(0.07)
    expect(share((e) => e.isBot)).toBeLessThan(0.13)
    expect(x.events.filter((e) => e.isDuplicate).length / logical.length).toBeCloseTo(0.05, 1)
    expect(share((e) => e.isOutOfOrder)).toBeCloseTo(0.08, 1)
    expect(share((e) => e.isLate)).toBeCloseTo(0.02, 1)
    expect(share((e) => e.isLate)).toBeGreaterThan(0.01)

    for (const e of logical) {
      const delay = e.sendAt - Date.parse(e.payload.timestamp)
      if (e.isLate) expect(delay).toBeGreaterThanOrEqual(opts.lateByMs)
      else expect(delay).toBeLessThan(opts.lateByMs / 2)
      if (!e.isLate && !e.isOutOfOrder) expect(delay).toBeLessThan(1_000)
    }
    // Send order really differs from timestamp order.
    let inversions = 0
    let maxTs = 0
    for (const e of x.events) {
      const ts = Date.parse(e.payload.timestamp)
      if (ts < maxTs) inversions++
      maxTs = Math.max(maxTs, ts)
    }
    expect(inversions).toBeGreaterThan(logical.length * 0.05)

    // Without out-of-order / late sends, each visitor's events are sent in timestamp order.
    const tidy = generateWorkload({
      ...base,
      events: 5_000,
      outOfOrderShare: 0,
      lateShare: 0,
      duplicateShare: 0,
    })
    const last = new Map<string, number>()
    for (const e of tidy.events) {
      const ts = Date.parse(e.payload.timestamp)
      expect(ts).toBeGreaterThanOrEqual(last.get(e.payload.anonymousId) ?? 0)
      last.set(e.payload.anonymousId, ts)
    }
    expect(tidy.events.some((e) => e.isLate || e.isOutOfOrder || e.isDuplicate)).toBe(false)
  })

  it('has realistic shapes: call mix, sessions, Zipf paths, campaigns, identifies', () => {
    const logical = w.events.filter((e) => !e.isDuplicate)
    const byType = new Map<string, number>()
    for (const e of logical) byType.set(e.payload.type, (byType.get(e.payload.type) ?? 0) + 1)
    const n = logical.length
    expect(byType.get('page')! / n).toBeGreaterThan(0.6)
    expect(byType.get('track')! / n).toBeGreaterThan(0.1)
    expect(byType.get('identify')! / n).toBeGreaterThan(0.01)
    expect(byType.get('screen')).toBeUndefined()

    // Human page paths follow a Zipf-like law per site: the top path dominates, the tail is long.
    const pathCounts = new Map<string, number>()
    for (const e of logical) {
      if (e.siteId !== 'site-a' || e.isBot || e.payload.type !== 'page') continue
      const path = e.payload.properties.path
      pathCounts.set(path, (pathCounts.get(path) ?? 0) + 1)
    }
    const sorted = [...pathCounts.values()].sort((a, b) => b - a)
    expect([...pathCounts.entries()].find(([, c]) => c === sorted[0])![0]).toBe('/')
    expect(sorted[0]! / sorted[1]!).toBeGreaterThan(1.5)
    expect(sorted[0]! / sorted[1]!).toBeLessThan(3.5)
    expect(sorted[0]! / sorted[9]!).toBeGreaterThan(7)
    expect(pathCounts.size).toBeGreaterThan(100)

    // Visitors come back / have sessions of several events close in time.
    const perVisitor = new Map<string, number>()
    for (const e of logical)
      if (!e.isBot) perVisitor.set(e.payload.anonymousId, (perVisitor.get(e.payload.anonymousId) ?? 0) + 1)
    expect(n / perVisitor.size).toBeGreaterThan(4)

    // Campaigns only on landing pages carrying utm parameters; userId only after identify.
    const withCampaign = logical.filter((e) => e.payload.context.campaign !== undefined)
    expect(withCampaign.length / n).toBeGreaterThan(0.02)
    for (const e of withCampaign) {
      expect(e.payload.context.page!.url).toContain(`utm_source=${e.payload.context.campaign!.source}`)
    }
    const identified = new Map<string, number>()
    for (const e of [...logical].sort((a, b) => a.payload.timestamp.localeCompare(b.payload.timestamp))) {
      if (e.payload.type === 'identify') {
        expect(e.payload.traits.email).toMatch(/@example\.com$/)
        identified.set(e.payload.anonymousId, Date.parse(e.payload.timestamp))
      } else if (e.payload.userId !== undefined) {
        expect(identified.has(e.payload.anonymousId)).toBe(true)
      }
    }
    for (const e of logical) {
      if (e.payload.type === 'track') expect(typeof e.payload.event).toBe('string')
      expect(e.payload.context.library.name).toBe('analytics.js')
    }
  })

  it('re-sends duplicates with the same messageId and payload, later', () => {
    const byId = new Map<string, GeneratedEvent[]>()
    for (const e of w.events) byId.set(e.payload.messageId, [...(byId.get(e.payload.messageId) ?? []), e])
    const dups = w.events.filter((e) => e.isDuplicate)
    expect(dups.length).toBeGreaterThan(0)
    for (const d of dups) {
      const copies = byId.get(d.payload.messageId)!
      expect(copies).toHaveLength(2)
      const original = copies.find((c) => !c.isDuplicate)!
      expect(d.payload).toEqual(original.payload)
      expect(d.payload).not.toBe(original.payload)
      expect(d.siteId).toBe(original.siteId)
      expect(d.sendAt).toBeGreaterThan(original.sendAt)
    }
  })

  it('supports screen calls when asked', () => {
    const x = generateWorkload({ ...base, events: 3_000, screenShare: 0.2 })
    const screens = x.events.filter((e) => e.payload.type === 'screen')
    expect(screens.length).toBeGreaterThan(100)
    for (const s of screens) expect(s.payload.context.page).toBeUndefined()
    expect(x.truth).toEqual(naiveTruth(x.events, base.sites))
  })
})

/**
 * Independent recount from the payloads alone: dedupe with a Set of messageIds, labels straight from
 * ua-parser-js / isbot, windows by slicing the ISO timestamp, hosts with a regex.
 */
function naiveTruth(events: readonly GeneratedEvent[], sites: readonly string[]): Truth {
  interface Cell {
    events: number
    pageviews: number
    ids: Set<string>
  }
  // scope key ("site|all" or "site|granularity|windowStart") → cell key ("" or "dimension=value") → cell
  const scopes = new Map<string, Map<string, Cell>>()
  const bots = new Map<string, number>()
  const bump = (scope: string, key: string, anon: string, isPage: boolean): void => {
    let cells = scopes.get(scope)
    if (!cells) {
      cells = new Map()
      scopes.set(scope, cells)
    }
    let c = cells.get(key)
    if (!c) {
      c = { events: 0, pageviews: 0, ids: new Set() }
      cells.set(key, c)
    }
    c.events += 1
    c.pageviews += isPage ? 1 : 0
    c.ids.add(anon)
  }
  const uaCache = new Map<string, ReturnType<typeof parseUa>>()
  const seen = new Set<string>()
  for (const e of events) {
    const p = e.payload
    if (seen.has(p.messageId)) continue
    seen.add(p.messageId)
    if (p.type === 'identify') continue
    const scopeKeys = [
      `${e.siteId}|all`,
      `${e.siteId}|minute|${p.timestamp.slice(0, 16)}:00.000Z`,
      `${e.siteId}|hour|${p.timestamp.slice(0, 13)}:00:00.000Z`,
      `${e.siteId}|day|${p.timestamp.slice(0, 10)}T00:00:00.000Z`,
    ]
    if (isbot(p.context.userAgent)) {
      for (const k of scopeKeys) {
        bots.set(k, (bots.get(k) ?? 0) + 1)
        if (!scopes.has(k)) scopes.set(k, new Map())
      }
      continue
    }
    let ua = uaCache.get(p.context.userAgent)
    if (!ua) {
      ua = parseUa(p.context.userAgent)
      uaCache.set(p.context.userAgent, ua)
    }
    const ref = p.context.page?.referrer
    const host = ref ? /^[a-z]+:\/\/(?:www\.)?([^/:?#]+)/i.exec(ref)![1]!.toLowerCase() : '(direct)'
    const dims: Record<string, string> = {
      event: p.type === 'track' ? p.event : p.type === 'page' ? 'pageview' : 'screen',
      path: p.context.page?.path ?? '(none)',
      referrer: host.startsWith('www.') ? host.slice(4) : host,
      utm_source: p.context.campaign?.source ?? '(none)',
      browser: ua.browser ?? '(unknown)',
      os: ua.os ?? '(unknown)',
      device: ua.device,
      // The generator's own tables (checked against the IP database and the classifier below).
      country: countryLabel(p.context.ip),
      ...sourceLabels(p.context.page, p.context.campaign),
      utm_medium: p.context.campaign?.medium ?? '(none)',
      utm_campaign: p.context.campaign?.name ?? '(none)',
      utm_content: p.context.campaign?.content ?? '(none)',
      utm_term: p.context.campaign?.term ?? '(none)',
    }
    for (const scope of scopeKeys) {
      bump(scope, '', p.anonymousId, p.type === 'page')
      for (const [d, v] of Object.entries(dims)) bump(scope, `${d}=${v}`, p.anonymousId, p.type === 'page')
    }
  }

  // Rebuild the Truth shape from the cells.
  const toCounts = (c: Cell | undefined): Counts => ({
    events: c?.events ?? 0,
    pageviews: c?.pageviews ?? 0,
    visitors: c?.ids.size ?? 0,
  })
  const scopeTruth = (scope: string) => {
    const cells = scopes.get(scope) ?? new Map<string, Cell>()
    const breakdown: Record<string, Record<string, Counts>> = {}
    for (const d of DIMENSIONS) breakdown[d] = {}
    for (const [key, c] of cells) {
      if (key === '') continue
      const eq = key.indexOf('=')
      breakdown[key.slice(0, eq)]![key.slice(eq + 1)] = toCounts(c)
    }
    return { ...toCounts(cells.get('')), bots: bots.get(scope) ?? 0, breakdown }
  }
  const truth: Truth = { sites: {} }
  for (const site of new Set([...sites, ...events.map((e) => e.siteId)])) {
    const windows: Record<string, Record<string, unknown>> = { minute: {}, hour: {}, day: {} }
    for (const scope of scopes.keys()) {
      const [s, g, win] = scope.split('|') as [string, string, string | undefined]
      if (s === site && win !== undefined) windows[g]![win] = scopeTruth(scope)
    }
    truth.sites[site] = { ...scopeTruth(`${site}|all`), windows } as Truth['sites'][string]
  }
  return truth
}

describe('truth', () => {
  const w = generateWorkload({ ...base, events: 6_000, lateShare: 0.03, duplicateShare: 0.05 })

  it('matches an independent recount from the payloads', () => {
    expect(w.truth).toEqual(naiveTruth(w.events, base.sites))
    for (const site of base.sites) expect(w.truth.sites[site]!.bots).toBeGreaterThan(0)
  })

  it('is what truthOf computes, for any order and with or without the duplicates', () => {
    expect(truthOf(w.events, base.sites)).toEqual(w.truth)
    const reversed = [...w.events].reverse()
    expect(JSON.stringify(truthOf(reversed, base.sites))).toBe(JSON.stringify(w.truth))
    expect(
      truthOf(
        w.events.filter((e) => !e.isDuplicate),
        base.sites,
      ),
    ).toEqual(w.truth)
  })

  it('computes the stream-only expectation for a subset', () => {
    const onTime = w.events.filter((e) => !e.isLate)
    const stream = truthOf(onTime, base.sites)
    expect(stream).toEqual(naiveTruth(onTime, base.sites))
    const lateCounted = new Set(
      w.events
        .filter((e) => e.isLate && !e.isBot && e.payload.type !== 'identify')
        .map((e) => e.payload.messageId),
    )
    expect(lateCounted.size).toBeGreaterThan(0)
    for (const site of base.sites) {
      const lateHere = w.events.filter(
        (e) => e.siteId === site && lateCounted.has(e.payload.messageId) && !e.isDuplicate,
      )
      expect(w.truth.sites[site]!.events - stream.sites[site]!.events).toBe(lateHere.length)
    }
  })

  it('is consistent across granularities and dimensions', () => {
    for (const [site, t] of Object.entries(w.truth.sites)) {
      for (const g of GRANULARITIES) {
        const ws = Object.values(t.windows[g])
        expect(ws.reduce((s, x) => s + x.events, 0)).toBe(t.events)
        expect(ws.reduce((s, x) => s + x.pageviews, 0)).toBe(t.pageviews)
        expect(ws.reduce((s, x) => s + x.bots, 0)).toBe(t.bots)
        const keys = Object.keys(t.windows[g])
        expect([...keys].sort()).toEqual(keys)
      }
      for (const d of DIMENSIONS) {
        const vs = Object.values(t.breakdown[d])
        expect(vs.reduce((s, x) => s + x.events, 0)).toBe(t.events)
        expect(Math.max(...vs.map((x) => x.visitors))).toBeLessThanOrEqual(t.visitors)
      }
      expect(t.breakdown.event.pageview!.events).toBe(t.pageviews)
      expect(t.breakdown.referrer['(direct)']!.events).toBeGreaterThan(0)
      expect(
        Object.keys(t.breakdown.referrer).some((h) => h.startsWith('www.') || h !== h.toLowerCase()),
      ).toBe(false)
      // 22:30 + 4h crosses midnight: two day windows.
      expect(Object.keys(t.windows.day)).toEqual(['2024-05-01T00:00:00.000Z', '2024-05-02T00:00:00.000Z'])
      expect(truthCounts(w.truth, site)).toEqual({
        events: t.events,
        pageviews: t.pageviews,
        visitors: t.visitors,
      })
    }
    const a = w.truth.sites['site-a']!
    expect(
      truthCounts(w.truth, 'site-a', { granularity: 'hour', window: '2024-05-01T23:59:59.999Z' }),
    ).toEqual({
      events: a.windows.hour['2024-05-01T23:00:00.000Z']!.events,
      pageviews: a.windows.hour['2024-05-01T23:00:00.000Z']!.pageviews,
      visitors: a.windows.hour['2024-05-01T23:00:00.000Z']!.visitors,
    })
    expect(truthCounts(w.truth, 'site-a', { dimension: 'device', value: 'mobile' })).toEqual(
      a.breakdown.device.mobile,
    )
    expect(truthCounts(w.truth, 'site-a', { dimension: 'path', value: '/nope' })).toEqual({
      events: 0,
      pageviews: 0,
      visitors: 0,
    })
    expect(truthCounts(w.truth, 'nope')).toEqual({ events: 0, pageviews: 0, visitors: 0 })
  })

  it('keeps sites without events', () => {
    const x = generateWorkload({ ...base, sites: ['a', 'b', 'c', 'd', 'e'], events: 3 })
    expect(Object.keys(x.truth.sites)).toEqual(['a', 'b', 'c', 'd', 'e'])
    expect(generateWorkload({ ...base, events: 0 }).events).toEqual([])
  })
})

describe('helpers and validation', () => {
  it('labels referrers and windows like the metric definitions say', () => {
    expect(referrerLabel(undefined)).toBe('(direct)')
    expect(referrerLabel('')).toBe('(direct)')
    expect(referrerLabel('https://WWW.Bing.com/search?q=x')).toBe('bing.com')
    expect(referrerLabel('https://m.facebook.com/')).toBe('m.facebook.com')
    expect(referrerLabel('https://www.site.example:8443/a')).toBe('site.example')
    expect(windowKey('2024-05-01T13:05:59.999Z', 'minute')).toBe('2024-05-01T13:05:00.000Z')
    expect(windowKey(Date.parse('2024-05-01T13:05:59.999Z'), 'hour')).toBe('2024-05-01T13:00:00.000Z')
    expect(windowKey(new Date('2024-05-01T13:05:59.999Z'), 'day')).toBe('2024-05-01T00:00:00.000Z')
  })

  it('rejects unusable options', () => {
    expect(() => generateWorkload({ ...base, sites: [] })).toThrow(/sites/)
    expect(() => generateWorkload({ ...base, seed: 1.5 })).toThrow(/seed/)
    expect(() => generateWorkload({ ...base, botShare: 2 })).toThrow(/botShare/)
    expect(() => generateWorkload({ ...base, events: -1 })).toThrow(/events/)
    expect(() => generateWorkload({ ...base, start: new Date('nope') })).toThrow(/start/)
  })
})

describe('files', () => {
  it('writes NDJSON + truth and reads them back', async () => {
    const w = generateWorkload({ ...base, events: 2_000 })
    const dir = await mkdtemp(join(tmpdir(), 'tally-workload-'))
    try {
      const files = await writeWorkload(dir, w)
      const back = await readWorkload(dir)
      expect(back.options).toEqual(w.options)
      expect(back.truth).toEqual(w.truth)
      expect(back.events).toHaveLength(w.events.length)
      expect(back.events.map((e) => e.payload)).toEqual(w.events.map((e) => e.payload))
      expect(back.events[0]!.siteId).toBe(w.events[0]!.siteId)
      expect(files.events.endsWith('events.ndjson')).toBe(true)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('size', () => {
  // How fast it generates is the bench's business (its runs are timed there), not a test's.
  it('generates 100k counted events with their truth', () => {
    const w = generateWorkload({ ...base, events: 100_000, spanMs: 24 * 3_600_000 })
    expect(w.events.length - w.events.filter((e) => e.isDuplicate).length).toBe(100_000)
  })
})
