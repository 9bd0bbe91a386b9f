import { describe, expect, it } from 'vitest'
import {
  BREAKDOWN_DIMENSIONS,
  KeptBreakdowns,
  ORIGINAL_BREAKDOWNS,
  parseBreakdowns,
} from '../../core/aggregate/breakdowns.js'
import { DIMENSIONS, ROW_DIMENSIONS, SESSION_DIMENSIONS } from '../../core/aggregate/definition.js'
import { loadConfig } from '../../core/config.js'
import { ERR } from '../../core/error-codes.js'
import { ConfigError, TallyError } from '../../core/errors.js'
import { createLogger } from '../../core/log.js'
import type { ConsumedRecord } from '../../core/ports/event-log.js'
import { parseQuery } from '../../query/params.js'
import { DEFAULT_QUERY_LIMITS } from '../../query/stats.js'
import type { RawEventV1 } from '../../schemas/events.js'
import { DedupSet } from '../../stream/dedup.js'
import { countRecords, type PipelineState } from '../../stream/pipeline.js'
import { RowTable } from '../../stream/rows.js'

function configError(value: string): ConfigError {
  try {
    loadConfig({ TALLY_BREAKDOWNS: value })
  } catch (err) {
    if (err instanceof ConfigError) return err
    throw err
  }
  throw new Error(`TALLY_BREAKDOWNS=${value} was accepted`)
}

describe('TALLY_BREAKDOWNS', () => {
  it('defaults to every event dimension and entry/exit page', () => {
    expect(loadConfig({}).stream.breakdowns).toEqual([...ROW_DIMENSIONS])
    expect(loadConfig({ TALLY_BREAKDOWNS: '' }).stream.breakdowns).toEqual([...ROW_DIMENSIONS])
  })

  it('takes a comma-separated list, in the dimensions’ order, spaces and repeats ignored', () => {
    const c = loadConfig({ TALLY_BREAKDOWNS: ' country , event,path,country,exit_page' })
    expect(c.stream.breakdowns).toEqual(['event', 'path', 'country', 'exit_page'])
    expect(Object.isFrozen(c.stream.breakdowns)).toBe(true)
  })

  it('refuses an entry that is not a dimension with TALLY_ERR_CONFIG naming it and the valid names', () => {
    for (const [value, bad] of [
      ['event,countri', 'countri'],
      ['event,,path', ''],
      ['prop:plan', 'prop:plan'],
      ['goal', 'goal'],
      ['Event', 'Event'],
    ] as const) {
      const err = configError(value)
      expect(err.code).toBe(ERR.CONFIG)
      expect(err.where).toBe('TALLY_BREAKDOWNS')
      expect(err.message).toContain(`${JSON.stringify(bad)} is not a breakdown dimension`)
      for (const d of BREAKDOWN_DIMENSIONS) expect(err.message).toContain(d)
    }
  })

  it('keeps the indexes of the kept dimensions, computed once', () => {
    const parsed = parseBreakdowns('os,country,entry_page')
    if (!parsed.ok) throw new Error(`refused ${parsed.bad}`)
    const kept = new KeptBreakdowns(parsed.dimensions)
    expect(kept.event.map((i) => DIMENSIONS[i])).toEqual(['os', 'country'])
    expect(kept.session.map((i) => SESSION_DIMENSIONS[i])).toEqual(['os', 'country'])
    expect(kept.entryPage).toBe(true)
    expect(kept.exitPage).toBe(false)
    expect(kept.keeps('os')).toBe(true)
    expect(kept.keeps('path')).toBe(false)
    // Totals, custom properties and goals are always written.
    expect(kept.keeps(undefined)).toBe(true)
    expect(kept.keeps('prop:plan')).toBe(true)
    expect(kept.keeps('goal')).toBe(true)
    expect(kept.all).toBe(false)
    expect(new KeptBreakdowns().all).toBe(true)
  })
})

const HOUR_START = Date.parse('2026-03-01T12:00:00.000Z')
const COUNTRIES = ['FR', 'DE', 'US']

function event(i: number): RawEventV1 {
  const ts = new Date(HOUR_START + i * 1000).toISOString()
  return {
    v: 1,
    siteId: 'site-1',
    messageId: `m-${i}`,
    messageIdAssigned: false,
    type: i % 4 === 0 ? 'track' : 'page',
    ...(i % 4 === 0 ? { event: 'signup' } : {}),
    anonymousId: `anon-${i % 17}`,
    properties: {
      path: `/p${i % 5}`,
      url: `https://site.example/p${i % 5}?utm_source=news&utm_term=t${i % 3}`,
    },
    context: {},
    timestamp: ts,
    receivedAt: ts,
    country: COUNTRIES[i % 3]!,
    ua: { browser: 'Chrome', os: 'Linux', device: 'desktop' },
    bot: false,
  }
}

/** The rows the stream's aggregate step touches for `events`, by "granularity dimension=value": events counted. */
function streamRows(events: RawEventV1[], kept: KeptBreakdowns): Map<string, number> {
  const records: ConsumedRecord[] = events.map((e, offset) => ({
    offset,
    key: undefined,
    value: Buffer.from(JSON.stringify(e)),
    headers: {},
    timestampMs: 0,
  }))
  const state: PipelineState = {
    ref: { partition: 0 },
    rows: new RowTable(10_000, kept),
    dedup: new DedupSet(),
    watermarkMs: 0,
    processedNext: 0,
  }
  const pass = countRecords(
    state,
    { records },
    0,
    { graceMs: 3_600_000, maxFutureMs: 3_600_000, maxOpenWindows: 20_000 },
    createLogger('silent'),
  )
  expect(pass.counted).toBe(events.length)
  const rows = new Map<string, number>()
  for (const { row } of pass.loading) {
    const k = `${row.key.granularity} ${row.key.dimension ?? '(totals)'}=${row.key.value}`
    rows.set(k, row.pending!.length / 4)
  }
  return rows
}

describe('the stream with some breakdowns', () => {
  it('writes rows of the kept dimensions only, each with the same counts as with all kept', () => {
    const events = Array.from({ length: 60 }, (_, i) => event(i))
    const all = streamRows(events, new KeptBreakdowns())
    const some = streamRows(events, new KeptBreakdowns(ORIGINAL_BREAKDOWNS))
    const dimensionOf = (k: string) => k.split(' ')[1]!.split('=')[0]!
    // With all kept, the issue-17 dimensions have rows (the workload has countries and UTM terms).
    for (const d of ['country', 'source', 'channel', 'utm_term'])
      expect([...all.keys()].some((k) => dimensionOf(k) === d)).toBe(true)
    const expected = new Map(
      [...all].filter(([k]) => ['(totals)', ...ORIGINAL_BREAKDOWNS].includes(dimensionOf(k))),
    )
    expect(some).toEqual(expected)
    // Truth from the events: the country rows of the hour count each country's events.
    for (const c of COUNTRIES)
      expect(all.get(`hour country=${c}`)).toBe(events.filter((e) => e.country === c).length)
    expect(some.size).toBeLessThan(all.size)
  })
})

describe('the query with some breakdowns', () => {
  const limits = { ...DEFAULT_QUERY_LIMITS, breakdowns: ORIGINAL_BREAKDOWNS }
  const refusal = (
    raw: Record<string, string>,
    endpoint: 'breakdown' | 'aggregate' = 'breakdown',
  ): TallyError => {
    try {
      parseQuery(endpoint, { site: 's', period: 'day', ...raw }, 0, limits)
    } catch (err) {
      if (err instanceof TallyError) return err
      throw err
    }
    throw new Error(`${JSON.stringify(raw)} was accepted`)
  }

  it('refuses a breakdown or a filter on a dimension not aggregated, naming the kept ones', () => {
    const b = refusal({ property: 'country' })
    expect(b.code).toBe(ERR.BREAKDOWN_NOT_KEPT)
    expect(b.statusCode).toBe(400)
    expect(b.where).toBe('property')
    expect(b.message).toContain('country is not aggregated')
    for (const d of ORIGINAL_BREAKDOWNS) expect(b.message).toContain(d)
    const f = refusal({ filters: 'utm_term==x' }, 'aggregate')
    expect(f.code).toBe(ERR.BREAKDOWN_NOT_KEPT)
    expect(f.where).toBe('filters')
    expect(f.message).toContain('utm_term is not aggregated')
  })

  it('answers the kept ones, goals and custom properties as before', () => {
    for (const property of ['path', 'entry_page', 'goal', 'prop:plan'])
      expect(parseQuery('breakdown', { site: 's', period: 'day', property }, 0, limits).property).toBe(
        property,
      )
    expect(
      parseQuery('breakdown', { site: 's', period: 'day', property: 'country' }, 0, DEFAULT_QUERY_LIMITS)
        .property,
    ).toBe('country')
  })
})
