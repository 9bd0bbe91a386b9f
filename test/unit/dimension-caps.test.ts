import { describe, expect, it } from 'vitest'
import { capVisitRows } from '../../batch/visits.js'
import { DIRECT, NONE } from '../../core/aggregate/definition.js'
import {
  CAPPED_DIMENSIONS,
  capValues,
  isCappedDimension,
  keptValues,
  OTHER,
  valuesMaxOf,
} from '../../core/aggregate/props.js'
import { DIRECT_NONE } from '../../core/aggregate/source.js'
import { createLogger } from '../../core/log.js'
import type { RowKey, VisitCounts } from '../../core/ports/aggregate-store.js'
import type { ConsumedRecord, RecordBatch } from '../../core/ports/event-log.js'
import type { RawEventV1 } from '../../schemas/events.js'
import { DedupSet } from '../../stream/dedup.js'
import { countRecords, type PipelineState } from '../../stream/pipeline.js'
import { type Loading, RowTable, rowOf } from '../../stream/rows.js'

const logger = createLogger('silent')
const settings = { graceMs: 3_600_000, maxFutureMs: 3_600_000, maxOpenWindows: 20_000 }
const HOUR_START = Date.parse('2026-03-01T12:00:00.000Z')

function event(i: number, path: string, referrer: string): RawEventV1 {
  const ts = new Date(HOUR_START + (i % 3_000) * 1000).toISOString()
  return {
    v: 1,
    siteId: 'site-1',
    messageId: `m-${i}`,
    messageIdAssigned: false,
    type: 'page',
    anonymousId: `anon-${i % 40}`,
    properties: { path, referrer },
    context: {},
    timestamp: ts,
    receivedAt: ts,
    ua: { browser: 'Chrome', os: 'Linux', device: 'desktop' },
    bot: false,
  }
}

function batch(partition: number, events: RawEventV1[]): RecordBatch {
  const records: ConsumedRecord[] = events.map((e, offset) => ({
    offset,
    key: undefined,
    value: Buffer.from(JSON.stringify(e)),
    headers: {},
    timestampMs: 0,
  }))
  return { topic: 't', partition, records, highWatermark: records.length }
}

function state(partition: number, max: number): PipelineState {
  return {
    ref: { partition },
    rows: new RowTable(max),
    dedup: new DedupSet(),
    watermarkMs: 0,
    processedNext: 0,
  }
}

describe('the capped dimensions', () => {
  it('are path, referrer, source and the UTM set, and custom properties; not the closed ones nor entry/exit pages (yet)', () => {
    for (const d of CAPPED_DIMENSIONS) expect(isCappedDimension(d)).toBe(true)
    expect(isCappedDimension('prop:plan')).toBe(true)
    for (const d of ['event', 'browser', 'os', 'device', 'country', 'channel', 'entry_page', 'exit_page'])
      expect(isCappedDimension(d)).toBe(false)
    expect(valuesMaxOf('path', { propValuesMax: 7, dimensionValuesMax: 9 })).toBe(9)
    expect(valuesMaxOf('prop:plan', { propValuesMax: 7, dimensionValuesMax: 9 })).toBe(7)
    expect(valuesMaxOf('referrer', {})).toBe(10_000)
  })

  it('always keep the "no value" values (none), (direct) and Direct / None', () => {
    const values = Array.from({ length: 100 }, (_, i) => `/p${i}`)
    const kept = keptValues([...values, NONE, DIRECT, DIRECT_NONE, OTHER], 5)
    expect(kept.size).toBe(9)
    for (const v of [NONE, DIRECT, DIRECT_NONE, OTHER]) expect(kept.has(v)).toBe(true)
  })

  it('the stream admits path and referrer values per window so that its rows, folded on read, are the truth folded by the rule', () => {
    const MAX = 25
    const events = Array.from({ length: 3000 }, (_, i) =>
      event(i, `/page/${(i * 7) % 300}`, i % 4 === 0 ? '' : `https://r${(i * 13) % 150}.example/x`),
    )
    // Truth, from the events themselves: per dimension, counts by value in the hour (and day) window.
    const truth = { path: new Map<string, number>(), referrer: new Map<string, number>() }
    for (const e of events) {
      const p = e.properties as { path: string; referrer: string }
      truth.path.set(p.path, (truth.path.get(p.path) ?? 0) + 1)
      const host = p.referrer === '' ? DIRECT : new URL(p.referrer).hostname
      truth.referrer.set(host, (truth.referrer.get(host) ?? 0) + 1)
    }
    // Three partitions, each event in one of them (as the source topic's partitions share a window).
    const states = [0, 1, 2].map((p) => state(p, MAX))
    const loading: Loading[] = []
    states.forEach((s, p) => {
      const pass = countRecords(
        s,
        batch(
          p,
          events.filter((_, i) => i % 3 === p),
        ),
        0,
        settings,
        logger,
      )
      expect(pass.counted).toBe(1000)
      loading.push(...pass.loading)
    })
    for (const dimension of ['path', 'referrer'] as const) {
      for (const granularity of ['hour', 'day'] as const) {
        // The rows the stream holds (not loaded here: each keeps its events as 4 numbers).
        const held = new Map<string, number>()
        for (const { row } of loading) {
          if (row.key.dimension !== dimension || row.key.granularity !== granularity) continue
          held.set(row.key.value, (held.get(row.key.value) ?? 0) + row.pending!.length / 4)
        }
        expect(held.has(OTHER)).toBe(true)
        // Each partition's window held fewer rows than values: about MAX · (1 + ln(values / MAX)).
        expect(held.size).toBeLessThan(truth[dimension].size)
        const { values: read, hit } = capValues(held, MAX, (a, b) => (a ?? 0) + b)
        expect(hit).toBe(true)
        const kept = keptValues(truth[dimension].keys(), MAX)
        const expected = new Map<string, number>()
        for (const [v, n] of truth[dimension]) {
          const k = kept.has(v) ? v : OTHER
          expected.set(k, (expected.get(k) ?? 0) + n)
        }
        expect(read).toEqual(expected)
      }
    }
  })

  it("a visit change of a session dimension reaches the row its first event counted in: the value's own, or (other)", () => {
    const s = state(0, 3)
    const values = Array.from({ length: 40 }, (_, i) => `https://r${i}.example/`)
    const pass = countRecords(
      s,
      batch(
        0,
        values.map((r, i) => event(i, '/a', r)),
      ),
      0,
      settings,
      logger,
    )
    const counted = new Map<string, string>()
    for (const { row } of pass.loading)
      if (row.key.dimension === 'referrer' && row.key.granularity === 'hour')
        counted.set(row.key.value, row.id)
    const key = (value: string): RowKey => ({
      siteId: 'site-1',
      granularity: 'hour',
      windowStart: HOUR_START,
      dimension: 'referrer',
      value,
      sourcePartition: 0,
    })
    const loading: Loading[] = []
    let folded = 0
    for (const r of values) {
      const host = new URL(r).hostname
      const row = rowOf(s.rows, loading, key(host))
      // Kept by the events' admission: its own row, else the (other) row; never a new row.
      if (counted.has(host)) expect(row.id).toBe(counted.get(host))
      else {
        expect(row.key.value).toBe(OTHER)
        folded++
      }
    }
    expect(folded).toBeGreaterThan(0)
    expect(loading).toEqual([])
    // entry_page is capped by its day's paths, which hold one (/a) of 3: a new page gets its own row.
    expect(rowOf(s.rows, loading, { ...key('/x'), dimension: 'entry_page' }).key.value).toBe('/x')
  })

  it("an entry or exit page reaches its own row when its day's path admission keeps it, else (other), in hour and day windows", () => {
    const s = state(0, 3)
    const paths = Array.from({ length: 40 }, (_, i) => `/p${i}`)
    const pass = countRecords(
      s,
      batch(
        0,
        paths.map((p, i) => event(i, p, '')),
      ),
      0,
      settings,
      logger,
    )
    // The day window's path rows: the paths its admission kept (each event counted in one row).
    const dayPaths = new Set<string>()
    for (const { row } of pass.loading)
      if (row.key.dimension === 'path' && row.key.granularity === 'day') dayPaths.add(row.key.value)
    expect(dayPaths.has(OTHER)).toBe(true)
    const loading: Loading[] = []
    let folded = 0
    for (const dimension of ['entry_page', 'exit_page'] as const) {
      for (const [granularity, windowStart] of [
        ['hour', HOUR_START],
        ['day', Math.floor(HOUR_START / 86_400_000) * 86_400_000],
      ] as const) {
        for (const p of paths) {
          const key: RowKey = {
            siteId: 'site-1',
            granularity,
            windowStart,
            dimension,
            value: p,
            sourcePartition: 0,
          }
          const row = rowOf(s.rows, loading, key)
          const again = rowOf(s.rows, loading, key)
          // Admitted or refused once, it stays so: a visit's later change reaches the same row.
          expect(again).toBe(row)
          if (dayPaths.has(p)) expect(row.key.value).toBe(p)
          else {
            expect(row.key.value).toBe(OTHER)
            folded++
          }
        }
      }
    }
    expect(folded).toBeGreaterThan(0)
    // A page row per kept path and one (other) (dayPaths holds both), per window and dimension.
    expect(loading.length).toBe(4 * dayPaths.size)
  })
})

describe('the rebuild caps the visit rows of the session dimensions (capVisitRows)', () => {
  it("folds entry and exit pages not among the day's kept paths into (other), the sums kept", () => {
    const counts = (i: number): VisitCounts => ({
      visits: i + 1,
      bounces: i % 2,
      visitDurationMs: 1000 * i,
      visitPageviews: 2 * i + 1,
    })
    const row = (dimension: RowKey['dimension'], value: string, i: number) => ({
      key: {
        siteId: 's',
        granularity: 'hour' as const,
        windowStart: HOUR_START,
        dimension,
        value,
        sourcePartition: 0,
      },
      counts: counts(i),
    })
    const pages = Array.from({ length: 30 }, (_, i) => `/p${i}`)
    const rows = [
      ...pages.map((p, i) => row('entry_page', p, i)),
      ...pages.map((p, i) => row('exit_page', p, 29 - i)),
      row('browser', 'b', 1),
    ]
    // The day's paths are more than the pages (a page is a path of its day).
    const kept = keptValues([...pages, ...Array.from({ length: 50 }, (_, i) => `/q${i}`)], 10)
    const out = [...capVisitRows(rows, 10, kept)]
    for (const d of ['entry_page', 'exit_page'] as const) {
      const mine = rows.filter((r) => r.key.dimension === d)
      const got = new Map(out.filter((r) => r.key.dimension === d).map((r) => [r.key.value, r.counts]))
      const expected = new Map<string, VisitCounts>()
      for (const r of mine) {
        const v = kept.has(r.key.value) ? r.key.value : OTHER
        const e = expected.get(v) ?? { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 }
        e.visits += r.counts.visits
        e.bounces += r.counts.bounces
        e.visitDurationMs += r.counts.visitDurationMs
        e.visitPageviews += r.counts.visitPageviews
        expected.set(v, e)
      }
      expect(expected.has(OTHER)).toBe(true)
      expect(got).toEqual(expected)
    }
    expect(out.filter((r) => r.key.dimension === 'browser')).toHaveLength(1)
  })

  it('folds a window past the cap into (other) by the rule, keeps the totals, leaves other dimensions as they are', () => {
    const counts = (i: number): VisitCounts => ({
      visits: i + 1,
      bounces: i % 2,
      visitDurationMs: 1000 * i,
      visitPageviews: 2 * i + 1,
    })
    const row = (dimension: RowKey['dimension'], value: string, i: number) => ({
      key: {
        siteId: 's',
        granularity: 'hour' as const,
        windowStart: HOUR_START,
        dimension,
        value,
        sourcePartition: 0,
      },
      counts: counts(i),
    })
    const rows = [
      ...Array.from({ length: 40 }, (_, i) => row('referrer', `r${i}.example`, i)),
      row('referrer', DIRECT, 100),
      ...Array.from({ length: 40 }, (_, i) => row('entry_page', `/p${i}`, i)),
      ...Array.from({ length: 4 }, (_, i) => row('browser', `b${i}`, i)),
    ]
    const out = [...capVisitRows(rows, 10)]
    const by = (d: string) =>
      new Map(out.filter((r) => r.key.dimension === d).map((r) => [r.key.value, r.counts]))
    expect(by('entry_page').size).toBe(40)
    expect(by('browser').size).toBe(4)
    const referrer = by('referrer')
    const kept = keptValues(
      rows.filter((r) => r.key.dimension === 'referrer').map((r) => r.key.value),
      10,
    )
    expect(new Set(referrer.keys())).toEqual(new Set([...kept, OTHER]))
    const sum = (xs: Iterable<VisitCounts>) =>
      [...xs].reduce(
        (a, c) => ({
          visits: a.visits + c.visits,
          bounces: a.bounces + c.bounces,
          visitDurationMs: a.visitDurationMs + c.visitDurationMs,
          visitPageviews: a.visitPageviews + c.visitPageviews,
        }),
        { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 },
      )
    expect(sum(referrer.values())).toEqual(
      sum(rows.filter((r) => r.key.dimension === 'referrer').map((r) => r.counts)),
    )
    expect(referrer.get(OTHER)).toEqual(
      sum(rows.filter((r) => r.key.dimension === 'referrer' && !kept.has(r.key.value)).map((r) => r.counts)),
    )
  })
})
