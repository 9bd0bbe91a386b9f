import { describe, expect, it } from 'vitest'
import { decodeRecord } from '../../batch/decode.js'
import type { ConsumedRecord } from '../../core/ports/event-log.js'
import { decodeEvent, toLogRecord } from '../../core/record/codec.js'
import { recordHeaders, requestIdOf } from '../../core/record/headers.js'
import {
  entriesOf,
  FORMAT_HEADER,
  MAX_PACKED_EVENTS,
  packedHeaders,
  packRecords,
  unpackRecord,
} from '../../core/record/packed.js'
import type { RawEventV1 } from '../../schemas/events.js'

function event(i: number, over: Partial<RawEventV1> = {}): RawEventV1 {
  return {
    v: 1,
    siteId: `site-${i % 3}`,
    messageId: `m-${i}`,
    messageIdAssigned: false,
    type: 'page',
    anonymousId: `anon-${i % 5}`,
    properties: { path: `/p/${i}`, title: 'ünï ✓' },
    context: {},
    timestamp: new Date(Date.UTC(2026, 2, 1, 12, 0, i)).toISOString(),
    receivedAt: new Date(Date.UTC(2026, 2, 1, 12, 0, i, 500)).toISOString(),
    ua: { browser: 'Chrome', os: 'Linux', device: 'desktop' },
    bot: false,
    ...over,
  }
}

const trace = (n: number) => {
  const traceId = n.toString(16).padStart(32, '0')
  return { traceparent: `00-${traceId}-00f067aa0ba902b7-01`, traceId }
}

/** Events of three "requests": each request's events share one headers object, as ingest makes them. */
function logRecords(n: number) {
  const requests = [0, 1, 2].map((r) =>
    recordHeaders(`site-${r}`, trace(r + 1), r === 2 ? 'req-own-id' : trace(r + 1).traceId),
  )
  return Array.from({ length: n }, (_, i) => toLogRecord(event(i), requests[i % 3]!, 1_700_000_000_000 + i))
}

function consumed(value: Buffer | undefined, headers: Record<string, string>, offset = 42): ConsumedRecord {
  return { offset, key: undefined, value, headers, timestampMs: 0 }
}

describe('packed log records (format 2)', () => {
  it('round-trips events with their own keys, headers and timestamps, at (offset, index)', () => {
    const written = logRecords(10)
    const record = consumed(packRecords(written), packedHeaders())
    const entries = unpackRecord(record)
    expect(entries).toHaveLength(written.length)
    entries.forEach((e, i) => {
      const w = written[i]!
      expect(e.problem).toBeUndefined()
      expect(e.offset).toBe(42)
      expect(e.index).toBe(i)
      expect(e.count).toBe(written.length)
      expect(e.key).toBe(w.key)
      expect(e.timestampMs).toBe(w.timestampMs)
      expect(e.headers).toEqual(w.headers)
      expect(requestIdOf(e.headers)).toBe(requestIdOf(w.headers))
      expect(Buffer.compare(e.value!, w.value)).toBe(0)
      // Both readers read the event inside as they read a version-1 record of it.
      const alone = consumed(w.value, { ...w.headers })
      expect(decodeEvent(e)).toEqual(decodeEvent(alone))
      expect(decodeRecord(e)).toEqual({ ...(decodeRecord(alone) as object) })
    })
  })

  it('reads version-1 and version-2 records of one batch in log order', () => {
    const v1 = logRecords(3)
    const v2 = logRecords(4)
    const records = [
      consumed(v1[0]!.value, { ...v1[0]!.headers }, 0),
      consumed(packRecords(v2), packedHeaders(), 1),
      consumed(v1[1]!.value, { ...v1[1]!.headers }, 2),
    ]
    const entries = entriesOf(records)
    expect(entries.map((e) => [e.offset, e.index, e.count])).toEqual([
      [0, 0, 1],
      [1, 0, 4],
      [1, 1, 4],
      [1, 2, 4],
      [1, 3, 4],
      [2, 0, 1],
    ])
    const values = entries.map((e) => e.value!.toString())
    expect(values).toEqual([v1[0]!, ...v2, v1[1]!].map((r) => r.value.toString()))
  })

  it('refuses corrupt frames and unknown formats as one dead letter with a clear reason', () => {
    const good = packRecords(logRecords(5))
    const cases: Array<[ConsumedRecord, string, RegExp]> = [
      [
        consumed(good.subarray(0, good.length - 3), packedHeaders()),
        'TALLY_ERR_CORRUPT_FRAME',
        /runs past the end/,
      ],
      [
        consumed(Buffer.concat([good, Buffer.from([0])]), packedHeaders()),
        'TALLY_ERR_CORRUPT_FRAME',
        /1 bytes after/,
      ],
      [consumed(Buffer.from('{"v":1}'), packedHeaders()), 'TALLY_ERR_CORRUPT_FRAME', /version 123/],
      [consumed(good, { [FORMAT_HEADER]: '3' }), 'TALLY_ERR_FORMAT_VERSION', /unknown record format 3/],
      [consumed(undefined, packedHeaders()), 'TALLY_ERR_EMPTY_RECORD', /no value/],
    ]
    // A header set index past the sets: the first event's set index sits right after the count.
    const badSet = Buffer.from(good)
    const setsEnd = firstEventAt(badSet)
    badSet.writeUInt16BE(9, setsEnd)
    cases.push([consumed(badSet, packedHeaders()), 'TALLY_ERR_CORRUPT_FRAME', /names header set 9 of 3/])
    for (const [record, code, reason] of cases) {
      const entries = unpackRecord(record)
      expect(entries).toHaveLength(1)
      expect(entries[0]!.problem).toMatchObject({ ok: false, kind: 'dlq', code })
      expect(entries[0]!.problem!.reason).toMatch(reason)
      // Poison for the stream and the archiver alike.
      expect(decodeEvent(entries[0]!)).toEqual(entries[0]!.problem)
      expect(decodeRecord(entries[0]!)).toEqual(entries[0]!.problem)
    }
  })

  it('leaves one bad event of a record to its readers alone', () => {
    const written = logRecords(3)
    written[1] = { ...written[1]!, value: Buffer.from(JSON.stringify({ ...event(1), ua: 'nope' })) }
    const entries = unpackRecord(consumed(packRecords(written), packedHeaders()))
    expect(entries.map((e) => decodeEvent(e).ok)).toEqual([true, false, true])
    expect(decodeEvent(entries[1]!)).toMatchObject({ code: 'TALLY_ERR_SCHEMA_INVALID' })
  })

  it('bounds the number of events a record frames', () => {
    expect(() => packRecords([])).toThrow(RangeError)
    const one = logRecords(1)[0]!
    expect(() => packRecords(new Array(MAX_PACKED_EVENTS + 1).fill(one))).toThrow(RangeError)
    expect(
      unpackRecord(consumed(packRecords(new Array(MAX_PACKED_EVENTS).fill(one)), packedHeaders())),
    ).toHaveLength(MAX_PACKED_EVENTS)
    expect(() => packRecords([{ ...one, key: 'k'.repeat(70_000) }])).toThrow(RangeError)
  })
})

/** Byte position of the first event in a packed value (after the header sets and the count). */
function firstEventAt(buf: Buffer): number {
  let at = 1
  const sets = buf.readUInt16BE(at)
  at += 2
  for (let s = 0; s < sets; s++) {
    const pairs = buf.readUInt16BE(at)
    at += 2
    for (let p = 0; p < 2 * pairs; p++) at += 2 + buf.readUInt16BE(at)
  }
  return at + 4
}
