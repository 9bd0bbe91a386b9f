import { describe, expect, it } from 'vitest'
import { TallyError } from '../../core/errors.js'
import { backoffDelayMs, isProgrammingError, retry } from '../../core/retry.js'

describe('retry', () => {
  it('retries retriable errors until success', async () => {
    let calls = 0
    const v = await retry(
      async () => {
        calls++
        if (calls < 3) throw new TallyError('X', 'flaky', { retriable: true })
        return 'ok'
      },
      { initialDelayMs: 1, maxDelayMs: 2 },
    )
    expect(v).toBe('ok')
    expect(calls).toBe(3)
  })

  it('never retries programming errors', async () => {
    let calls = 0
    await expect(
      retry(
        async () => {
          calls++
          throw new TypeError('bug')
        },
        { initialDelayMs: 1 },
      ),
    ).rejects.toBeInstanceOf(TypeError)
    expect(calls).toBe(1)
  })

  it('does not retry a TallyError that is not retriable', async () => {
    let calls = 0
    await expect(
      retry(async () => {
        calls++
        throw new TallyError('TALLY_ERR_X', 'final')
      }),
    ).rejects.toMatchObject({ code: 'TALLY_ERR_X' })
    expect(calls).toBe(1)
  })

  it('wraps the last error as cause when attempts run out', async () => {
    const last = new TallyError('TALLY_ERR_DOWN', 'down', { retriable: true })
    const err = await retry(
      async () => {
        throw last
      },
      { attempts: 3, initialDelayMs: 1, maxDelayMs: 1 },
    ).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(TallyError)
    expect((err as TallyError).code).toBe('TALLY_ERR_RETRIES_EXHAUSTED')
    expect((err as TallyError).cause).toBe(last)
    expect((err as TallyError).message).toContain('3 attempts')
  })

  it('caps the backoff delay and keeps jitter within [ceiling/2, ceiling]', () => {
    for (let i = 0; i < 100; i++) {
      const d = backoffDelayMs(10, 100, 1000)
      expect(d).toBeGreaterThanOrEqual(500)
      expect(d).toBeLessThanOrEqual(1000)
    }
    const first = backoffDelayMs(1, 100, 1000)
    expect(first).toBeGreaterThanOrEqual(50)
    expect(first).toBeLessThanOrEqual(100)
  })

  it('names programming errors once, for every retry: TypeError, RangeError, SyntaxError', () => {
    expect([new TypeError('x'), new RangeError('x'), new SyntaxError('x')].map(isProgrammingError)).toEqual([
      true,
      true,
      true,
    ])
    expect([new Error('x'), new TallyError('X', 'x'), 'x'].map(isProgrammingError)).toEqual([
      false,
      false,
      false,
    ])
  })

  it('with attempts Infinity, runs until a retriable() that says no, and awaits afterWait between attempts', async () => {
    let stopped = false
    let calls = 0
    const waits: number[] = []
    const last = new Error('down')
    const err = await retry(
      async () => {
        calls++
        if (calls === 4) stopped = true
        throw last
      },
      {
        attempts: Number.POSITIVE_INFINITY,
        initialDelayMs: 1,
        maxDelayMs: 2,
        retriable: () => !stopped,
        afterWait: async (attempt) => void waits.push(attempt),
      },
    ).catch((e: unknown) => e)
    expect(err).toBe(last)
    expect(calls).toBe(4)
    expect(waits).toEqual([1, 2, 3])
  })
})
