import { randomUUID } from 'node:crypto'
import { afterAll, describe, expect, it } from 'vitest'
import { metricSum } from '../../bench/harness/prometheus.js'
import { type GeneratedEvent, generateWorkload, truthOf } from '../../bench/workload.js'
import { loadConfig } from '../../core/config.js'
import { createLogger } from '../../core/log.js'
import { createStreamMetrics } from '../../stream/metrics.js'
import { tempDataDir } from '../contract/backends.js'
import {
  compareReaderWithTruth,
  feed,
  ingestApp,
  openStreamBackend,
  streamEmbeddedToEnd,
} from '../helpers/stream.js'
import { visitTruthOf } from '../helpers/visit-truth.js'
import { compareVisits } from '../helpers/visit-workload.js'

/**
 * The stream worker's bounds on open visits: a partition that holds more than
 * TALLY_STREAM_OPEN_VISITS_MAX, or whose visit state would be larger than
 * TALLY_STREAM_VISIT_STATE_MAX_BYTES, ends the least recently active early at a flush. Here 2,500
 * visitors with one page view each (what a client inventing a new anonymousId per event sends):
 * the partition stays within the bound, says how many ended early, and, since no visitor came
 * back, every visit number still equals the truth computed apart.
 */

const MIN = 60_000
const VISITORS = 2500
const logger = createLogger('silent')
const dirs: Array<{ remove(): void }> = []

afterAll(() => {
  for (const d of dirs) d.remove()
})

/** Streams VISITORS one-event visitors (ids of `idLength` characters) under `env`; its metrics. */
async function run(env: Record<string, string>, idLength: number) {
  const config = loadConfig({
    TALLY_FLUSH_INTERVAL_MS: '100',
    TALLY_GRACE_MS: String(3 * 3_600_000),
    KAFKA_PARTITIONS: '1',
    LOG_LEVEL: 'silent',
    ...env,
  })
  const data = tempDataDir()
  dirs.push(data)
  const now = Date.now()
  const siteId = 'bound.test'
  const backend = openStreamBackend(config, data.dir, logger)
  try {
    const site = (await backend.sites.create({ siteId, domain: siteId, origins: [] })).site
    const template = generateWorkload({
      seed: 11,
      sites: [siteId],
      events: 200,
      start: new Date(now - 40 * MIN),
      spanMs: 10 * MIN,
      lateShare: 0,
    }).events.find((e) => !e.isBot && !e.isDuplicate && e.payload.type === 'page')!
    // A new visitor every 500 ms over the last ~21 minutes, in time order: all open at once.
    const events: GeneratedEvent[] = Array.from({ length: VISITORS }, (_, i) => {
      const iso = new Date(now - 25 * MIN + i * 500).toISOString()
      const { userId: _userId, ...payload } = template.payload as typeof template.payload & {
        userId?: string
      }
      const anonymousId = `bound-${i}-`.padEnd(idLength, 'x')
      return {
        ...template,
        isDuplicate: false,
        isLate: false,
        isOutOfOrder: false,
        payload: { ...payload, messageId: randomUUID(), anonymousId, timestamp: iso, sentAt: iso },
      } as GeneratedEvent
    })
    const writer = backend.log.writer()
    const app = await ingestApp(config, writer, [site], logger)
    try {
      expect(await feed(app, events, () => site.writeKey, 250)).toBe(VISITORS)
    } finally {
      await app.close()
      await writer.close()
    }
    const metrics = createStreamMetrics()
    const topic = config.kafka.topicRaw
    await streamEmbeddedToEnd(backend, {
      stream: config.stream,
      topic,
      deadLetterTopic: config.kafka.topicDeadLetter,
      metrics,
      logger,
    })
    const text = await metrics.registry.metrics()
    const from = now - 2 * 86_400_000
    const to = now + 86_400_000
    const truth = visitTruthOf(events, config.stream.visitGapMs)
    expect(await compareVisits(backend.reader, truth, [siteId], from, to)).toEqual([])
    expect(
      await compareReaderWithTruth(
        backend.reader,
        config.stream.hllPrecision,
        truthOf(events, [siteId]),
        [siteId],
        from,
        to,
      ),
    ).toEqual([])
    return {
      open: metricSum(text, 'tally_stream_open_visits'),
      early: metricSum(text, 'tally_stream_visits_ended_early_total'),
      stateBytes: metricSum(text, 'tally_stream_visit_state_bytes'),
    }
  } finally {
    await backend.close()
  }
}

describe('open visits a stream partition keeps', () => {
  it('stay within TALLY_STREAM_OPEN_VISITS_MAX, the least recently active ending early, and count every one-event visit', async () => {
    const bound = 1000
    const { open, early } = await run({ TALLY_STREAM_OPEN_VISITS_MAX: String(bound) }, 36)
    expect(open).toBeGreaterThan(0)
    expect(open).toBeLessThanOrEqual(bound)
    // Every visit the partition held beyond the bound ended early (none had ended otherwise).
    expect(early).toBe(VISITORS - open)
  })

  it('keep the written state within TALLY_STREAM_VISIT_STATE_MAX_BYTES, long visitor ids included', async () => {
    const maxBytes = 64 * 1024
    // 200-character ids: about 250 bytes of state a visit, 2,500 of them ~10× the bound.
    const { open, early, stateBytes } = await run(
      { TALLY_STREAM_VISIT_STATE_MAX_BYTES: String(maxBytes) },
      200,
    )
    expect(stateBytes).toBeGreaterThan(0)
    expect(stateBytes).toBeLessThanOrEqual(maxBytes)
    expect(open).toBeGreaterThan(0)
    expect(open).toBeLessThan(VISITORS / 4)
    expect(early).toBe(VISITORS - open)
  })
})
