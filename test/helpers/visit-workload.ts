import { randomUUID } from 'node:crypto'
import type { GeneratedEvent, SegmentPage, SegmentTrack } from '../../bench/workload.js'

/**
 * Hand-made visits around one UTC midnight, for the visit tests, cloned from a generated human
 * page view (and a bot's) so ingest parses them like the workload's: visitors returning after 29
 * and after 31 minutes, a visit crossing an hour boundary, one crossing midnight UTC (two visits),
 * a one-event visit (a bounce), a track-only visit, a screen call, a duplicate (same messageId),
 * bot events inside a human's gap, and two page views at the same time (entry/exit tie-break).
 * `late` is an event that joins the two visits of visitor `late-*`, sent after the rest.
 */

const MIN = 60_000

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
