import { createHash } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { decodeRecord } from '../../batch/decode.js'
import { LeaseLostError, RangeBusyError } from '../../batch/lease.js'
import { type RebuildSettings, runRebuild } from '../../batch/rebuild.js'
import { generateWorkload } from '../../bench/workload.js'
import { kindOf, visitorId, windowStart } from '../../core/aggregate/definition.js'
import { type FinalSpan, scopeOf, spanStartOf } from '../../core/aggregate/final.js'
import { RowAccumulator, rowKeysFor } from '../../core/aggregate/rows.js'
import { VisitState, visitEventOf, visitRowKeys } from '../../core/aggregate/visits.js'
import { hourRelDir, segmentFileName } from '../../core/archive/segment-file.js'
import { CorruptSegmentError } from '../../core/archive/segment-reader.js'
import { type ArchivedEvent, encodeSegment } from '../../core/archive/segment-writer.js'
import { HyperLogLog, hash64 } from '../../core/hll.js'
import { createLogger } from '../../core/log.js'
import type {
  FinalRow,
  FinalRowStore,
  JobRun,
  JobStore,
  Lease,
  LeaseStore,
  RangeRecord,
} from '../../core/ports/batch-store.js'
import { normalizeEvent } from '../../ingest/normalize.js'
import { UserAgentParser } from '../../ingest/user-agent.js'
import type { RawEventV1 } from '../../schemas/events.js'
import { toFormatV1 } from '../helpers/segment-format.js'

const PRECISION = 14
const PARTITIONS = 3
const logger = createLogger('silent')

// --- in-memory stores -----------------------------------------------------------------------------

class MemoryLeases implements LeaseStore {
  readonly held = new Map<string, { holder: string; token: number }>()
  private token = 1000
  refuseRenewals = false

  async tryAcquire(name: string, holder: string, ttlMs: number): Promise<Lease | undefined> {
    if (this.held.has(name)) return undefined
    const token = ++this.token
    this.held.set(name, { holder, token })
    return { name, holder, token, ttlMs, acquiredAtMs: Date.now() }
  }
  async renew(lease: Lease): Promise<boolean> {
    return !this.refuseRenewals && this.held.get(lease.name)?.holder === lease.holder
  }
  async release(lease: Lease): Promise<void> {
    if (this.held.get(lease.name)?.holder === lease.holder) this.held.delete(lease.name)
  }
  async current(name: string) {
    return this.held.get(name)
  }
}

class MemoryJobs implements JobStore {
  readonly runs = new Map<string, JobRun>()
  readonly ranges = new Map<string, RangeRecord>()
  async save(run: JobRun) {
    this.runs.set(run.jobId, structuredClone(run))
  }
  async list() {
    return [...this.runs.values()]
  }
  async lastSuccess(key: string) {
    return this.ranges.get(key)
  }
  async recordSuccess(key: string, r: RangeRecord) {
    this.ranges.set(key, r)
  }
}

function keyOf(r: {
  siteId: string
  granularity: string
  windowStart: number
  dimension: string | undefined
  value: string
}): string {
  return `${r.siteId}|${r.granularity}|${new Date(r.windowStart).toISOString()}|${r.dimension ?? ''}|${r.value}`
}

/**
 * Final rows as readers see them (`final`: committed rows by key, last commit by token, like
 * Cassandra's write timestamps), rows written but not committed yet (`pending`, by token), and
 * stream rows. `failAfterWrites` makes the next writes fail once that many rows were written.
 */
class MemoryRows implements FinalRowStore {
  readonly final = new Map<string, { row: FinalRow; token: number }>()
  readonly pending = new Map<number, Map<string, FinalRow>>()
  readonly stream = new Set<string>()
  /** Events the stream counted per `${siteId}|${hour start}` (streamHourEvents). */
  readonly streamHours = new Map<string, number>()
  readonly commits: Array<{ siteId: string; spans: FinalSpan[]; token: number }> = []
  writes = 0
  failAfterWrites = Number.POSITIVE_INFINITY

  private keys(): Array<{
    siteId: string
    granularity: string
    windowStart: number
    dimension?: string
    value: string
  }> {
    const pending = [...this.pending.values()].flatMap((m) => [...m.keys()])
    return [...this.stream, ...this.final.keys(), ...pending].map((k) => {
      const [siteId, granularity, ws, dimension, value] = k.split('|') as [
        string,
        string,
        string,
        string,
        string,
      ]
      return { siteId, granularity, windowStart: Date.parse(ws), dimension: dimension || undefined, value }
    })
  }
  async existingWindows(siteId: string, g: string, fromMs: number, toMs: number) {
    const out = new Set<number>()
    for (const k of this.keys())
      if (k.siteId === siteId && k.granularity === g && k.windowStart >= fromMs && k.windowStart < toMs)
        out.add(k.windowStart)
    return [...out]
  }
  async streamHourEvents(siteId: string, fromMs: number, toMs: number) {
    const out = new Map<number, number>()
    for (const [k, n] of this.streamHours) {
      const [site, ws] = k.split('|') as [string, string]
      if (site === siteId && Number(ws) >= fromMs && Number(ws) < toMs) out.set(Number(ws), n)
    }
    return out
  }
  async existingValues(siteId: string, g: string, d: string, ws: number) {
    return [
      ...new Set(
        this.keys()
          .filter(
            (k) => k.siteId === siteId && k.granularity === g && k.dimension === d && k.windowStart === ws,
          )
          .map((k) => k.value),
      ),
    ]
  }
  async writeFinal(rows: readonly FinalRow[], token: number) {
    const mine = this.pending.get(token) ?? new Map<string, FinalRow>()
    this.pending.set(token, mine)
    for (const row of rows) {
      if (this.writes >= this.failAfterWrites) throw new Error('write timed out')
      mine.set(keyOf(row), row)
      this.writes++
    }
  }
  async commitFinal(siteId: string, spans: readonly FinalSpan[], token: number) {
    this.commits.push({ siteId, spans: [...spans], token })
    const covered = new Set(spans.map((s) => `${s.scope}|${s.startMs}`))
    for (const [k, row] of this.pending.get(token) ?? []) {
      if (row.siteId !== siteId) continue
      if (!covered.has(`${scopeOf(row.granularity)}|${spanStartOf(row.granularity, row.windowStart)}`))
        continue
      const old = this.final.get(k)
      if (!old || old.token <= token) this.final.set(k, { row, token })
    }
  }
}

// --- a workload, the stream's reference numbers, and an archive of it --------------------------------

interface Logged {
  partition: number
  offset: number
  value: Buffer
  event: RawEventV1
}

function partitionOf(key: string): number {
  return createHash('sha1').update(key).digest().readUInt32BE(0) % PARTITIONS
}

/** The workload as ingest would log it (imported: original timestamps), with partitions and offsets. */
function logWorkload(seed: number, start: string, spanMs: number, events: number): Logged[] {
  const w = generateWorkload({
    seed,
    sites: ['a.test', 'b.test'],
    events,
    start: new Date(start),
    spanMs,
    lateShare: 0,
    duplicateShare: 0.05,
    botShare: 0.08,
  })
  const ua = new UserAgentParser()
  const next = new Array(PARTITIONS).fill(0)
  const out: Logged[] = []
  for (const g of w.events) {
    const r = normalizeEvent(
      g.payload,
      {
        siteId: g.siteId,
        userAgent: g.userAgent,
        receivedAtMs: Date.parse(g.payload.timestamp) + 1000,
        batchSentAt: undefined,
        routeType: undefined,
        imported: true,
      },
      {
        maxEventBytes: 32 * 1024,
        maxDepth: 16,
        maxFutureMs: 23 * 3_600_000,
        maxPastMs: 7 * 86_400_000,
        importMaxPastMs: 1830 * 86_400_000,
      },
      ua,
    )
    if (!r.ok) throw new Error(r.reason)
    const e = r.event
    const partition = partitionOf(`${e.siteId}:${e.anonymousId ?? e.userId ?? e.messageId}`)
    out.push({ partition, offset: next[partition]++, value: Buffer.from(JSON.stringify(e)), event: e })
  }
  return out
}

interface Values {
  events: number
  pageviews: number
  botEvents: number
  visitors: string
}

/**
 * What the stream computes (rowKeysFor + RowAccumulator per partition, dedup by messageId within a
 * partition), merged over partitions as the reader does (counts add, registers merge). With the
 * rows its visits add (VisitState, the stream's half of core/aggregate/visits.ts): entry_page and
 * exit_page rows hold visit counts only (their events, pageviews and visitors are zero/empty).
 */
function streamReference(log: readonly Logged[]): Map<string, Values> {
  const partials = new Map<string, { acc: RowAccumulator; key: Parameters<typeof keyOf>[0] }>()
  const seen = new Set<string>()
  const visits = new VisitState(1_800_000)
  for (const l of [...log].sort((a, b) => a.partition - b.partition || a.offset - b.offset)) {
    const e = l.event
    if (!e.messageIdAssigned) {
      const id = `${l.partition}|${e.siteId}\u0001${e.messageId}`
      if (seen.has(id)) continue
      seen.add(id)
    }
    if (kindOf(e) === 'ignored') continue
    const ve = visitEventOf(e, Date.parse(e.timestamp))
    if (ve) visits.add(ve)
    for (const k of rowKeysFor(e, Date.parse(e.timestamp), l.partition)) {
      const id = `${keyOf(k)}|${l.partition}`
      let p = partials.get(id)
      if (!p) {
        p = { acc: new RowAccumulator(PRECISION), key: k }
        partials.set(id, p)
      }
      p.acc.add(e, hash64(visitorId(e)))
    }
  }
  const merged = new Map<string, { events: number; pageviews: number; botEvents: number; hll: HyperLogLog }>()
  for (const { acc, key } of partials.values()) {
    const k = keyOf(key)
    const v = acc.values()
    const m = merged.get(k) ?? { events: 0, pageviews: 0, botEvents: 0, hll: new HyperLogLog(PRECISION) }
    m.events += v.events
    m.pageviews += v.pageviews
    m.botEvents += v.botEvents
    m.hll.merge(HyperLogLog.fromBytes(v.visitors))
    merged.set(k, m)
  }
  for (const v of visits.visits())
    for (const key of visitRowKeys(v, 0)) {
      const k = keyOf(key)
      if (!merged.has(k))
        merged.set(k, { events: 0, pageviews: 0, botEvents: 0, hll: new HyperLogLog(PRECISION) })
    }
  return new Map(
    [...merged].map(([k, m]) => [
      k,
      {
        events: m.events,
        pageviews: m.pageviews,
        botEvents: m.botEvents,
        visitors: Buffer.from(m.hll.toBytes()).toString('hex'),
      },
    ]),
  )
}

function finalValues(rows: MemoryRows): Map<string, Values> {
  return new Map(
    [...rows.final].map(([k, { row }]) => [
      k,
      {
        events: row.values.events,
        pageviews: row.values.pageviews,
        botEvents: row.values.botEvents,
        visitors: Buffer.from(row.values.visitors).toString('hex'),
      },
    ]),
  )
}

/** Archives the log as the archiver would: per partition, flushes of `flushSize` records, one segment per hour. */
async function writeArchive(topicDir: string, log: readonly Logged[], flushSize = 150): Promise<string[]> {
  const paths: string[] = []
  for (let p = 0; p < PARTITIONS; p++) {
    const records = log.filter((l) => l.partition === p).sort((a, b) => a.offset - b.offset)
    for (let i = 0; i < records.length; i += flushSize) {
      const chunk = records.slice(i, i + flushSize)
      const first = chunk[0]!.offset
      const last = chunk[chunk.length - 1]!.offset
      const byHour = new Map<number, ArchivedEvent[]>()
      for (const l of chunk) {
        const d = decodeRecord({
          offset: l.offset,
          key: undefined,
          value: l.value,
          headers: { 'tally-schema-version': '1' },
          timestampMs: 0,
        })
        if (!d.ok) throw new Error(d.reason)
        const hour = windowStart(d.event.timestampMs, 'hour')
        byHour.set(hour, [...(byHour.get(hour) ?? []), d.event])
      }
      for (const [hour, events] of byHour) {
        const enc = encodeSegment(events, {
          topic: 't',
          partition: p,
          hourStartMs: hour,
          firstOffset: first,
          lastOffset: last,
        })
        const path = join(
          topicDir,
          hourRelDir(hour),
          segmentFileName({
            partition: p,
            firstOffset: first,
            lastOffset: last,
            rows: enc.rows,
            crc32: enc.crc32,
          }),
        )
        await mkdir(dirname(path), { recursive: true })
        await writeFile(path, enc.bytes)
        await writeFile(path.replace(/\.arrow$/, '.raw.arrow'), enc.raw.bytes)
        paths.push(path)
      }
    }
  }
  return paths
}

// --- tests ----------------------------------------------------------------------------------------

let root: string
const FROM = Date.parse('2024-05-01T00:00:00Z')
const TO = Date.parse('2024-05-03T00:00:00Z')

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'tally-batch-unit-'))
})

afterAll(async () => {
  await rm(root, { recursive: true, force: true })
})

async function setup(name: string, log: readonly Logged[], flushSize?: number) {
  const topicDir = join(root, name, 'archive', 't')
  const segments = await writeArchive(topicDir, log, flushSize)
  const deps = { leases: new MemoryLeases(), jobs: new MemoryJobs(), rows: new MemoryRows(), logger }
  const settings: RebuildSettings = {
    topicDir,
    stagingDir: join(root, name, 'staging'),
    precision: PRECISION,
    owner: 'unit',
    leaseTtlMs: 60_000,
  }
  return { deps, settings, segments, topicDir }
}

describe('rebuild (archive segments → final rows), against in-memory stores', () => {
  // Crosses midnight: minute, hour and day windows, two days.
  const log = logWorkload(5, '2024-05-01T22:10:00Z', 3 * 3_600_000, 3000)

  it('gives exactly the stream’s numbers and HyperLogLog bytes for every window and value', async () => {
    expect(log.some((l) => l.event.bot)).toBe(true)
    const { deps, settings } = await setup('exact', log)
    const result = await runRebuild(deps, settings, { fromMs: FROM, toMs: TO })
    expect(result.status).toBe('succeeded')
    expect(result.run.duplicates).toBeGreaterThan(0)
    expect(result.run.eventsRead).toBe(log.length)
    const expected = streamReference(log)
    const actual = finalValues(deps.rows)
    expect(actual.size).toBe(expected.size)
    for (const [k, v] of expected) expect(actual.get(k), k).toEqual(v)
    const days = [...actual.keys()].filter((k) => k.includes('|day|'))
    expect(days.length).toBeGreaterThan(10)
    expect(result.run.status).toBe('succeeded')
    expect(deps.jobs.runs.get(result.run.jobId)?.status).toBe('succeeded')
    // The lease is given back.
    expect(deps.leases.held.size).toBe(0)
  })

  it('spreads the dedup pass over spill files when the range exceeds its memory, with the same result', async () => {
    const { deps, settings } = await setup('spill', log)
    const result = await runRebuild(
      deps,
      { ...settings, maxDedupRowsInMemory: 300 },
      { fromMs: FROM, toMs: TO },
    )
    expect(result.dedupBuckets).toBeGreaterThan(4)
    expect(finalValues(deps.rows)).toEqual(streamReference(log))
  })

  it('counts the same over segments of format version 1 (new dimensions derived from the sidecars)', async () => {
    const { deps, settings, segments } = await setup('format-v1', log)
    for (const path of segments) await toFormatV1(path)
    const result = await runRebuild(deps, settings, { fromMs: FROM, toMs: TO })
    expect(result.status).toBe('succeeded')
    expect(result.run.eventsRead).toBe(log.length)
    const actual = finalValues(deps.rows)
    expect(actual).toEqual(streamReference(log))
    // Rows of the dimensions a version-1 file lacks are among them.
    expect([...actual.keys()].filter((k) => k.includes('|channel|')).length).toBeGreaterThan(0)
  })

  it('dedups across hours and counts the copy with the lowest offset', async () => {
    const base = log.filter((l) => l.partition === 0).slice(0, 50)
    const original = base.find((l) => l.event.type === 'page' && !l.event.bot)!
    const copy = structuredClone(original.event)
    copy.timestamp = new Date(Date.parse(copy.timestamp) + 2 * 3_600_000).toISOString()
    const extra: Logged = {
      partition: 0,
      offset: 1_000_000,
      value: Buffer.from(JSON.stringify(copy)),
      event: copy,
    }
    const withCopy = [...base, extra]
    const { deps, settings } = await setup('cross-hour', withCopy)
    await runRebuild(deps, settings, { fromMs: FROM, toMs: TO })
    expect(finalValues(deps.rows)).toEqual(streamReference(base))
  })

  it('counts a messageId sent again for another visitor in another partition twice, as the stream does', async () => {
    const base = log.filter((l) => l.partition === 0).slice(0, 50)
    const original = base.find((l) => l.event.type === 'page' && !l.event.bot)!
    // Same site and messageId, another visitor whose partition key lands elsewhere.
    let n = 0
    let anonymousId = ''
    do anonymousId = `other-visitor-${n++}`
    while (partitionOf(`${original.event.siteId}:${anonymousId}`) === 0)
    const reused = { ...structuredClone(original.event), anonymousId }
    const extra: Logged = {
      partition: partitionOf(`${reused.siteId}:${anonymousId}`),
      offset: 0,
      value: Buffer.from(JSON.stringify(reused)),
      event: reused,
    }
    const withReuse = [...base, extra]
    const { deps, settings } = await setup('reused-id', withReuse)
    const result = await runRebuild(deps, settings, { fromMs: FROM, toMs: TO })
    expect(result.run.eventsRead).toBe(withReuse.length)
    const expected = streamReference(withReuse)
    expect(finalValues(deps.rows)).toEqual(expected)
    // The reused id adds its pageview: one more than the log without it.
    const total = (m: Map<string, Values>) =>
      [...m]
        .filter(([k]) => k.split('|')[1] === 'day' && k.split('|')[3] === '')
        .reduce((s, [, v]) => s + v.pageviews, 0)
    expect(total(expected)).toBe(total(streamReference(base)) + 1)
  })

  it('replaces stream rows that the rebuild does not produce with zeros', async () => {
    const { deps, settings } = await setup('zero', log)
    const ghost = {
      siteId: 'a.test',
      granularity: 'hour',
      windowStart: Date.parse('2024-05-01T23:00:00Z'),
      dimension: 'path',
      value: '/ghost',
    }
    deps.rows.stream.add(keyOf(ghost))
    const outside = { ...ghost, windowStart: Date.parse('2024-05-04T01:00:00Z') }
    deps.rows.stream.add(keyOf(outside))
    await runRebuild(deps, settings, { fromMs: FROM, toMs: TO })
    const row = deps.rows.final.get(keyOf(ghost))?.row
    expect(row?.values).toMatchObject({ events: 0, pageviews: 0, botEvents: 0 })
    expect(HyperLogLog.fromBytes(row!.values.visitors).isEmpty()).toBe(true)
    expect(deps.rows.final.has(keyOf(outside))).toBe(false)
  })

  it('commits each site-day once its rows are written: its 24 hours, and the day when whole', async () => {
    const { deps, settings } = await setup('commits', log)
    const done = await runRebuild(deps, settings, { fromMs: FROM, toMs: TO })
    const token = done.run.token
    const days = [FROM, FROM + 86_400_000]
    expect(
      deps.rows.commits.map((c) => [c.siteId, c.spans[0]!.startMs, c.spans.length, c.token]).sort(),
    ).toEqual(['a.test', 'b.test'].flatMap((site) => days.map((d) => [site, d, 25, token])).sort())
    for (const c of deps.rows.commits) {
      expect(c.spans.filter((s) => s.scope === 'hour').map((s) => s.startMs)).toEqual(
        Array.from({ length: 24 }, (_, h) => c.spans[0]!.startMs + h * 3_600_000),
      )
      expect(c.spans.filter((s) => s.scope === 'day')).toEqual([
        { scope: 'day', startMs: c.spans[0]!.startMs },
      ])
    }
    // Every row written is committed.
    expect(deps.rows.final.size).toBe(deps.rows.pending.get(token)!.size)
  })

  it('commits the spans the archive did not cover as provisional, and records a warning', async () => {
    const { deps, settings } = await setup('incomplete', log)
    const through = Date.parse('2024-05-01T23:30:00Z')
    const done = await runRebuild(deps, settings, {
      fromMs: FROM,
      toMs: TO,
      archiveCompleteThroughMs: through,
    })
    expect(done.status).toBe('succeeded')
    const spans = deps.rows.commits.flatMap((c) => c.spans)
    expect(spans.length).toBe(2 * 2 * 25)
    // Hours 00:00–22:00 of May 1 ended before 23:30: final. Its hour 23, its day, and all of May 2 not.
    const provisional = (s: FinalSpan) =>
      s.scope === 'day' ? true : s.startMs >= Date.parse('2024-05-01T23:00:00Z')
    for (const s of spans) expect(s.provisional === true, JSON.stringify(s)).toBe(provisional(s))
    // The numbers are committed all the same.
    expect(finalValues(deps.rows)).toEqual(streamReference(log))
    expect(done.run.warnings).toEqual([
      expect.stringMatching(
        /received through 2024-05-01T23:30:00.000Z only: the windows from 2024-05-01T23:00:00.000Z on are committed but not final \(--allow-incomplete\)/,
      ),
    ])
    expect(deps.jobs.runs.get(done.run.jobId)?.warnings).toEqual(done.run.warnings)

    // A run over a covered range commits final spans and warns of nothing.
    const full = await runRebuild(deps, settings, { fromMs: FROM, toMs: TO })
    expect(full.run.warnings).toEqual([])
    expect(deps.rows.commits.slice(-4).flatMap((c) => c.spans.filter((s) => s.provisional))).toEqual([])
  })

  it('warns when it reads zero events in hours where the stream counted some', async () => {
    const { deps, settings } = await setup('zero-events', log)
    const streamHour = (siteId: string, iso: string, events: number) => {
      const ws = Date.parse(iso)
      deps.rows.stream.add(
        keyOf({ siteId, granularity: 'hour', windowStart: ws, dimension: undefined, value: '' }),
      )
      deps.rows.streamHours.set(`${siteId}|${ws}`, events)
    }
    // a.test has archived events on May 1 (from 22:10), none at 05:00, where the stream counted 4.
    streamHour('a.test', '2024-05-01T05:00:00Z', 4)
    const zeroed = await runRebuild(deps, settings, { siteId: 'a.test', fromMs: FROM, toMs: TO })
    expect(zeroed.run.warnings).toEqual([
      'site a.test: the rebuild read 0 events in 1 hour(s) where the stream counted 4 (2024-05-01T05:00:00.000Z); those windows now read 0. Is the archive complete?',
    ])
    // c.test has no archived event at all; the stream counted 7 + 5 in two hours, 0 in a third.
    streamHour('c.test', '2024-05-01T23:00:00Z', 7)
    streamHour('c.test', '2024-05-02T01:00:00Z', 5)
    streamHour('c.test', '2024-05-02T02:00:00Z', 0)
    const commits = deps.rows.commits.length
    const none = await runRebuild(deps, settings, { siteId: 'c.test', fromMs: FROM, toMs: TO })
    expect(none.run.eventsRead).toBe(0)
    expect(deps.rows.commits.length).toBe(commits)
    expect(none.run.warnings).toEqual([
      "site c.test: the rebuild read 0 events in 2 hour(s) where the stream counted 12 (2024-05-01T23:00:00.000Z, 2024-05-02T01:00:00.000Z); nothing was written there, those windows keep the stream's provisional numbers. Is the archive complete?",
    ])
    expect(deps.jobs.runs.get(none.run.jobId)?.warnings).toEqual(none.run.warnings)
    // Where the archive holds the events the stream counted, no warning.
    const other = await setup('zero-events-none', log)
    for (const l of log) {
      const ws = windowStart(Date.parse(l.event.timestamp), 'hour')
      other.deps.rows.streamHours.set(`${l.event.siteId}|${ws}`, 1)
    }
    for (const siteId of ['a.test', undefined]) {
      const run = await runRebuild(other.deps, other.settings, { siteId, fromMs: FROM, toMs: TO })
      expect(run.run.warnings).toEqual([])
    }
  })

  it('a job that fails while writing changes no site-day it did not commit; the next run completes', async () => {
    const { deps, settings } = await setup('write-fails', log)
    const first = await runRebuild(deps, settings, { fromMs: FROM, toMs: TO })
    const before = new Map(deps.rows.final)
    const valuesBefore = finalValues(deps.rows)
    const commitsBefore = deps.rows.commits.length
    // A second job fails a few rows into its first site-day: nothing changes.
    deps.rows.failAfterWrites = deps.rows.writes + 10
    await expect(runRebuild(deps, settings, { fromMs: FROM, toMs: TO })).rejects.toThrow('write timed out')
    expect(deps.rows.commits.length).toBe(commitsBefore)
    expect(deps.rows.final).toEqual(before)

    // A third fails a few rows into its second site-day: the first switched whole, the rest not.
    const firstCommit = deps.rows.commits[0]!
    const day = firstCommit.spans[0]!.startMs
    const inFirstSiteDay = (k: string) => {
      const row = before.get(k)!.row
      return row.siteId === firstCommit.siteId && row.windowStart >= day && row.windowStart < day + 86_400_000
    }
    const rowsOfFirstSiteDay = [...before.keys()].filter(inFirstSiteDay).length
    expect(rowsOfFirstSiteDay).toBeGreaterThan(0)
    deps.rows.failAfterWrites = deps.rows.writes + rowsOfFirstSiteDay + 5
    await expect(runRebuild(deps, settings, { fromMs: FROM, toMs: TO })).rejects.toThrow('write timed out')
    const third = deps.rows.commits.at(-1)!
    expect(deps.rows.commits.length).toBe(commitsBefore + 1)
    expect([third.siteId, third.spans[0]!.startMs]).toEqual([firstCommit.siteId, day])
    expect(third.token).toBeGreaterThan(first.run.token)
    for (const [k, v] of deps.rows.final)
      expect([k, v.token]).toEqual([k, inFirstSiteDay(k) ? third.token : first.run.token])

    deps.rows.failAfterWrites = Number.POSITIVE_INFINITY
    const next = await runRebuild(deps, settings, { fromMs: FROM, toMs: TO })
    expect(next.status).toBe('succeeded')
    expect([...deps.rows.final.values()].every((v) => v.token === next.run.token)).toBe(true)
    expect(finalValues(deps.rows)).toEqual(valuesBefore)
  })

  it('fails on a corrupt segment, naming it, and writes nothing; --skip-corrupt skips it', async () => {
    const { deps, settings, segments } = await setup('corrupt', log)
    const victim = segments[3]!
    const size = (await readFile(victim)).length
    await truncate(victim, size - 100)
    const failing = runRebuild(deps, settings, { fromMs: FROM, toMs: TO })
    await expect(failing).rejects.toBeInstanceOf(CorruptSegmentError)
    await expect(failing).rejects.toThrow(victim)
    expect(deps.rows.writes).toBe(0)
    const failed = [...deps.jobs.runs.values()][0]!
    expect(failed.status).toBe('failed')
    expect(failed.error).toContain(victim)
    expect(deps.leases.held.size).toBe(0)

    const skipped = await runRebuild(deps, settings, { fromMs: FROM, toMs: TO, skipCorrupt: true })
    expect(skipped.run.corruptSegments).toEqual([victim])
    expect(skipped.run.eventsRead).toBeLessThan(log.length)
    expect(deps.rows.writes).toBeGreaterThan(0)
  })

  it('stops without writing when its lease is lost, and refuses a range whose lease is held', async () => {
    const { deps, settings } = await setup('lease', log)
    deps.leases.refuseRenewals = true
    await expect(runRebuild(deps, settings, { fromMs: FROM, toMs: TO })).rejects.toBeInstanceOf(
      LeaseLostError,
    )
    expect(deps.rows.writes).toBe(0)
    expect([...deps.jobs.runs.values()][0]?.status).toBe('lost_lease')

    deps.leases.refuseRenewals = false
    deps.leases.held.clear()
    deps.leases.held.set('rebuild|*|2024-05-01T00:00:00.000Z|2024-05-03T00:00:00.000Z', {
      holder: 'other',
      token: 1,
    })
    await expect(runRebuild(deps, settings, { fromMs: FROM, toMs: TO })).rejects.toBeInstanceOf(
      RangeBusyError,
    )
  })

  it('skips a scheduled range whose segments did not change since its last success', async () => {
    const { deps, settings } = await setup('unchanged', log)
    const first = await runRebuild(deps, settings, { fromMs: FROM, toMs: TO, skipUnchanged: true })
    expect(first.status).toBe('succeeded')
    const second = await runRebuild(deps, settings, { fromMs: FROM, toMs: TO, skipUnchanged: true })
    expect(second.status).toBe('skipped_unchanged')
    expect(deps.jobs.runs.size).toBe(1)
  })

  it('with visits off (the bench’s measuring switch) writes no visit counts, the rest unchanged', async () => {
    const on = await setup('visits-on', log)
    await runRebuild(on.deps, on.settings, { fromMs: FROM, toMs: TO })
    const off = await setup('visits-off', log)
    const result = await runRebuild(
      off.deps,
      { ...off.settings, countsVisits: false },
      { fromMs: FROM, toMs: TO, skipUnchanged: true },
    )
    expect(result.status).toBe('succeeded')
    const onRows = [...on.deps.rows.final.values()].map((f) => f.row)
    const offRows = [...off.deps.rows.final.values()].map((f) => f.row)
    // On: every row carries visit counts, visits were counted, entry and exit pages written.
    expect(onRows.every((r) => r.values.visits !== undefined)).toBe(true)
    expect(onRows.some((r) => (r.values.visits ?? 0) > 0)).toBe(true)
    expect(onRows.some((r) => r.dimension === 'entry_page')).toBe(true)
    expect(onRows.some((r) => r.dimension === 'exit_page')).toBe(true)
    // Off: no row has visit data, no entry or exit page; every other number is the same.
    expect(offRows.length).toBeGreaterThan(0)
    expect(offRows.filter((r) => r.values.visits !== undefined)).toEqual([])
    expect(offRows.filter((r) => r.dimension === 'entry_page' || r.dimension === 'exit_page')).toEqual([])
    const visitDims = new Set(['entry_page', 'exit_page'])
    const expected = new Map([...finalValues(on.deps.rows)].filter(([k]) => !visitDims.has(k.split('|')[3]!)))
    expect(finalValues(off.deps.rows)).toEqual(expected)
    // A run without visits does not make the next (scheduled) run skip the range.
    const again = await runRebuild(off.deps, off.settings, { fromMs: FROM, toMs: TO, skipUnchanged: true })
    expect(again.status).toBe('succeeded')
    expect([...off.deps.rows.final.values()].every((f) => f.row.values.visits !== undefined)).toBe(true)
  })

  it('rebuilds one site only, and only whole days get day windows', async () => {
    const { deps, settings } = await setup('site', log)
    // 2024-05-01T22:00 .. 2024-05-02T12:00: no whole day inside.
    await runRebuild(deps, settings, {
      siteId: 'b.test',
      fromMs: Date.parse('2024-05-01T22:00:00Z'),
      toMs: Date.parse('2024-05-02T12:00:00Z'),
    })
    const keys = [...deps.rows.final.keys()]
    expect(keys.length).toBeGreaterThan(0)
    expect(keys.every((k) => k.startsWith('b.test|'))).toBe(true)
    expect(keys.some((k) => k.includes('|day|'))).toBe(false)
    const expected = streamReference(log.filter((l) => l.event.siteId === 'b.test'))
    for (const k of keys)
      expect(deps.rows.final.get(k) && finalValues(deps.rows).get(k)).toEqual(expected.get(k))
  })

  it('does not bring back windows whose TTL has run out', async () => {
    const { deps, settings } = await setup('ttl', log)
    await runRebuild(
      deps,
      { ...settings, ttlSeconds: { minute: 7 * 86_400, hour: 0, day: 0 } },
      { fromMs: FROM, toMs: TO },
    )
    const keys = [...deps.rows.final.keys()]
    expect(keys.some((k) => k.includes('|minute|'))).toBe(false)
    expect(keys.some((k) => k.includes('|hour|'))).toBe(true)
    expect(keys.some((k) => k.includes('|day|'))).toBe(true)
  })
})
