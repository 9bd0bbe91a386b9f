import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { embeddedPorts } from '../../app/backend.js'
import { startStream } from '../../app/start.js'
import { generateWorkload, truthOf } from '../../bench/workload.js'
import { loadConfig } from '../../core/config.js'
import type { EmbeddedBackend } from '../../core/embedded/index.js'
import { createLogger } from '../../core/log.js'
import type { ProgressNotice } from '../../core/ports/progress-notices.js'
import type { Site } from '../../core/ports/site-store.js'
import { createStreamMetrics } from '../../stream/metrics.js'
import { tempDataDir } from '../contract/backends.js'
import { eventually } from '../helpers/context.js'
import {
  compareReaderWithTruth,
  feed,
  ingestApp,
  lateInRealTime,
  openStreamBackend,
  streamEmbeddedToEnd,
} from '../helpers/stream.js'

/**
 * The stream worker, unchanged, on the embedded log and store: ingest → embedded log → worker →
 * embedded store gives the generator's truth, across a restart of everything in the middle
 * (duplicates whose first copy came before the restart are still dropped).
 */

const config = loadConfig({
  TALLY_FLUSH_INTERVAL_MS: '200',
  TALLY_GRACE_MS: '300000',
  KAFKA_PARTITIONS: '3',
  LOG_LEVEL: 'silent',
})
const logger = createLogger('silent')
const topic = config.kafka.topicRaw
const dlq = config.kafka.topicDeadLetter
const data = tempDataDir()
const sites: Site[] = []

function openBackend(): EmbeddedBackend {
  return openStreamBackend(config, data.dir, logger)
}

/** Runs a worker until every partition's checkpoint reached the end of the log, then closes it. */
async function runWorker(backend: EmbeddedBackend): Promise<string> {
  const metrics = createStreamMetrics()
  await streamEmbeddedToEnd(backend, { stream: config.stream, topic, deadLetterTopic: dlq, metrics, logger })
  return metrics.registry.metrics()
}

beforeAll(async () => {
  const backend = openBackend()
  try {
    for (const id of ['alpha.test', 'beta.test'])
      sites.push((await backend.sites.create({ siteId: id, domain: id, origins: [] })).site)
  } finally {
    await backend.close()
  }
})

afterAll(() => {
  data.remove()
})

describe('stream worker on the embedded log and store', () => {
  it('counts a generated workload exactly, across a restart of log, store and worker', async () => {
    const now = Date.now()
    const workload = generateWorkload({
      seed: 7,
      sites: sites.map((s) => s.siteId),
      events: 1500,
      start: new Date(now - 4 * 60_000),
      spanMs: 3 * 60_000,
      lateShare: 0.03,
      lateByMs: 20 * 60_000,
      duplicateShare: 0.05,
    })
    const events = lateInRealTime(workload.events, 20 * 60_000)
    const half = Math.floor(events.length / 2)
    const keyOf = (siteId: string) => sites.find((s) => s.siteId === siteId)!.writeKey
    // Duplicates whose first copy is in the first half and the retry in the second.
    const firstHalfIds = new Set(events.slice(0, half).map((e) => e.payload.messageId))
    expect(events.slice(half).some((e) => e.isDuplicate && firstHalfIds.has(e.payload.messageId))).toBe(true)

    const metricsText: string[] = []
    for (const part of [events.slice(0, half), events.slice(half)]) {
      const backend = openBackend()
      try {
        const writer = backend.log.writer()
        const app = await ingestApp(config, writer, sites, logger)
        try {
          expect(await feed(app, part, keyOf)).toBe(part.length)
        } finally {
          await app.close()
          await writer.close()
        }
        metricsText.push(await runWorker(backend))
      } finally {
        await backend.close()
      }
    }
    expect(metricsText.join('\n')).toMatch(/tally_stream_records_total\{outcome="duplicate"\} [1-9]/)
    expect(metricsText.join('\n')).toMatch(/tally_stream_records_total\{outcome="late"\} [1-9]/)

    const onTime = events.filter((e) => !e.isLate)
    const truth = truthOf(
      onTime,
      sites.map((s) => s.siteId),
    )
    const backend = openBackend()
    try {
      const mismatches = await compareReaderWithTruth(
        backend.reader,
        config.stream.hllPrecision,
        truth,
        sites.map((s) => s.siteId),
        now - 2 * 86_400_000,
        now + 86_400_000,
        onTime,
      )
      expect(mismatches).toEqual([])
      const total = sites.reduce((n, s) => n + (truth.sites[s.siteId]?.events ?? 0), 0)
      expect(total).toBeGreaterThan(800)
    } finally {
      await backend.close()
    }
  })

  it('sends poison records to the embedded dead-letter topic and keeps the partition moving', async () => {
    const backend = openBackend()
    try {
      const site = sites[0]!
      const key = `${site.siteId}:poison-visitor`
      const at = new Date().toISOString()
      await backend.log.writer().append(topic, [
        { key, value: Buffer.from('{not json'), headers: { traceparent: 't-1' } },
        {
          key,
          value: Buffer.from(
            JSON.stringify({
              v: 1,
              siteId: site.siteId,
              messageId: 'after-poison-1',
              messageIdAssigned: false,
              type: 'page',
              anonymousId: 'poison-visitor',
              properties: { path: '/after-poison' },
              context: {},
              timestamp: at,
              receivedAt: at,
              ua: { browser: 'Firefox', os: 'Linux', device: 'desktop' },
              bot: false,
            }),
          ),
          headers: { 'tally-schema-version': '1' },
        },
      ])
      await runWorker(backend)
      const dead = backend.log.read(dlq, 0, 0, 10)
      expect(dead).toHaveLength(1)
      const body = JSON.parse(String(dead[0]!.value)) as Record<string, unknown>
      expect(body).toMatchObject({ code: 'TALLY_ERR_UNDECODABLE', sourceTopic: topic, traceparent: 't-1' })
      // From two days back: the events may have been stamped just before midnight.
      const now = Date.now()
      const paths = await backend.reader.breakdown(
        site.siteId,
        'day',
        'path',
        now - 2 * 86_400_000,
        now + 86_400_000,
      )
      expect(paths.get('/after-poison')?.events).toBe(1)
    } finally {
      await backend.close()
    }
  })

  it('announces each checkpoint on the process bus: a query role hears the stored checkpoints', async () => {
    const backend = openBackend()
    const ports = embeddedPorts(backend)
    const listener = ports.progress.listener({ group: config.stream.group, topic })
    const heard: ProgressNotice[] = []
    listener.start((n) => heard.push(n))
    try {
      expect(listener.live()).toBe(true)
      const workload = generateWorkload({
        seed: 13,
        sites: sites.map((s) => s.siteId),
        events: 200,
        start: new Date(Date.now() - 60_000),
        spanMs: 30_000,
        lateShare: 0,
      })
      const writer = backend.log.writer()
      const app = await ingestApp(config, writer, sites, logger)
      try {
        expect(await feed(app, workload.events, (id) => sites.find((s) => s.siteId === id)!.writeKey)).toBe(
          workload.events.length,
        )
      } finally {
        await app.close()
        await writer.close()
      }
      const ends = await backend.log.endOffsets(topic)
      const stream = await startStream(config, logger, { ports, port: 0 })
      try {
        await eventually(
          async () => {
            const progress = await backend.reader.streamProgress(config.stream.group, topic, ends.size)
            const done = new Map(progress.map((p) => [p.partition, p.nextOffset]))
            for (const [p, end] of ends) if ((done.get(p) ?? 0) < end) return undefined
            return true
          },
          60_000,
          'stream checkpoints at the end of the embedded log',
        )
      } finally {
        await stream.close()
      }
      expect(await stream.registryText()).toMatch(
        /tally_stream_progress_notices_total\{outcome="sent"\} [1-9]/,
      )
      // Delivery is in memory, ordered and done by the time close() resolves: the last notice of
      // each partition is its stored checkpoint.
      for (const partition of ends.keys()) {
        const cp = await backend.streamStore.readCheckpoint({ group: config.stream.group, topic, partition })
        const last = heard.filter((n) => n.partition === partition).at(-1)
        expect(cp).toBeDefined()
        expect(last).toMatchObject({
          group: config.stream.group,
          topic,
          partition,
          nextOffset: cp!.nextOffset,
          epoch: cp!.epoch,
        })
      }
    } finally {
      await listener.close()
      await backend.close()
    }
  })
})
