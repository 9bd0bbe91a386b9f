import { randomUUID } from 'node:crypto'
import { afterAll, describe, expect, it } from 'vitest'
import { metricSum } from '../../bench/harness/prometheus.js'
import { type GeneratedEvent, generateWorkload, truthOf } from '../../bench/workload.js'
import { loadConfig } from '../../core/config.js'
import type { EmbeddedBackend } from '../../core/embedded/index.js'
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
 * The stream worker's memory bound on open visits (TALLY_STREAM_OPEN_VISITS_MAX): a partition that
 * holds more ends the least recently active early at a flush. Here 2,500 visitors with one page
 * view each (what a client inventing a new anonymousId per event sends) against a bound of 1,000:
 * the partition keeps at most 1,000 open visits, says how many ended early, and, since no visitor
 * came back, every visit number still equals the truth computed apart.
 */

const MIN = 60_000
const BOUND = 1000
const VISITORS = 2500
const config = loadConfig({
  TALLY_FLUSH_INTERVAL_MS: '100',
  TALLY_GRACE_MS: String(3 * 3_600_000),
  TALLY_STREAM_OPEN_VISITS_MAX: String(BOUND),
  KAFKA_PARTITIONS: '1',
  LOG_LEVEL: 'silent',
})
const logger = createLogger('silent')
const topic = config.kafka.topicRaw
const dlq = config.kafka.topicDeadLetter
const data = tempDataDir()

function openBackend(): EmbeddedBackend {
  return openStreamBackend(config, data.dir, logger)
}

afterAll(() => {
  data.remove()
})

describe('open visits a stream partition keeps (TALLY_STREAM_OPEN_VISITS_MAX)', () => {
  it('stay within the bound, the least recently active ending early, and count every one-event visit', async () => {
    const now = Date.now()
    const siteId = 'bound.test'
    const backend = openBackend()
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
        return {
          ...template,
          isDuplicate: false,
          isLate: false,
          isOutOfOrder: false,
          payload: {
            ...payload,
            messageId: randomUUID(),
            anonymousId: `bound-${i}`,
            timestamp: iso,
            sentAt: iso,
          },
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
      await streamEmbeddedToEnd(backend, {
        stream: config.stream,
        topic,
        deadLetterTopic: dlq,
        metrics,
        logger,
      })
      const text = await metrics.registry.metrics()
      const open = metricSum(text, 'tally_stream_open_visits')
      const early = metricSum(text, 'tally_stream_visits_ended_early_total')
      expect(open).toBeGreaterThan(0)
      expect(open).toBeLessThanOrEqual(BOUND)
      // Every visit the partition held beyond the bound ended early (none had ended otherwise).
      expect(early).toBe(VISITORS - open)

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
    } finally {
      await backend.close()
    }
  })
})
