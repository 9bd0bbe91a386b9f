import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { tableFromIPC } from 'apache-arrow'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { decodeRecord } from '../../batch/decode.js'
import { UNKNOWN } from '../../core/aggregate/definition.js'
import {
  hourRelDir,
  listSegments,
  type SegmentRef,
  segmentFileName,
} from '../../core/archive/segment-file.js'
import {
  CorruptSegmentError,
  readRawSegment,
  readSegment,
  type SegmentColumns,
} from '../../core/archive/segment-reader.js'
import { type ArchivedEvent, encodeSegment } from '../../core/archive/segment-writer.js'
import { toLogRecord } from '../../core/record/codec.js'
import { COLUMNS, DIMENSION_COLUMNS, SEGMENT_METADATA, segmentFields } from '../../schemas/arrow.js'
import type { RawEventV1 } from '../../schemas/events.js'
import { rewriteSegment, toFormatV1, V2_ONLY_COLUMNS } from '../helpers/segment-format.js'

const HOUR = Date.parse('2024-05-01T13:00:00Z')

const PAGES: Array<{ context: Record<string, unknown>; properties: Record<string, unknown> }> = [
  // Direct.
  { context: { page: { url: 'https://a.test/', path: '/' } }, properties: {} },
  // A search engine.
  {
    context: { page: { url: 'https://a.test/pricing', referrer: 'https://www.google.com/search?q=x' } },
    properties: {},
  },
  // UTM set in the page URL, a paid medium.
  {
    context: {
      page: {
        url: 'https://a.test/?utm_source=newsletter&utm_medium=cpc&utm_campaign=spring&utm_content=hero&utm_term=shoes',
      },
    },
    properties: {},
  },
  // context.campaign, an email medium.
  {
    context: { campaign: { source: 'mailchimp', medium: 'email', name: 'may', content: 'link', term: 't' } },
    properties: { url: 'https://a.test/blog/1', referrer: 'https://mail.google.com/' },
  },
  // A social network.
  {
    context: {},
    properties: { url: 'https://a.test/x', referrer: 'https://news.ycombinator.com/item?id=1' },
  },
  // Self-referral.
  { context: {}, properties: { url: 'https://a.test/y', referrer: 'https://a.test/z' } },
]

function rawEvent(i: number, site: string): RawEventV1 {
  const page = PAGES[i % PAGES.length]!
  const ts = new Date(HOUR + i * 1000).toISOString()
  return {
    v: 1,
    siteId: site,
    messageId: `m-${i}`,
    messageIdAssigned: i % 5 === 0,
    type: i % 3 === 0 ? 'track' : 'page',
    ...(i % 3 === 0 ? { event: 'Signed Up' } : {}),
    anonymousId: `v-${i % 7}`,
    properties: page.properties,
    context: page.context,
    timestamp: ts,
    receivedAt: ts,
    ua: { browser: 'Firefox', os: 'Linux', device: i % 4 === 0 ? 'mobile' : 'desktop' },
    bot: i % 11 === 0,
    // Events logged before countries existed have none.
    ...(i % 4 === 1 ? {} : { country: i % 2 === 0 ? 'DE' : 'FR' }),
  }
}

/** The events as the archiver keeps them (batch/decode.ts: the shared definitions). */
function archived(n: number): ArchivedEvent[] {
  return Array.from({ length: n }, (_, i) => {
    const record = toLogRecord(rawEvent(i, i % 2 === 0 ? 'b.test' : 'a.test'), {}, HOUR + i * 1000)
    const d = decodeRecord({
      offset: 100 + i,
      key: record.key,
      value: record.value,
      headers: {},
      timestampMs: 0,
    })
    if (!d.ok) throw new Error(d.reason)
    return d.event
  })
}

let root: string
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'tally-segment-v1-unit-'))
})
afterAll(async () => {
  await rm(root, { recursive: true, force: true })
})

/** Today's writer, as the archiver writes a segment and its sidecar. */
async function writeSegment(dir: string, events: ArchivedEvent[]): Promise<string> {
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
  return path
}

async function only(dir: string): Promise<SegmentRef> {
  const listed = await listSegments(dir, HOUR, HOUR + 3_600_000)
  expect(listed.segments).toHaveLength(1)
  return listed.segments[0]!
}

function values(cols: SegmentColumns, k: number): string[] {
  const c = cols.dims[k]!
  return Array.from(c.indices, (i) => c.dictionary[i]!)
}

describe('archive segments of format version 1 (seven dimension columns)', () => {
  it('reads a version-1 segment with every column equal to the version-2 original, the new dimensions derived from its sidecar', async () => {
    const events = archived(60)
    const v2Dir = join(root, 'v2')
    const v1Dir = join(root, 'v1')
    await writeSegment(v2Dir, events)
    const v1Path = await toFormatV1(await writeSegment(v1Dir, events))

    // A genuine version-1 pair: the seven columns are gone, both files say version 1.
    const v1File = tableFromIPC(await readFile(v1Path))
    expect(v1File.schema.metadata.get(SEGMENT_METADATA.version)).toBe('1')
    expect(v1File.schema.fields.map((f) => f.name)).toEqual(segmentFields(1).map((f) => f.name))
    for (const c of V2_ONLY_COLUMNS) expect(v1File.getChild(c)).toBeNull()

    const v2 = await readSegment(await only(v2Dir))
    const v1 = await readSegment(await only(v1Dir))
    expect(v2.version).toBe(2)
    expect(v1.version).toBe(1)
    expect(v1.rows).toBe(60)
    expect(v1.site).toEqual(v2.site)
    expect(v1.type).toEqual(v2.type)
    expect(v1.dims).toHaveLength(DIMENSION_COLUMNS.length)
    DIMENSION_COLUMNS.forEach((d, k) => {
      expect(values(v1, k), d).toEqual(values(v2, k))
      expect(v1.dims[k], d).toEqual(v2.dims[k])
    })
    expect(v1.bot).toEqual(v2.bot)
    expect(v1.messageIdAssigned).toEqual(v2.messageIdAssigned)
    expect(v1.timestamp).toEqual(v2.timestamp)
    expect(v1.visitorHash).toEqual(v2.visitorHash)
    expect(v1.dedupHash).toEqual(v2.dedupHash)
    expect(v1.offset).toEqual(v2.offset)

    // The workload covers what the derived columns take: no country, and several sources/channels.
    const country = values(v1, DIMENSION_COLUMNS.indexOf('country'))
    expect(new Set(country)).toEqual(new Set(['DE', 'FR', UNKNOWN]))
    expect(new Set(values(v1, DIMENSION_COLUMNS.indexOf('channel'))).size).toBeGreaterThan(3)
    expect(new Set(values(v1, DIMENSION_COLUMNS.indexOf('utm_campaign'))).size).toBe(3)

    // Its sidecar reads as the version-2 one does, row for row.
    const raw1 = await readRawSegment(v1)
    const raw2 = await readRawSegment(v2)
    for (const c of Object.values(COLUMNS)) {
      const a = raw2.getChild(c)
      if (!a) continue
      expect(raw1.getChild(c)!.toArray(), c).toEqual(a.toArray())
    }
  })

  it('refuses a version-1 sidecar whose rows cannot be raw events, naming it', async () => {
    const dir = join(root, 'bad-raw')
    const events = archived(3).map((e) => ({ ...e, raw: Buffer.from('{"not":"an event"}') }))
    await toFormatV1(await writeSegment(dir, events))
    const ref = await only(dir)
    await expect(readSegment(ref)).rejects.toThrow(CorruptSegmentError)
    await expect(readSegment(ref)).rejects.toThrow(/\.raw\.arrow.*row 0 is not a raw event/)
  })

  it('still refuses a segment of another version, or of none, as corrupt with the versions it takes', async () => {
    for (const [name, version, message] of [
      ['v3', '3', /segment format version 3, expected 1 or 2/],
      ['none', undefined, /segment format version \(none\), expected 1 or 2/],
    ] as const) {
      const dir = join(root, name)
      await rewriteSegment(await writeSegment(dir, archived(5)), version)
      const ref = await only(dir)
      await expect(readSegment(ref)).rejects.toThrow(CorruptSegmentError)
      await expect(readSegment(ref)).rejects.toThrow(message)
      await expect(readSegment(ref)).rejects.toThrow(ref.path)
    }
  })

  it('refuses a version-1 segment that has the version-2 columns, and a version-2 one without them', async () => {
    const v1Wide = join(root, 'v1-wide')
    await rewriteSegment(await writeSegment(v1Wide, archived(5)), '1')
    await expect(readSegment(await only(v1Wide))).rejects.toThrow(
      /22 columns, expected 15 \(format version 1\)/,
    )
    const v2Narrow = join(root, 'v2-narrow')
    await rewriteSegment(await writeSegment(v2Narrow, archived(5)), '2', V2_ONLY_COLUMNS)
    await expect(readSegment(await only(v2Narrow))).rejects.toThrow(
      /15 columns, expected 22 \(format version 2\)/,
    )
  })
})
