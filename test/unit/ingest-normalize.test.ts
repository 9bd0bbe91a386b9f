import { describe, expect, it } from 'vitest'
import { depthExceeds, type NormalizeInput, normalizeEvent, rejectionOf } from '../../ingest/normalize.js'
import { UserAgentParser } from '../../ingest/user-agent.js'
import { expectedRawEvent, USER_AGENTS } from '../helpers/raw-event.js'

const HOUR_MS = 3_600_000
const DAY_MS = 86_400_000
const limits = {
  maxEventBytes: 32 * 1024,
  maxDepth: 16,
  maxFutureMs: 23 * HOUR_MS,
  maxPastMs: 7 * DAY_MS,
  importMaxPastMs: 1830 * DAY_MS,
}
const parser = new UserAgentParser()

function input(over: Partial<NormalizeInput> = {}): NormalizeInput {
  return {
    siteId: 'site-a',
    userAgent: USER_AGENTS.chromeDesktop,
    receivedAtMs: Date.parse('2026-03-01T12:00:00.000Z'),
    batchSentAt: undefined,
    routeType: undefined,
    imported: false,
    ...over,
  }
}

function ok(payload: unknown, inp: NormalizeInput) {
  const r = normalizeEvent(payload, inp, limits, parser)
  if (!r.ok) throw new Error(`rejected: ${r.code} ${r.reason}`)
  return r.event
}

function rejection(payload: unknown, inp: NormalizeInput = input(), lim = limits) {
  const r = normalizeEvent(payload, inp, lim, parser)
  if (r.ok) throw new Error('accepted, expected a rejection')
  return rejectionOf(r)
}

describe('normalizeEvent: enrichment', () => {
  it('corrects client clock skew: timestamp = receivedAt − (sentAt − timestamp)', () => {
    // The client clock runs 1 h 3 min 7.25 s behind; the event happened 4.5 s before it was sent.
    const inp = input({ routeType: 'track' })
    const skewMs = -(3600_000 + 187_250)
    const sentAtMs = inp.receivedAtMs + skewMs
    const sent = {
      messageId: 'm-1',
      anonymousId: 'anon-1',
      event: 'Clicked',
      timestamp: new Date(sentAtMs - 4500).toISOString(),
      sentAt: new Date(sentAtMs).toISOString(),
    }
    const event = ok(sent, inp)
    expect(Date.parse(event.timestamp)).toBe(inp.receivedAtMs - 4500)
    expect(event.originalTimestamp).toBe(sent.timestamp)
    expect(event.receivedAt).toBe(new Date(inp.receivedAtMs).toISOString())
    expect(event).toEqual(
      expectedRawEvent(sent, {
        siteId: 'site-a',
        receivedAt: event.receivedAt,
        userAgent: inp.userAgent,
        routeType: 'track',
      }),
    )
  })

  it('applies the batch sentAt to events without their own', () => {
    const inp = input({ batchSentAt: '2026-03-01T11:00:10.000Z' })
    const sent = { type: 'page', messageId: 'm-2', userId: 42, timestamp: '2026-03-01T11:00:00.000Z' }
    const event = ok(sent, inp)
    expect(Date.parse(event.timestamp)).toBe(inp.receivedAtMs - 10_000)
    expect(event.userId).toBe('42')
    expect(event.sentAt).toBe('2026-03-01T11:00:10.000Z')
  })

  it('keeps the original timestamp of imported events and flags them', () => {
    const inp = input({ imported: true, batchSentAt: '2026-03-01T11:59:59.000Z' })
    const sent = {
      type: 'track',
      event: 'Old',
      messageId: 'm-3',
      anonymousId: 'a',
      timestamp: '2024-01-02T03:04:05.678Z',
    }
    const event = ok(sent, inp)
    expect(event.timestamp).toBe('2024-01-02T03:04:05.678Z')
    expect(event.imported).toBe(true)
    expect(event).toEqual(
      expectedRawEvent(sent, {
        siteId: 'site-a',
        receivedAt: event.receivedAt,
        userAgent: inp.userAgent,
        batchSentAt: '2026-03-01T11:59:59.000Z',
        imported: true,
      }),
    )
  })

  it('uses receivedAt when the client sent no time at all', () => {
    const event = ok({ anonymousId: 'a', messageId: 'm' }, input({ routeType: 'page' }))
    expect(event.timestamp).toBe(event.receivedAt)
    expect(event.originalTimestamp).toBeUndefined()
  })

  it('parses the user agent (context.userAgent first) and flags bots', () => {
    const fromHeader = ok({ anonymousId: 'a', messageId: 'm' }, input({ routeType: 'page' }))
    expect(fromHeader.ua).toEqual({ browser: 'Chrome', os: 'Windows', device: 'desktop' })
    expect(fromHeader.bot).toBe(false)
    const fromContext = ok(
      { anonymousId: 'a', messageId: 'm', context: { userAgent: USER_AGENTS.safariIphone } },
      input({ routeType: 'page' }),
    )
    expect(fromContext.ua).toEqual({ browser: 'Mobile Safari', os: 'iOS', device: 'mobile' })
    const bot = ok(
      { anonymousId: 'a', messageId: 'm' },
      input({ routeType: 'page', userAgent: USER_AGENTS.googlebot }),
    )
    expect(bot.bot).toBe(true)
    const none = ok({ anonymousId: 'a', messageId: 'm' }, input({ routeType: 'page', userAgent: undefined }))
    expect(none.ua).toEqual({ browser: '(unknown)', os: '(unknown)', device: '(unknown)' })
    expect(none.bot).toBe(false)
  })

  it('drops the client IP and keeps the rest of the context', () => {
    const event = ok(
      {
        anonymousId: 'a',
        messageId: 'm',
        context: { ip: '203.0.113.9', locale: 'de-DE', page: { path: '/x' } },
      },
      input({ routeType: 'page' }),
    )
    expect(event.context).toEqual({ locale: 'de-DE', page: { path: '/x' } })
    expect(JSON.stringify(event)).not.toContain('203.0.113.9')
  })

  it('assigns a messageId when absent and flags it as server-assigned', () => {
    const a = ok({ anonymousId: 'a' }, input({ routeType: 'page' }))
    const b = ok({ anonymousId: 'a' }, input({ routeType: 'page' }))
    expect(a.messageIdAssigned).toBe(true)
    expect(a.messageId).not.toBe(b.messageId)
    expect(a.messageId.length).toBeGreaterThan(8)
    const own = ok({ anonymousId: 'a', messageId: 'mine' }, input({ routeType: 'page' }))
    expect(own).toMatchObject({ messageId: 'mine', messageIdAssigned: false })
  })

  it('treats null fields as absent, as analytics.js sends userId: null before identify', () => {
    const sent = {
      type: 'track',
      event: 'Signed Up',
      messageId: 'ajs-next-1',
      anonymousId: 'anon-9',
      userId: null,
      properties: { plan: 'pro' },
      writeKey: 'wk_x',
    }
    const event = ok(sent, input())
    expect(event.userId).toBeUndefined()
    expect(event).toEqual(
      expectedRawEvent(sent, {
        siteId: 'site-a',
        receivedAt: event.receivedAt,
        userAgent: USER_AGENTS.chromeDesktop,
      }),
    )
  })
})

describe('normalizeEvent: rejections', () => {
  it('gives each problem its own code', () => {
    expect(rejection('x').code).toBe('TALLY_ERR_INVALID_EVENT')
    expect(rejection({ type: 'track', event: 'e' }).code).toBe('TALLY_ERR_MISSING_IDENTITY')
    expect(rejection({ anonymousId: 'a' }).code).toBe('TALLY_ERR_MISSING_FIELD')
    expect(rejection({ type: 'track', anonymousId: 'a' })).toMatchObject({
      code: 'TALLY_ERR_MISSING_FIELD',
      where: '/event',
    })
    expect(rejection({ type: 'group', anonymousId: 'a' })).toMatchObject({ where: '/groupId' })
    expect(rejection({ type: 'alias', anonymousId: 'a', userId: 'u' })).toMatchObject({
      where: '/previousId',
    })
    expect(rejection({ type: 'click', anonymousId: 'a' })).toMatchObject({
      code: 'TALLY_ERR_INVALID_EVENT',
      where: '/type',
    })
    expect(rejection({ type: 'page', anonymousId: 'a', properties: 'no' })).toMatchObject({
      code: 'TALLY_ERR_INVALID_EVENT',
      where: '/properties',
    })
    expect(rejection({ type: 'page', anonymousId: 'a', timestamp: 'yesterday at 5' })).toMatchObject({
      code: 'TALLY_ERR_INVALID_TIMESTAMP',
    })
    expect(rejection({ type: 'page', anonymousId: 'a' }, input({ routeType: 'track' }))).toMatchObject({
      code: 'TALLY_ERR_INVALID_EVENT',
      where: '/type',
    })
  })

  it('rejects events nested deeper than the limit and larger than the limit', () => {
    let deep: unknown = 'leaf'
    for (let i = 0; i < 20; i++) deep = { d: deep }
    expect(rejection({ type: 'page', anonymousId: 'a', properties: deep as object }).code).toBe(
      'TALLY_ERR_NESTING_TOO_DEEP',
    )
    const big = { type: 'page', anonymousId: 'a', properties: { s: 'x'.repeat(2000) } }
    expect(rejection(big, input(), { ...limits, maxEventBytes: 1024 }).code).toBe('TALLY_ERR_EVENT_TOO_LARGE')
  })

  it('limits the serialized bytes of an event exactly, escapes and multi-byte characters included', () => {
    const lim = (maxEventBytes: number) => ({ ...limits, maxEventBytes })
    for (const filler of ['x', 'é', '\u0001', '"', '😀']) {
      const event = { type: 'page', anonymousId: 'a', properties: { s: filler.repeat(300) } }
      const size = Buffer.byteLength(JSON.stringify(event))
      expect(normalizeEvent(event, input(), lim(size), parser).ok).toBe(true)
      expect(rejection(event, input(), lim(size - 1))).toMatchObject({
        code: 'TALLY_ERR_EVENT_TOO_LARGE',
        message: `event is ${size} bytes; the limit is ${size - 1}`,
      })
    }
    // Absent (null) fields do not count: they are dropped before measuring.
    const withNulls = { type: 'page', anonymousId: 'a', userId: null, properties: { s: 'x'.repeat(300) } }
    const size = Buffer.byteLength(
      JSON.stringify({ type: 'page', anonymousId: 'a', properties: withNulls.properties }),
    )
    expect(normalizeEvent(withNulls, input(), lim(size), parser).ok).toBe(true)
  })

  it('stops measuring depth at the limit, so absurd nesting cannot overflow the stack', () => {
    const levels = 200_000
    const value = JSON.parse(`${'['.repeat(levels)}${']'.repeat(levels)}`) as unknown
    expect(depthExceeds(value, 16)).toBe(true)
    expect(depthExceeds({ a: [{ b: 1 }] }, 3)).toBe(false)
    expect(depthExceeds({ a: [{ b: {} }] }, 3)).toBe(true)
  })
})

describe('normalizeEvent: timestamps', () => {
  const receivedAtMs = Date.parse('2026-03-01T12:00:00.000Z')
  const iso = (ms: number) => new Date(ms).toISOString()
  const page = (timestamp: string, extra: Record<string, unknown> = {}) => ({
    type: 'page',
    anonymousId: 'a',
    messageId: 'm',
    timestamp,
    ...extra,
  })

  it('takes receivedAt for a corrected timestamp more than maxFutureMs ahead, and flags it', () => {
    const inp = input({ receivedAtMs })
    // Exactly at the limit: kept as sent.
    const atLimit = ok(page(iso(receivedAtMs + 23 * HOUR_MS)), inp)
    expect(atLimit.timestamp).toBe(iso(receivedAtMs + 23 * HOUR_MS))
    expect(atLimit.timestampClamped).toBeUndefined()
    // One millisecond past it, and years past it (the burst): receivedAt, flagged.
    for (const sent of [iso(receivedAtMs + 23 * HOUR_MS + 1), '2030-01-01T00:00:00.000Z']) {
      const event = ok(page(sent), inp)
      expect(event.timestamp).toBe(iso(receivedAtMs))
      expect(event.timestampClamped).toBe(true)
      expect(event.originalTimestamp).toBe(sent)
    }
    // The limit applies to the skew-corrected time: a clock 2 days ahead is not clamped...
    const skewed = ok(
      page(iso(receivedAtMs + 2 * DAY_MS - 5000), { sentAt: iso(receivedAtMs + 2 * DAY_MS) }),
      inp,
    )
    expect(skewed.timestamp).toBe(iso(receivedAtMs - 5000))
    expect(skewed.timestampClamped).toBeUndefined()
    // ...while an event a day after its own send time is.
    const ahead = ok(page(iso(receivedAtMs + DAY_MS), { sentAt: iso(receivedAtMs) }), inp)
    expect(ahead.timestamp).toBe(iso(receivedAtMs))
    expect(ahead.timestampClamped).toBe(true)
    // Imports keep their timestamps, but not future ones.
    const imported = ok(page('2031-05-05T00:00:00.000Z'), input({ receivedAtMs, imported: true }))
    expect(imported.timestamp).toBe(iso(receivedAtMs))
    expect(imported.timestampClamped).toBe(true)
  })

  it('rejects a live event older than maxPastMs with its own code, and an import older than importMaxPastMs', () => {
    const inp = input({ receivedAtMs })
    expect(ok(page(iso(receivedAtMs - 7 * DAY_MS)), inp).timestamp).toBe(iso(receivedAtMs - 7 * DAY_MS))
    expect(rejection(page(iso(receivedAtMs - 7 * DAY_MS - 1)), inp)).toMatchObject({
      code: 'TALLY_ERR_TIMESTAMP_TOO_OLD',
      where: '/timestamp',
    })
    expect(
      rejection({ type: 'page', anonymousId: 'a', originalTimestamp: '2026-01-01T00:00:00Z' }, inp),
    ).toMatchObject({ code: 'TALLY_ERR_TIMESTAMP_TOO_OLD', where: '/originalTimestamp' })
    // The same history is accepted as an import, up to its own limit.
    const imp = input({ receivedAtMs, imported: true })
    expect(ok(page('2024-01-02T03:04:05.678Z'), imp).timestamp).toBe('2024-01-02T03:04:05.678Z')
    expect(ok(page(iso(receivedAtMs - 1830 * DAY_MS)), imp).timestamp).toBe(iso(receivedAtMs - 1830 * DAY_MS))
    const tooOld = rejection(page(iso(receivedAtMs - 1830 * DAY_MS - 1)), imp)
    expect(tooOld).toMatchObject({ code: 'TALLY_ERR_TIMESTAMP_TOO_OLD', where: '/timestamp' })
    expect(tooOld.message).toContain('1830 days')
    // The limits are the caller's (from the configuration).
    expect(
      normalizeEvent(page(iso(receivedAtMs - 2 * DAY_MS)), inp, { ...limits, maxPastMs: DAY_MS }, parser).ok,
    ).toBe(false)
  })

  it('rejects dates and times that do not exist instead of rolling them over', () => {
    const inp = input({ receivedAtMs: Date.parse('2024-03-01T12:00:00.000Z') })
    for (const [timestamp, where] of [
      ['2024-02-30', '/timestamp'],
      ['2023-02-29T10:00:00Z', '/timestamp'],
      ['2024-02-31T10:00:00Z', '/timestamp'],
      ['2024-04-31', '/timestamp'],
      ['2024-13-01', '/timestamp'],
      ['2024-00-10', '/timestamp'],
      ['2024-02-00', '/timestamp'],
      ['2024-02-28T24:00:00Z', '/timestamp'],
      ['2024-02-28T23:60:00Z', '/timestamp'],
      ['2024-02-28T23:59:60Z', '/timestamp'],
      ['2024-02-28T10:00:00+24:00', '/timestamp'],
    ] as const) {
      expect(rejection(page(timestamp), inp), timestamp).toMatchObject({
        code: 'TALLY_ERR_INVALID_TIMESTAMP',
        where,
      })
    }
    expect(rejection(page('2024-02-29T10:00:00Z', { sentAt: '2024-02-30T10:00:00Z' }), inp)).toMatchObject({
      code: 'TALLY_ERR_INVALID_TIMESTAMP',
      where: '/sentAt',
    })
    // Leap days exist in leap years (2000 too: divisible by 400), and the last second of a day.
    expect(ok(page('2024-02-29'), inp).timestamp).toBe('2024-02-29T00:00:00.000Z')
    expect(ok(page('2024-02-29T23:59:59.999+00:00'), inp).timestamp).toBe('2024-02-29T23:59:59.999Z')
    const in2000 = input({ receivedAtMs: Date.parse('2000-03-01T00:00:00Z') })
    expect(ok(page('2000-02-29T00:00:00Z'), in2000).timestamp).toBe('2000-02-29T00:00:00.000Z')
    expect(
      rejection(page('1900-02-29T00:00:00Z'), input({ receivedAtMs: Date.parse('1900-03-01') })),
    ).toMatchObject({
      code: 'TALLY_ERR_INVALID_TIMESTAMP',
    })
  })
})
