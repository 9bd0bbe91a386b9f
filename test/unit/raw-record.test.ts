import { describe, expect, it } from 'vitest'
import { decodeRecord } from '../../batch/decode.js'
import type { ConsumedRecord } from '../../core/ports/event-log.js'
import { decodeEvent, toLogRecord } from '../../core/record/codec.js'
import { HEADERS, recordHeaders } from '../../core/record/headers.js'
import { dedupKey, partitionKey } from '../../core/record/keys.js'
import type { RawEventV1 } from '../../schemas/events.js'
import { decode, validate } from '../../stream/pipeline.js'

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736'
const PARENT = `00-${TRACE}-00f067aa0ba902b7-01`

const event: RawEventV1 = {
  v: 1,
  siteId: 'site-1',
  messageId: 'm-1',
  messageIdAssigned: false,
  type: 'page',
  anonymousId: 'anon-1',
  properties: { path: '/a' },
  context: {},
  timestamp: '2026-03-01T12:00:00.000Z',
  receivedAt: '2026-03-01T12:00:01.000Z',
  ua: { browser: 'Chrome', os: 'Linux', device: 'desktop' },
  bot: false,
}

function consumed(value: Buffer | undefined, headers: Record<string, string> = {}): ConsumedRecord {
  return { offset: 7, key: undefined, value, headers, timestampMs: 0 }
}

describe('the raw-record module', () => {
  it('keys a record by site and visitor, and dedups by site and messageId', () => {
    expect(partitionKey(event)).toBe('site-1:anon-1')
    expect(partitionKey({ ...event, anonymousId: undefined, userId: 'u-1' })).toBe('site-1:u-1')
    expect(partitionKey({ ...event, anonymousId: undefined })).toBe('site-1:m-1')
    expect(dedupKey(event)).toBe('site-1\u0001m-1')
  })

  it('writes the request id header only when it is not the trace id', () => {
    const trace = { traceparent: PARENT, traceId: TRACE }
    expect(recordHeaders('site-1', trace, TRACE)).toEqual({
      [HEADERS.traceparent]: PARENT,
      [HEADERS.schemaVersion]: '1',
      [HEADERS.siteId]: 'site-1',
    })
    expect(recordHeaders('site-1', trace, 'import-1')).toEqual({
      [HEADERS.traceparent]: PARENT,
      [HEADERS.schemaVersion]: '1',
      [HEADERS.siteId]: 'site-1',
      [HEADERS.requestId]: 'import-1',
    })
  })

  it('reads back what it writes', () => {
    const headers = recordHeaders('site-1', { traceparent: PARENT, traceId: TRACE }, TRACE)
    const written = toLogRecord(event, headers, 1234)
    expect(written.key).toBe('site-1:anon-1')
    expect(written.timestampMs).toBe(1234)
    const read = decodeEvent(consumed(written.value as Buffer, headers))
    expect(read).toEqual({
      ok: true,
      event: { event, timestampMs: Date.parse(event.timestamp), receivedMs: Date.parse(event.receivedAt) },
    })
  })

  it('gives the stream and the archive the same dead letters', () => {
    const poison: Array<[ConsumedRecord, string]> = [
      [consumed(undefined), 'TALLY_ERR_EMPTY_RECORD'],
      [consumed(Buffer.from('{}'), { [HEADERS.schemaVersion]: '2' }), 'TALLY_ERR_SCHEMA_VERSION'],
      [consumed(Buffer.from('{not json')), 'TALLY_ERR_UNDECODABLE'],
      [consumed(Buffer.from('{"v":1}')), 'TALLY_ERR_SCHEMA_INVALID'],
      [
        consumed(Buffer.from(JSON.stringify({ ...event, timestamp: 'yesterday' }))),
        'TALLY_ERR_SCHEMA_INVALID',
      ],
    ]
    for (const [record, code] of poison) {
      const archived = decodeRecord(record)
      const decoded = decode(record)
      const streamed = decoded.ok ? validate(decoded.event) : decoded
      expect(archived).toMatchObject({ ok: false, kind: 'dlq', code })
      expect(streamed).toEqual(archived)
    }
  })
})
