import { type FileHandle, open, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { PRIVATE_FILE_MODE } from '../private-files.js'
import { HI, LO, type SegmentColumns } from './segment-reader.js'

/**
 * Deduplication by messageId across a whole rebuild range, in bounded memory.
 *
 * The key is the stream's: XXH64 of `siteId \u0001 messageId` (precomputed in the segment's
 * `dedup_hash` column) within one source partition; server-assigned ids are never deduplicated. The
 * stream remembers messageIds per partition, and the partition follows site + visitor, so a client
 * retry (same event, same visitor) always meets its first copy there, while the same messageId sent
 * for another visitor in another partition counts again: the rebuild keys the same way so that its
 * numbers equal the stream's (docs/design.md, "Deduplication: what a messageId identifies"). Of the
 * copies of one key, the one with the lowest offset counts — the first one the log received, which
 * is the one the stream counts.
 *
 * Pass 1 reads every segment of the range and emits one record per candidate row: key, partition,
 * offset, segment, row (28 bytes). When the range holds more candidates than `maxRowsInMemory`, the
 * records are spread by the top bits of the key over 2^k spill files, each of which fits; a key's
 * copies always share a bucket. Each bucket is then resolved alone: a native sort of its keys finds
 * the duplicated ones, and every copy but the winner is marked in a per-segment bitmap (1 bit per
 * row, only for segments holding a loser), which is all the aggregation pass needs.
 */

const RECORD_BYTES = 28
const SPILL_BUFFER_RECORDS = 4096

export interface DedupOptions {
  /** Keep only this site's rows; undefined: all sites. */
  siteId: string | undefined
  /** Candidates resolved at once; beyond, they spill to files by key. */
  maxRowsInMemory: number
  /** Folder for spill files (removed when done). */
  spillDir: string
  /** After each segment (progress, throttling, cancellation). */
  afterSegment?: (index: number) => Promise<void>
}

export interface DedupOutcome {
  /** Segment index → bitmap of the rows that are duplicates (not counted). */
  losers: Map<number, Uint8Array>
  duplicates: number
  candidates: number
  /** Files the candidates were spread over (1: all in memory). */
  buckets: number
}

/** Growable columns of candidate records. */
class Records {
  hash: BigUint64Array
  words: Uint32Array
  part: Int32Array
  off: Float64Array
  seg: Int32Array
  row: Int32Array
  n = 0

  constructor(capacity: number) {
    this.hash = new BigUint64Array(Math.max(16, capacity))
    this.words = new Uint32Array(this.hash.buffer)
    this.part = new Int32Array(this.hash.length)
    this.off = new Float64Array(this.hash.length)
    this.seg = new Int32Array(this.hash.length)
    this.row = new Int32Array(this.hash.length)
  }

  private grow(): void {
    const size = this.hash.length * 2
    const hash = new BigUint64Array(size)
    hash.set(this.hash)
    this.hash = hash
    this.words = new Uint32Array(hash.buffer)
    const grow = <T extends Int32Array | Float64Array>(a: T, make: (n: number) => T): T => {
      const b = make(size)
      b.set(a)
      return b
    }
    this.part = grow(this.part, (k) => new Int32Array(k))
    this.off = grow(this.off, (k) => new Float64Array(k))
    this.seg = grow(this.seg, (k) => new Int32Array(k))
    this.row = grow(this.row, (k) => new Int32Array(k))
  }

  push(w0: number, w1: number, part: number, off: number, seg: number, row: number): void {
    if (this.n === this.hash.length) this.grow()
    const i = this.n++
    this.words[2 * i] = w0
    this.words[2 * i + 1] = w1
    this.part[i] = part
    this.off[i] = off
    this.seg[i] = seg
    this.row[i] = row
  }
}

/** Append-only writer of candidate records to one spill file, buffered in memory between drains. */
class SpillFile {
  private buf = Buffer.allocUnsafe(RECORD_BYTES * SPILL_BUFFER_RECORDS)
  private used = 0
  private full: Buffer[] = []
  count = 0

  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
  ) {}

  static async create(path: string): Promise<SpillFile> {
    return new SpillFile(path, await open(path, 'w', PRIVATE_FILE_MODE))
  }

  push(w0: number, w1: number, part: number, off: number, seg: number, row: number): void {
    const at = this.used
    const buf = this.buf
    buf.writeUInt32LE(w0, at)
    buf.writeUInt32LE(w1, at + 4)
    buf.writeInt32LE(part, at + 8)
    buf.writeDoubleLE(off, at + 12)
    buf.writeInt32LE(seg, at + 20)
    buf.writeInt32LE(row, at + 24)
    this.used += RECORD_BYTES
    this.count++
    if (this.used === buf.length) {
      this.full.push(buf)
      this.buf = Buffer.allocUnsafe(buf.length)
      this.used = 0
    }
  }

  /** Writes the buffers filled since the last drain. */
  async drain(): Promise<void> {
    const chunks = this.full
    this.full = []
    for (const chunk of chunks) await this.fh.write(chunk, 0, chunk.length)
  }

  async close(): Promise<void> {
    await this.drain()
    if (this.used > 0) await this.fh.write(this.buf, 0, this.used)
    this.used = 0
    await this.fh.close()
  }

  /** Reads the file back into records, then deletes it. */
  async load(): Promise<Records> {
    const out = new Records(this.count)
    const fh = await open(this.path, 'r')
    try {
      const chunk = Buffer.allocUnsafe(RECORD_BYTES * SPILL_BUFFER_RECORDS)
      for (;;) {
        const { bytesRead } = await fh.read(chunk, 0, chunk.length, null)
        if (bytesRead === 0) break
        for (let at = 0; at + RECORD_BYTES <= bytesRead; at += RECORD_BYTES) {
          out.push(
            chunk.readUInt32LE(at),
            chunk.readUInt32LE(at + 4),
            chunk.readInt32LE(at + 8),
            chunk.readDoubleLE(at + 12),
            chunk.readInt32LE(at + 20),
            chunk.readInt32LE(at + 24),
          )
        }
      }
    } finally {
      await fh.close()
    }
    await unlink(this.path)
    return out
  }
}

/** murmur3's 32-bit finalizer: a bijection, so distinct partitions give distinct masks. */
function partitionMask(partition: number): number {
  let x = partition >>> 0
  x ^= x >>> 16
  x = Math.imul(x, 0x85ebca6b)
  x ^= x >>> 13
  x = Math.imul(x, 0xc2b2ae35)
  x ^= x >>> 16
  return x >>> 0
}

/** Marks every copy but the winner of each duplicated key; returns how many were marked. */
function resolve(records: Records, rowsOf: (seg: number) => number, losers: Map<number, Uint8Array>): number {
  const n = records.n
  if (n < 2) return 0
  const sorted = records.hash.slice(0, n).sort()
  let dups: Set<bigint> | undefined
  // A filter on the low 24 bits of each duplicated key, so most records are ruled out without
  // reading their key as a BigInt.
  const filter = new Uint8Array(1 << 21)
  const sortedWords = new Uint32Array(sorted.buffer, sorted.byteOffset, n * 2)
  for (let i = 1; i < n; i++) {
    if (sorted[i] === sorted[i - 1]) {
      dups ??= new Set()
      dups.add(sorted[i]!)
      const low = sortedWords[2 * i + LO]! & 0xffffff
      filter[low >>> 3]! |= 1 << (low & 7)
    }
  }
  if (!dups) return 0
  const { hash, words, part, off, seg, row } = records
  const maybe = (i: number) => {
    const low = words[2 * i + LO]! & 0xffffff
    return ((filter[low >>> 3]! >>> (low & 7)) & 1) === 1
  }
  const winner = new Map<bigint, number>()
  for (let i = 0; i < n; i++) {
    if (!maybe(i)) continue
    const h = hash[i]!
    if (!dups.has(h)) continue
    const w = winner.get(h)
    if (w === undefined || part[i]! < part[w]! || (part[i] === part[w] && off[i]! < off[w]!)) winner.set(h, i)
  }
  let marked = 0
  for (let i = 0; i < n; i++) {
    if (!maybe(i)) continue
    const h = hash[i]!
    if (!dups.has(h) || winner.get(h) === i) continue
    const s = seg[i]!
    let bits = losers.get(s)
    if (!bits) {
      bits = new Uint8Array(Math.ceil(rowsOf(s) / 8))
      losers.set(s, bits)
    }
    const r = row[i]!
    bits[r >>> 3]! |= 1 << (r & 7)
    marked++
  }
  return marked
}

/** Calls `fn(from, to, siteId)` for each run of one site's rows (rows are sorted by site). */
export function forEachSiteRun(
  cols: SegmentColumns,
  siteId: string | undefined,
  fn: (from: number, to: number, site: string) => void,
): void {
  const idx = cols.site.indices
  const dict = cols.site.dictionary
  const n = cols.rows
  let i = 0
  while (i < n) {
    const s = idx[i]!
    let j = i + 1
    while (j < n && idx[j] === s) j++
    const site = dict[s]!
    if (siteId === undefined || site === siteId) fn(i, j, site)
    i = j
  }
}

/**
 * Pass 1 over `count` segments read by `read(i)` (undefined: a corrupt segment being skipped).
 * `rows(i)` is the row count of segment i (from its name), to size the spill and the bitmaps.
 */
export async function findDuplicates(
  count: number,
  rows: (i: number) => number,
  read: (i: number) => Promise<SegmentColumns | undefined>,
  options: DedupOptions,
): Promise<DedupOutcome> {
  let total = 0
  for (let i = 0; i < count; i++) total += rows(i)
  const max = Math.max(1, options.maxRowsInMemory)
  let bits = 0
  while (total / 2 ** bits > max && bits < 16) bits++
  const buckets = 2 ** bits
  const memory = bits === 0 ? new Records(Math.min(total, max)) : undefined
  const spills: SpillFile[] = []
  try {
    for (let b = 0; b < (memory ? 0 : buckets); b++)
      spills.push(await SpillFile.create(join(options.spillDir, `dedup-${b}.bin`)))
    let candidates = 0
    for (let s = 0; s < count; s++) {
      const cols = await read(s)
      if (cols) {
        const words = new Uint32Array(cols.dedupHash.buffer, cols.dedupHash.byteOffset, cols.rows * 2)
        const partition = cols.ref.partition
        // The partition is mixed into the key (a bijection per partition), so only copies within
        // one partition collide: the stream's dedup scope. The spill buckets follow the mixed key.
        const mask0 = partitionMask(partition)
        const mask1 = partitionMask(partition ^ 0x9e3779b9)
        const assigned = cols.messageIdAssigned
        const offsets = cols.offset
        forEachSiteRun(cols, options.siteId, (from, to) => {
          for (let i = from; i < to; i++) {
            // Server-assigned ids are unique by construction: never deduplicated (as in the stream).
            if (((assigned[i >>> 3]! >>> (i & 7)) & 1) === 1) continue
            const w0 = (words[2 * i]! ^ mask0) >>> 0
            const w1 = (words[2 * i + 1]! ^ mask1) >>> 0
            const off = offsets[2 * i + HI]! * 4294967296 + (offsets[2 * i + LO]! >>> 0)
            candidates++
            if (memory) memory.push(w0, w1, partition, off, s, i)
            else spills[(LO === 0 ? w1 : w0) >>> (32 - bits)]!.push(w0, w1, partition, off, s, i)
          }
        })
        for (const spill of spills) await spill.drain()
      }
      await options.afterSegment?.(s)
    }
    const losers = new Map<number, Uint8Array>()
    let duplicates = 0
    if (memory) duplicates = resolve(memory, rows, losers)
    else {
      for (const spill of spills) await spill.close()
      for (const spill of spills) duplicates += resolve(await spill.load(), rows, losers)
      spills.length = 0
    }
    return { losers, duplicates, candidates, buckets }
  } finally {
    for (const spill of spills) {
      await spill.close().catch(() => undefined)
      await unlink(spill.path).catch(() => undefined)
    }
  }
}
