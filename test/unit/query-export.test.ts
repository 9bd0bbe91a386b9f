import { Readable } from 'node:stream'
import { RecordBatchReader, tableFromIPC } from 'apache-arrow'
import { describe, expect, it } from 'vitest'
import {
  ARROW_BATCH_ROWS,
  arrowStream,
  type ExportMeta,
  type ExportRow,
  ndjsonStream,
} from '../../query/export.js'
import { WindowTally } from '../../query/meta.js'

const META: ExportMeta = {
  site: 'a.test',
  from: '2024-05-01T00:00:00.000Z',
  to: '2024-05-02T00:00:00.000Z',
  interval: 'minute',
  property: 'path',
  complete_through: null,
  freshness: { received_through: null, grace_ms: 300000, partitions_reporting: 0, partitions_expected: 3 },
  metrics: { events: { approximate: false } },
  sketches: true,
}

async function* rows(n: number): AsyncGenerator<ExportRow> {
  for (let i = 0; i < n; i++) {
    yield {
      window_start: Date.UTC(2024, 4, 1) + i * 60_000,
      value: `/p${i % 7}`,
      events: i * 3,
      pageviews: i,
      bot_events: i % 2,
      visitors: i % 11,
      final: i % 5 === 0,
      status: i % 5 === 0 ? 'final' : 'open',
      visitors_sketch: new Uint8Array([1, 14, i % 256]),
    }
  }
}

async function collect(stream: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const b of stream) parts.push(b)
  return Buffer.concat(parts)
}

describe('export encodings', () => {
  it('writes NDJSON with a meta line, one line per row and an end line', async () => {
    const text = (await collect(ndjsonStream(META, rows(2500)))).toString('utf8')
    const lines = text
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>)
    expect(lines[0]).toMatchObject({ type: 'meta', site: 'a.test', property: 'path' })
    expect(lines[lines.length - 1]).toEqual({ type: 'end', rows: 2500 })
    const body = lines.slice(1, -1)
    expect(body).toHaveLength(2500)
    expect(body[7]).toEqual({
      type: 'row',
      window_start: '2024-05-01T00:07:00.000Z',
      path: '/p0',
      events: 21,
      pageviews: 7,
      bot_events: 1,
      visitors: 7,
      final: false,
      status: 'open',
      visitors_sketch: Buffer.from([1, 14, 7]).toString('base64'),
    })
  })

  it('writes an Arrow IPC stream batch by batch that reads back to the same rows', async () => {
    const n = ARROW_BATCH_ROWS * 2 + 17
    const chunks: Buffer[] = []
    for await (const c of arrowStream(META, rows(n))) chunks.push(c)
    // The schema, each full batch as soon as it is done, then the last partial batch with the end marker.
    expect(chunks.length).toBe(4)
    const table = tableFromIPC(Buffer.concat(chunks))
    expect(table.numRows).toBe(n)
    expect(JSON.parse(table.schema.metadata.get('tally.meta')!)).toEqual(META)
    const expected: ExportRow[] = []
    for await (const r of rows(n)) expected.push(r)
    const got = table.toArray().map((r) => r.toJSON() as Record<string, unknown>)
    got.forEach((r, i) => {
      const e = expected[i]!
      expect(r.window_start).toBe(e.window_start)
      expect(r.path).toBe(e.value)
      expect(Number(r.events)).toBe(e.events)
      expect(Number(r.pageviews)).toBe(e.pageviews)
      expect(Number(r.bot_events)).toBe(e.bot_events)
      expect(Number(r.visitors)).toBe(e.visitors)
      expect(r.final).toBe(e.final)
      expect(r.status).toBe(e.status)
      expect([...(r.visitors_sketch as Uint8Array)]).toEqual([...e.visitors_sketch!])
    })
    // A streaming reader sees the batches too.
    const reader = await RecordBatchReader.from(Readable.from(chunks))
    let batches = 0
    for await (const b of reader) batches += b.numRows > 0 ? 1 : 0
    expect(batches).toBe(3)
  })

  it('writes a valid empty Arrow stream when no row matches', async () => {
    const table = tableFromIPC(
      await collect(arrowStream({ ...META, property: null, sketches: false }, rows(0))),
    )
    expect(table.numRows).toBe(0)
    expect(table.schema.fields.map((f) => f.name)).toEqual([
      'window_start',
      'events',
      'pageviews',
      'bot_events',
      'visitors',
      'final',
      'status',
    ])
  })
})

describe('window statuses', () => {
  it('marks batch windows final, windows ended before complete_through closed, the rest open', () => {
    const t0 = Date.UTC(2024, 4, 1)
    const tally = new WindowTally(t0 + 3 * 3_600_000)
    tally.addSegment({ granularity: 'hour', fromMs: t0, toMs: t0 + 6 * 3_600_000 }, new Set([t0 + 3_600_000]))
    const meta = tally.meta()
    expect(meta).toMatchObject({ count: 6, final: 1, provisional: 5, open: 3 })
    expect(meta.ranges.map((r) => [r.from.slice(11, 16), r.to.slice(11, 16), r.status])).toEqual([
      ['00:00', '01:00', 'closed'],
      ['01:00', '02:00', 'final'],
      ['02:00', '03:00', 'closed'],
      ['03:00', '06:00', 'open'],
    ])
  })
})
