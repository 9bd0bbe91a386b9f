import { describe, expect, it } from 'vitest'
import { decodeRecord } from '../../batch/decode.js'
import { HEADERS, requestIdOf, traceContext, traceIdOf } from '../../core/record/headers.js'

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736'
const PARENT = `00-${TRACE}-00f067aa0ba902b7-01`

describe('trace headers of raw records', () => {
  it('reads the trace id of a valid traceparent only', () => {
    expect(traceIdOf(PARENT)).toBe(TRACE)
    expect(traceIdOf(undefined)).toBeUndefined()
    expect(traceIdOf('not a trace')).toBeUndefined()
    expect(traceIdOf(`00-${'0'.repeat(32)}-00f067aa0ba902b7-01`)).toBeUndefined()
    expect(traceIdOf(`01-${TRACE}-00f067aa0ba902b7-01`)).toBeUndefined()
  })

  it('takes the request id from x-request-id when present, else from the trace id', () => {
    expect(requestIdOf({ [HEADERS.traceparent]: PARENT })).toBe(TRACE)
    expect(requestIdOf({ [HEADERS.traceparent]: PARENT, [HEADERS.requestId]: 'lb-7' })).toBe('lb-7')
    expect(requestIdOf({})).toBeUndefined()
  })

  it('makes a new traceparent carry the request id as its trace id, and keeps a valid incoming one', () => {
    const made = traceContext(undefined, TRACE)
    expect(made.traceId).toBe(TRACE)
    expect(requestIdOf({ [HEADERS.traceparent]: made.traceparent })).toBe(TRACE)
    expect(traceContext(PARENT, 'ffffffffffffffffffffffffffffffff')).toEqual({
      traceparent: PARENT,
      traceId: TRACE,
    })
  })

  it('archives the request id a record carries either way', () => {
    const value = Buffer.from(
      JSON.stringify({
        v: 1,
        siteId: 's',
        messageId: 'm',
        messageIdAssigned: false,
        type: 'track',
        event: 'e',
        anonymousId: 'a',
        properties: {},
        context: {},
        timestamp: '2026-01-01T00:00:00.000Z',
        receivedAt: '2026-01-01T00:00:00.000Z',
        ua: { browser: 'b', os: 'o', device: 'd' },
        bot: false,
      }),
    )
    const decoded = (headers: Record<string, string>) => {
      const d = decodeRecord({ offset: 0, key: undefined, value, headers, timestampMs: 0 })
      if (!d.ok) throw new Error(d.reason)
      return d.event.requestId
    }
    expect(decoded({ [HEADERS.traceparent]: PARENT })).toBe(TRACE)
    expect(decoded({ [HEADERS.traceparent]: PARENT, [HEADERS.requestId]: 'import-1' })).toBe('import-1')
  })
})
