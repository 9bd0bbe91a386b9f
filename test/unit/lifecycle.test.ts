import { EventEmitter } from 'node:events'
import type { Kafka } from 'kafkajs'
import { describe, expect, it } from 'vitest'
import { loadConfig } from '../../core/config.js'
import { KafkaGroupConsumer } from '../../core/kafka/consumer.js'
import { type Closable, serveUntilSignal, untilSignal } from '../../core/lifecycle.js'
import { createLogger } from '../../core/log.js'

const logger = createLogger('silent')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** A Closable that records which of its exits ran. */
function target(withAbort: boolean, abortMs = 0): Closable & { calls: string[] } {
  const calls: string[] = []
  const t: Closable & { calls: string[] } = {
    calls,
    close: async () => {
      calls.push('close')
    },
  }
  if (withAbort)
    t.abort = async () => {
      calls.push('abort')
      await sleep(abortMs)
    }
  return t
}

/** Listeners still attached to the lifecycle's process events. */
function listening(events: EventEmitter): number {
  return ['SIGTERM', 'SIGINT', 'uncaughtException', 'unhandledRejection']
    .map((e) => events.listenerCount(e))
    .reduce((a, b) => a + b, 0)
}

describe('untilSignal: every exit path that can leaves the consumer groups', () => {
  it('an uncaught exception aborts (leaves the groups without the final flush) and exits 1', async () => {
    const events = new EventEmitter()
    const t = target(true)
    const code = untilSignal(t, logger, 5000, events)
    events.emit('uncaughtException', new Error('boom'))
    expect(await code).toBe(1)
    expect(t.calls).toEqual(['abort'])
    expect(listening(events)).toBe(0)
  })

  it('an unhandled rejection does the same; a target without abort is closed', async () => {
    const events = new EventEmitter()
    const t = target(false)
    const code = untilSignal(t, logger, 5000, events)
    events.emit('unhandledRejection', new Error('lost promise'))
    expect(await code).toBe(1)
    expect(t.calls).toEqual(['close'])
  })

  it('gives up on an abort that hangs after the deadline', async () => {
    const events = new EventEmitter()
    const t = target(true, 60_000)
    const began = Date.now()
    const code = untilSignal(t, logger, 100, events)
    events.emit('uncaughtException', new Error('boom'))
    expect(await code).toBe(1)
    expect(Date.now() - began).toBeLessThan(2000)
  })

  it('SIGTERM still closes in order and exits 0', async () => {
    const events = new EventEmitter()
    const t = target(true)
    const code = untilSignal(t, logger, 5000, events)
    events.emit('SIGTERM', 'SIGTERM')
    expect(await code).toBe(0)
    expect(t.calls).toEqual(['close'])
  })
})

describe('serveUntilSignal: a crash during start-up', () => {
  it('aborts what started once the start completes, and exits 1', async () => {
    const events = new EventEmitter()
    const t = target(true)
    const code = serveUntilSignal(
      async () => {
        events.emit('uncaughtException', new Error('timer threw while joining'))
        await sleep(20)
        return t
      },
      logger,
      5000,
      events,
    )
    expect(await code).toBe(1)
    expect(t.calls).toEqual(['abort'])
    expect(listening(events)).toBe(0)
  })

  it('exits 1 after the deadline when the start never completes', async () => {
    const events = new EventEmitter()
    const began = Date.now()
    const code = serveUntilSignal(
      () => {
        events.emit('unhandledRejection', new Error('boom'))
        return new Promise<Closable>(() => {})
      },
      logger,
      100,
      events,
    )
    expect(await code).toBe(1)
    expect(Date.now() - began).toBeLessThan(2000)
  })

  it('after a clean start, a later crash still aborts', async () => {
    const events = new EventEmitter()
    const t = target(true)
    const code = serveUntilSignal(async () => t, logger, 5000, events)
    await sleep(10)
    events.emit('uncaughtException', new Error('later'))
    expect(await code).toBe(1)
    expect(t.calls).toEqual(['abort'])
  })
})

describe('consumer session timeout', () => {
  it('defaults to 10 s, with heartbeats at most a third of it', () => {
    const config = loadConfig({})
    expect(config.stream.sessionTimeoutMs).toBe(10_000)
    for (const sessionTimeoutMs of [6000, 10_000, 300_000]) {
      let given: Record<string, unknown> = {}
      const kafka = {
        consumer: (options: Record<string, unknown>) => {
          given = options
          return {}
        },
      } as unknown as Kafka
      new KafkaGroupConsumer(kafka, { groupId: 'g', topic: 't', sessionTimeoutMs })
      expect(given.sessionTimeout).toBe(sessionTimeoutMs)
      expect(Number(given.heartbeatInterval)).toBeLessThanOrEqual(sessionTimeoutMs / 3)
    }
    expect(() => loadConfig({ TALLY_STREAM_SESSION_TIMEOUT_MS: '5999' })).toThrow(
      'an integer from 6000 to 300000',
    )
  })
})
