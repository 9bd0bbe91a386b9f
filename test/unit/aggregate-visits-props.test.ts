import { describe, expect, it } from 'vitest'
import { KeptBreakdowns } from '../../core/aggregate/breakdowns.js'
import { capRank, OTHER } from '../../core/aggregate/props.js'
import {
  sessionize,
  type VisitEvent,
  VisitState,
  visitDeltas,
  visitEventOf,
  visitRows,
} from '../../core/aggregate/visits.js'
import type { RowKey, VisitCounts } from '../../core/ports/aggregate-store.js'
import type { RawEventV1 } from '../../schemas/events.js'
import { type Loading, RowTable, rowOf } from '../../stream/rows.js'

/**
 * Visits by custom property in the visit state (issue 17 point 4): a visit's `prop:KEY` rows carry
 * its first event's value of each declared key, through any order of events, a restore from the
 * serialized state, and a state written before keys travelled with the session values.
 */

const MIN = 60_000
const GAP = 30 * MIN
const day0 = Date.parse('2026-11-20T00:00:00Z')

function raw(visitor: string, n: number, t: number, type: RawEventV1['type'], plan?: string): RawEventV1 {
  return {
    v: 1,
    siteId: 'site-p',
    messageId: `${visitor}-${n}`,
    messageIdAssigned: false,
    type,
    anonymousId: visitor,
    ...(type === 'track' ? { event: 'signup' } : {}),
    properties: { path: `/p${n % 3}`, ...(plan === undefined ? {} : { plan }) },
    context: {},
    timestamp: new Date(t).toISOString(),
    receivedAt: new Date(t).toISOString(),
    ua: { browser: 'Firefox', os: 'Linux', device: 'desktop' },
    bot: false,
  }
}

/** Visitors with several visits, plans changing inside a visit, and a first event without plan. */
function workload(): Array<{ event: RawEventV1; t: number }> {
  const out: Array<{ event: RawEventV1; t: number }> = []
  const plans = ['free', 'pro', undefined, 'team']
  for (let v = 0; v < 12; v++) {
    let t = day0 + v * 7 * MIN + 3 * 3_600_000
    for (let n = 0; n < 1 + (v % 5); n++) {
      if (n > 0) t += [MIN, 10 * MIN, 40 * MIN][(v + n) % 3]!
      const plan = plans[(v + 2 * n) % plans.length]
      out.push({ event: raw(`v${v}`, n, t, n % 2 === 0 ? 'page' : 'track', plan), t })
    }
  }
  return out
}

/** The truth, without core/aggregate/visits.ts: visits by prop:plan of their first event, per hour. */
function reference(gen: ReadonlyArray<{ event: RawEventV1; t: number }>): Map<string, VisitCounts> {
  const byVisitor = new Map<string, Array<{ event: RawEventV1; t: number }>>()
  for (const g of gen)
    byVisitor.set(g.event.anonymousId!, [...(byVisitor.get(g.event.anonymousId!) ?? []), g])
  const out = new Map<string, VisitCounts>()
  for (const list of byVisitor.values()) {
    const sorted = [...list].sort((a, b) => a.t - b.t)
    const visits: (typeof sorted)[] = []
    for (const g of sorted) {
      const cur = visits[visits.length - 1]
      if (cur && g.t - cur[cur.length - 1]!.t < GAP) cur.push(g)
      else visits.push([g])
    }
    for (const visit of visits) {
      const first = visit[0]!
      const plan = (first.event.properties as { plan?: string }).plan ?? '(none)'
      const pages = visit.filter((g) => g.event.type === 'page').length
      const k = `hour|${Math.floor(first.t / 3_600_000) * 3_600_000}|${plan}`
      const c = out.get(k) ?? { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 }
      c.visits++
      c.bounces += visit.length === 1 && pages === 1 ? 1 : 0
      c.visitDurationMs += visit[visit.length - 1]!.t - first.t
      c.visitPageviews += pages
      out.set(k, c)
    }
  }
  return out
}

/** The prop:plan hour rows of a map of rows, without the rows left at zero. */
function planRows(rows: Iterable<{ key: RowKey; counts: VisitCounts }>): Map<string, VisitCounts> {
  const out = new Map<string, VisitCounts>()
  for (const { key, counts } of rows) {
    if (key.dimension !== 'prop:plan' || key.granularity !== 'hour' || counts.visits === 0) continue
    out.set(`hour|${key.windowStart}|${key.value}`, { ...counts })
  }
  return out
}

/** Adds events to a state and sums the deltas into rows (as the stream's rows hold them). */
function feed(
  state: VisitState,
  events: readonly VisitEvent[],
  rows: Map<string, { key: RowKey; counts: VisitCounts }>,
): void {
  for (const e of events) {
    for (const { key, delta } of visitDeltas(state.add(e), 0)) {
      const id = `${key.granularity}|${key.windowStart}|${key.dimension}|${key.value}`
      const row = rows.get(id) ?? {
        key,
        counts: { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 },
      }
      row.counts.visits += delta.visits
      row.counts.bounces += delta.bounces
      row.counts.visitDurationMs += delta.visitDurationMs
      row.counts.visitPageviews += delta.visitPageviews
      rows.set(id, row)
    }
  }
}

describe('visits by custom property', () => {
  const gen = workload()
  const eventsOf = (keys: readonly string[]) => gen.map((g) => visitEventOf(g.event, g.t, undefined, keys)!)

  it('a visit event carries its values of the declared keys after its session values', () => {
    const e = visitEventOf(raw('x', 0, day0, 'page', 'pro'), day0, undefined, ['item', 'plan'])!
    expect(e.session.slice(-2)).toEqual(['item=(none)', 'plan=pro'])
    expect(visitEventOf(raw('x', 0, day0, 'page', 'pro'), day0)!.session).toHaveLength(12)
  })

  it('the rebuild and the stream (any order, restored midway) count visits by the first event value', () => {
    const truth = reference(gen)
    expect([...truth.keys()].some((k) => k.endsWith('|(none)'))).toBe(true)
    expect(planRows(visitRows(sessionize(eventsOf(['plan']), GAP), 0).values())).toEqual(truth)
    // The stream: events in reverse order (earlier events change a visit's first event), the
    // state serialized and restored halfway.
    const events = eventsOf(['plan']).reverse()
    const rows = new Map<string, { key: RowKey; counts: VisitCounts }>()
    const state = new VisitState(GAP)
    feed(state, events.slice(0, events.length / 2), rows)
    const restored = VisitState.deserialize(state.serialize(), GAP)
    expect(restored.visits()).toEqual(state.visits())
    feed(restored, events.slice(events.length / 2), rows)
    expect(planRows(rows.values())).toEqual(truth)
    const whole = new VisitState(GAP)
    feed(whole, events, new Map())
    expect(restored.visits()).toEqual(whole.visits())
  })

  it('a state written before keys travelled with the visits reads back, its visits without prop rows', () => {
    // gen: v0 (1 event), v1 (2), v2 (3, the second a minute after the first), v3, …
    expect(gen[4]!.event.anonymousId).toBe('v2')
    expect(gen[4]!.t - gen[3]!.t).toBe(MIN)
    const before = eventsOf([])
    const state = new VisitState(GAP)
    feed(state, before.slice(0, 4), new Map())
    const restored = VisitState.deserialize(state.serialize(), GAP)
    expect(restored.visits()).toEqual(state.visits())
    const after = eventsOf(['plan'])
    // v2's open visit extended by an event with keys: its rows change, none of them a prop row.
    const rows = new Map<string, { key: RowKey; counts: VisitCounts }>()
    feed(restored, [after[4]!], rows)
    expect(
      [...rows.values()].some((r) => r.key.dimension === undefined && r.counts.visitDurationMs === MIN),
    ).toBe(true)
    expect([...rows.values()].some((r) => r.key.dimension === 'prop:plan')).toBe(false)
    // A new visit after the restore has them.
    const next = gen.findIndex((g) => g.event.anonymousId === 'v3')
    feed(restored, [after[next]!], rows)
    expect([...rows.values()].filter((r) => r.key.dimension === 'prop:plan').length).toBe(2)
  })

  it("the stream's prop rows of a visit go through the window's admission of the key's values", () => {
    const [low, high] = ['a', 'b', 'c', 'd'].sort((x, y) => capRank(x) - capRank(y))
    const table = new RowTable(10_000, new KeptBreakdowns(), 1)
    const loading: Loading[] = []
    const key = (value: string): RowKey => ({
      siteId: 's',
      granularity: 'hour',
      windowStart: day0,
      dimension: 'prop:plan',
      value,
      sourcePartition: 0,
    })
    expect(rowOf(table, loading, key(low!)).key.value).toBe(low)
    // Past the cap of 1 with a greater rank: counted under (other), again on the next change.
    expect(rowOf(table, loading, key(high!)).key.value).toBe(OTHER)
    expect(rowOf(table, loading, key(high!)).key.value).toBe(OTHER)
    expect(rowOf(table, loading, key('(none)')).key.value).toBe('(none)')
    expect(loading.map((l) => l.row.key.value)).toEqual([low, OTHER, '(none)'])
  })
})
