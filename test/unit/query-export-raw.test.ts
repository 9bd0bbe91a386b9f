import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { get as httpGet, type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { RecordBatchReader, tableFromIPC } from 'apache-arrow'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import type { Dimension } from '../../core/aggregate/definition.js'
import { hourRelDir, rawSidecarName, segmentFileName } from '../../core/archive/segment-file.js'
import { type ArchivedEvent, encodeSegment } from '../../core/archive/segment-writer.js'
import { hash64 } from '../../core/hll.js'
import { hashToken } from '../../core/keys.js'
import { createLogger } from '../../core/log.js'
import type { AggregateReader } from '../../core/ports/aggregate-store.js'
import type { ArchiveProgress } from '../../core/ports/batch-store.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import {
  ArchiveRawEventSource,
  type ArchiveRawEventSourceOptions,
  type RawExportMeta,
} from '../../query/export-raw.js'

/**
 * Raw-event export from archive segments written by the project's segment writer into a temporary
 * folder, checked against what was written: exact range and site, duplicates removed by the
 * documented rule (computed here on its own), both encodings, meta, errors, laziness.
 */

const HOUR = 3_600_000
const MIN = 60_000
const H0 = Date.parse('2024-05-01T10:00:00Z')
const A = 'a.test'
const B = 'b.test'
const TOKENS: Record<string, string> = { [A]: 'rt_a', [B]: 'rt_b' }
const logger = createLogger('silent')

/** One event as written: the ArchivedEvent and the partition it is in. */
interface Written {
  partition: number
  event: ArchivedEvent
  /** What the raw log holds (parsed). */
  json: Record<string, unknown>
}

const DIMS = (i: number): Record<Dimension, string> => ({
  event: i % 3 === 0 ? 'pageview' : `Clicked ${i % 4}`,
  path: `/p/${i % 9}`,
  referrer: i % 2 === 0 ? '(direct)' : 'news.example',
  utm_source: i % 5 === 0 ? 'mail' : '(none)',
  browser: 'Firefox',
  os: i % 2 === 0 ? 'Linux' : 'iOS',
  device: i % 2 === 0 ? 'desktop' : 'mobile',
  country: i % 2 === 0 ? 'FR' : '(unknown)',
  source: i % 2 === 0 ? 'Direct / None' : 'news.example',
  channel: i % 2 === 0 ? 'Direct' : 'Referral',
  utm_medium: i % 5 === 0 ? 'email' : '(none)',
  utm_campaign: '(none)',
  utm_content: '(none)',
  utm_term: '(none)',
})

function makeEvent(
  site: string,
  messageId: string,
  tsMs: number,
  offset: number,
  i: number,
  opts: { assigned?: boolean; padding?: number } = {},
): { event: ArchivedEvent; json: Record<string, unknown> } {
  const json: Record<string, unknown> = {
    v: 1,
    siteId: site,
    messageId,
    messageIdAssigned: opts.assigned === true,
    type: i % 3 === 0 ? 'page' : 'track',
    ...(i % 3 === 0 ? {} : { event: `Clicked ${i % 4}` }),
    anonymousId: `anon-${i % 13}`,
    properties: {
      i,
      note: 'line\nbreak "quoted" ünïcode',
      ...(opts.padding ? { pad: 'x'.repeat(opts.padding) } : {}),
    },
    context: { page: { path: `/p/${i % 9}` } },
    timestamp: new Date(tsMs).toISOString(),
    receivedAt: new Date(tsMs + 1500).toISOString(),
    ua: { browser: 'Firefox', os: 'Linux', device: 'desktop' },
    bot: i % 17 === 0,
  }
  return {
    json,
    event: {
      siteId: site,
      messageId,
      messageIdAssigned: opts.assigned === true,
      dedupHash: hash64(`${site}\u0001${messageId}`),
      type: json.type as string,
      dims: DIMS(i),
      visitorId: `anon-${i % 13}`,
      visitorHash: hash64(`anon-${i % 13}`),
      timestampMs: tsMs,
      receivedMs: tsMs + 1500,
      bot: i % 17 === 0,
      imported: i % 23 === 0,
      offset,
      traceparent: i % 2 === 0 ? `00-${i.toString(16).padStart(32, '0')}-${'ab'.repeat(8)}-01` : undefined,
      requestId: i % 3 === 0 ? `req-${i}` : undefined,
      raw: Buffer.from(JSON.stringify(json)),
    },
  }
}

/** Writes one segment (and its sidecar) as the archiver names and places it; returns its path. */
async function writeSegment(
  topicDir: string,
  partition: number,
  hourStartMs: number,
  events: ArchivedEvent[],
) {
  const firstOffset = Math.min(...events.map((e) => e.offset))
  const lastOffset = Math.max(...events.map((e) => e.offset))
  const enc = encodeSegment(events, { topic: 'raw', partition, hourStartMs, firstOffset, lastOffset })
  const name = segmentFileName({ partition, firstOffset, lastOffset, rows: enc.rows, crc32: enc.crc32 })
  const path = join(topicDir, hourRelDir(hourStartMs), name)
  await mkdir(dirname(path), { recursive: true })
  await writeFile(path, enc.bytes)
  await writeFile(join(dirname(path), rawSidecarName(name)), enc.raw.bytes)
  return { path, relPath: `${hourRelDir(hourStartMs)}/${name}` }
}

/**
 * What an export must hold, worked out from the rule as documented: among the site's events of the
 * hours overlapping [from, to), copies of one client messageId within one partition (the stream's
 * dedup scope) keep only the lowest offset; server-assigned ids are all kept; then the events with timestamp in [from, to).
 */
function expected(all: Written[], site: string, fromMs: number, toMs: number): Written[] {
  const lo = Math.floor(fromMs / HOUR) * HOUR
  const hi = Math.ceil(toMs / HOUR) * HOUR
  const inHours = all.filter(
    (w) => w.event.siteId === site && w.event.timestampMs >= lo && w.event.timestampMs < hi,
  )
  const first = new Map<string, Written>()
  const idOf = (w: Written) => `${w.partition}:${w.event.messageId}`
  for (const w of inHours) {
    if (w.event.messageIdAssigned) continue
    const f = first.get(idOf(w))
    if (!f || w.event.offset < f.event.offset) first.set(idOf(w), w)
  }
  return inHours.filter(
    (w) =>
      (w.event.messageIdAssigned || first.get(idOf(w)) === w) &&
      w.event.timestampMs >= fromMs &&
      w.event.timestampMs < toMs,
  )
}

const key = (partition: number, offset: number) => `${partition}:${offset}`

function site(siteId: string): Site {
  return {
    siteId,
    domain: siteId,
    origins: [],
    writeKey: `wk_${siteId}`,
    readTokenHashes: [hashToken(TOKENS[siteId]!)],
    createdAt: new Date(0),
  }
}

function fakeArchive(progress: ArchiveProgress[]) {
  const calls: Array<{ key: string; partitions: number }> = []
  return {
    calls,
    async progress(k: string, partitions: number) {
      calls.push({ key: k, partitions })
      return progress.filter((p) => p.partition < partitions)
    },
  }
}

async function app(source: ArchiveRawEventSource | undefined): Promise<FastifyInstance> {
  const sites = [site(A), site(B)]
  return buildQueryApp({
    reader: {} as AggregateReader,
    auth: new ReadAccessCache({
      get: async (id: string) => sites.find((s) => s.siteId === id),
      list: async () => sites,
    }),
    freshness: {
      current: async () => ({
        completeThroughMs: undefined,
        receivedThroughMs: undefined,
        graceMs: 0,
        partitionsReporting: 0,
        partitionsExpected: 2,
      }),
    },
    logger,
    ...(source ? { rawEvents: source } : {}),
  })
}

let root: string
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'tally-export-raw-unit-'))
})
afterAll(async () => {
  await rm(root, { recursive: true, force: true })
})

interface Fixture {
  topicDir: string
  spillDir: string
  written: Written[]
  segments: string[]
}

/**
 * Two partitions, four hours, two archiver flushes per partition and hour, two sites, with
 * duplicates: retries later in the same partition, a copy in the other partition, a copy whose
 * first copy lies before `from` in the same hour, server-assigned ids sharing a value, and one
 * messageId used by both sites.
 */
async function fixture(name: string): Promise<Fixture> {
  const topicDir = join(root, name, 'archive', 'raw')
  const spillDir = join(root, name, 'spill')
  const written: Written[] = []
  const segments: string[] = []
  const next = [0, 0]
  let i = 0
  const copies: Array<{
    partition: number
    hour: number
    flush: number
    site: string
    id: string
    ts: number
    assigned?: boolean
  }> = [
    // Retried in the same partition, the next flush.
    { partition: 0, hour: 1, flush: 1, site: A, id: 'A-1-0-0-3', ts: 0 },
    // The messageId of an event of partition 1 again in partition 0 (another visitor): two events,
    // as the stream counts them (dedup is per partition, which follows site + visitor).
    { partition: 0, hour: 2, flush: 1, site: A, id: 'A-2-1-0-2', ts: 0 },
    // Copies of server-assigned ids are different events.
    {
      partition: 1,
      hour: 3,
      flush: 0,
      site: A,
      id: 'assigned-1',
      ts: H0 + 3 * HOUR + 2 * MIN,
      assigned: true,
    },
    {
      partition: 1,
      hour: 3,
      flush: 1,
      site: A,
      id: 'assigned-1',
      ts: H0 + 3 * HOUR + 3 * MIN,
      assigned: true,
    },
    // The first copy before `from`, a second inside the range in the same hour: not exported.
    { partition: 0, hour: 0, flush: 0, site: A, id: 'early', ts: H0 + 5 * MIN },
    { partition: 0, hour: 0, flush: 1, site: A, id: 'early', ts: H0 + 25 * MIN },
    // One messageId in both sites: two events.
    { partition: 1, hour: 1, flush: 0, site: B, id: 'shared', ts: H0 + HOUR + 30 * MIN },
    { partition: 1, hour: 1, flush: 1, site: A, id: 'shared', ts: H0 + HOUR + 31 * MIN },
  ]
  for (let hour = 0; hour < 4; hour++) {
    for (let flush = 0; flush < 2; flush++) {
      for (let partition = 0; partition < 2; partition++) {
        const events: ArchivedEvent[] = []
        const add = (w: { event: ArchivedEvent; json: Record<string, unknown> }) => {
          events.push(w.event)
          written.push({ partition, ...w })
        }
        for (let k = 0; k < 12; k++) {
          const s = (k + hour) % 3 === 0 ? B : A
          const ts = H0 + hour * HOUR + ((k * 7 + flush * 3 + partition) % 60) * MIN + k * 1000
          add(
            makeEvent(
              s,
              `${s[0]!.toUpperCase()}-${hour}-${partition}-${flush}-${k}`,
              ts,
              next[partition]!++,
              i++,
            ),
          )
        }
        for (const c of copies) {
          if (c.partition !== partition || c.hour !== hour || c.flush !== flush) continue
          const original = written.find((w) => w.event.messageId === c.id && w.event.siteId === c.site)
          const ts = c.ts || original!.event.timestampMs
          add(makeEvent(c.site, c.id, ts, next[partition]!++, i++, c.assigned ? { assigned: true } : {}))
        }
        segments.push((await writeSegment(topicDir, partition, H0 + hour * HOUR, events)).relPath)
      }
    }
  }
  // Edges: an event exactly at `to` (excluded) and one exactly at `from` (included); filled in by the tests' range.
  return { topicDir, spillDir, written, segments }
}

function source(f: Fixture, o: Partial<ArchiveRawEventSourceOptions> = {}): ArchiveRawEventSource {
  return new ArchiveRawEventSource({
    topicDir: f.topicDir,
    spillDir: f.spillDir,
    archive: fakeArchive([
      { partition: 0, nextOffset: 100, watermarkMs: H0 + 5 * HOUR, committedAtMs: 0 },
      { partition: 1, nextOffset: 90, watermarkMs: H0 + 4 * HOUR, committedAtMs: 0 },
    ]),
    archiveKey: 'tally-archive|raw',
    partitions: 2,
    ...o,
  })
}

function query(params: Record<string, string>): string {
  return `/v1/export/events?${new URLSearchParams(params)}`
}

interface NdjsonLine {
  type: string
  [k: string]: unknown
}

function lines(body: string): NdjsonLine[] {
  expect(body.endsWith('\n')).toBe(true)
  return body
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l) as NdjsonLine)
}

const FROM = H0 + 20 * MIN
const TO = H0 + 3 * HOUR + 10 * MIN

describe('raw-event export (archive segments → NDJSON / Arrow)', () => {
  let f: Fixture
  beforeAll(async () => {
    f = await fixture('main')
    // The edges of the range: at `from` (in) and at `to` (out), partition 1, hour 0 and hour 3.
    const atFrom = makeEvent(A, 'at-from', FROM, 1000, 9001)
    const atTo = makeEvent(A, 'at-to', TO, 1001, 9002)
    await writeSegment(f.topicDir, 1, H0, [atFrom.event])
    await writeSegment(f.topicDir, 1, H0 + 3 * HOUR, [atTo.event])
    f.written.push({ partition: 1, ...atFrom }, { partition: 1, ...atTo })
  })

  it('exports as NDJSON exactly the site’s events of the range, once each, as the log holds them', async () => {
    const q = await app(source(f))
    const res = await q.inject({
      method: 'GET',
      url: query({ site: A, from: new Date(FROM).toISOString(), to: new Date(TO).toISOString() }),
      headers: { authorization: `Bearer ${TOKENS[A]}` },
    })
    expect(res.statusCode, res.body).toBe(200)
    expect(res.headers['content-type']).toBe('application/x-ndjson')
    expect(res.headers['content-disposition']).toMatch(/attachment; filename=".*\.ndjson"/)
    const all = lines(res.body)
    const meta = all[0]! as unknown as RawExportMeta & { type: string }
    const end = all[all.length - 1]!
    const events = all.slice(1, -1)
    const want = expected(f.written, A, FROM, TO)
    // The fixture exercises every rule.
    const ids = want.map((w) => w.event.messageId)
    expect(ids).toContain('at-from')
    expect(ids).not.toContain('at-to')
    expect(ids).not.toContain('early')
    expect(ids.filter((x) => x === 'assigned-1')).toHaveLength(2)
    expect(ids.filter((x) => x === 'shared')).toHaveLength(1)
    expect(ids.filter((x) => x === 'A-1-0-0-3')).toHaveLength(1)
    expect(
      want
        .filter((w) => w.event.messageId === 'A-2-1-0-2')
        .map((w) => w.partition)
        .sort(),
    ).toEqual([0, 1])

    expect(end).toEqual({ type: 'end', events: want.length })
    expect(events.every((e) => e.type === 'event')).toBe(true)
    expect(events.map((e) => key(e.partition as number, e.offset as number)).sort()).toEqual(
      want.map((w) => key(w.partition, w.event.offset)).sort(),
    )
    const byKey = new Map(want.map((w) => [key(w.partition, w.event.offset), w]))
    for (const e of events) {
      const w = byKey.get(key(e.partition as number, e.offset as number))!
      expect(e).toEqual({
        type: 'event',
        partition: w.partition,
        offset: w.event.offset,
        traceparent: w.event.traceparent ?? null,
        request_id: w.event.requestId ?? null,
        event: w.json,
      })
    }
    // Order: event hour, then partition, then offset.
    const order = events.map((e) => {
      const w = byKey.get(key(e.partition as number, e.offset as number))!
      return [Math.floor(w.event.timestampMs / HOUR), w.partition, w.event.offset]
    })
    expect(order).toEqual([...order].sort((a, b) => a[0]! - b[0]! || a[1]! - b[1]! || a[2]! - b[2]!))

    expect(meta).toMatchObject({
      type: 'meta',
      site: A,
      from: new Date(FROM).toISOString(),
      to: new Date(TO).toISOString(),
      format: 'ndjson',
      // No log offsets given: the lowest watermark of the partitions that report.
      complete_through: new Date(H0 + 4 * HOUR).toISOString(),
      archive: {
        received_through: new Date(H0 + 5 * HOUR).toISOString(),
        partitions_expected: 2,
        partitions_reporting: 2,
      },
      segments: f.segments.length + 2,
    })
    // Duplicates dropped among the site's events of the hours read: A-1-0-0-3 and early (the
    // copy of A-2-1-0-2 is in the other partition: another event).
    expect(meta.duplicates).toBe(2)

    // Site B sees its own events only.
    const other = await q.inject({
      method: 'GET',
      url: query({ site: B, from: new Date(FROM).toISOString(), to: new Date(TO).toISOString() }),
      headers: { authorization: `Bearer ${TOKENS[B]}` },
    })
    const bEvents = lines(other.body).filter((l) => l.type === 'event')
    const wantB = expected(f.written, B, FROM, TO)
    expect(wantB.length).toBeGreaterThan(10)
    expect(bEvents.map((e) => (e.event as { siteId: string }).siteId)).toEqual(wantB.map(() => B))
    expect(bEvents.map((e) => key(e.partition as number, e.offset as number)).sort()).toEqual(
      wantB.map((w) => key(w.partition, w.event.offset)).sort(),
    )
    await q.close()
  })

  it('exports the same events as an Arrow IPC stream with the documented columns and the meta', async () => {
    const q = await app(source(f))
    const res = await q.inject({
      method: 'GET',
      url: query({
        site: A,
        from: new Date(FROM).toISOString(),
        to: new Date(TO).toISOString(),
        format: 'arrow',
      }),
      headers: { authorization: `Bearer ${TOKENS[A]}` },
    })
    expect(res.statusCode, res.body).toBe(200)
    expect(res.headers['content-type']).toBe('application/vnd.apache.arrow.stream')
    const table = tableFromIPC(res.rawPayload)
    const meta = JSON.parse(table.schema.metadata.get('tally.meta')!) as RawExportMeta
    expect(meta).toMatchObject({ site: A, format: 'arrow', duplicates: 2 })
    expect(table.schema.fields.map((x) => x.name)).toEqual([
      'site',
      'message_id',
      'message_id_assigned',
      'type',
      'timestamp',
      'received_at',
      'visitor_id',
      'bot',
      'imported',
      'event',
      'path',
      'referrer',
      'utm_source',
      'browser',
      'os',
      'device',
      'country',
      'source',
      'channel',
      'utm_medium',
      'utm_campaign',
      'utm_content',
      'utm_term',
      'partition',
      'offset',
      'traceparent',
      'request_id',
      'json',
    ])
    const want = expected(f.written, A, FROM, TO)
    expect(table.numRows).toBe(want.length)
    const byKey = new Map(want.map((w) => [key(w.partition, w.event.offset), w]))
    for (const row of table.toArray()) {
      const r = row.toJSON() as Record<string, unknown>
      const w = byKey.get(key(r.partition as number, Number(r.offset)))
      expect(w, `${r.partition}:${r.offset}`).toBeDefined()
      const e = w!.event
      expect({
        site: r.site,
        message_id: r.message_id,
        message_id_assigned: r.message_id_assigned,
        type: r.type,
        timestamp: r.timestamp,
        received_at: r.received_at,
        visitor_id: r.visitor_id,
        bot: r.bot,
        imported: r.imported,
        dims: Object.fromEntries(Object.keys(e.dims).map((d) => [d, r[d]])),
        traceparent: r.traceparent,
        request_id: r.request_id,
        json: JSON.parse(r.json as string),
      }).toEqual({
        site: e.siteId,
        message_id: e.messageId,
        message_id_assigned: e.messageIdAssigned,
        type: e.type,
        timestamp: e.timestampMs,
        received_at: e.receivedMs,
        visitor_id: e.visitorId,
        bot: e.bot,
        imported: e.imported,
        dims: e.dims,
        traceparent: e.traceparent ?? null,
        request_id: e.requestId ?? null,
        json: w!.json,
      })
      byKey.delete(key(w!.partition, e.offset))
    }
    expect(byKey.size).toBe(0)
    await q.close()
  })

  it('deduplicates through spill files when the candidates exceed the memory budget, and removes them', async () => {
    const small = source(f, { maxDedupRowsInMemory: 7 })
    const prepared = await small.prepare({ siteId: A, fromMs: FROM, toMs: TO, format: 'ndjson' })
    const chunks: Buffer[] = []
    for await (const c of prepared.body) chunks.push(c as Buffer)
    const events = lines(Buffer.concat(chunks).toString('utf8')).filter((l) => l.type === 'event')
    expect(events.map((e) => key(e.partition as number, e.offset as number)).sort()).toEqual(
      expected(f.written, A, FROM, TO)
        .map((w) => key(w.partition, w.event.offset))
        .sort(),
    )
    expect(prepared.meta.duplicates).toBe(2)
    expect(await readdir(f.spillDir)).toEqual([])
  })

  it('reports complete_through from the archive progress and the log’s end offsets', async () => {
    const at = H0 + 6 * HOUR
    const progress = [
      { partition: 0, nextOffset: 50, watermarkMs: H0 + 2 * HOUR, committedAtMs: 0 },
      { partition: 1, nextOffset: 70, watermarkMs: H0 + 5 * HOUR, committedAtMs: 0 },
    ]
    const meta = async (ends: Array<[number, number]> | undefined, rows = progress) => {
      const archive = fakeArchive(rows)
      const s = source(f, {
        archive,
        now: () => at,
        maxConcurrent: 100,
        ...(ends ? { offsets: { log: { endOffsets: async () => new Map(ends) }, topic: 'raw' } } : {}),
      })
      const p = await s.prepare({ siteId: A, fromMs: H0, toMs: H0 + HOUR, format: 'ndjson' })
      p.body.destroy()
      expect(archive.calls[0]!.key).toBe('tally-archive|raw')
      return p.meta
    }
    const iso = (ms: number) => new Date(ms).toISOString()
    // Both behind the log: the lower watermark.
    expect(
      (
        await meta([
          [0, 60],
          [1, 80],
        ])
      ).complete_through,
    ).toBe(iso(H0 + 2 * HOUR))
    // Partition 0 idle and caught up: partition 1's watermark.
    expect(
      (
        await meta([
          [0, 50],
          [1, 80],
        ])
      ).complete_through,
    ).toBe(iso(H0 + 5 * HOUR))
    // Both caught up: complete through the request.
    const caughtUp = await meta([
      [0, 50],
      [1, 70],
    ])
    expect(caughtUp.complete_through).toBe(iso(at))
    expect(caughtUp.archive.partitions).toEqual([
      { partition: 0, next_offset: 50, watermark: iso(H0 + 2 * HOUR), end_offset: 50 },
      { partition: 1, next_offset: 70, watermark: iso(H0 + 5 * HOUR), end_offset: 70 },
    ])
    // A third partition with records and nothing archived: nothing can be promised.
    const unknown = await meta([
      [0, 50],
      [1, 70],
      [2, 4],
    ])
    expect(unknown.complete_through).toBeNull()
    expect(unknown.archive.partitions_expected).toBe(3)
    expect(unknown.archive.partitions_reporting).toBe(2)
    // Without end offsets: the partitions that report; none reporting: null.
    expect((await meta(undefined)).complete_through).toBe(iso(H0 + 2 * HOUR))
    expect((await meta(undefined, [])).complete_through).toBeNull()
  })

  it('checks the token and the parameters, naming the parameter at fault', async () => {
    const q = await app(source(f, { maxRangeHours: 48 }))
    const ask = (params: Record<string, string>, token: string | null = TOKENS[A]!) =>
      q.inject({
        method: 'GET',
        url: query(params),
        headers: token ? { authorization: `Bearer ${token}` } : {},
      })
    const range = { from: '2024-05-01T10:00:00Z', to: '2024-05-01T12:00:00Z' }
    expect((await ask({ site: A, ...range }, null)).statusCode).toBe(401)
    const wrong = await ask({ site: A, ...range }, TOKENS[B])
    expect([wrong.statusCode, wrong.json().code]).toEqual([403, 'TALLY_ERR_WRONG_SITE'])
    const cases: Array<[Record<string, string>, string, string]> = [
      [{ site: A }, 'TALLY_ERR_MISSING_PARAMETER', 'from'],
      [{ site: A, from: range.from }, 'TALLY_ERR_MISSING_PARAMETER', 'to'],
      [
        { site: A, from: '2024-05-01T12:00:00Z', to: '2024-05-01T10:00:00Z' },
        'TALLY_ERR_BAD_PARAMETER',
        'from',
      ],
      [{ site: A, from: 'yesterday', to: range.to }, 'TALLY_ERR_BAD_PARAMETER', 'from'],
      [{ site: A, ...range, format: 'csv' }, 'TALLY_ERR_BAD_PARAMETER', 'format'],
      [{ site: A, ...range, interval: 'hour' }, 'TALLY_ERR_UNKNOWN_PARAMETER', 'interval'],
      [{ site: A, from: '2024-05-01', to: '2024-05-03T00:00:01Z' }, 'TALLY_ERR_RANGE_TOO_LARGE', 'to'],
    ]
    for (const [params, code, where] of cases) {
      const res = await ask(params)
      expect([res.statusCode, res.json().code, res.json().where], JSON.stringify(params)).toEqual([
        400,
        code,
        where,
      ])
      expect(res.json().message).toContain(where)
    }
    // Exactly the longest range is fine; so is a period.
    expect((await ask({ site: A, from: '2024-05-01', to: '2024-05-02' })).statusCode).toBe(200)
    expect((await ask({ site: A, period: 'day', date: '2024-05-01' })).statusCode).toBe(200)
    await q.close()
  })

  it('keeps the connection while the dedup pass runs longer than the idle timeout', async () => {
    const sites = [site(A)]
    const slow = source(f)
    const q = await buildQueryApp({
      reader: {} as AggregateReader,
      auth: new ReadAccessCache({ get: async () => sites[0], list: async () => sites }),
      freshness: { current: async () => ({}) as never },
      logger,
      requestTimeoutMs: 500,
      rawEvents: {
        prepare: async (r) => {
          await new Promise((done) => setTimeout(done, 1500))
          return slow.prepare(r)
        },
      },
    })
    await q.listen({ port: 0, host: '127.0.0.1' })
    const port = (q.server.address() as AddressInfo).port
    const res = await fetch(
      `http://127.0.0.1:${port}${query({ site: A, from: new Date(FROM).toISOString(), to: new Date(TO).toISOString() })}`,
      { headers: { authorization: `Bearer ${TOKENS[A]}` } },
    )
    expect(res.status).toBe(200)
    const all = lines(await res.text())
    expect(all[all.length - 1]).toEqual({ type: 'end', events: expected(f.written, A, FROM, TO).length })
    await q.close()
  })

  it('answers 501 when the query role has no archive', async () => {
    const q = await app(undefined)
    const res = await q.inject({
      method: 'GET',
      url: query({ site: A, from: '2024-05-01', to: '2024-05-02' }),
      headers: { authorization: `Bearer ${TOKENS[A]}` },
    })
    expect(res.statusCode).toBe(501)
    expect(res.json()).toMatchObject({ code: 'TALLY_ERR_NOT_IMPLEMENTED' })
    expect(res.json().message).toMatch(/archive/)
    await q.close()
  })

  it('limits the exports running at once and frees the slot when a body closes', async () => {
    const s = source(f, { maxConcurrent: 1 })
    const first = await s.prepare({ siteId: A, fromMs: FROM, toMs: TO, format: 'ndjson' })
    await expect(s.prepare({ siteId: A, fromMs: FROM, toMs: TO, format: 'ndjson' })).rejects.toMatchObject({
      code: 'TALLY_ERR_EXPORT_BUSY',
      statusCode: 503,
    })
    first.body.destroy()
    await vi.waitFor(() => expect(s.active).toBe(0))
    const second = await s.prepare({ siteId: A, fromMs: FROM, toMs: TO, format: 'arrow' })
    for await (const _ of second.body) {
      // drain
    }
    await vi.waitFor(() => expect(s.active).toBe(0))
  })
})

describe('raw-event export: errors', () => {
  it('answers 500 naming the segment when a segment is corrupt before the answer starts', async () => {
    const f = await fixture('corrupt-segment')
    const victim = join(f.topicDir, f.segments[5]!)
    const bytes = await readFile(victim)
    const mid = bytes.length >> 1
    bytes[mid] = bytes[mid]! ^ 0xff
    await writeFile(victim, bytes)
    const q = await app(source(f))
    for (const format of ['ndjson', 'arrow']) {
      const res = await q.inject({
        method: 'GET',
        url: query({
          site: A,
          from: new Date(H0).toISOString(),
          to: new Date(H0 + 4 * HOUR).toISOString(),
          format,
        }),
        headers: { authorization: `Bearer ${TOKENS[A]}` },
      })
      expect(res.statusCode).toBe(500)
      expect(res.json()).toMatchObject({ code: 'TALLY_ERR_CORRUPT_SEGMENT', where: f.segments[5] })
      expect(res.json().message).toMatch(/checksum/)
      // The server's folders are not shown.
      expect(res.body).not.toContain(root)
    }
    // A range that does not reach the damaged hour is served.
    const before = await q.inject({
      method: 'GET',
      url: query({ site: A, from: new Date(H0).toISOString(), to: new Date(H0 + HOUR).toISOString() }),
      headers: { authorization: `Bearer ${TOKENS[A]}` },
    })
    expect(f.segments[5]!.startsWith(hourRelDir(H0 + HOUR))).toBe(true)
    expect(before.statusCode).toBe(200)
    // A file in an hour folder whose name is not a segment's is refused as well.
    await writeFile(join(f.topicDir, hourRelDir(H0), 'stray.arrow'), 'x')
    const stray = await q.inject({
      method: 'GET',
      url: query({ site: A, from: new Date(H0).toISOString(), to: new Date(H0 + HOUR).toISOString() }),
      headers: { authorization: `Bearer ${TOKENS[A]}` },
    })
    expect(stray.statusCode).toBe(500)
    expect(stray.json()).toMatchObject({
      code: 'TALLY_ERR_CORRUPT_SEGMENT',
      where: `${hourRelDir(H0)}/stray.arrow`,
    })
    await q.close()
  })

  it('ends NDJSON with an error line and aborts Arrow when a sidecar fails mid-stream', async () => {
    const f = await fixture('corrupt-sidecar')
    // The last hour's first segment: earlier events are streamed before the damage is found.
    const rel = f.segments[12]!
    const sidecar = join(f.topicDir, dirname(rel), rawSidecarName(rel.split('/').pop()!))
    const bytes = await readFile(sidecar)
    await writeFile(sidecar, bytes.subarray(0, bytes.length - 40))
    const q = await app(source(f))
    const range = { site: A, from: new Date(H0).toISOString(), to: new Date(H0 + 4 * HOUR).toISOString() }
    const res = await q.inject({
      method: 'GET',
      url: query(range),
      headers: { authorization: `Bearer ${TOKENS[A]}` },
    })
    expect(res.statusCode).toBe(200)
    const all = lines(res.body)
    const last = all[all.length - 1]!
    const streamed = all.filter((l) => l.type === 'event').length
    expect(streamed).toBeGreaterThan(0)
    expect(all.some((l) => l.type === 'end')).toBe(false)
    expect(last).toMatchObject({ type: 'error', code: 'TALLY_ERR_CORRUPT_SEGMENT', events: streamed })
    expect(String(last.where)).toBe(`${dirname(rel)}/${rawSidecarName(rel.split('/').pop()!)}`)

    // Arrow over a real socket: the body ends without its final chunk, which the client sees as a failure.
    await q.listen({ port: 0, host: '127.0.0.1' })
    const port = (q.server.address() as AddressInfo).port
    const arrow = await fetch(`http://127.0.0.1:${port}${query({ ...range, format: 'arrow' })}`, {
      headers: { authorization: `Bearer ${TOKENS[A]}` },
    })
    expect(arrow.status).toBe(200)
    await expect(arrow.arrayBuffer()).rejects.toThrow()
    await q.close()
  })
})

describe('raw-event export: constant memory', () => {
  it('reads the next segment only when the client has taken the bytes before it', async () => {
    const topicDir = join(root, 'lazy', 'archive', 'raw')
    const spillDir = join(root, 'lazy', 'spill')
    const perSegment = 200
    const segments = 40
    let offset = 0
    for (let s = 0; s < segments; s++) {
      const hour = H0 + Math.floor(s / 4) * HOUR
      const events = Array.from(
        { length: perSegment },
        (_, k) =>
          makeEvent(A, `lazy-${s}-${k}`, hour + (k % 60) * MIN, offset++, s * perSegment + k, {
            padding: 4000,
          }).event,
      )
      await writeSegment(topicDir, 0, hour, events)
    }
    const reads = { 1: 0, 2: 0 }
    const s = new ArchiveRawEventSource({
      topicDir,
      spillDir,
      archive: fakeArchive([]),
      archiveKey: 'k',
      partitions: 1,
      onSegmentRead: (pass) => {
        reads[pass]++
      },
    })
    const q = await app(s)
    await q.listen({ port: 0, host: '127.0.0.1' })
    const port = (q.server.address() as AddressInfo).port
    const url = `http://127.0.0.1:${port}${query({
      site: A,
      from: new Date(H0).toISOString(),
      to: new Date(H0 + 10 * HOUR).toISOString(),
    })}`
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      httpGet(url, { headers: { authorization: `Bearer ${TOKENS[A]}` } }, resolve).on('error', reject)
    })
    expect(res.statusCode).toBe(200)
    // ~33 MB to send; the client reads nothing for a while.
    res.pause()
    // Until the first pass is done and the second has stood still for half a second (the socket's
    // buffers full), at most 30 s: a fixed wait would depend on the machine's load.
    let last = -1
    let stillSince = Date.now()
    for (const deadline = Date.now() + 30_000; Date.now() < deadline; ) {
      await new Promise((r) => setTimeout(r, 50))
      if (reads[1] !== segments || reads[2] === 0 || reads[2] !== last) {
        last = reads[2]
        stillSince = Date.now()
      } else if (Date.now() - stillSince >= 500) break
    }
    expect(reads[1]).toBe(segments)
    const whilePaused = reads[2]
    expect(whilePaused).toBeGreaterThan(0)
    expect(whilePaused).toBeLessThan(segments / 2)
    // Taking the bytes lets it go on, to the end.
    let text = ''
    res.setEncoding('utf8')
    for await (const chunk of res) text += chunk
    expect(reads[2]).toBe(segments)
    const all = text.trimEnd().split('\n')
    expect(JSON.parse(all[all.length - 1]!)).toEqual({ type: 'end', events: segments * perSegment })
    expect(all).toHaveLength(segments * perSegment + 2)
    await q.close()
  })

  it('writes Arrow batch by batch, each readable as it comes', async () => {
    const f = await fixture('arrow-batches')
    const s = source(f)
    const prepared = await s.prepare({ siteId: B, fromMs: H0, toMs: H0 + 4 * HOUR, format: 'arrow' })
    const reader = await RecordBatchReader.from(prepared.body)
    let rows = 0
    for await (const batch of reader) rows += batch.numRows
    expect(rows).toBe(expected(f.written, B, H0, H0 + 4 * HOUR).length)
  })
})
