import { logLevel } from 'kafkajs'
import { pino } from 'pino'
import { describe, expect, it } from 'vitest'
import { kafkaLogCreator } from '../../core/kafka/client.js'

function capture() {
  const lines: Array<Record<string, unknown>> = []
  const logger = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line)) })
  return { lines, logger }
}

const entry = (level: logLevel, message: string, broker = '127.0.0.1:9092') => ({
  namespace: 'Connection',
  level,
  label: 'ERROR',
  log: { timestamp: '', message, broker, clientId: 'tally' },
})

describe('kafkajs log lines', () => {
  it('logs a message once per window while it repeats, then says how many it left out', () => {
    const { lines, logger } = capture()
    let now = 0
    const log = kafkaLogCreator(logger, 10_000, () => now)()
    for (let i = 0; i < 50; i++) {
      now = i * 100
      log(entry(logLevel.ERROR, 'Connection error: connect ECONNREFUSED'))
    }
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatchObject({ level: 50, msg: 'Connection error: connect ECONNREFUSED' })
    expect(lines[0]!.kafka).toMatchObject({ broker: '127.0.0.1:9092', clientId: 'tally' })
    now = 10_000
    log(entry(logLevel.ERROR, 'Connection error: connect ECONNREFUSED'))
    expect(lines).toHaveLength(2)
    expect(lines[1]).toMatchObject({ msg: 'Connection error: connect ECONNREFUSED', repeats: 49 })
  })

  it('keeps other messages and other levels apart', () => {
    const { lines, logger } = capture()
    const log = kafkaLogCreator(logger, 10_000, () => 0)()
    log(entry(logLevel.ERROR, 'Connection error'))
    log(entry(logLevel.WARN, 'Connection error'))
    log(entry(logLevel.ERROR, 'Crash: KafkaJSNumberOfRetriesExceeded'))
    log(entry(logLevel.ERROR, 'Connection error'))
    expect(lines.map((l) => [l.level, l.msg])).toEqual([
      [50, 'Connection error'],
      [40, 'Connection error'],
      [50, 'Crash: KafkaJSNumberOfRetriesExceeded'],
    ])
    expect(lines.every((l) => l.repeats === undefined)).toBe(true)
  })

  it('stays bounded when messages never repeat', () => {
    const { lines, logger } = capture()
    const log = kafkaLogCreator(logger, 10_000, () => 0)()
    for (let i = 0; i < 1000; i++) log(entry(logLevel.ERROR, `message ${i}`))
    expect(lines).toHaveLength(1000)
    // After the table was emptied, an old message is logged again rather than counted forever.
    log(entry(logLevel.ERROR, 'message 0'))
    expect(lines).toHaveLength(1001)
  })
})
