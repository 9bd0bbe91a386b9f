import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  hourRelDir,
  listSegments,
  parseSegmentFileName,
  type SegmentRef,
  segmentFileName,
} from '../../core/archive/segment-file.js'
import {
  bit,
  CorruptSegmentError,
  int64At,
  rawSidecarPath,
  readRawSegment,
  readSegment,
} from '../../core/archive/segment-reader.js'
import { type ArchivedEvent, encodeSegment } from '../../core/archive/segment-writer.js'
import { hash64 } from '../../core/hll.js'
import { COLUMNS } from '../../schemas/arrow.js'

const HOUR = Date.parse('2024-05-01T13:00:00Z')

function event(i: number, site: string): ArchivedEvent {
  const raw = Buffer.from(JSON.stringify({ i, site }))
  return {
    siteId: site,
    messageId: `m-${i}`,
    messageIdAssigned: i % 5 === 0,
    dedupHash: hash64(`${site}\u0001m-${i}`),
    type: i % 3 === 0 ? 'page' : 'track',
    dims: {
      event: i % 3 === 0 ? 'pageview' : 'Signed Up',
      path: `/p${i % 4}`,
      referrer: '(direct)',
      utm_source: '(none)',
      browser: 'Firefox',
      os: 'Linux',
      device: 'desktop',
      country: i % 2 === 0 ? 'DE' : '(unknown)',
      source: 'Direct / None',
      channel: 'Direct',
      utm_medium: '(none)',
      utm_campaign: '(none)',
      utm_content: '(none)',
      utm_term: '(none)',
    },
    visitorId: `v-${i % 7}`,
    visitorHash: hash64(`v-${i % 7}`),
    timestampMs: HOUR + i * 1000,
    receivedMs: HOUR + i * 1000 + 50,
    bot: i % 11 === 0,
    imported: false,
    offset: 100 + i,
    traceparent: i % 2 === 0 ? `00-${'1'.repeat(32)}-${'2'.repeat(16)}-01` : undefined,
    requestId: undefined,
    raw,
  }
}

let root: string
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'tally-segment-unit-'))
})
afterAll(async () => {
  await rm(root, { recursive: true, force: true })
})

async function writeSegment(dir: string, events: ArchivedEvent[]): Promise<SegmentRef> {
  const enc = encodeSegment(events, {
    topic: 't',
    partition: 2,
    hourStartMs: HOUR,
    firstOffset: 100,
    lastOffset: 199,
  })
  const name = segmentFileName({
    partition: 2,
    firstOffset: 100,
    lastOffset: 199,
    rows: enc.rows,
    crc32: enc.crc32,
  })
  const path = join(dir, hourRelDir(HOUR), name)
  await mkdir(dirname(path), { recursive: true })
  await writeFile(path, enc.bytes)
  await writeFile(path.replace(/\.arrow$/, '.raw.arrow'), enc.raw.bytes)
  const listed = await listSegments(dir, HOUR, HOUR + 3_600_000)
  expect(listed.segments.map((s) => s.path)).toEqual([path])
  return listed.segments[0]!
}

describe('archive segments (Arrow IPC files)', () => {
  it('round-trips every column, sorted by site, with dictionaries and 64-bit values intact', async () => {
    const events = Array.from({ length: 60 }, (_, i) => event(i, i % 2 === 0 ? 'b.test' : 'a.test'))
    const ref = await writeSegment(join(root, 'roundtrip'), events)
    const cols = await readSegment(ref)
    const raw = await readRawSegment(cols)
    expect(cols.rows).toBe(60)
    const sites = Array.from(cols.site.indices, (k) => cols.site.dictionary[k])
    expect(sites).toEqual([...sites].sort())
    for (let i = 0; i < cols.rows; i++) {
      const off = int64At(cols.offset, i)
      const e = events.find((x) => x.offset === off)!
      expect(cols.site.dictionary[cols.site.indices[i]!]).toBe(e.siteId)
      expect(cols.dims[1]!.dictionary[cols.dims[1]!.indices[i]!]).toBe(e.dims.path)
      expect(int64At(cols.timestamp, i)).toBe(e.timestampMs)
      expect(cols.dedupHash[i]).toBe(e.dedupHash)
      expect(bit(cols.bot, i)).toBe(e.bot)
      expect(bit(cols.messageIdAssigned, i)).toBe(e.messageIdAssigned)
      expect(Buffer.from(raw.getChild(COLUMNS.raw)!.get(i) as Uint8Array).equals(e.raw)).toBe(true)
      expect(raw.getChild(COLUMNS.traceparent)!.get(i) ?? undefined).toBe(e.traceparent)
      expect(raw.getChild(COLUMNS.messageId)!.get(i)).toBe(e.messageId)
    }
  })

  it('parses and refuses names', () => {
    expect(parseSegmentFileName('p3-10-20-5-0000abcd.arrow')).toEqual({
      partition: 3,
      firstOffset: 10,
      lastOffset: 20,
      rows: 5,
      crc32: 0xabcd,
    })
    expect(parseSegmentFileName('p3-10-20-5.arrow')).toBeUndefined()
  })

  it('reports damaged, truncated and misnamed segments with their path', async () => {
    const dir = join(root, 'damaged')
    const ref = await writeSegment(dir, [event(1, 'a.test'), event(2, 'a.test')])
    const bytes = await readFile(ref.path)
    bytes[Math.floor(bytes.length / 2)]! ^= 0xff
    await writeFile(ref.path, bytes)
    await expect(readSegment(ref)).rejects.toThrow(CorruptSegmentError)
    await expect(readSegment(ref)).rejects.toThrow(ref.path)
    await writeFile(ref.path, bytes.subarray(0, 40))
    await expect(readSegment(ref)).rejects.toThrow(/checksum/)
    await writeFile(join(dir, hourRelDir(HOUR), 'stray.arrow'), 'x')
    const listed = await listSegments(dir, HOUR, HOUR + 1)
    expect(listed.misnamed).toEqual([join(dir, hourRelDir(HOUR), 'stray.arrow')])
  })

  it('checks the raw sidecar against its segment', async () => {
    const dir = join(root, 'sidecar')
    const ref = await writeSegment(dir, [event(1, 'a.test'), event(2, 'a.test')])
    const cols = await readSegment(ref)
    const sidecar = rawSidecarPath(ref)
    const bytes = await readFile(sidecar)
    await writeFile(sidecar, bytes.subarray(0, bytes.length - 8))
    await expect(readRawSegment(cols)).rejects.toThrow(sidecar)
    // A misnamed file is reported; a sidecar is not a misnamed segment.
    expect((await listSegments(dir, HOUR, HOUR + 1)).misnamed).toEqual([])
  })

  it('refuses a segment whose contents do not match its name', async () => {
    const dir = join(root, 'mismatch')
    const ref = await writeSegment(dir, [event(1, 'a.test')])
    await expect(readSegment({ ...ref, rows: 2 })).rejects.toThrow(/rows/)
    await expect(readSegment({ ...ref, hourStartMs: HOUR + 3_600_000 })).rejects.toThrow(/metadata/)
  })
})
