import { describe, expect, it } from 'vitest'
import { sessionize, visitEventOf, visitRows } from '../../core/aggregate/visits.js'
import { createLogger } from '../../core/log.js'
import type { StoredRow } from '../../core/ports/aggregate-store.js'
import type { ConsumedRecord } from '../../core/ports/event-log.js'
import type { RawEventV1 } from '../../schemas/events.js'
import { countRecords, type PipelineState } from '../../stream/pipeline.js'
import { fillLoaded } from '../../stream/rows.js'
import { restoredPartition } from '../helpers/partition-state.js'

/**
 * The stream's visit step with the worker's exactly-once scheme, without I/O: rows written with the
 * offset they count through, the visit state with the offset it covers, and restarts that replay
 * from an older checkpoint with the state last written (older or newer than the checkpoint) give
 * the rows of the visits of all events, as the rebuild computes them (sessionize + visitRows).
 */

const logger = createLogger('silent')
const GAP = 30 * 60_000
const settings = { graceMs: 6 * 3_600_000, maxFutureMs: 3_600_000, maxOpenWindows: 20_000 }
const PRECISION = 10

function event(
  i: number,
  visitor: string,
  ts: string,
  type: 'page' | 'track',
  path: string,
  bot = false,
): RawEventV1 {
  return {
    v: 1,
    siteId: 'site-1',
    messageId: `m-${i}`,
    messageIdAssigned: false,
    type,
    ...(type === 'track' ? { event: 'signup' } : {}),
    anonymousId: visitor,
    properties: { path },
    context: { page: { path, referrer: visitor === 'a' ? 'https://ref.example/x' : '' } },
    timestamp: ts,
    // Received when the last event happened: everything is inside the grace.
    receivedAt: '2026-03-02T01:00:00.000Z',
    ua: { browser: 'Firefox', os: 'Linux', device: 'desktop' },
    bot,
  } as RawEventV1
}

/** Visits across midnight UTC (cut there), an hour boundary, returns after 29 and 31 minutes, out of order, bots. */
const EVENTS: RawEventV1[] = [
  ['a', '2026-03-01T23:40:00.000Z', 'page', '/a1'],
  ['b', '2026-03-01T22:50:00.000Z', 'page', '/b1'],
  ['a', '2026-03-01T23:55:00.000Z', 'track', '/a1'],
  ['a', '2026-03-02T00:05:00.000Z', 'page', '/a2'],
  ['b', '2026-03-01T23:19:00.000Z', 'page', '/b2'],
  ['c', '2026-03-01T23:00:00.000Z', 'page', '/c1'],
  ['c', '2026-03-01T23:31:00.000Z', 'page', '/c2'],
  ['b', '2026-03-01T23:10:00.000Z', 'track', '/b2'],
  ['d', '2026-03-01T22:00:00.000Z', 'page', '/d1'],
  ['d', '2026-03-01T22:50:00.000Z', 'page', '/d3'],
  ['d', '2026-03-01T22:25:00.000Z', 'page', '/d2'],
  ['a', '2026-03-02T00:20:00.000Z', 'track', '/a2'],
  ['e', '2026-03-02T00:30:00.000Z', 'track', '/e'],
  ['c', '2026-03-01T23:45:00.000Z', 'page', '/bot'],
].map(([visitor, ts, type, path], i) =>
  event(i, visitor!, ts!, type as 'page' | 'track', path!, path === '/bot'),
)

function records(): ConsumedRecord[] {
  return EVENTS.map((e, offset) => ({
    offset,
    key: undefined,
    value: Buffer.from(JSON.stringify(e)),
    headers: {},
    timestampMs: 0,
  }))
}

/** A worker's memory of one partition plus what it wrote: rows (with throughOffset) and visit state. */
class Harness {
  stored = new Map<string, StoredRow>()
  visitState: { nextOffset: number; bytes: Uint8Array } | undefined
  checkpoint = 0
  state!: PipelineState & { processedNext: number }

  constructor() {
    this.restore()
  }

  restore(): void {
    this.state = restoredPartition(this, GAP)
  }

  process(from: number, to: number): void {
    const all = records()
    const batch = { topic: 't', partition: 0, records: all.slice(from, to), highWatermark: all.length }
    const pass = countRecords(this.state, batch, 0, settings, logger)
    expect(pass.next).toBe(to - from)
    fillLoaded(this.state.rows, pass.loading, this.stored, PRECISION, this.state.visits !== undefined)
    this.state.processedNext = Math.max(this.state.processedNext, to)
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
}

function expectRowsOfAllVisits(h: Harness): void {
  const expected = visitRows(
    sessionize(
      EVENTS.flatMap((e) => visitEventOf(e, Date.parse(e.timestamp)) ?? []),
      GAP,
    ),
    0,
  )
  const visitsOf = (id: string) => {
    const r = h.stored.get(id)
    return r && [r.visits, r.bounces, r.visitDurationMs, r.visitPageviews]
  }
  for (const [id, { counts }] of expected)
    expect(visitsOf(id), id).toEqual([
      counts.visits,
      counts.bounces,
      counts.visitDurationMs,
      counts.visitPageviews,
    ])
  // Rows the visits do not count in hold none (a visit that moved away leaves zeros).
  for (const [id, r] of h.stored)
    if (!expected.has(id)) expect([id, r.visits ?? 0, r.bounces ?? 0]).toEqual([id, 0, 0])
}

describe('the stream visit step (countRecords with visits) under the worker scheme', () => {
  it('gives the rows of the visits of all events, midnight UTC cutting a visit', () => {
    const h = new Harness()
    h.process(0, EVENTS.length)
    h.writeRows()
    expectRowsOfAllVisits(h)
    // Visitor a: 23:40–23:55 and, after midnight, 00:05–00:20 (two visits, on two days).
    const day2 = h.stored.get(`site-1\u0001day\u0001${Date.parse('2026-03-02')}\u0001\u0001\u00010`)
    expect(day2 && [day2.visits, day2.bounces]).toEqual([2, 0])
  })

  it('a crash after the rows, before the visit state and the checkpoint: the replay recomputes the same changes and rows skip them', () => {
    for (const cut of [3, 7, 11]) {
      const h = new Harness()
      h.process(0, cut - 2)
      h.writeRows()
      h.writeVisits()
      h.writeCheckpoint()
      h.process(cut - 2, cut)
      h.writeRows()
      h.restore()
      h.process(h.checkpoint, EVENTS.length)
      h.writeRows()
      expectRowsOfAllVisits(h)
    }
  })

  it('a crash after the visit state, before the checkpoint: events the state holds are not added again', () => {
    for (const cut of [3, 7, 11]) {
      const h = new Harness()
      h.process(0, cut - 2)
      h.writeRows()
      h.writeVisits()
      h.writeCheckpoint()
      h.process(cut - 2, cut)
      h.writeRows()
      h.writeVisits()
      h.restore()
      expect(h.state.visits!.nextOffset).toBeGreaterThan(h.checkpoint)
      h.process(h.checkpoint, EVENTS.length)
      h.writeRows()
      expectRowsOfAllVisits(h)
    }
  })

  it('without visits in the state (PipelineState.visits absent) rows carry none', () => {
    const h = new Harness()
    const { visits: _, ...plain } = h.state
    h.state = plain
    h.process(0, EVENTS.length)
    h.writeRows()
    for (const r of h.stored.values()) expect(r.visits).toBeUndefined()
  })
})
