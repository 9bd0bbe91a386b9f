import { describe, expect, it } from 'vitest'
import { createLogger } from '../../core/log.js'
import type { ConsumedRecord, RecordBatch } from '../../core/ports/event-log.js'
import type { RawEventV1 } from '../../schemas/events.js'
import { DedupSet } from '../../stream/dedup.js'
import { countRecords, type PipelineState } from '../../stream/pipeline.js'
import { RowTable } from '../../stream/rows.js'

const logger = createLogger('silent')
const settings = { graceMs: 60_000, maxFutureMs: 3_600_000, maxOpenWindows: 20_000 }

function event(messageId: string, timestamp: string, receivedAt = timestamp): RawEventV1 {
  return {
    v: 1,
    siteId: 'site-1',
    messageId,
    messageIdAssigned: false,
    type: 'page',
    anonymousId: 'anon-1',
    properties: { path: '/a' },
    context: {},
    timestamp,
    receivedAt,
    ua: { browser: 'Chrome', os: 'Linux', device: 'desktop' },
    bot: false,
  }
}

function record(offset: number, value: RawEventV1 | string): ConsumedRecord {
  const bytes = Buffer.from(typeof value === 'string' ? value : JSON.stringify(value))
  return { offset, key: undefined, value: bytes, headers: {}, timestampMs: 0 }
}

function batch(records: ConsumedRecord[]): RecordBatch {
  return { topic: 't', partition: 0, records, highWatermark: records.length }
}

function state(processedNext = 0): PipelineState {
  return { ref: { partition: 0 }, rows: new RowTable(), dedup: new DedupSet(), watermarkMs: 0, processedNext }
}

describe('the stream pipeline (countRecords)', () => {
  it('runs each record through decode, validate, dedup, classify and aggregate, and reports every outcome', () => {
    const s = state(1)
    const pass = countRecords(
      s,
      batch([
        record(0, event('m-0', '2026-03-01T12:00:00.000Z')),
        record(1, event('m-1', '2026-03-01T12:00:00.000Z')),
        record(2, event('m-1', '2026-03-01T12:00:00.000Z')),
        record(3, '{not json'),
        record(4, event('m-late', '2026-03-01T11:00:00.000Z', '2026-03-01T12:00:01.000Z')),
      ]),
      0,
      settings,
      logger,
    )
    expect(pass.next).toBe(5)
    expect(pass.lastOffset).toBe(4)
    expect(pass.counted).toBe(1)
    expect(Object.fromEntries(pass.outcomes)).toEqual({ replayed: 1, duplicate: 1, late: 1 })
    expect(pass.deadLetters.map((d) => d.offset)).toEqual([3])
    // One counted event touches 3 totals rows and 28 breakdown rows (14 dimensions × hour and day), none in memory yet.
    expect(pass.loading).toHaveLength(31)
    expect(s.rows.windows).toBe(3)
    expect(s.watermarkMs).toBe(Date.parse('2026-03-01T12:00:01.000Z'))
  })

  it('stops before a record that could open more windows than the cap', () => {
    const s = state()
    const records = [0, 1, 2].map((i) => record(i, event(`m-${i}`, `2026-03-0${i + 1}T12:00:00.000Z`)))
    const pass = countRecords(s, batch(records), 0, { ...settings, maxOpenWindows: 5 }, logger)
    expect(pass.next).toBe(1)
    expect(pass.counted).toBe(1)
  })
})
