import { describe, expect, it } from 'vitest'
import { dimensionsOf } from '../../core/aggregate/definition.js'
import { RowAccumulator } from '../../core/aggregate/rows.js'
import {
  oldestAcceptableMs,
  sessionize,
  type VisitEvent,
  VisitState,
  visitDeltas,
  visitEventOf,
  visitRows,
} from '../../core/aggregate/visits.js'
import type { VisitCounts } from '../../core/ports/aggregate-store.js'
import type { RawEventV1 } from '../../schemas/events.js'
import { classify } from '../../stream/pipeline.js'

/** The session dimensions, listed here apart from the code under test. */
const SESSION_DIMS = [
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

const MIN = 60_000
const HOUR = 60 * MIN
const DAY = 24 * HOUR
const GAP = 30 * MIN
const GRACE = 5 * MIN
const day0 = Date.parse('2026-11-20T00:00:00Z')

/** A small seeded PRNG (mulberry32), so a failure reproduces. */
function rng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

interface Gen {
  event: RawEventV1
  t: number
  /** When the stream sees it (receivedAt): t plus a delay. */
  arrival: number
}

function raw(
  site: string,
  visitor: string,
  n: number,
  t: number,
  type: RawEventV1['type'],
  opts: { path?: string; referrer?: string; utm?: string; browser?: string; bot?: boolean; userId?: boolean },
): RawEventV1 {
  return {
    v: 1,
    siteId: site,
    messageId: `${visitor}-${n}`,
    messageIdAssigned: false,
    type,
    ...(opts.userId ? { userId: visitor } : { anonymousId: visitor }),
    ...(type === 'track' ? { event: 'signup' } : {}),
    properties: {
      ...(opts.path ? { path: opts.path } : {}),
      ...(opts.referrer ? { referrer: opts.referrer } : {}),
    },
    context: opts.utm ? { campaign: { source: opts.utm } } : {},
    timestamp: new Date(t).toISOString(),
    receivedAt: new Date(t).toISOString(),
    ua: { browser: opts.browser ?? 'Firefox', os: 'Linux', device: 'desktop' },
    bot: opts.bot ?? false,
  }
}

/**
 * Visitors returning after 29 and 31 minutes (and exactly 30), visits crossing an hour boundary
 * and midnight UTC, ties in event time, bots, identify calls, one-event and track-only visits;
 * arrivals out of order within the grace, and some later than it.
 */
function workload(seed: number, visitors: number): Gen[] {
  const r = rng(seed)
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!
  const gaps = [0, 1000, 2 * MIN, 29 * MIN, GAP - 1, GAP, 31 * MIN, 45 * MIN]
  const paths = ['/', '/pricing', '/docs', '/blog/a']
  const refs = ['https://www.google.com/search', 'https://news.ycombinator.com/', undefined]
  const out: Gen[] = []
  for (let v = 0; v < visitors; v++) {
    const site = v % 3 === 0 ? 'site-b' : 'site-a'
    const visitor = `v-${seed}-${v}`
    const userId = v % 11 === 5
    const browser = pick(['Firefox', 'Chrome'])
    const shape = v % 7
    // Near an hour boundary, near midnight UTC, or anywhere in the day.
    let t =
      shape === 0
        ? day0 + 23 * HOUR + 40 * MIN + Math.floor(r() * 15 * MIN)
        : shape === 1
          ? day0 + 9 * HOUR + 50 * MIN + Math.floor(r() * 5 * MIN)
          : day0 + Math.floor(r() * 20 * HOUR)
    const count = shape === 2 ? 1 : 1 + Math.floor(r() * 9)
    const trackOnly = shape === 3
    for (let n = 0; n < count; n++) {
      if (n > 0) t += pick(gaps)
      const kind = trackOnly
        ? 'track'
        : pick(['page', 'page', 'page', 'track', 'screen', 'identify', 'botpage'])
      const type: RawEventV1['type'] = kind === 'botpage' ? 'page' : (kind as RawEventV1['type'])
      const e = raw(site, visitor, n, t, type, {
        path: pick(paths),
        referrer: n === 0 || r() < 0.2 ? pick(refs) : 'https://site.example/',
        utm: r() < 0.2 ? 'newsletter' : undefined,
        browser,
        bot: kind === 'botpage',
        userId,
      })
      const late = r() < 0.03
      const delay = late ? GRACE + 10 * MIN : Math.floor(r() * (GRACE - MIN))
      out.push({ event: e, t, arrival: t + delay })
    }
  }
  return out
}

type Rows = Map<string, VisitCounts>

function label(site: string, g: string, ws: number, dim: string | undefined, value: string): string {
  return `${site}|${g}|${new Date(ws).toISOString()}|${dim ?? ''}|${value}`
}

/**
 * The truth, written without core/aggregate/visits.ts: sort each visitor-day's counted events by
 * time, cut at gaps of 30 minutes or more; then count each visit where it started.
 */
function reference(gen: readonly Gen[]): Rows {
  const counted = gen.filter(
    (g) => (g.event.type === 'page' || g.event.type === 'track' || g.event.type === 'screen') && !g.event.bot,
  )
  const groups = new Map<string, Gen[]>()
  for (const g of counted) {
    const who = g.event.anonymousId ?? g.event.userId ?? g.event.messageId
    const k = `${g.event.siteId}|${who}|${Math.floor(g.t / DAY)}`
    groups.set(k, [...(groups.get(k) ?? []), g])
  }
  const rows: Rows = new Map()
  const add = (k: string, c: VisitCounts) => {
    const row = rows.get(k) ?? { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 }
    row.visits += c.visits
    row.bounces += c.bounces
    row.visitDurationMs += c.visitDurationMs
    row.visitPageviews += c.visitPageviews
    rows.set(k, row)
  }
  for (const list of groups.values()) {
    const sorted = [...list].sort((a, b) => a.t - b.t)
    const visits: Gen[][] = []
    for (const g of sorted) {
      const cur = visits[visits.length - 1]
      if (cur && g.t - cur[cur.length - 1]!.t < GAP) cur.push(g)
      else visits.push([g])
    }
    for (const visit of visits) {
      const session = (g: Gen) => {
        const d = dimensionsOf(g.event)
        return SESSION_DIMS.map((k) => d[k])
      }
      // Ties in time: the least session values first; entry the least path, exit the greatest.
      const first = [...visit].sort(
        (a, b) => a.t - b.t || (session(a).join('\u0001') < session(b).join('\u0001') ? -1 : 1),
      )[0]!
      const pages = visit
        .filter((g) => g.event.type === 'page')
        .sort((a, b) => a.t - b.t || (dimensionsOf(a.event).path < dimensionsOf(b.event).path ? -1 : 1))
      const start = first.t
      const end = Math.max(...visit.map((g) => g.t))
      const c: VisitCounts = {
        visits: 1,
        bounces: visit.length === 1 && pages.length === 1 ? 1 : 0,
        visitDurationMs: end - start,
        visitPageviews: pages.length,
      }
      const site = first.event.siteId
      const s = session(first)
      for (const [g, w] of [
        ['minute', MIN],
        ['hour', HOUR],
        ['day', DAY],
      ] as const) {
        const ws = Math.floor(start / w) * w
        add(label(site, g, ws, undefined, ''), c)
        if (g === 'minute') continue
        SESSION_DIMS.forEach((d, i) => {
          add(label(site, g, ws, d, s[i]!), c)
        })
        if (pages.length > 0) {
          add(label(site, g, ws, 'entry_page', dimensionsOf(pages[0]!.event).path), c)
          add(label(site, g, ws, 'exit_page', dimensionsOf(pages[pages.length - 1]!.event).path), c)
        }
      }
    }
  }
  return rows
}

function rowsOf(map: ReturnType<typeof visitRows>): Rows {
  const out: Rows = new Map()
  for (const { key, counts } of map.values())
    out.set(label(key.siteId, key.granularity, key.windowStart, key.dimension, key.value), { ...counts })
  return out
}

/** A page view at `/` of `visitor` at `t`, with one session list for all. */
function ev(visitor: string, t: number): VisitEvent {
  return {
    siteId: 's',
    visitor,
    timestampMs: t,
    pageview: true,
    path: '/',
    session: ['a', 'b', 'c', 'd', 'e'],
  }
}

function eventsOf(gen: readonly Gen[]): VisitEvent[] {
  return gen.map((g) => visitEventOf(g.event, g.t)).filter((e): e is VisitEvent => e !== undefined)
}

/**
 * The stream: events in arrival order, those later than the grace left out (as the worker leaves
 * them to the rebuild), deltas applied to rows held as absolute values, the state evicted after
 * each event and sometimes replaced by its serialized copy (a restart from the checkpoint).
 */
function stream(
  gen: readonly Gen[],
  seed: number,
): { rows: Rows; accepted: Gen[]; maxBytesPerVisit: number; joins: number } {
  const r = rng(seed)
  let state = new VisitState(GAP)
  const rows = new Map<string, RowAccumulator>()
  const accepted: Gen[] = []
  let watermark = 0
  let maxBytesPerVisit = 0
  let joins = 0
  for (const g of [...gen].sort((a, b) => a.arrival - b.arrival)) {
    watermark = Math.max(watermark, g.arrival)
    const oldestAcceptable = watermark - GRACE
    if (g.t < oldestAcceptable) continue
    accepted.push(g)
    const e = visitEventOf(g.event, g.t)
    if (e) {
      const change = state.add(e)
      if (change.removed.length === 2) joins++
      for (const d of visitDeltas(change, 3)) {
        const k = label(d.key.siteId, d.key.granularity, d.key.windowStart, d.key.dimension, d.key.value)
        let acc = rows.get(k)
        if (!acc) {
          acc = new RowAccumulator(14, undefined, { countsVisits: true })
          rows.set(k, acc)
        }
        acc.addVisits(d.delta)
        expect(d.key.sourcePartition).toBe(3)
      }
    }
    state.evict(oldestAcceptable)
    if (r() < 0.05) {
      const bytes = state.serialize()
      if (state.openVisits > 0) maxBytesPerVisit = Math.max(maxBytesPerVisit, bytes.length / state.openVisits)
      const copy = VisitState.deserialize(bytes, GAP)
      expect(copy.visits()).toEqual(state.visits())
      state = copy
    }
  }
  const out: Rows = new Map()
  for (const [k, acc] of rows) {
    const v = acc.values()
    if (v.visits === 0 && v.bounces === 0 && v.visitDurationMs === 0 && v.visitPageviews === 0) continue
    out.set(k, {
      visits: v.visits!,
      bounces: v.bounces!,
      visitDurationMs: v.visitDurationMs!,
      visitPageviews: v.visitPageviews!,
    })
  }
  return { rows: out, accepted, maxBytesPerVisit, joins }
}

function sorted(rows: Rows): Array<[string, VisitCounts]> {
  return [...rows.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1))
}

describe('visits (core/aggregate/visits.ts)', () => {
  it('the rebuild (sessionize + visitRows) equals a reference sessionizer on generated workloads', () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const gen = workload(seed, 300)
      const truth = reference(gen)
      expect(truth.size).toBeGreaterThan(100)
      // Any order of the events gives the same rows.
      const shuffled = [...gen].sort(() => rng(seed)() - 0.5).reverse()
      expect(sorted(rowsOf(visitRows(sessionize(eventsOf(shuffled), GAP), -7)))).toEqual(sorted(truth))
    }
  })

  it('the stream (VisitState, out-of-order arrival, eviction, restarts) ends equal to the rebuild of the events it accepted', () => {
    for (const seed of [11, 12, 13, 14, 15]) {
      const gen = workload(seed, 300)
      const s = stream(gen, seed)
      // Some events were later than the grace: the stream leaves them to the rebuild.
      expect(s.accepted.length).toBeLessThan(gen.length)
      // Out-of-order events joined visits the stream had counted apart.
      expect(s.joins).toBeGreaterThan(0)
      // 12 session values since countries, sources, channels and the UTM set (was < 100 with 5).
      expect(s.maxBytesPerVisit).toBeLessThan(200)
      expect(sorted(s.rows)).toEqual(sorted(reference(s.accepted)))
      expect(sorted(s.rows)).toEqual(sorted(rowsOf(visitRows(sessionize(eventsOf(s.accepted), GAP), 3))))
    }
  })

  it('counts 29- and 31-minute returns, exact-gap returns, midnight and bounces as defined', () => {
    const at = (h: number, m: number, s = 0) => day0 + h * HOUR + m * MIN + s * 1000
    const ev = (visitor: string, t: number, type: RawEventV1['type'], path = '/', bot = false) =>
      visitEventOf(raw('s', visitor, t, t, type, { path, bot }), t)
    const events = [
      ev('a', at(10, 0), 'page', '/in'),
      ev('a', at(10, 29), 'page', '/mid'), // 29 min later: same visit
      ev('a', at(11, 0), 'page', '/out'), // 31 min later: a new visit
      ev('b', at(12, 0), 'page'),
      ev('b', at(12, 30), 'page'), // exactly the gap: a new visit
      ev('c', at(23, 50), 'page', '/late'),
      ev('c', at(24, 5), 'page', '/next-day'), // 15 min later but past midnight: a new visit
      ev('d', at(8, 0), 'track'), // track-only: no entry or exit page, not a bounce
      ev('e', at(8, 0), 'page', '/', true), // bot: no visit
      ev('f', at(9, 0), 'page', '/solo'), // one pageview: bounce, 0 s
    ].filter((e): e is VisitEvent => e !== undefined)
    const visits = sessionize(events, GAP)
    expect(
      visits.map((v) => [
        v.visitor,
        v.startMs - day0,
        v.endMs - v.startMs,
        v.events,
        v.pageviews,
        v.entryPage,
        v.exitPage,
      ]),
    ).toEqual([
      ['a', at(10, 0) - day0, 29 * MIN, 2, 2, '/in', '/mid'],
      ['a', at(11, 0) - day0, 0, 1, 1, '/out', '/out'],
      ['b', at(12, 0) - day0, 0, 1, 1, '/', '/'],
      ['b', at(12, 30) - day0, 0, 1, 1, '/', '/'],
      ['c', at(23, 50) - day0, 0, 1, 1, '/late', '/late'],
      ['c', at(24, 5) - day0, 0, 1, 1, '/next-day', '/next-day'],
      ['d', at(8, 0) - day0, 0, 1, 0, undefined, undefined],
      ['f', at(9, 0) - day0, 0, 1, 1, '/solo', '/solo'],
    ])
    const rows = rowsOf(visitRows(visits, -1))
    expect(rows.get(label('s', 'day', day0, undefined, ''))).toEqual({
      visits: 7,
      bounces: 5,
      visitDurationMs: 29 * MIN,
      visitPageviews: 7,
    })
    expect(rows.get(label('s', 'hour', at(8, 0), 'entry_page', '(none)'))).toBeUndefined()
    expect(rows.get(label('s', 'hour', at(8, 0), undefined, ''))).toEqual({
      visits: 1,
      bounces: 0,
      visitDurationMs: 0,
      visitPageviews: 0,
    })
  })

  it('an out-of-order event that joins two visits replaces them: the start window loses a visit, bounces turn into one visit', () => {
    const state = new VisitState(GAP)
    const e = (t: number, path: string): VisitEvent => ({
      siteId: 's',
      visitor: 'v',
      timestampMs: t,
      pageview: true,
      path,
      session: ['(direct)', '(none)', 'Firefox', 'Linux', 'desktop'],
    })
    const t0 = day0 + 10 * HOUR + 50 * MIN
    state.add(e(t0, '/a'))
    const second = visitDeltas(state.add(e(t0 + 40 * MIN, '/c')), 0)
    expect(second.find((d) => d.key.granularity === 'day' && d.key.dimension === undefined)?.delta).toEqual({
      visits: 1,
      bounces: 1,
      visitDurationMs: 0,
      visitPageviews: 1,
    })
    const change = state.add(e(t0 + 20 * MIN, '/b'))
    expect(change.removed).toHaveLength(2)
    expect(change.added).toMatchObject({
      startMs: t0,
      endMs: t0 + 40 * MIN,
      events: 3,
      entryPage: '/a',
      exitPage: '/c',
    })
    const deltas = visitDeltas(change, 0)
    const total = (g: string, ws: number) =>
      deltas.find((d) => d.key.granularity === g && d.key.windowStart === ws && d.key.dimension === undefined)
        ?.delta
    // The day: two bouncing visits became one of 40 minutes.
    expect(total('day', day0)).toEqual({
      visits: -1,
      bounces: -2,
      visitDurationMs: 40 * MIN,
      visitPageviews: 1,
    })
    // The 11:00 hour (where the second visit started) loses it; the 10:00 hour's visit grew.
    expect(total('hour', day0 + 11 * HOUR)).toEqual({
      visits: -1,
      bounces: -1,
      visitDurationMs: 0,
      visitPageviews: -1,
    })
    expect(total('hour', day0 + 10 * HOUR)).toEqual({
      visits: 0,
      bounces: -1,
      visitDurationMs: 40 * MIN,
      visitPageviews: 2,
    })
    // The exit page moved from /a to /c in the 10:00 hour.
    const exit = (ws: number, v: string) =>
      deltas.find(
        (d) =>
          d.key.granularity === 'hour' &&
          d.key.windowStart === ws &&
          d.key.dimension === 'exit_page' &&
          d.key.value === v,
      )?.delta
    expect(exit(day0 + 10 * HOUR, '/a')?.visits).toBe(-1)
    expect(exit(day0 + 10 * HOUR, '/c')?.visits).toBe(1)
    expect(exit(day0 + 11 * HOUR, '/c')?.visits).toBe(-1)
    expect(state.openVisits).toBe(1)
  })

  it('evicts visits once no acceptable event can reach them, and whole days once they ended', () => {
    const state = new VisitState(GAP)
    const t0 = day0 + 10 * HOUR
    state.add(ev('a', t0))
    state.add(ev('a', t0 + HOUR))
    state.add(ev('b', day0 + DAY - MIN))
    expect(state.evict(t0 + GAP - 1)).toBe(0)
    expect(state.evict(t0 + GAP)).toBe(1)
    expect(state.visitorDays).toBe(2)
    expect(state.evict(day0 + DAY)).toBe(2)
    expect(state.visitorDays).toBe(0)
  })

  it('ends early the least recently active visits beyond a bound (evictLeastRecent)', () => {
    const state = new VisitState(GAP)
    const t0 = day0 + 10 * HOUR
    // 10 visitors, the last event of visitor i at t0 + i minutes (visitor 0 had a second event).
    state.add(ev('v0', t0 - 5 * MIN))
    for (let i = 0; i < 10; i++) state.add(ev(`v${i}`, t0 + i * MIN))
    expect(state.openVisits).toBe(10)
    expect(state.evictLeastRecent(10)).toBe(0)
    expect(state.evictLeastRecent(4)).toBe(6)
    expect(state.openVisits).toBe(4)
    // The four most recently active are kept, whole (visitor 0's two events were one visit).
    expect(state.visits().map((v) => v.visitor)).toEqual(['v6', 'v7', 'v8', 'v9'])
    // A kept visit still extends; an ended one's visitor starts a new visit.
    expect(state.add(ev('v9', t0 + 20 * MIN)).removed).toHaveLength(1)
    expect(state.add(ev('v0', t0 + 20 * MIN)).removed).toHaveLength(0)
    expect(state.openVisits).toBe(5)
  })

  it('oldestAcceptableMs is the least event time the stream accepts (its eviction line)', () => {
    const r = rng(7)
    for (let i = 0; i < 2000; i++) {
      const watermark = day0 + Math.floor(r() * DAY)
      const grace = [0, 1, 59_999, 60_000, GRACE, GRACE + 1][i % 6]!
      const line = oldestAcceptableMs(watermark, grace)
      for (const t of [line - 1, line, line + 1, line - 60_000, line + 59_999]) {
        const event = raw('s', 'v', 0, t, 'page', { path: '/' })
        const accepted = classify(
          { event, receivedMs: watermark, timestampMs: t },
          watermark - grace,
          Infinity,
        ).ok
        expect([t, accepted]).toEqual([t, t >= line])
      }
    }
  })

  it('serializes an open visit in about 60 bytes (36-character visitor ids)', () => {
    const state = new VisitState(GAP)
    const n = 1000
    for (let i = 0; i < n; i++) {
      const visitor = `${i.toString(16).padStart(8, '0')}-1c2d-4e5f-8a9b-0c1d2e3f4a5b`
      for (const [k, path] of ['/', '/pricing', '/docs'].entries())
        state.add({
          siteId: 'site-1',
          visitor,
          timestampMs: day0 + 12 * HOUR + i * 1000 + k * 40_000,
          pageview: true,
          path,
          session: ['google.com', '(none)', 'Chrome', 'Windows', 'desktop'],
        })
    }
    const bytes = state.serialize()
    expect(state.openVisits).toBe(n)
    expect(bytes.length / n).toBeLessThanOrEqual(64)
    expect(VisitState.deserialize(bytes, GAP).visits()).toEqual(state.visits())
    expect(VisitState.deserialize(new Uint8Array(0), GAP).openVisits).toBe(0)
    expect(() => VisitState.deserialize(bytes.subarray(0, bytes.length - 3), GAP)).toThrow(RangeError)
    expect(() => VisitState.deserialize(Uint8Array.of(9), GAP)).toThrow(/unknown visit state format/)
  })

  it('writes a session value once however many distinct session lists share it', () => {
    // 1000 visits, each with its own list of 12 values drawn from 12 × 10 shared values.
    const state = new VisitState(GAP)
    const n = 1000
    for (let i = 0; i < n; i++)
      state.add({
        siteId: 'site-1',
        visitor: `${i.toString(16).padStart(8, '0')}-1c2d-4e5f-8a9b-0c1d2e3f4a5b`,
        timestampMs: day0 + 12 * HOUR + i * 1000,
        pageview: true,
        path: '/',
        session: Array.from({ length: 12 }, (_, d) => `dimension-${d}-value-${Math.floor(i / (d + 1)) % 10}`),
      })
    const bytes = state.serialize()
    const lists = new Set(state.visits().map((v) => v.session.join('|'))).size
    expect(lists).toBeGreaterThan(n / 10)
    // Each list costs its 12 indices (1 byte each here), not its joined values (about 200 bytes).
    expect(bytes.length / n).toBeLessThanOrEqual(64 + (13 * lists) / n)
    expect(VisitState.deserialize(bytes, GAP).visits()).toEqual(state.visits())
  })

  it('reads a state written in format 1 (session values joined into one string per list)', () => {
    const uint = (x: number): number[] => {
      const out: number[] = []
      for (; x >= 0x80; x = Math.floor(x / 0x80)) out.push((x % 0x80) | 0x80)
      out.push(x)
      return out
    }
    const str = (s: string): number[] => {
      const b = [...new TextEncoder().encode(s)]
      return [...uint(b.length), ...b]
    }
    const day = Math.floor(day0 / DAY)
    const bytes = Uint8Array.from([
      1,
      ...uint(4),
      ...str('site-1'),
      ...str('google.com\u0001Chrome'),
      ...str('/x'),
      ...str('/y'),
      ...uint(1), // visitor-days
      ...uint(0),
      ...str('visitor-1'),
      ...uint(day),
      ...uint(1), // visits
      ...uint(12 * HOUR),
      ...uint(60_000),
      ...uint(2),
      ...uint(2),
      ...uint(1),
      ...uint(0),
      ...uint(2),
      ...uint(60_000),
      ...uint(3),
    ])
    const expected = new VisitState(GAP)
    for (const [t, path] of [
      [day0 + 12 * HOUR, '/x'],
      [day0 + 12 * HOUR + 60_000, '/y'],
    ] as const)
      expected.add({
        siteId: 'site-1',
        visitor: 'visitor-1',
        timestampMs: t,
        pageview: true,
        path,
        session: ['google.com', 'Chrome'],
      })
    const read = VisitState.deserialize(bytes, GAP)
    expect(read.visits()).toEqual(expected.visits())
    // Written again in the current format, it reads back the same.
    expect(VisitState.deserialize(read.serialize(), GAP).visits()).toEqual(expected.visits())
  })

  it('keeps rows without visit data without it, and new rows of a visit-counting writer with zeros', () => {
    const stored = { events: 3, pageviews: 2, botEvents: 0, visitors: new Uint8Array(0) }
    const old = new RowAccumulator(14, stored, { countsVisits: true })
    old.addVisits({ visits: 1, bounces: 0, visitDurationMs: 5, visitPageviews: 1 })
    expect(old.values().visits).toBeUndefined()
    expect(new RowAccumulator(14).values().visits).toBeUndefined()
    expect(new RowAccumulator(14, undefined, { countsVisits: true }).values()).toMatchObject({
      visits: 0,
      bounces: 0,
      visitDurationMs: 0,
      visitPageviews: 0,
    })
    const known = new RowAccumulator(14, {
      ...stored,
      visits: 2,
      bounces: 1,
      visitDurationMs: 10,
      visitPageviews: 3,
    })
    known.addVisits({ visits: -1, bounces: -1, visitDurationMs: 0, visitPageviews: -1 })
    expect(known.values()).toMatchObject({ visits: 1, bounces: 0, visitDurationMs: 10, visitPageviews: 2 })
  })
})
