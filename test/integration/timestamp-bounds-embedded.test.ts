import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { Registry } from 'prom-client'
import { afterAll, describe, expect, it } from 'vitest'
import { Archiver } from '../../batch/archiver.js'
import { archiveBehind } from '../../batch/context.js'
import { createArchiveMetrics } from '../../batch/metrics.js'
import { runRebuild } from '../../batch/rebuild.js'
import { GRANULARITIES, windowStart } from '../../core/aggregate/definition.js'
import { archiveKey } from '../../core/archive/paths.js'
import { archiveTopicDir, parseSegmentFileName } from '../../core/archive/segment-file.js'
import { readRawSegment, readSegment } from '../../core/archive/segment-reader.js'
import { loadConfig } from '../../core/config.js'
import { type EmbeddedBackend, openEmbedded } from '../../core/embedded/index.js'
import { createLogger } from '../../core/log.js'
import type { StreamStore } from '../../core/ports/aggregate-store.js'
import type { LogRecord } from '../../core/ports/event-log.js'
import { HEADERS } from '../../core/record/headers.js'
import { normalizeEvent } from '../../ingest/normalize.js'
import { UserAgentParser } from '../../ingest/user-agent.js'
import { createStreamMetrics } from '../../stream/metrics.js'
import { StreamWorker } from '../../stream/worker.js'
import { tempDataDir } from '../contract/backends.js'
import { eventually } from '../helpers/context.js'

/**
 * Issue 19: a burst of far-apart timestamps must leave the stream worker's open windows and the
 * archiver's open segments bounded, whatever the log holds, while every event stays in the archive
 * and the stream's numbers stay exact. The log gets what ingest wrote before timestamps were
 * bounded (2,000 events an hour apart from 2030), imported history (1,000 events an hour apart,
 * four years back) and live events a minute apart over the next 10 hours (within the future bound,
 * so counted by the stream, in more minute windows than its cap).
 */

const HOUR = 3_600_000
const DAY = 86_400_000
const MAX_OPEN_WINDOWS = 100
const MAX_OPEN_HOURS = 8
const PARTITIONS = 2
const SITE = 'bounds.test'

const config = loadConfig({
  TALLY_FLUSH_INTERVAL_MS: '200',
  TALLY_STREAM_MAX_OPEN_WINDOWS: String(MAX_OPEN_WINDOWS),
  TALLY_ARCHIVE_MAX_OPEN_HOURS: String(MAX_OPEN_HOURS),
  KAFKA_PARTITIONS: String(PARTITIONS),
  LOG_LEVEL: 'silent',
})
const logger = createLogger('silent')
const topic = config.kafka.topicRaw
const dlq = config.kafka.topicDeadLetter
const data = tempDataDir('tally-bounds-')
const archiveDir = join(data.dir, 'archive')
const topicDir = archiveTopicDir(archiveDir, topic)

afterAll(() => data.remove())

interface Sent {
  messageId: string
  timestampMs: number
  kind: 'future' | 'history' | 'live'
}

const receivedAtMs = Date.now()
const FUTURE_FROM = Date.parse('2030-01-01T00:00:00.000Z')
const HISTORY_FROM = Math.floor((receivedAtMs - 4 * 365 * DAY) / HOUR) * HOUR
const LIVE_FROM = Math.floor(receivedAtMs / 60_000) * 60_000 - 2 * 60_000

const sent: Sent[] = [
  ...Array.from({ length: 2000 }, (_, i) => ({
    messageId: `future-${i}`,
    timestampMs: FUTURE_FROM + i * HOUR,
    kind: 'future' as const,
  })),
  ...Array.from({ length: 1000 }, (_, i) => ({
    messageId: `history-${i}`,
    timestampMs: HISTORY_FROM + i * HOUR,
    kind: 'history' as const,
  })),
  ...Array.from({ length: 600 }, (_, i) => ({
    messageId: `live-${i}`,
    timestampMs: LIVE_FROM + i * 60_000,
    kind: 'live' as const,
  })),
]

/** The log records, as ingest writes them; the 2030 ones as ingest wrote them before the bound. */
function records(): LogRecord[] {
  const ua = new UserAgentParser()
  // Deterministic interleaving of the three kinds, so every batch mixes them.
  const order = sent.map((s, i) => ({ s, k: (i * 7919) % sent.length })).sort((a, b) => a.k - b.k)
  return order.map(({ s }, i) => {
    const limits = s.kind === 'future' ? { ...config.ingest, maxFutureMs: 10 * 365 * DAY } : config.ingest
    const r = normalizeEvent(
      {
        type: 'page',
        messageId: s.messageId,
        anonymousId: `visitor-${i % 40}`,
        timestamp: new Date(s.timestampMs).toISOString(),
        context: { page: { path: `/p${i % 3}` } },
      },
      {
        siteId: SITE,
        userAgent: undefined,
        receivedAtMs,
        batchSentAt: undefined,
        routeType: undefined,
        imported: s.kind === 'history',
      },
      limits,
      ua,
    )
    if (!r.ok) throw new Error(`${s.messageId}: ${r.reason}`)
    expect(Date.parse(r.event.timestamp)).toBe(s.timestampMs)
    return {
      key: `${SITE}:${r.event.anonymousId}`,
      value: Buffer.from(JSON.stringify(r.event)),
      headers: { [HEADERS.schemaVersion]: '1', [HEADERS.siteId]: SITE },
      timestampMs: receivedAtMs,
    }
  })
}

function openBackend(): EmbeddedBackend {
  return openEmbedded({
    dataDir: data.dir,
    hllPrecision: config.stream.hllPrecision,
    ttlSeconds: config.stream.ttlSeconds,
    topics: [
      { topic, partitions: PARTITIONS },
      { topic: dlq, partitions: 1 },
    ],
    purgeIntervalMs: 0,
  })
}

/** Segment files under the topic folder: hour folder and parsed name. */
async function archivedSegments() {
  const out: Array<{
    dir: string
    name: string
    path: string
    partition: number
    first: number
    rows: number
  }> = []
  for (const day of await readdir(topicDir)) {
    if (day.startsWith('_')) continue
    for (const hour of await readdir(join(topicDir, day))) {
      for (const name of await readdir(join(topicDir, day, hour))) {
        if (name.endsWith('.raw.arrow')) continue
        const parsed = parseSegmentFileName(name)
        if (!parsed) throw new Error(`misnamed ${day}/${hour}/${name}`)
        out.push({
          dir: `${day}/${hour}`,
          name,
          path: join(topicDir, day, hour, name),
          partition: parsed.partition,
          first: parsed.firstOffset,
          rows: parsed.rows,
        })
      }
    }
  }
  return out
}

describe('bounded event time: stream and archiver under a burst of far-apart timestamps', () => {
  it('keeps open windows and open segments under their caps, counts live events exactly and archives every event', async () => {
    const backend = openBackend()
    try {
      const writer = backend.log.writer()
      await writer.append(topic, records())
      await writer.close()
      const ends = await backend.log.endOffsets(topic)

      // The worker's open windows are sampled whenever it loads rows (right after it opened new
      // windows, so at their peak) and whenever it writes them.
      const peak = new Map<number, { windows: number; rows: number }>()
      let worker: StreamWorker | undefined
      const sample = () => {
        for (const h of worker?.held() ?? []) {
          const p = peak.get(h.partition) ?? { windows: 0, rows: 0 }
          peak.set(h.partition, { windows: Math.max(p.windows, h.windows), rows: Math.max(p.rows, h.rows) })
        }
      }
      const base = backend.streamStore
      const store: StreamStore = Object.assign(Object.create(base) as StreamStore, {
        loadRows: (keys: Parameters<StreamStore['loadRows']>[0]) => {
          sample()
          return base.loadRows(keys)
        },
        writeRows: (...args: Parameters<StreamStore['writeRows']>) => {
          sample()
          return base.writeRows(...args)
        },
      })
      const metrics = createStreamMetrics()
      const deadLetters = backend.log.writer()
      worker = new StreamWorker({
        config: config.stream,
        topic,
        deadLetterTopic: dlq,
        consumer: backend.log.consumer({ groupId: config.stream.group, topic }),
        store,
        deadLetters,
        offsets: backend.log,
        metrics,
        logger,
      })
      const archiver = new Archiver(
        {
          consumer: backend.log.consumer({ groupId: config.archive.group, topic, maxBatchRecords: 500 }),
          store: backend.batch.archive,
          offsets: backend.log,
          metrics: createArchiveMetrics(new Registry()),
          logger,
        },
        {
          archiveDir,
          topic,
          group: config.archive.group,
          flushIntervalMs: 200,
          maxOpenHours: config.archive.maxOpenHours,
          owner: 'bounds-test',
        },
      )
      await worker.start()
      await archiver.start()
      try {
        await eventually(
          async () => {
            const progress = await backend.reader.streamProgress(config.stream.group, topic, PARTITIONS)
            const done = new Map(progress.map((p) => [p.partition, p.nextOffset]))
            for (const [p, end] of ends) if (end > 0 && (done.get(p) ?? 0) < end) return undefined
            return true
          },
          60_000,
          'stream checkpoints at the end of the log',
        )
        await eventually(
          async () => {
            const key = archiveKey(config.archive.group, topic)
            const behind = await archiveBehind(
              backend.batch.archive,
              backend.log,
              key,
              topic,
              Number.MAX_SAFE_INTEGER,
            )
            return behind.length === 0 ? true : undefined
          },
          60_000,
          'the archive to hold the whole log',
        )
        sample()
      } finally {
        await worker.close()
        await archiver.close()
        await deadLetters.close()
      }

      // Stream: the 2030 events were left to batch, the history was late, the live ones counted.
      const text = await metrics.registry.metrics()
      const outcome = (name: string) =>
        Number(new RegExp(`tally_stream_records_total\\{outcome="${name}"\\} (\\d+)`).exec(text)?.[1] ?? 0)
      expect(outcome('future')).toBe(2000)
      expect(outcome('late')).toBe(1000)
      expect(outcome('counted')).toBe(600)
      // 600 minute windows, 11 hours and a day or two would be open at once without the cap.
      expect(peak.size).toBe(PARTITIONS)
      for (const [partition, p] of peak) {
        expect(p.windows, `partition ${partition}`).toBeLessThanOrEqual(MAX_OPEN_WINDOWS)
        expect(p.windows, `partition ${partition}`).toBeGreaterThan(MAX_OPEN_WINDOWS / 2)
      }
      expect(Number(/tally_stream_windows_evicted_total (\d+)/.exec(text)?.[1])).toBeGreaterThan(0)

      // Windows dropped and read back still count every live event once.
      const live = sent.filter((s) => s.kind === 'live')
      for (const g of GRANULARITIES) {
        const truth = new Map<number, number>()
        for (const s of live) {
          const ws = windowStart(s.timestampMs, g)
          truth.set(ws, (truth.get(ws) ?? 0) + 1)
        }
        const from = Math.min(...truth.keys())
        const windows = await backend.reader.totals(SITE, g, from, Math.max(...truth.keys()) + DAY)
        expect(new Map(windows.map((w) => [w.windowStart, w.events])), g).toEqual(truth)
      }

      // Archive: every event, in its own event hour; no flush wrote more than the cap of segments.
      const segments = await archivedSegments()
      const perHour = new Map<string, number>()
      const expectedPerHour = new Map<string, number>()
      for (const s of sent) {
        const dir = new Date(windowStart(s.timestampMs, 'hour')).toISOString()
        const key = `${dir.slice(0, 10)}/${dir.slice(11, 13)}`
        expectedPerHour.set(key, (expectedPerHour.get(key) ?? 0) + 1)
      }
      const perFlush = new Map<string, Set<string>>()
      const ids: string[] = []
      for (const seg of segments) {
        perHour.set(seg.dir, (perHour.get(seg.dir) ?? 0) + seg.rows)
        const flush = `${seg.partition}-${seg.first}`
        perFlush.set(flush, (perFlush.get(flush) ?? new Set()).add(seg.dir))
        const cols = await readSegment({
          ...parseSegmentFileName(seg.name)!,
          path: seg.path,
          relPath: `${seg.dir}/${seg.name}`,
          hourStartMs: Date.parse(`${seg.dir.slice(0, 10)}T${seg.dir.slice(11)}:00:00Z`),
        })
        const raw = await readRawSegment(cols)
        for (const id of raw.getChild('message_id')!.toArray() as string[]) ids.push(id)
      }
      expect(perHour).toEqual(expectedPerHour)
      expect(ids.sort()).toEqual(sent.map((s) => s.messageId).sort())
      for (const [flush, dirs] of perFlush) {
        // One segment per hour folder and flush: the folder count is the segment count.
        expect(dirs.size, `flush ${flush}`).toBeLessThanOrEqual(MAX_OPEN_HOURS)
      }
      expect(segments.length).toBe(new Set(segments.map((s) => `${s.partition}-${s.first}-${s.dir}`)).size)
      expect(await readdir(join(topicDir, '_staging', 'p0'))).toEqual([])

      // What the stream left is the rebuild's: the first day of 2030 is counted from the archive.
      const result = await runRebuild(
        { leases: backend.batch.leases, jobs: backend.batch.jobs, rows: backend.batch.rows, logger },
        {
          topicDir,
          stagingDir: join(data.dir, 'batch-staging'),
          precision: config.stream.hllPrecision,
          owner: 'bounds-test',
          ttlSeconds: config.stream.ttlSeconds,
          leaseTtlMs: 5000,
        },
        { fromMs: FUTURE_FROM, toMs: FUTURE_FROM + DAY },
      )
      expect(result.run.eventsRead).toBe(24)
      const day = await backend.reader.totals(SITE, 'day', FUTURE_FROM, FUTURE_FROM + DAY)
      expect(day.map((w) => [w.windowStart, w.events, w.final])).toEqual([[FUTURE_FROM, 24, true]])
    } finally {
      await backend.close()
    }
  }, 180_000)
})
