import { once } from 'node:events'
import { createWriteStream } from 'node:fs'
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { computeRange } from '../../batch/compute.js'
import { windowStart } from '../../core/aggregate/definition.js'
import { findDuplicates } from '../../core/archive/dedup.js'
import {
  archiveTopicDir,
  hourRelDir,
  listSegments,
  rawSidecarName,
  segmentFileName,
} from '../../core/archive/segment-file.js'
import { readSegment, type SegmentColumns } from '../../core/archive/segment-reader.js'
import { type ArchivedEvent, encodeSegment } from '../../core/archive/segment-writer.js'
import { partitionForKey } from '../../core/embedded/partitioner.js'
import { HyperLogLog, hash64 } from '../../core/hll.js'
import type { FinalRow } from '../../core/ports/batch-store.js'
import { dedupKey, partitionKey } from '../../core/record/keys.js'
import { dimensionValues, eventLabel, type GeneratedEvent, generateWorkload } from '../workload.js'

/**
 * The batch benchmark's large run, Tally's side, in one process of its own (its peak RSS is its own).
 *
 * `prepare` writes a large day of events once (cached: a second call with the same spec only checks
 * the marker): the seeded generator's events, `chunk` logical events at a time (each chunk its own
 * seed, the same sites and day, so memory stays bounded), as Arrow segments laid out as the archiver
 * lays them out (one per event hour, partition and chunk, partition chosen by the log's key) and as
 * the flat NDJSON DuckDB loads. The segments hold the dimension labels the generator's truth gives
 * (what ingest derives, checked on the production path by the small run), so the large run does not
 * pass through ingest, Kafka and the archiver, which would take an hour at their rates.
 *
 * `compute` reads every segment of the day into memory (timed apart: the read), runs the rebuild's
 * compute once to warm the process (JIT, dictionaries) and then `passes` more times, timed: pass 1
 * (dedup by the segments' dedup hashes, in bounded memory as the rebuild does) and pass 2 (hour
 * aggregation, day roll-up, visits) down to the final rows with their registers serialized, by the
 * very function `runRebuild` runs before it stages and writes (`computeRange`, batch/compute.ts);
 * nothing is written. It then
 * writes the counts of every row (visitors as the sketch's estimate) for the bench to check.
 * Usage: node tally-compute.js '<json spec>'. Prints one line `{"done":true,…}` at the end.
 */

type Spec =
  | {
      mode: 'prepare'
      dir: string
      topic: string
      seed: number
      sites: string[]
      dayMs: number
      /** Logical events (retries come on top). */
      events: number
      chunk: number
      partitions: number
    }
  | {
      mode: 'compute'
      archiveDir: string
      topic: string
      dayMs: number
      precision: number
      dimensionValuesMax: number
      maxDedupRowsInMemory: number
      spillDir: string
      passes: number
      out: string
    }

const DAY_MS = 86_400_000
const VISIT_GAP_MS = 1_800_000

/** One event as DuckDB reads it: the values the rebuild reads from a segment. */
export function flatRow(e: GeneratedEvent, seq: number): string {
  const p = e.payload
  return JSON.stringify({
    seq,
    site_id: e.siteId,
    message_id: p.messageId,
    type: p.type,
    visitor: p.anonymousId,
    ts: Date.parse(p.timestamp),
    bot: e.isBot,
    // Every dimension Tally breaks down by, labelled as the truth labels it.
    ...dimensionValues(e),
    event: eventLabel(p) ?? '',
  })
}

async function prepare(spec: Extract<Spec, { mode: 'prepare' }>): Promise<Record<string, unknown>> {
  const marker = join(spec.dir, 'prepared.json')
  const key = JSON.stringify({ ...spec, dir: undefined, version: 1 })
  const cached = await readFile(marker, 'utf8').catch(() => undefined)
  if (cached !== undefined && (JSON.parse(cached) as { key: string }).key === key)
    return { cached: true, ...(JSON.parse(cached) as { stats: object }).stats }
  await rm(spec.dir, { recursive: true, force: true })
  const topicDir = archiveTopicDir(join(spec.dir, 'archive'), spec.topic)
  await mkdir(topicDir, { recursive: true })
  const ndjson = createWriteStream(join(spec.dir, 'events.ndjson'))
  const nextOffset = new Array<number>(spec.partitions).fill(0)
  let seq = 0
  let segments = 0
  for (let c = 0, left = spec.events; left > 0; c++, left -= spec.chunk) {
    const w = generateWorkload({
      seed: spec.seed + c,
      sites: spec.sites,
      events: Math.min(spec.chunk, left),
      start: new Date(spec.dayMs + 5 * 60_000),
      spanMs: DAY_MS - 10 * 60_000,
    })
    // Per (partition, hour): the chunk's events in log order (sendAt: a retry after its original).
    const buffers = new Map<string, { partition: number; hour: number; events: ArchivedEvent[] }>()
    let text = ''
    for (const e of w.events) {
      const p = e.payload
      const raw = Buffer.from(JSON.stringify({ ...p, siteId: e.siteId }))
      const event = { siteId: e.siteId, messageId: p.messageId, anonymousId: p.anonymousId }
      const partition = partitionForKey(partitionKey(event), spec.partitions)
      const ts = Date.parse(p.timestamp)
      const hour = windowStart(ts, 'hour')
      const { event: _label, ...dims } = dimensionValues(e)
      const archived: ArchivedEvent = {
        siteId: e.siteId,
        messageId: p.messageId,
        messageIdAssigned: false,
        dedupHash: hash64(dedupKey(event)),
        type: p.type,
        dims: { ...dims, event: eventLabel(p) ?? '' },
        visitorId: p.anonymousId,
        visitorHash: hash64(p.anonymousId),
        timestampMs: ts,
        receivedMs: e.sendAt,
        bot: e.isBot,
        imported: false,
        offset: nextOffset[partition]!++,
        traceparent: undefined,
        requestId: undefined,
        raw,
      }
      const k = `${partition}|${hour}`
      let b = buffers.get(k)
      if (!b) {
        b = { partition, hour, events: [] }
        buffers.set(k, b)
      }
      b.events.push(archived)
      text += `${flatRow(e, seq++)}\n`
      if (text.length > 1 << 20) {
        if (!ndjson.write(text)) await once(ndjson, 'drain')
        text = ''
      }
    }
    if (!ndjson.write(text)) await once(ndjson, 'drain')
    for (const { partition, hour, events } of buffers.values()) {
      const firstOffset = events[0]!.offset
      const lastOffset = events[events.length - 1]!.offset
      const enc = encodeSegment(events, {
        topic: spec.topic,
        partition,
        hourStartMs: hour,
        firstOffset,
        lastOffset,
      })
      const name = segmentFileName({ partition, firstOffset, lastOffset, rows: enc.rows, crc32: enc.crc32 })
      const hourDir = join(topicDir, hourRelDir(hour))
      await mkdir(hourDir, { recursive: true })
      await writeFile(join(hourDir, rawSidecarName(name)), enc.raw.bytes)
      await writeFile(join(hourDir, name), enc.bytes)
      segments++
    }
  }
  ndjson.end()
  await once(ndjson, 'finish')
  const stats = { rows: seq, segments }
  await writeFile(marker, JSON.stringify({ key, stats }))
  return { cached: false, ...stats }
}

/** One aggregate row's counts as the bench checks them. */
interface RowCounts {
  siteId: string
  granularity: string
  windowStart: number
  dimension: string | null
  value: string
  events: number
  pageviews: number
  botEvents: number
  visitors: number
}

interface ComputeOutcome {
  rows: FinalRow[]
  visitRows: number
  bytes: number
  duplicates: number
  buckets: number
  eventsRead: number
}

/**
 * The rebuild's compute over segments in memory: pass 1 (core/archive/dedup.ts) as batch/rebuild.ts
 * runs it, then pass 2 by the rebuild's own function (batch/compute.ts) down to the final rows, kept
 * here instead of staged.
 */
async function compute(
  spec: Extract<Spec, { mode: 'compute' }>,
  hours: readonly number[],
  segments: readonly SegmentColumns[],
): Promise<ComputeOutcome> {
  const dup = await findDuplicates(
    segments.length,
    (i) => segments[i]!.rows,
    async (i) => segments[i],
    { siteId: undefined, maxRowsInMemory: spec.maxDedupRowsInMemory, spillDir: spec.spillDir },
  )
  const rows: FinalRow[] = []
  let visitRows = 0
  let bytes = 0
  const stats = await computeRange(
    {
      range: { fromMs: spec.dayMs, toMs: spec.dayMs + DAY_MS },
      siteId: undefined,
      hours,
      next: (i) => segments[i],
      duplicates: dup,
      emit: (_day, row, kind) => {
        if (kind === 'visits') {
          visitRows++
          return
        }
        bytes += row.values.visitors.length
        rows.push(row)
      },
    },
    {
      precision: spec.precision,
      visitGapMs: VISIT_GAP_MS,
      countsVisits: true,
      dimensionValuesMax: spec.dimensionValuesMax,
      nowMs: Date.now(),
    },
  )
  return {
    rows,
    visitRows,
    bytes,
    duplicates: dup.duplicates,
    buckets: dup.buckets,
    eventsRead: stats.rowsRead,
  }
}

async function computeMode(spec: Extract<Spec, { mode: 'compute' }>): Promise<Record<string, unknown>> {
  const r0 = performance.now()
  const listing = await listSegments(
    archiveTopicDir(spec.archiveDir, spec.topic),
    spec.dayMs,
    spec.dayMs + DAY_MS,
  )
  const segments: SegmentColumns[] = []
  for (const ref of listing.segments) segments.push(await readSegment(ref))
  const hours = listing.segments.map((s) => s.hourStartMs)
  const readSeconds = (performance.now() - r0) / 1000
  await mkdir(spec.spillDir, { recursive: true })
  const w0 = performance.now()
  await compute(spec, hours, segments)
  const warmupSeconds = (performance.now() - w0) / 1000
  const passSeconds: number[] = []
  const cpuSeconds: number[] = []
  let last: ComputeOutcome | undefined
  for (let k = 0; k < spec.passes; k++) {
    last = undefined
    const c0 = process.cpuUsage()
    const t0 = performance.now()
    last = await compute(spec, hours, segments)
    passSeconds.push((performance.now() - t0) / 1000)
    const c = process.cpuUsage(c0)
    cpuSeconds.push((c.user + c.system) / 1e6)
  }
  const out = last!
  const counts: RowCounts[] = out.rows.map((r) => ({
    siteId: r.siteId,
    granularity: r.granularity,
    windowStart: r.windowStart,
    dimension: r.dimension ?? null,
    value: r.value,
    events: r.values.events,
    pageviews: r.values.pageviews,
    botEvents: r.values.botEvents,
    visitors: Math.round(HyperLogLog.fromBytes(r.values.visitors).estimate()),
  }))
  await writeFile(spec.out, JSON.stringify(counts))
  return {
    segments: segments.length,
    eventsRead: out.eventsRead,
    duplicates: out.duplicates,
    dedupBuckets: out.buckets,
    rows: out.rows.length,
    visitRows: out.visitRows,
    registerBytes: out.bytes,
    readSeconds,
    warmupSeconds,
    passSeconds,
    cpuSeconds,
  }
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '{}') as Spec
  const result = spec.mode === 'prepare' ? await prepare(spec) : await computeMode(spec)
  process.stdout.write(
    `${JSON.stringify({ done: true, ...result, maxRssBytes: process.resourceUsage().maxRSS * 1024 })}\n`,
  )
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
  process.exitCode = 1
})
