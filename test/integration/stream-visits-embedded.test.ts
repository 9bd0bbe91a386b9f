import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { truthOf } from '../../bench/workload.js'
import { loadConfig } from '../../core/config.js'
import type { EmbeddedBackend } from '../../core/embedded/index.js'
import { createLogger } from '../../core/log.js'
import type { Site } from '../../core/ports/site-store.js'
import { createStreamMetrics } from '../../stream/metrics.js'
import { StreamWorker } from '../../stream/worker.js'
import { tempDataDir } from '../contract/backends.js'
import { seeded } from '../helpers/processes.js'
import {
  checkpointsAtEnd,
  compareReaderWithTruth,
  feed,
  ingestApp,
  openStreamBackend,
} from '../helpers/stream.js'
import { visitTruthOf } from '../helpers/visit-truth.js'
import { compareVisits, visitWorkload } from '../helpers/visit-workload.js'

/**
 * Visits through the stream on the embedded log and store: a workload with the edges of the
 * definition (returns after 29 and 31 minutes, an hour boundary, out of order within the grace,
 * duplicates, bots, one-event and track-only visits, late events) gives the truth computed apart
 * (test/helpers/visit-truth.ts), across workers that crash (abort: no final flush, what a SIGKILL
 * leaves) at random points and restarts of the log and the store.
 */

const GRACE_MS = 3 * 3_600_000
const config = loadConfig({
  TALLY_FLUSH_INTERVAL_MS: '100',
  TALLY_GRACE_MS: String(GRACE_MS),
  KAFKA_PARTITIONS: '3',
  LOG_LEVEL: 'silent',
})
const logger = createLogger('silent')
const topic = config.kafka.topicRaw
const dlq = config.kafka.topicDeadLetter
const data = tempDataDir()
const sites: Site[] = []
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

function openBackend(): EmbeddedBackend {
  return openStreamBackend(config, data.dir, logger)
}

function makeWorker(backend: EmbeddedBackend) {
  const metrics = createStreamMetrics()
  const deadLetters = backend.log.writer()
  const worker = new StreamWorker({
    config: config.stream,
    topic,
    deadLetterTopic: dlq,
    consumer: backend.log.consumer({ groupId: config.stream.group, topic }),
    store: backend.streamStore,
    deadLetters,
    offsets: backend.log,
    metrics,
    logger,
  })
  return { worker, metrics, deadLetters }
}

async function caughtUp(backend: EmbeddedBackend): Promise<void> {
  await checkpointsAtEnd(
    backend.log,
    backend.reader,
    config.stream.group,
    topic,
    'stream checkpoints at the end of the embedded log',
  )
}

beforeAll(async () => {
  const backend = openBackend()
  try {
    for (const id of ['v-alpha.test', 'v-beta.test'])
      sites.push((await backend.sites.create({ siteId: id, domain: id, origins: [] })).site)
  } finally {
    await backend.close()
  }
})

afterAll(() => {
  data.remove()
})

describe('visits through the stream on the embedded log and store', () => {
  it('equal the truth across crashes at random points and restarts', async () => {
    const seed = Date.now() % 100_000
    const random = seeded(seed)
    const now = Date.now()
    const ids = sites.map((s) => s.siteId)
    const events = visitWorkload(ids, 5, now, GRACE_MS, 3000)
    const keyOf = (siteId: string) => sites.find((s) => s.siteId === siteId)!.writeKey
    const parts = 6
    const size = Math.ceil(events.length / parts)
    const metricsText: string[] = []
    let crashes = 0
    for (let i = 0; i < events.length; i += size) {
      const backend = openBackend()
      try {
        const writer = backend.log.writer()
        const app = await ingestApp(config, writer, sites, logger)
        try {
          await feed(app, events.slice(i, i + size), keyOf, 50)
        } finally {
          await app.close()
          await writer.close()
        }
        // A worker that dies mid-work (no final flush, like SIGKILL), then one that catches up.
        const crashing = makeWorker(backend)
        await crashing.worker.start()
        await sleep(random() * 400)
        await crashing.worker.abort()
        metricsText.push(await crashing.metrics.registry.metrics())
        await crashing.deadLetters.close()
        crashes++
        const w = makeWorker(backend)
        await w.worker.start()
        try {
          await caughtUp(backend)
        } finally {
          await w.worker.close()
          await w.deadLetters.close()
        }
        metricsText.push(await w.metrics.registry.metrics())
      } finally {
        await backend.close()
      }
    }
    expect(crashes, `seed ${seed}`).toBe(parts)
    const text = metricsText.join('\n')
    expect(text).toMatch(/tally_stream_records_total\{outcome="late"\} [1-9]/)

    const onTime = events.filter((e) => !e.isLate)
    const truth = visitTruthOf(onTime, config.stream.visitGapMs)
    const backend = openBackend()
    try {
      const from = now - 2 * 86_400_000
      const to = now + 86_400_000
      expect(await compareVisits(backend.reader, truth, ids, from, to), `seed ${seed}`).toEqual([])
      expect(
        await compareReaderWithTruth(
          backend.reader,
          config.stream.hllPrecision,
          truthOf(onTime, ids),
          ids,
          from,
          to,
        ),
      ).toEqual([])
      // The workload's edges are in the truth: returns after 29 (one visit) and 31 minutes (two).
      const totalVisits = [...truth].filter(([k]) => k.split('|')[1] === 'day' && k.split('|')[3] === '')
      expect(totalVisits.reduce((n, [, c]) => n + c.visits, 0)).toBeGreaterThan(100)
    } finally {
      await backend.close()
    }
  })
})
