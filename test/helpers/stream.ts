import type { Client } from 'cassandra-driver'
import type { FastifyInstance } from 'fastify'
import { Registry } from 'prom-client'
import { expect } from 'vitest'
import {
  dimensionValues,
  type GeneratedEvent,
  type Truth,
  truthCounts,
  windowKey,
} from '../../bench/workload.js'
import { DIMENSION_GRANULARITIES, DIMENSIONS, GRANULARITIES } from '../../core/aggregate/definition.js'
import { CassandraAggregateReader } from '../../core/cassandra/aggregate-reader.js'
import type { StreamConfig, TallyConfig } from '../../core/config.js'
import { type EmbeddedBackend, openEmbedded } from '../../core/embedded/index.js'
import { HyperLogLog, hllErrorBound } from '../../core/hll.js'
import { createKafka } from '../../core/kafka/client.js'
import type { Logger } from '../../core/log.js'
import type { AggregateReader, StreamStore } from '../../core/ports/aggregate-store.js'
import type { EventLogWriter, LogOffsets } from '../../core/ports/event-log.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildIngestApp } from '../../ingest/app.js'
import { createIngestMetrics } from '../../ingest/metrics.js'
import { createStreamMetrics, type StreamMetrics } from '../../stream/metrics.js'
import type { PropKeyCache } from '../../stream/prop-keys.js'
import { StreamWorker, type StreamWorkerDeps } from '../../stream/worker.js'
import type { EventLogHarness } from '../contract/event-log.js'
import { eventually } from './context.js'

/** An in-process ingest app (no socket) over the given log, knowing the given sites. */
export async function ingestApp(
  config: TallyConfig,
  log: EventLogWriter,
  sites: Site[],
  logger: Logger,
): Promise<FastifyInstance> {
  const byKey = new Map(sites.map((s) => [s.writeKey, s]))
  return buildIngestApp({
    config: { ...config.ingest, rateLimitClientPerSec: 0, rateLimitSitePerSec: 0, maxBatchEvents: 5000 },
    topic: config.kafka.topicRaw,
    log,
    sites: { byWriteKey: async (k) => byKey.get(k), isKnownOrigin: async () => true },
    metrics: createIngestMetrics(),
    logger,
  })
}

/**
 * Posts generated events through an in-process ingest app onto `log` (feed, each event with its
 * site's write key), then closes both.
 */
export async function ingestAll(
  log: { writer(): EventLogWriter },
  config: TallyConfig,
  sites: readonly Site[],
  events: readonly GeneratedEvent[],
  logger: Logger,
): Promise<number> {
  const keys = new Map(sites.map((s) => [s.siteId, s.writeKey]))
  const keyOf = (siteId: string) => {
    const key = keys.get(siteId)
    if (key === undefined) throw new Error(`ingestAll: an event of site ${siteId}, not one of those given`)
    return key
  }
  const writer = log.writer()
  const app = await ingestApp(config, writer, [...sites], logger)
  try {
    return await feed(app, events, keyOf)
  } finally {
    await app.close()
    await writer.close()
  }
}

/**
 * Posts generated events in send order through /v1/import (original timestamps kept, so windows
 * match the generator's truth), in batches per site.
 */
export async function feed(
  app: FastifyInstance,
  events: readonly GeneratedEvent[],
  keyOf: (siteId: string) => string,
  batchSize = 200,
): Promise<number> {
  let accepted = 0
  for (let i = 0; i < events.length; i += batchSize) {
    const slice = events.slice(i, i + batchSize)
    const bySite = new Map<string, GeneratedEvent[]>()
    for (const e of slice) bySite.set(e.siteId, [...(bySite.get(e.siteId) ?? []), e])
    for (const [siteId, list] of bySite) {
      const res = await app.inject({
        method: 'POST',
        url: '/v1/import',
        headers: {
          'content-type': 'application/json',
          authorization: `Basic ${Buffer.from(`${keyOf(siteId)}:`).toString('base64')}`,
        },
        payload: { batch: list.map((e) => e.payload) },
      })
      expect(res.statusCode, res.body).toBe(200)
      const body = res.json() as { accepted: number; rejected: unknown[] }
      expect(body.rejected).toEqual([])
      accepted += body.accepted
    }
  }
  return accepted
}

/** Waits until every partition's checkpoint has reached the end of the raw topic. */
export async function waitCaughtUp(
  config: TallyConfig,
  cassandra: Client,
  timeoutMs = 90_000,
): Promise<void> {
  const admin = createKafka(config.kafka).admin()
  await admin.connect()
  try {
    const ends = new Map(
      (await admin.fetchTopicOffsets(config.kafka.topicRaw)).map((o) => [o.partition, Number(o.high)]),
    )
    await eventually(
      async () => {
        const rs = await cassandra.execute(
          'SELECT partition, next_offset FROM stream_group_checkpoints WHERE consumer_group = ? AND topic = ?',
          [config.stream.group, config.kafka.topicRaw],
          { prepare: true },
        )
        const done = new Map(rs.rows.map((r) => [Number(r.get('partition')), Number(r.get('next_offset'))]))
        for (const [p, end] of ends) if (end > 0 && (done.get(p) ?? 0) < end) return undefined
        return true
      },
      timeoutMs,
      'stream checkpoints to reach the end of the raw topic',
    )
  } finally {
    await admin.disconnect()
  }
}

type Progress = Pick<AggregateReader, 'streamProgress'>

/**
 * Waits until every partition's checkpoint of `group` (as `reader` reads it) has reached the end
 * `offsets` gives for `topic` (empty partitions need none).
 */
export async function checkpointsAtEnd(
  offsets: LogOffsets,
  reader: Progress,
  group: string,
  topic: string,
  what = 'the stream to checkpoint at the end of the log',
): Promise<void> {
  const ends = await offsets.endOffsets(topic)
  await eventually(
    async () => {
      const progress = await reader.streamProgress(group, topic, ends.size)
      const done = new Map(progress.map((p) => [p.partition, p.nextOffset]))
      for (const [p, end] of ends) if (end > 0 && (done.get(p) ?? 0) < end) return undefined
      return true
    },
    60_000,
    what,
  )
}

/**
 * Runs a StreamWorker built from `deps` until every partition's checkpoint has reached the end of
 * the log (checkpointsAtEnd), then closes it and its dead-letter writer.
 */
export async function runWorkerToEnd(
  deps: StreamWorkerDeps & { offsets: LogOffsets },
  reader: Progress,
  what?: string,
): Promise<void> {
  const worker = new StreamWorker(deps)
  await worker.start()
  try {
    await checkpointsAtEnd(deps.offsets, reader, deps.config.group, deps.topic, what)
  } finally {
    await worker.close()
    await deps.deadLetters.close()
  }
}

/**
 * Streams the whole of `topic` on a harness's log into its store with a real StreamWorker (group
 * `group`, dead letters to `<topic>-dlq`) and returns once every partition's checkpoint is at the
 * end of the log: what a test needs before it reads the stream's rows.
 */
export async function streamToEnd(
  log: EventLogHarness,
  store: { store: StreamStore; reader: Progress },
  o: {
    topic: string
    group: string
    stream: StreamConfig
    logger: Logger
    propKeys?: PropKeyCache
  },
): Promise<void> {
  await runWorkerToEnd(
    {
      config: { ...o.stream, group: o.group },
      topic: o.topic,
      deadLetterTopic: `${o.topic}-dlq`,
      consumer: log.consumer(o.group, o.topic),
      store: store.store,
      deadLetters: log.writer(),
      offsets: log.offsets,
      metrics: createStreamMetrics(new Registry()),
      logger: o.logger,
      ...(o.propKeys ? { propKeys: o.propKeys } : {}),
    },
    store.reader,
  )
}

/**
 * Streams the whole of `topic` on an embedded backend's log into its store with a real StreamWorker
 * (the group of `stream`, metrics as given) and returns once every partition's checkpoint is at the
 * end of the log.
 */
/**
 * The embedded backend of a stream test: its log (the raw topic with `config`'s partitions and the
 * dead-letter topic) and store under `dataDir`.
 */
export function openStreamBackend(config: TallyConfig, dataDir: string, logger: Logger): EmbeddedBackend {
  return openEmbedded({
    dataDir,
    hllPrecision: config.stream.hllPrecision,
    ttlSeconds: config.stream.ttlSeconds,
    topics: [
      { topic: config.kafka.topicRaw, partitions: config.kafka.partitions },
      { topic: config.kafka.topicDeadLetter, partitions: 1 },
    ],
    logger,
  })
}

export async function streamEmbeddedToEnd(
  backend: Pick<EmbeddedBackend, 'log' | 'streamStore' | 'reader'>,
  o: { stream: StreamConfig; topic: string; deadLetterTopic: string; metrics: StreamMetrics; logger: Logger },
): Promise<void> {
  await runWorkerToEnd(
    {
      config: o.stream,
      topic: o.topic,
      deadLetterTopic: o.deadLetterTopic,
      consumer: backend.log.consumer({ groupId: o.stream.group, topic: o.topic }),
      store: backend.streamStore,
      deadLetters: backend.log.writer(),
      offsets: backend.log,
      metrics: o.metrics,
      logger: o.logger,
    },
    backend.reader,
    'stream checkpoints at the end of the embedded log',
  )
}

export interface Mismatch {
  where: string
  expected: number
  actual: number
}

/** compareReaderWithTruth over the Cassandra store. */
export async function compareWithTruth(
  cassandra: Client,
  precision: number,
  truth: Truth,
  sites: readonly string[],
  fromMs: number,
  toMs: number,
  events?: readonly GeneratedEvent[],
): Promise<Mismatch[]> {
  return compareReaderWithTruth(
    new CassandraAggregateReader(cassandra, precision),
    precision,
    truth,
    sites,
    fromMs,
    toMs,
    events,
  )
}

/**
 * Compares every window (minute/hour/day totals) and every breakdown (hour and day) that any
 * AggregateReader (Cassandra or embedded) returns with the truth: counts exactly, visitors within
 * the HyperLogLog bound (and exactly when small), or register-exact when `events` is given.
 */
export async function compareReaderWithTruth(
  reader: AggregateReader,
  precision: number,
  truth: Truth,
  sites: readonly string[],
  fromMs: number,
  toMs: number,
  /** The events the truth was computed from: window visitors are then checked register-exact. */
  events?: readonly GeneratedEvent[],
): Promise<Mismatch[]> {
  const sets = events ? visitorSets(events) : undefined
  const bound = hllErrorBound(precision)
  const out: Mismatch[] = []
  // Small sets undercount by the register collisions among their ids (about n²/2m): allow two.
  const check = (where: string, expected: number, actual: number, approx = false) => {
    const ok = approx
      ? Math.abs(actual - expected) <= Math.max(2, Math.ceil(expected * bound))
      : actual === expected
    if (!ok) out.push({ where, expected, actual })
  }
  for (const site of sites) {
    for (const g of GRANULARITIES) {
      const windows = await reader.totals(site, g, fromMs, toMs)
      const byStart = new Map(windows.map((w) => [w.windowStart, w]))
      const expectedWindows = Object.keys(truth.sites[site]?.windows[g] ?? {})
      const starts = new Set([...expectedWindows.map((k) => Date.parse(k)), ...byStart.keys()])
      for (const ws of starts) {
        if (ws < fromMs || ws >= toMs) continue
        const t = truthCounts(truth, site, { granularity: g, window: ws })
        const a = byStart.get(ws)
        const est = a ? Math.round(HyperLogLog.fromBytes(a.visitors).estimate()) : 0
        const where = `${site} ${g} ${windowKey(ws, g)}`
        check(`${where} events`, t.events, a?.events ?? 0)
        check(`${where} pageviews`, t.pageviews, a?.pageviews ?? 0)
        const set = sets?.get(`${site}|${g}|${ws}`)
        if (set) {
          // A sketch depends only on its set: the merged registers must be those of the true set.
          check(`${where} visitor set size`, t.visitors, set.size)
          check(`${where} visitors (registers)`, sketchEstimate(set, precision), est)
        } else {
          check(`${where} visitors`, t.visitors, est, true)
        }
      }
    }
    for (const g of DIMENSION_GRANULARITIES) {
      for (const d of DIMENSIONS) {
        const merged = await reader.breakdown(site, g, d, fromMs, toMs)
        const expected = new Map<string, { events: number; pageviews: number; visitors: number }>()
        for (const [key, w] of Object.entries(truth.sites[site]?.windows[g] ?? {})) {
          const ws = Date.parse(key)
          if (ws < fromMs || ws >= toMs) continue
          for (const [value, c] of Object.entries(w.breakdown[d])) {
            const e = expected.get(value) ?? { events: 0, pageviews: 0, visitors: 0 }
            e.events += c.events
            e.pageviews += c.pageviews
            expected.set(value, e)
          }
        }
        // The compared range holds the whole workload, so the site-wide breakdown's exact visitors
        // is the truth for a value merged over all its windows.
        const rangeTruth = truth.sites[site]?.breakdown[d] ?? {}
        for (const value of new Set([...expected.keys(), ...merged.keys()])) {
          const e = expected.get(value) ?? { events: 0, pageviews: 0, visitors: 0 }
          const a = merged.get(value)
          const est = a ? Math.round(HyperLogLog.fromBytes(a.visitors).estimate()) : 0
          const set = sets?.get(`${site}|${d}|${value}`)
          if (set) {
            // The merged registers over the range must be those of the value's true visitor set.
            check(`${site} ${g} ${d}=${value} visitor set size`, rangeTruth[value]?.visitors ?? 0, set.size)
            check(`${site} ${g} ${d}=${value} visitors (registers)`, sketchEstimate(set, precision), est)
          } else {
            check(`${site} ${g} ${d}=${value} visitors`, rangeTruth[value]?.visitors ?? 0, est, true)
          }
          // Bot-only values exist in the store (bot_events) with zero counts: compare counts only.
          check(`${site} ${g} ${d}=${value} events`, e.events, a?.events ?? 0)
          check(`${site} ${g} ${d}=${value} pageviews`, e.pageviews, a?.pageviews ?? 0)
        }
      }
    }
  }
  return out
}

/**
 * The generator makes an event late by sending it long after its timestamp (in virtual time);
 * fed all at once, every event arrives now. This moves each late event's timestamp back by
 * `lateByMs` instead (and its retries' with it), so it really is late when it arrives.
 */
export function lateInRealTime(events: readonly GeneratedEvent[], lateByMs: number): GeneratedEvent[] {
  const lateIds = new Set(events.filter((e) => e.isLate).map((e) => e.payload.messageId))
  return events.map((e) => {
    if (!lateIds.has(e.payload.messageId)) return e
    const payload = structuredClone(e.payload) as GeneratedEvent['payload']
    payload.timestamp = new Date(Date.parse(payload.timestamp) - lateByMs).toISOString()
    return { ...e, payload, isLate: true }
  })
}

function sketchEstimate(ids: Iterable<string>, precision: number): number {
  const h = new HyperLogLog(precision)
  for (const id of ids) h.add(id)
  return Math.round(h.estimate())
}

/**
 * Distinct visitor ids of the counted events (first copy of each messageId, no bots): per site,
 * granularity and window, and per site, dimension and value over the whole list.
 */
export function visitorSets(events: readonly GeneratedEvent[]): Map<string, Set<string>> {
  const seen = new Set<string>()
  const out = new Map<string, Set<string>>()
  const add = (key: string, id: string) => {
    const set = out.get(key) ?? new Set<string>()
    set.add(id)
    out.set(key, set)
  }
  for (const e of events) {
    const p = e.payload
    const id = `${e.siteId}|${p.messageId}`
    if (seen.has(id)) continue
    seen.add(id)
    if (e.isBot || (p.type !== 'track' && p.type !== 'page' && p.type !== 'screen')) continue
    const ts = Date.parse(p.timestamp)
    for (const [g, w] of [
      ['minute', 60_000],
      ['hour', 3_600_000],
      ['day', 86_400_000],
    ] as const) {
      add(`${e.siteId}|${g}|${Math.floor(ts / w) * w}`, String(p.anonymousId))
    }
    for (const [d, v] of Object.entries(dimensionValues(e)))
      add(`${e.siteId}|${d}|${v}`, String(p.anonymousId))
  }
  return out
}
