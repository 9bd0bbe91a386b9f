import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { Registry } from 'prom-client'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Archiver } from '../../batch/archiver.js'
import { archiveBehind } from '../../batch/context.js'
import { readJobs } from '../../batch/jobs.js'
import { createArchiveMetrics } from '../../batch/metrics.js'
import { rangeName, runRebuild } from '../../batch/rebuild.js'
import {
  type GeneratedEvent,
  generateWorkload,
  type Truth,
  truthCounts,
  truthOf,
  windowKey,
} from '../../bench/workload.js'
import { DIMENSION_GRANULARITIES, DIMENSIONS, GRANULARITIES } from '../../core/aggregate/definition.js'
import { archiveKey } from '../../core/archive/paths.js'
import { archiveTopicDir, listSegments, stagingRelDir } from '../../core/archive/segment-file.js'
import { type EmbeddedBackend, openEmbedded } from '../../core/embedded/index.js'
import { HyperLogLog } from '../../core/hll.js'
import { createLogger } from '../../core/log.js'
import type { AggregateReader } from '../../core/ports/aggregate-store.js'
import type { Site } from '../../core/ports/site-store.js'
import { tempDataDir } from '../contract/backends.js'
import { eventually, testConfig } from '../helpers/context.js'
import { feed, ingestApp, type Mismatch, visitorSets } from '../helpers/stream.js'

/**
 * The batch pipeline on the embedded backend: events appended to the embedded log are archived by
 * the Archiver (embedded consumer group, embedded archive commits), and a rebuild from the archive
 * (embedded leases, job runs and final rows) makes the numbers read through the embedded reader
 * exactly the truth of the events, replacing whatever the stream had written.
 */

const HOUR = 3_600_000
const DAY = 86_400_000
const logger = createLogger('silent')
const SITE_IDS = ['emb-a.test', 'emb-b.test']

// History two days back, hour-aligned, six hours long; rebuilt over whole days.
const HISTORY_FROM = Math.floor((Date.now() - 2 * DAY) / HOUR) * HOUR
const HISTORY_TO = HISTORY_FROM + 6 * HOUR
const RANGE_FROM = Math.floor(HISTORY_FROM / DAY) * DAY
const RANGE_TO = Math.floor((HISTORY_TO - 1) / DAY) * DAY + DAY

let data: ReturnType<typeof tempDataDir>
let config: ReturnType<typeof testConfig>
let topic: string
let archiveDir: string
const sites: Site[] = []

function open(): EmbeddedBackend {
  return openEmbedded({
    dataDir: data.dir,
    hllPrecision: config.stream.hllPrecision,
    ttlSeconds: config.stream.ttlSeconds,
    topics: [{ topic, partitions: 3 }],
    purgeIntervalMs: 0,
  })
}

beforeAll(() => {
  data = tempDataDir('tally-batch-embedded-')
  config = testConfig({ TALLY_DATA_DIR: data.dir })
  topic = config.kafka.topicRaw
  archiveDir = join(data.dir, 'archive')
})

afterAll(() => {
  data?.remove()
})

/** Posts `events` through an ingest app writing to the embedded log; returns the records appended. */
async function ingest(backend: EmbeddedBackend, events: readonly GeneratedEvent[]): Promise<number> {
  const writer = backend.log.writer()
  const app = await ingestApp(config, writer, sites, logger)
  try {
    const keyOf = (siteId: string) => sites.find((s) => s.siteId === siteId)!.writeKey
    return await feed(app, events, keyOf)
  } finally {
    await app.close()
    await writer.close()
  }
}

function startArchiver(backend: EmbeddedBackend): Archiver {
  return new Archiver(
    {
      consumer: backend.log.consumer({ groupId: config.archive.group, topic, maxBatchRecords: 200 }),
      store: backend.batch.archive,
      offsets: backend.log,
      metrics: createArchiveMetrics(new Registry()),
      logger,
    },
    { archiveDir, topic, group: config.archive.group, flushIntervalMs: 200, owner: 'embedded-test' },
  )
}

/** Waits until the archive's commits cover every record of the log. */
async function waitArchived(backend: EmbeddedBackend): Promise<void> {
  const key = archiveKey(config.archive.group, topic)
  await eventually(
    async () => {
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
}

async function archivedRows(): Promise<number> {
  const { segments, misnamed } = await listSegments(archiveTopicDir(archiveDir, topic), RANGE_FROM, RANGE_TO)
  expect(misnamed).toEqual([])
  return segments.reduce((n, s) => n + s.rows, 0)
}

function rebuildNow(backend: EmbeddedBackend, skipUnchanged = false) {
  return runRebuild(
    { leases: backend.batch.leases, jobs: backend.batch.jobs, rows: backend.batch.rows, logger },
    {
      topicDir: archiveTopicDir(archiveDir, topic),
      stagingDir: join(data.dir, 'batch-staging'),
      precision: config.stream.hllPrecision,
      owner: 'embedded-test',
      ttlSeconds: config.stream.ttlSeconds,
      leaseTtlMs: 5000,
    },
    { fromMs: RANGE_FROM, toMs: RANGE_TO, skipUnchanged },
  )
}

function sketchEstimate(ids: Iterable<string>, precision: number): number {
  const h = new HyperLogLog(precision)
  for (const id of ids) h.add(id)
  return Math.round(h.estimate())
}

/**
 * Every window (totals of every granularity) and every breakdown value (hour and day) read through
 * `reader` against the truth: counts exactly, visitors register-exact (the merged sketch must be
 * the sketch of the true visitor set). Also reports windows that are not final.
 */
async function compareWithTruth(
  reader: AggregateReader,
  precision: number,
  truth: Truth,
  events: readonly GeneratedEvent[],
): Promise<Mismatch[]> {
  const sets = visitorSets(events)
  const out: Mismatch[] = []
  const check = (where: string, expected: number, actual: number) => {
    if (actual !== expected) out.push({ where, expected, actual })
  }
  for (const site of SITE_IDS) {
    for (const g of GRANULARITIES) {
      const windows = await reader.totals(site, g, RANGE_FROM, RANGE_TO)
      const byStart = new Map(windows.map((w) => [w.windowStart, w]))
      const expected = Object.keys(truth.sites[site]?.windows[g] ?? {}).map((k) => Date.parse(k))
      for (const ws of new Set([...expected, ...byStart.keys()])) {
        const t = truthCounts(truth, site, { granularity: g, window: ws })
        const a = byStart.get(ws)
        const where = `${site} ${g} ${windowKey(ws, g)}`
        check(`${where} events`, t.events, a?.events ?? 0)
        check(`${where} pageviews`, t.pageviews, a?.pageviews ?? 0)
        check(`${where} final`, 1, a?.final ? 1 : 0)
        const set = sets.get(`${site}|${g}|${ws}`) ?? new Set<string>()
        check(`${where} visitor set size`, t.visitors, set.size)
        check(
          `${where} visitors (registers)`,
          sketchEstimate(set, precision),
          a ? Math.round(HyperLogLog.fromBytes(a.visitors).estimate()) : 0,
        )
      }
    }
    for (const g of DIMENSION_GRANULARITIES) {
      for (const d of DIMENSIONS) {
        const detailed = await reader.breakdownDetailed(site, g, d, RANGE_FROM, RANGE_TO)
        for (const [ws, w] of detailed.windows)
          check(`${site} ${g} ${d} ${windowKey(ws, g)} final`, 1, w.final ? 1 : 0)
        const expected = new Map<string, { events: number; pageviews: number }>()
        for (const w of Object.values(truth.sites[site]?.windows[g] ?? {})) {
          for (const [value, c] of Object.entries(w.breakdown[d])) {
            const e = expected.get(value) ?? { events: 0, pageviews: 0 }
            e.events += c.events
            e.pageviews += c.pageviews
            expected.set(value, e)
          }
        }
        for (const value of new Set([...expected.keys(), ...detailed.values.keys()])) {
          const e = expected.get(value) ?? { events: 0, pageviews: 0 }
          const a = detailed.values.get(value)
          const where = `${site} ${g} ${d}=${value}`
          check(`${where} events`, e.events, a?.events ?? 0)
          check(`${where} pageviews`, e.pageviews, a?.pageviews ?? 0)
          check(
            `${where} visitors (registers)`,
            sketchEstimate(sets.get(`${site}|${d}|${value}`) ?? [], precision),
            a ? Math.round(HyperLogLog.fromBytes(a.visitors).estimate()) : 0,
          )
        }
      }
    }
  }
  return out
}

const first = generateWorkload({
  seed: 21,
  sites: SITE_IDS,
  events: 2500,
  start: new Date(HISTORY_FROM),
  spanMs: HISTORY_TO - HISTORY_FROM,
  lateShare: 0,
})
const second = generateWorkload({
  seed: 22,
  sites: SITE_IDS,
  events: 1500,
  start: new Date(HISTORY_FROM),
  spanMs: HISTORY_TO - HISTORY_FROM,
  lateShare: 0,
})

describe('batch layer on the embedded backend', () => {
  it('archives the embedded log exactly once and rebuilds the truth of the events, replacing the stream’s rows', async () => {
    expect(first.events.some((e) => e.isDuplicate)).toBe(true)
    expect(first.events.some((e) => e.isBot)).toBe(true)
    const backend = open()
    try {
      for (const id of SITE_IDS)
        sites.push((await backend.sites.create({ siteId: id, domain: id, origins: [] })).site)
      const appended = await ingest(backend, first.events)
      const ends = await backend.log.endOffsets(topic)
      expect([...ends.values()].reduce((a, b) => a + b, 0)).toBe(appended)

      // What a stream might have left in the range: wrong partial counts in a window with events, a
      // breakdown value and a minute window the events do not have.
      const site = SITE_IDS[0]!
      const hour =
        Math.floor(Date.parse(first.events.find((e) => e.siteId === site)!.payload.timestamp) / HOUR) * HOUR
      const ghost = { events: 999, pageviews: 999, botEvents: 0, visitors: new HyperLogLog(14).toBytes() }
      const key = { siteId: site, dimension: undefined, value: '', sourcePartition: 0 } as const
      await backend.streamStore.writeRows(
        [
          { key: { ...key, granularity: 'hour', windowStart: hour }, values: ghost, throughOffset: 5 },
          {
            key: { ...key, granularity: 'minute', windowStart: RANGE_FROM + 59 * 60_000 },
            values: ghost,
            throughOffset: 5,
          },
          {
            key: {
              ...key,
              granularity: 'hour',
              windowStart: HISTORY_FROM,
              dimension: 'path',
              value: '/ghost',
            },
            values: ghost,
            throughOffset: 5,
          },
        ],
        1,
      )

      const archiver = startArchiver(backend)
      await archiver.start()
      try {
        await waitArchived(backend)
      } finally {
        await archiver.close()
      }
      // Every record in exactly one closed segment.
      expect(await archivedRows()).toBe(appended)
      const progress = await backend.batch.archive.progress(archiveKey(config.archive.group, topic), 3)
      expect(progress.map((p) => [p.partition, p.nextOffset])).toEqual([...ends].sort((a, b) => a[0] - b[0]))

      const result = await rebuildNow(backend)
      expect(result.status).toBe('succeeded')
      expect(result.run.eventsRead).toBe(appended)
      expect(result.run.duplicates).toBeGreaterThan(0)
      expect(result.run.rowsWritten).toBeGreaterThan(100)
      expect(
        await compareWithTruth(
          backend.reader,
          config.stream.hllPrecision,
          truthOf(first.events, SITE_IDS),
          first.events,
        ),
      ).toEqual([])
      // The ghost breakdown value is now a final row of zeros.
      const paths = await backend.reader.breakdown(site, 'hour', 'path', HISTORY_FROM, HISTORY_FROM + HOUR)
      expect(paths.get('/ghost')).toMatchObject({ events: 0, pageviews: 0, final: true })

      const runs = await readJobs(backend.batch.jobs, backend.batch.leases)
      expect(runs.find((r) => r.jobId === result.run.jobId)).toEqual(result.run)
      expect(await backend.batch.leases.current(rangeName(undefined, RANGE_FROM, RANGE_TO))).toBeUndefined()
      const again = await rebuildNow(backend, true)
      expect(again.status).toBe('skipped_unchanged')
    } finally {
      await backend.close()
    }
  })

  it('after a restart, the archiver resumes from its commits (new epoch) and a new rebuild counts everything once', async () => {
    const backend = open()
    try {
      const key = archiveKey(config.archive.group, topic)
      const before = await backend.log.endOffsets(topic)
      const appended = await ingest(backend, second.events)
      const archiver = startArchiver(backend)
      await archiver.start()
      try {
        await waitArchived(backend)
      } finally {
        await archiver.close()
      }
      for (const p of [0, 1, 2]) expect((await backend.batch.archive.read(key, p))?.epoch).toBe(2)
      const total = [...before.values()].reduce((a, b) => a + b, 0) + appended
      expect(await archivedRows()).toBe(total)
      // Every committed segment has its final name: no staging file is left behind.
      for (const p of [0, 1, 2])
        expect(await readdir(join(archiveTopicDir(archiveDir, topic), stagingRelDir(p)))).toEqual([])

      const result = await rebuildNow(backend)
      expect(result.status).toBe('succeeded')
      expect(result.run.eventsRead).toBe(total)
      expect(result.run.token).toBeGreaterThan(0)
      const events = [...first.events, ...second.events]
      expect(
        await compareWithTruth(backend.reader, config.stream.hllPrecision, truthOf(events, SITE_IDS), events),
      ).toEqual([])
      const runs = (await readJobs(backend.batch.jobs, backend.batch.leases)).filter(
        (r) => r.leaseName === rangeName(undefined, RANGE_FROM, RANGE_TO),
      )
      expect(runs.map((r) => r.status)).toEqual(['succeeded', 'succeeded'])
      expect(runs[0]!.token).toBeGreaterThan(runs[1]!.token)
    } finally {
      await backend.close()
    }
  })
})
