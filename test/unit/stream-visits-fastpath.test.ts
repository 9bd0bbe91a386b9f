import { describe, expect, it } from 'vitest'
import { newExtension, type VisitEvent, VisitState, visitEventOf } from '../../core/aggregate/visits.js'
import { createLogger } from '../../core/log.js'
import type { StoredRow } from '../../core/ports/aggregate-store.js'
import type { ConsumedRecord } from '../../core/ports/event-log.js'
import type { RawEventV1 } from '../../schemas/events.js'
import { countRecords, type PipelineState } from '../../stream/pipeline.js'
import { fillLoaded } from '../../stream/rows.js'
import { restoredPartition } from '../helpers/partition-state.js'

/**
 * The stream's visit step takes a visit extended in place (VisitState.extend, the rows walked
 * without keys) or a new visit (its rows walked directly) apart from the general change
 * (visitDeltas). Checked here on random workloads (returns around the gap, ties in time, entry and
 * exit pages that move, out-of-order events that join visits, midnight UTC), counted in random
 * batches with crashes between the worker's writes, against a reference sessionizer written here.
 */

const logger = createLogger('silent')
const MIN = 60_000
const HOUR = 60 * MIN
const DAY = 24 * HOUR
const GAP = 30 * MIN
const PRECISION = 10
const settings = { graceMs: 2 * DAY, maxFutureMs: DAY, maxOpenWindows: 20_000 }
const day0 = Date.parse('2026-05-04T00:00:00Z')
/** The session dimensions the rows carry, as listed apart from the code under test. */
const SESSION = [
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
]

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

/** Events of `visitors` visitors, arriving shuffled within a window (received when the last was). */
function workload(seed: number, visitors: number): RawEventV1[] {
  const r = rng(seed)
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!
  const steps = [0, 0, 1000, 40_000, 3 * MIN, 29 * MIN, GAP - 1, GAP, 31 * MIN]
  const out: RawEventV1[] = []
  let n = 0
  for (let v = 0; v < visitors; v++) {
    const visitor = `v${v}`
    let t = v % 5 === 0 ? day0 + DAY - 50 * MIN : day0 + 9 * HOUR + Math.floor(r() * 3 * HOUR)
    for (let k = 1 + Math.floor(r() * 9); k > 0; k--) {
      const type = r() < 0.7 ? 'page' : 'track'
      const browser = pick(['Firefox', 'Chrome'])
      out.push({
        v: 1,
        siteId: v % 4 === 0 ? 'site-b' : 'site-a',
        messageId: `m${n++}`,
        messageIdAssigned: false,
        type,
        ...(type === 'track' ? { event: 'signup' } : {}),
        anonymousId: visitor,
        properties: { path: pick(['/', '/a', '/b', '/c']) },
        context: {
          page: { referrer: pick(['https://www.google.com/', '', 'https://news.ycombinator.com/']) },
        },
        timestamp: new Date(t).toISOString(),
        receivedAt: new Date(day0 + 2 * DAY).toISOString(),
        ua: { browser, os: 'Linux', device: 'desktop' },
        bot: r() < 0.03,
      } as RawEventV1)
      t += pick(steps)
    }
  }
  // Out of order: a visitor's events in any order, visitors interleaved.
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1))
    ;[out[i], out[j]] = [out[j]!, out[i]!]
  }
  return out
}

const key = (site: string, g: string, ws: number, dim = '', value = '') =>
  `${site}|${g}|${ws}|${dim}|${value}`

/** Visit counts per row from the definition: sort, cut at gaps and midnight, count in start windows. */
function reference(events: readonly RawEventV1[]): Map<string, number[]> {
  const groups = new Map<string, Array<{ t: number; e: RawEventV1; ve: VisitEvent }>>()
  for (const e of events) {
    if (e.bot) continue
    const t = Date.parse(e.timestamp)
    // visitEventOf only for the dimension values (referrer parsing, source, channel): the
    // sessions are cut here.
    const ve = visitEventOf(e, t)!
    const k = `${e.siteId}|${e.anonymousId}|${Math.floor(t / DAY)}`
    groups.set(k, [...(groups.get(k) ?? []), { t, e, ve }])
  }
  const rows = new Map<string, number[]>()
  const add = (k: string, c: number[]) => {
    const row = rows.get(k) ?? [0, 0, 0, 0]
    rows.set(
      k,
      row.map((x, i) => x + c[i]!),
    )
  }
  for (const list of groups.values()) {
    list.sort((a, b) => a.t - b.t)
    const visits: Array<typeof list> = []
    for (const x of list) {
      const cur = visits.at(-1)
      if (cur && x.t - cur.at(-1)!.t < GAP) cur.push(x)
      else visits.push([x])
    }
    for (const visit of visits) {
      const start = visit[0]!.t
      const first = visit
        .filter((x) => x.t === start)
        .map((x) => x.ve.session)
        .sort((a, b) => (a.join('\u0001') < b.join('\u0001') ? -1 : 1))[0]!
      const pages = visit.filter((x) => x.e.type === 'page')
      const entry = pages
        .filter((x) => x.t === pages[0]?.t)
        .map((x) => x.ve.path)
        .sort()[0]
      const exit = pages
        .filter((x) => x.t === pages.at(-1)?.t)
        .map((x) => x.ve.path)
        .sort()
        .at(-1)
      const c = [1, visit.length === 1 && pages.length === 1 ? 1 : 0, visit.at(-1)!.t - start, pages.length]
      const site = visit[0]!.e.siteId
      for (const [g, w] of [
        ['minute', MIN],
        ['hour', HOUR],
        ['day', DAY],
      ] as const) {
        const ws = Math.floor(start / w) * w
        add(key(site, g, ws), c)
        if (g === 'minute') continue
        for (const [i, d] of SESSION.entries()) add(key(site, g, ws, d, first[i]!), c)
        if (entry !== undefined) add(key(site, g, ws, 'entry_page', entry), c)
        if (exit !== undefined) add(key(site, g, ws, 'exit_page', exit), c)
      }
    }
  }
  return rows
}

/** The worker's scheme without I/O: rows, visit state and checkpoint written in order; crashes between. */
class Harness {
  stored = new Map<string, { key: StoredRow; label: string }>()
  visitState: { nextOffset: number; bytes: Uint8Array } | undefined
  checkpoint = 0
  state!: PipelineState & { processedNext: number }

  constructor(readonly records: ConsumedRecord[]) {
    this.restore()
  }

  restore(): void {
    this.state = restoredPartition(this, GAP)
  }

  process(from: number, to: number): void {
    const batch = { topic: 't', partition: 0, records: this.records.slice(from, to), highWatermark: to }
    const pass = countRecords(this.state, batch, 0, settings, logger)
    expect(pass.next).toBe(to - from)
    const loaded = new Map([...this.stored].map(([id, r]) => [id, r.key]))
    fillLoaded(this.state.rows, pass.loading, loaded, PRECISION, true)
    this.state.processedNext = Math.max(this.state.processedNext, to)
  }

  writeRows(): void {
    for (const r of this.state.rows.dirty) {
      const k = r.key
      this.stored.set(r.id, {
        key: { ...r.acc!.values(), throughOffset: r.throughOffset },
        label: key(k.siteId, k.granularity, k.windowStart, k.dimension ?? '', k.value),
      })
      r.dirty = false
    }
    this.state.rows.dirty = []
  }

  /** As the worker: the state covers the events below processedNext and below its restored nextOffset. */
  writeVisits(): void {
    const visits = this.state.visits!
    const nextOffset = Math.max(this.state.processedNext, visits.nextOffset)
    this.visitState = { nextOffset, bytes: visits.state.serialize() }
  }

  writeCheckpoint(): void {
    this.checkpoint = this.state.processedNext
  }

  visitRows(): Map<string, number[]> {
    const out = new Map<string, number[]>()
    for (const { key: r, label } of this.stored.values()) {
      const c = [r.visits ?? 0, r.bounces ?? 0, r.visitDurationMs ?? 0, r.visitPageviews ?? 0]
      if (c.some((x) => x !== 0)) out.set(label, c)
    }
    return out
  }
}

const sorted = (m: Map<string, number[]>) => [...m].sort((a, b) => (a[0] < b[0] ? -1 : 1))

describe('the stream visit step: visits extended in place and new visits', () => {
  it('VisitState.extend then add leaves the state add alone leaves, event by event', () => {
    for (const seed of [1, 2, 3]) {
      const events = workload(seed, 200).flatMap((e) => visitEventOf(e, Date.parse(e.timestamp)) ?? [])
      const plain = new VisitState(GAP)
      const fast = new VisitState(GAP)
      const x = newExtension()
      let extended = 0
      for (const e of events) {
        plain.add(e)
        if (fast.extend(e.siteId, e.visitor, e.timestampMs, e.pageview, e.path, x)) extended++
        else fast.add(e)
        expect(fast.openVisits).toBe(plain.openVisits)
      }
      expect(fast.visits()).toEqual(plain.visits())
      expect(fast.serialize()).toEqual(plain.serialize())
      // Both paths were taken.
      expect(extended).toBeGreaterThan(events.length / 6)
      expect(extended).toBeLessThan(events.length)
    }
  })

  it('counted in random batches with crashes between rows, visit state and checkpoint, the rows equal the reference', () => {
    for (const seed of [21, 22, 23, 24]) {
      const events = workload(seed, 150)
      const records: ConsumedRecord[] = events.map((e, offset) => ({
        offset,
        key: undefined,
        value: Buffer.from(JSON.stringify(e)),
        headers: {},
        timestampMs: 0,
      }))
      const r = rng(seed)
      const h = new Harness(records)
      let at = 0
      while (at < records.length) {
        const to = Math.min(records.length, at + 1 + Math.floor(r() * 40))
        h.process(at, to)
        at = to
        const crash = r()
        // A flush: rows, then the visit state, then the checkpoint; a crash may cut it anywhere.
        h.writeRows()
        if (crash < 0.1) {
          h.restore()
          at = h.checkpoint
          continue
        }
        h.writeVisits()
        if (crash < 0.2) {
          h.restore()
          at = h.checkpoint
          continue
        }
        h.writeCheckpoint()
      }
      expect(sorted(h.visitRows())).toEqual(sorted(reference(events)))
    }
  })
})
