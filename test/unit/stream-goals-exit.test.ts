import { describe, expect, it } from 'vitest'
import { eventGoal, GoalMatcher, pageGoal } from '../../core/aggregate/goals.js'
import { type EndedVisit, VisitState } from '../../core/aggregate/visits.js'
import { HyperLogLog } from '../../core/hll.js'
import { createLogger } from '../../core/log.js'
import type { StoredRow } from '../../core/ports/aggregate-store.js'
import type { ConsumedRecord } from '../../core/ports/event-log.js'
import type { RawEventV1 } from '../../schemas/events.js'
import { countEndedGoals, countRecords, type PipelineState } from '../../stream/pipeline.js'
import { fillLoaded, type Loading } from '../../stream/rows.js'
import { restoredPartition } from '../helpers/partition-state.js'

/**
 * Conversions by exit page in the stream, without I/O: the goals reached are kept per visit in the
 * state, and the flush evicts ended visits, adding their converters to `goal|exit_page` rows of the
 * visit's start windows before the rows are written. Against truth computed here by a reference
 * sessionizer written apart (gap rule, exit = last pageview, greatest path on a tie), with crashes
 * between the writes and replays from an older checkpoint.
 */

const logger = createLogger('silent')
const GAP = 30 * 60_000
const HOUR = 3_600_000
const DAY = 86_400_000
const PRECISION = 10
const settings = { graceMs: 24 * HOUR, maxFutureMs: 24 * HOUR, maxOpenWindows: 20_000 }
const GOALS = new GoalMatcher([eventGoal('Signup'), pageGoal('/pricing/*')])

type Spec = [visitor: string, minute: number, type: 'page' | 'track', path: string]
const T0 = Date.parse('2026-03-01T08:10:00.000Z')

/** A seeded workload: 12 visitors, returns after 20 and 40 minutes, goals by event and by page. */
function workload(seed: number): Spec[] {
  let x = seed
  const rnd = () => {
    x = (x * 1103515245 + 12345) % 2 ** 31
    return x / 2 ** 31
  }
  const out: Spec[] = []
  const paths = ['/', '/pricing/pro', '/pricing/team', '/docs', '/blog/a']
  for (let v = 0; v < 12; v++) {
    let minute = Math.floor(rnd() * 60)
    for (let n = 0; n < 3 + Math.floor(rnd() * 6); n++) {
      minute += rnd() < 0.2 ? 40 : Math.floor(rnd() * 20)
      const track = rnd() < 0.25
      out.push([`v${v}`, minute, track ? 'track' : 'page', paths[Math.floor(rnd() * paths.length)]!])
      if (track && rnd() < 0.5) out[out.length - 1] = [`v${v}`, minute, 'track', '/']
    }
  }
  // The stream's order: by time (ties by visitor), as events arrive live.
  return out.sort((a, b) => a[1] - b[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
}

function eventOf(i: number, [visitor, minute, type, path]: Spec): RawEventV1 {
  return {
    v: 1,
    siteId: 'site-1',
    messageId: `m-${i}`,
    messageIdAssigned: false,
    type,
    ...(type === 'track' ? { event: i % 3 === 0 ? 'Signup' : 'Other' } : {}),
    anonymousId: visitor,
    properties: { path },
    context: { page: { path, referrer: '' } },
    timestamp: new Date(T0 + minute * 60_000).toISOString(),
    receivedAt: new Date(T0 + 400 * 60_000).toISOString(),
    ua: { browser: 'Firefox', os: 'Linux', device: 'desktop' },
    bot: false,
  } as RawEventV1
}

/** The goals an event completes, by the rule written out (not the module's matcher). */
function reachedOf(e: RawEventV1): string[] {
  const path = (e.properties as { path: string }).path
  if (e.type === 'track') return (e as { event?: string }).event === 'Signup' ? ['Signup'] : []
  return /^\/pricing\/[^/]*$/.test(path) ? ['Visit /pricing/*'] : []
}

/** Truth: `granularity|windowStart|goal\u001fexit` → converters. */
function truthOf(events: readonly RawEventV1[]): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>()
  const byVisitor = new Map<string, RawEventV1[]>()
  for (const e of events) byVisitor.set(e.anonymousId!, [...(byVisitor.get(e.anonymousId!) ?? []), e])
  for (const [visitor, list] of byVisitor) {
    const sorted = [...list].sort((a, b) => Date.parse(a.timestamp) - Date.parse(b.timestamp))
    let visit: RawEventV1[] = []
    const close = () => {
      if (visit.length === 0) return
      const start = Date.parse(visit[0]!.timestamp)
      let exit: { ts: number; path: string } | undefined
      for (const e of visit) {
        if (e.type !== 'page') continue
        const ts = Date.parse(e.timestamp)
        const path = (e.properties as { path: string }).path
        if (!exit || ts > exit.ts || (ts === exit.ts && path > exit.path)) exit = { ts, path }
      }
      const goals = new Set(visit.flatMap(reachedOf))
      for (const [g, size] of [
        ['hour', HOUR],
        ['day', DAY],
      ] as const)
        for (const goal of goals) {
          const k = `${g}|${Math.floor(start / size) * size}|${goal}\u001f${exit?.path ?? '(none)'}`
          out.set(k, (out.get(k) ?? new Set()).add(visitor))
        }
      visit = []
    }
    for (const e of sorted) {
      const last = visit[visit.length - 1]
      if (last && Date.parse(e.timestamp) - Date.parse(last.timestamp) >= GAP) close()
      visit.push(e)
    }
    close()
  }
  return out
}

class Harness {
  stored = new Map<string, StoredRow>()
  visitState: { nextOffset: number; bytes: Uint8Array } | undefined
  checkpoint = 0
  state!: PipelineState & { processedNext: number }

  constructor(readonly events: readonly RawEventV1[]) {
    this.restore()
  }

  restore(): void {
    this.state = restoredPartition(this, GAP, {
      keysOf: () => [],
      known: () => true,
      maxValues: 10,
      goalsOf: () => GOALS,
    })
  }

  process(from: number, to: number): void {
    const records: ConsumedRecord[] = this.events.slice(from, to).map((e, k) => ({
      offset: from + k,
      key: undefined,
      value: Buffer.from(JSON.stringify(e)),
      headers: {},
      timestampMs: 0,
    }))
    const pass = countRecords(this.state, { records }, 0, settings, logger)
    expect(pass.next).toBe(to - from)
    fillLoaded(this.state.rows, pass.loading, this.stored, PRECISION, true)
    this.state.processedNext = Math.max(this.state.processedNext, to)
  }

  /** The flush's eviction (the worker's, with the line given): ended visits' converters into rows. */
  evict(lineMs: number): void {
    const ended: EndedVisit[] = []
    if (this.state.visits!.state.evict(lineMs, ended) > 0) this.state.visits!.changed = true
    const loading: Loading[] = []
    countEndedGoals(ended, this.state.rows, 0, loading)
    fillLoaded(this.state.rows, loading, this.stored, PRECISION, true)
  }

  /** The least time an event after `offset` may have less a gap: visits ended by then are over. */
  lineAfter(offset: number): number {
    return Date.parse(this.events[offset - 1]!.timestamp) - GAP - 60_000
  }

  writeRows(): void {
    for (const r of this.state.rows.dirty) {
      this.stored.set(r.id, { ...r.acc!.values(), throughOffset: r.throughOffset })
      r.dirty = false
    }
    this.state.rows.dirty = []
  }

  writeVisits(): void {
    this.visitState = { nextOffset: this.state.processedNext, bytes: this.state.visits!.state.serialize() }
  }

  writeCheckpoint(): void {
    this.checkpoint = this.state.processedNext
  }

  flush(lineMs: number): void {
    this.evict(lineMs)
    this.writeRows()
    this.writeVisits()
    this.writeCheckpoint()
  }
}

function estimate(ids: Iterable<string>): number {
  const h = new HyperLogLog(PRECISION)
  for (const id of ids) h.add(id)
  return h.estimate()
}

function expectTruth(h: Harness): void {
  const truth = truthOf(h.events)
  expect(truth.size).toBeGreaterThan(4)
  const got = new Map<string, StoredRow>()
  for (const [id, r] of h.stored) {
    const [, granularity, ws, dimension, value] = id.split('\u0001')
    if (dimension === 'goal|exit_page') got.set(`${granularity}|${ws}|${value}`, r)
  }
  expect([...got.keys()].sort()).toEqual([...truth.keys()].sort())
  for (const [k, ids] of truth) {
    const r = got.get(k)!
    expect([k, r.events, r.pageviews, HyperLogLog.fromBytes(r.visitors).estimate()]).toEqual([
      k,
      0,
      0,
      estimate(ids),
    ])
  }
}

describe('conversions by exit page in the stream (eviction rows, exactly once)', () => {
  const END = Date.parse('2026-03-02T12:00:00.000Z')

  it('writes each ended visit’s converters under its final exit page, in its start windows', () => {
    for (const seed of [1, 2, 3]) {
      const h = new Harness(workload(seed).map((s, i) => eventOf(i, s)))
      const n = h.events.length
      h.process(0, Math.floor(n / 2))
      h.flush(h.lineAfter(Math.floor(n / 2)))
      h.process(Math.floor(n / 2), n)
      h.flush(END)
      expect(h.state.visits!.state.openVisits).toBe(0)
      expectTruth(h)
    }
  })

  it('replays after a crash between the rows and the state, and between the state and the checkpoint', () => {
    for (const seed of [4, 5]) {
      const events = workload(seed).map((s, i) => eventOf(i, s))
      const n = events.length
      for (const cut of [Math.floor(n / 3), Math.floor((2 * n) / 3)]) {
        for (const crashAfterState of [false, true]) {
          const h = new Harness(events)
          h.process(0, cut - 3)
          h.flush(h.lineAfter(cut - 3))
          h.process(cut - 3, cut)
          // The flush's eviction and rows, then the crash (with or without the state written).
          h.evict(h.lineAfter(cut))
          h.writeRows()
          if (crashAfterState) h.writeVisits()
          h.restore()
          h.process(h.checkpoint, n)
          h.flush(END)
          expectTruth(h)
        }
      }
    }
  })

  it('keeps the goals reached in the serialized state (format 3), and reads format 2 as before', () => {
    const s = new VisitState(GAP)
    const e = eventOf(0, ['v1', 0, 'page', '/pricing/pro'])
    s.add({
      siteId: 'site-1',
      visitor: 'v1',
      timestampMs: Date.parse(e.timestamp),
      pageview: true,
      path: '/pricing/pro',
      session: ['x'],
    })
    expect(s.serialize()[0]).toBe(2)
    expect(s.reachGoals('site-1', 'v1', Date.parse(e.timestamp), ['Visit /pricing/*'])).toBe(true)
    expect(s.reachGoals('site-1', 'v1', Date.parse(e.timestamp), ['Visit /pricing/*'])).toBe(false)
    const bytes = s.serialize()
    expect(bytes[0]).toBe(3)
    const back = VisitState.deserialize(bytes, GAP)
    const ended: EndedVisit[] = []
    back.evict(END, ended)
    expect(ended).toEqual([
      {
        siteId: 'site-1',
        visitor: 'v1',
        startMs: Date.parse(e.timestamp),
        exitPage: '/pricing/pro',
        goals: ['Visit /pricing/*'],
      },
    ])
  })
})
