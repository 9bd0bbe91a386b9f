import { dimensionValues, type GeneratedEvent } from '../../bench/workload.js'

/**
 * The visits of generated events, computed here without core/aggregate/visits.ts, from the
 * definition: per site and visitor (anonymousId) and UTC day, counted events (track, page, screen;
 * no bots; a messageId once) sorted by event time, cut where a gap is `gapMs` or more. A visit is
 * counted in the windows where it started, under its first event's session values and, when it has
 * page views, its first and last page view's path (entry and exit page). Ties in time: the least
 * session values first; the entry page is the least path, the exit page the greatest.
 */

export interface VisitCounts {
  visits: number
  bounces: number
  visitDurationMs: number
  visitPageviews: number
}

const MINUTE = 60_000
const HOUR = 3_600_000
const DAY = 86_400_000
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
] as const
const COUNTED = new Set(['track', 'page', 'screen'])

/** The key of a visit row: site, granularity, window start (ISO), dimension ('' for totals), value. */
export function visitKey(site: string, g: string, windowStart: number, dim = '', value = ''): string {
  return `${site}|${g}|${new Date(windowStart).toISOString()}|${dim}|${value}`
}

export function visitTruthOf(
  events: readonly GeneratedEvent[],
  gapMs = 30 * MINUTE,
): Map<string, VisitCounts> {
  const seen = new Set<string>()
  const groups = new Map<string, Array<{ t: number; ev: GeneratedEvent }>>()
  for (const ev of events) {
    const p = ev.payload
    if (seen.has(p.messageId)) continue
    seen.add(p.messageId)
    if (!COUNTED.has(p.type) || ev.isBot) continue
    const t = Date.parse(p.timestamp)
    const key = `${ev.siteId}|${p.anonymousId}|${Math.floor(t / DAY)}`
    const list = groups.get(key) ?? []
    list.push({ t, ev })
    groups.set(key, list)
  }
  const rows = new Map<string, VisitCounts>()
  const add = (k: string, c: VisitCounts) => {
    const row = rows.get(k) ?? { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 }
    row.visits += c.visits
    row.bounces += c.bounces
    row.visitDurationMs += c.visitDurationMs
    row.visitPageviews += c.visitPageviews
    rows.set(k, row)
  }
  const session = (ev: GeneratedEvent) => {
    const d = dimensionValues(ev)
    return SESSION_DIMENSIONS.map((k) => d[k])
  }
  for (const list of groups.values()) {
    list.sort((a, b) => a.t - b.t)
    const visits: Array<typeof list> = []
    for (const e of list) {
      const cur = visits.at(-1)
      if (cur && e.t - cur.at(-1)!.t < gapMs) cur.push(e)
      else visits.push([e])
    }
    for (const visit of visits) {
      const start = visit[0]!.t
      const end = visit.at(-1)!.t
      const first = visit
        .filter((e) => e.t === start)
        .map((e) => session(e.ev))
        .sort((a, b) => (a.join('\u0001') < b.join('\u0001') ? -1 : 1))[0]!
      const pages = visit.filter((e) => e.ev.payload.type === 'page')
      const path = (e: (typeof list)[number]) => dimensionValues(e.ev).path
      const entry = pages
        .filter((e) => e.t === pages[0]?.t)
        .map(path)
        .sort()[0]
      const exit = pages
        .filter((e) => e.t === pages.at(-1)?.t)
        .map(path)
        .sort()
        .at(-1)
      const c: VisitCounts = {
        visits: 1,
        bounces: visit.length === 1 && pages.length === 1 ? 1 : 0,
        visitDurationMs: end - start,
        visitPageviews: pages.length,
      }
      const site = visit[0]!.ev.siteId
      for (const [g, w] of [
        ['minute', MINUTE],
        ['hour', HOUR],
        ['day', DAY],
      ] as const) {
        const ws = Math.floor(start / w) * w
        add(visitKey(site, g, ws), c)
        if (g === 'minute') continue
        for (const [i, d] of SESSION_DIMENSIONS.entries()) add(visitKey(site, g, ws, d, first[i]!), c)
        if (entry !== undefined) add(visitKey(site, g, ws, 'entry_page', entry), c)
        if (exit !== undefined) add(visitKey(site, g, ws, 'exit_page', exit), c)
      }
    }
  }
  return rows
}
