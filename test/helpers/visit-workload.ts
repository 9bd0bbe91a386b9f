import { randomUUID } from 'node:crypto'
import {
  type GeneratedEvent,
  generateWorkload,
  type SegmentPage,
  type SegmentPayload,
  type SegmentTrack,
} from '../../bench/workload.js'
import type { AggregateReader } from '../../core/ports/aggregate-store.js'
import type { Mismatch } from './stream.js'
import { SESSION_DIMENSIONS, type VisitCounts, visitKey } from './visit-truth.js'

const MINUTE = 60_000
const HOUR = 3_600_000

/**
 * A workload for the visit tests, all inside the stream's grace (`graceMs`, at least 3 h) of `nowMs`
 * but the late events: the bench generator's traffic over 80 minutes around an hour boundary
 * (duplicates, bots, out-of-order sends), then per site visitors made to test the edges: a return
 * after 29 minutes (one visit) and after 31 (two), a visit across the hour boundary, one-event
 * visits (a page view: a bounce; a track), a track-only visit, a duplicated messageId, a bot inside
 * a gap, an event sent last that joins two visits (out of order), and events beyond the grace
 * (`isLate`: the stream leaves them).
 */
export function visitWorkload(
  sites: readonly string[],
  seed: number,
  nowMs: number,
  graceMs: number,
  events = 2000,
): GeneratedEvent[] {
  const boundary = Math.floor((nowMs - HOUR) / HOUR) * HOUR
  const base = generateWorkload({
    seed,
    sites: [...sites],
    events,
    start: new Date(boundary - 40 * MINUTE),
    spanMs: 80 * MINUTE,
    visitors: Math.max(20, Math.round(events / 25)),
    lateShare: 0,
  }).events
  const out = [...base]
  let n = 0
  for (const site of sites) {
    const page = base.find((e) => e.siteId === site && e.payload.type === 'page' && !e.isBot)
    const bot = base.find((e) => e.siteId === site && e.isBot)
    if (!page || !bot) throw new Error(`the generated workload has no page view or bot of ${site}`)
    const make = (
      template: GeneratedEvent,
      visitor: string,
      tMs: number,
      type: 'page' | 'track',
      path: string,
    ): GeneratedEvent => {
      const p = structuredClone(template.payload) as SegmentPayload & { properties: Record<string, unknown> }
      const ctxPage = p.context.page ?? { path, url: '', referrer: '', title: '', search: '' }
      const url = `https://${site}${path}`
      p.context.page = { ...ctxPage, path, url }
      const payload = {
        ...p,
        type,
        messageId: `visit-${seed}-${site}-${n++}`,
        anonymousId: `${visitor}-${seed}`,
        timestamp: new Date(tMs).toISOString(),
        sentAt: new Date(tMs).toISOString(),
        ...(type === 'page'
          ? { properties: { ...p.properties, path, url } }
          : { event: 'signup', properties: { plan: 'pro' } }),
      } as SegmentPayload
      return {
        ...template,
        payload,
        isDuplicate: false,
        isLate: false,
        isOutOfOrder: false,
        sendAt: tMs,
      }
    }
    const t0 = boundary - 35 * MINUTE
    const at = (m: number) => t0 + m * MINUTE
    // A return after 29 minutes: one visit of 3 events.
    out.push(make(page, 'r29', at(0), 'page', '/a'))
    out.push(make(page, 'r29', at(29), 'page', '/b'))
    out.push(make(page, 'r29', at(29) + 1000, 'track', '/b'))
    // After 31 minutes: two one-page visits (two bounces), with a bot between (not an event of a visit).
    out.push(make(page, 'r31', at(1), 'page', '/a'))
    out.push(make(bot, 'r31', at(16), 'page', '/bot'))
    out.push(make(page, 'r31', at(32), 'page', '/c'))
    // Across the hour boundary: starts 10 minutes before it, ends 15 minutes after.
    out.push(make(page, 'cross', boundary - 10 * MINUTE, 'page', '/in'))
    out.push(make(page, 'cross', boundary + 5 * MINUTE, 'track', '/in'))
    out.push(make(page, 'cross', boundary + 15 * MINUTE, 'page', '/out'))
    // One-event visits: a page view (bounce) and a track (no page view: no entry or exit page).
    out.push(make(page, 'one-page', at(3), 'page', '/solo'))
    out.push(make(page, 'one-track', at(4), 'track', '/solo'))
    // Track-only visit of three events.
    for (const m of [5, 9, 14]) out.push(make(page, 'tracks', at(m), 'track', '/app'))
    // A duplicate: the same payload sent twice.
    const dup = make(page, 'dup', at(6), 'page', '/dup')
    out.push(dup, { ...dup, isDuplicate: true })
    out.push(make(page, 'dup', at(7), 'page', '/dup2'))
    // Out of order: two visits 40 minutes apart, then (sent last) an event between that joins them.
    out.push(make(page, 'join', at(10), 'page', '/j1'))
    out.push(make(page, 'join', at(50), 'page', '/j3'))
    // Late: beyond the grace, left to the rebuild (never in the stream's visits).
    out.push({ ...make(page, 'late', nowMs - graceMs - 30 * MINUTE, 'page', '/late'), isLate: true })
    out.push({ ...make(page, 'join', at(30), 'page', '/j2'), isOutOfOrder: true })
  }
  return out
}

/** The visit counts the reader gives, against the truth (`visitTruthOf`), every window and breakdown. */
export async function compareVisits(
  reader: AggregateReader,
  truth: Map<string, VisitCounts>,
  sites: readonly string[],
  fromMs: number,
  toMs: number,
): Promise<Mismatch[]> {
  const out: Mismatch[] = []
  const zero: VisitCounts = { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 }
  const check = (where: string, expected: VisitCounts, actual: Partial<VisitCounts> | undefined) => {
    for (const k of ['visits', 'bounces', 'visitDurationMs', 'visitPageviews'] as const) {
      const a = actual?.[k] ?? 0
      if (a !== expected[k]) out.push({ where: `${where} ${k}`, expected: expected[k], actual: a })
    }
  }
  for (const site of sites) {
    for (const g of ['minute', 'hour', 'day'] as const) {
      const windows = await reader.totals(site, g, fromMs, toMs, { visitors: false })
      const starts = new Set(windows.map((w) => w.windowStart))
      for (const k of truth.keys()) {
        const [s, kg, ws, dim] = k.split('|')
        if (s === site && kg === g && dim === '') starts.add(Date.parse(ws!))
      }
      for (const ws of starts) {
        const w = windows.find((x) => x.windowStart === ws)
        if (w && w.events + w.botEvents > 0 && w.visits === undefined)
          out.push({
            where: `${site} ${g} ${new Date(ws).toISOString()} has no visit data`,
            expected: 1,
            actual: 0,
          })
        check(`${site} ${g} ${new Date(ws).toISOString()}`, truth.get(visitKey(site, g, ws)) ?? zero, w)
      }
    }
    for (const g of ['hour', 'day'] as const) {
      for (const d of [...SESSION_DIMENSIONS, 'entry_page', 'exit_page'] as const) {
        // Per window for hours; over the range for days.
        const windowStarts = new Set<number>()
        for (const k of truth.keys()) {
          const [s, kg, ws, dim] = k.split('|')
          if (s === site && kg === g && dim === d) windowStarts.add(Date.parse(ws!))
        }
        const ranges =
          g === 'hour' ? [...windowStarts].map((ws) => [ws, ws + HOUR] as const) : [[fromMs, toMs] as const]
        for (const [from, to] of ranges) {
          const merged = await reader.breakdown(site, g, d, from, to)
          const expected = new Map<string, VisitCounts>()
          for (const [k, c] of truth) {
            const [s, kg, ws, dim, value] = k.split('|')
            const t = Date.parse(ws!)
            if (s !== site || kg !== g || dim !== d || t < from || t >= to) continue
            const e = expected.get(value!) ?? { ...zero }
            e.visits += c.visits
            e.bounces += c.bounces
            e.visitDurationMs += c.visitDurationMs
            e.visitPageviews += c.visitPageviews
            expected.set(value!, e)
          }
          for (const value of new Set([...expected.keys(), ...merged.keys()]))
            check(
              `${site} ${g} ${new Date(from).toISOString()} ${d}=${value}`,
              expected.get(value) ?? zero,
              merged.get(value),
            )
        }
      }
    }
  }
  return out
}

/**
 * Hand-made visits around one UTC midnight, for the visit tests, cloned from a generated human
 * page view (and a bot's) so ingest parses them like the workload's: visitors returning after 29
 * and after 31 minutes, a visit crossing an hour boundary, one crossing midnight UTC (two visits),
 * a one-event visit (a bounce), a track-only visit, a screen call, a duplicate (same messageId),
 * bot events inside a human's gap, and two page views at the same time (entry/exit tie-break).
 * `late` is an event that joins the two visits of visitor `late-*`, sent after the rest.
 */

const MIN = MINUTE

export interface VisitScenarios {
  events: GeneratedEvent[]
  /** A track event 20 min after the first of two visits 40 min apart: with it, they are one visit. */
  late: GeneratedEvent
}

export function visitScenarios(
  site: string,
  midnightMs: number,
  human: GeneratedEvent,
  bot: GeneratedEvent,
): VisitScenarios {
  const tag = randomUUID().slice(0, 8)
  const at = (template: GeneratedEvent, visitor: string, tsMs: number, path: string | undefined) => {
    const base = template.payload as SegmentPage
    const iso = new Date(tsMs).toISOString()
    const page = base.context.page ?? base.properties
    const context = { ...base.context }
    let payload: SegmentPage | SegmentTrack
    if (path === undefined) {
      delete context.page
      payload = {
        type: 'track',
        event: 'signup',
        properties: {},
        messageId: randomUUID(),
        anonymousId: `${visitor}-${tag}`,
        context,
        timestamp: iso,
        sentAt: iso,
      }
    } else {
      const p = { ...page, path, url: `https://${site}${path}` }
      context.page = p
      payload = {
        type: 'page',
        properties: p,
        messageId: randomUUID(),
        anonymousId: `${visitor}-${tag}`,
        context,
        timestamp: iso,
        sentAt: iso,
      }
    }
    const ev: GeneratedEvent = {
      ...template,
      siteId: site,
      payload,
      isDuplicate: false,
      isLate: false,
      isOutOfOrder: false,
      sendAt: tsMs,
    }
    return ev
  }
  const page = (v: string, ms: number, path: string) => at(human, v, ms, path)
  const track = (v: string, ms: number) => at(human, v, ms, undefined)
  const m = midnightMs
  const events: GeneratedEvent[] = [
    // Returns after 29 minutes (same visit) three times, then after 31 (a new visit).
    page('r29', m - 4 * 60 * MIN, '/a'),
    page('r29', m - 4 * 60 * MIN + 29 * MIN, '/b'),
    track('r29', m - 4 * 60 * MIN + 58 * MIN),
    page('r29', m - 4 * 60 * MIN + 89 * MIN, '/c'),
    // Crosses an hour boundary: starts at 21:50, ends 22:20.
    page('hour', m - 130 * MIN, '/start'),
    track('hour', m - 115 * MIN),
    page('hour', m - 100 * MIN, '/end'),
    // Crosses midnight: two visits, one each day.
    page('midnight', m - 10 * MIN, '/late-night'),
    page('midnight', m + 10 * MIN, '/morning'),
    page('midnight', m + 25 * MIN, '/morning-2'),
    // One-event visit (a bounce), a track-only visit, a screen call after a page view.
    page('one', m - 200 * MIN, '/alone'),
    track('tracks', m - 90 * MIN),
    track('tracks', m - 80 * MIN),
    // Two page views at the same time: entry the least path, exit the greatest.
    page('tie', m + 60 * MIN, '/zeta'),
    page('tie', m + 60 * MIN, '/alpha'),
  ]
  // A duplicate: the same payload twice.
  const dup = page('dup', m + 2 * 60 * MIN, '/dup')
  events.push(dup, { ...dup, isDuplicate: true })
  // Bot events with the visitor id of a human between two of its visits: they join nothing.
  events.push(page('botgap', m + 3 * 60 * MIN, '/x'), page('botgap', m + 3 * 60 * MIN + 50 * MIN, '/y'))
  const botEv = at(bot, 'botgap', m + 3 * 60 * MIN + 25 * MIN, '/bot')
  events.push({ ...botEv, isBot: true })
  // Two visits 40 minutes apart; the late event between them joins them.
  events.push(page('late', m + 4 * 60 * MIN, '/l1'), page('late', m + 4 * 60 * MIN + 40 * MIN, '/l2'))
  const late = { ...track('late', m + 4 * 60 * MIN + 20 * MIN), isLate: true }
  return { events: events.sort((a, b) => a.sendAt - b.sendAt), late }
}
