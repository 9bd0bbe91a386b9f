import { HLL_FORMAT_VERSION, HyperLogLog } from '../core/hll.js'

/**
 * HyperLogLog registers built from precomputed hashes without a BigInt per event: the rebuild reads
 * visitor hashes as pairs of 32-bit words straight from the segment's Uint64 column.
 *
 * The register and rank of a hash are exactly those of `HyperLogLog.addHash` (core/hll.ts): the top p
 * bits of the 64-bit hash pick the register, the rank is the number of leading zeros of the other
 * 64 − p bits, plus one. Registers depend only on the set of hashes, so the sketch this produces has
 * the same registers — and `toBytes()` the same bytes — as the stream's sketch of the same visitors
 * (checked by test/unit/batch-registers.test.ts). Serialization goes through `HyperLogLog` itself.
 */

const RANK_BITS = 6
const RANK_MASK = (1 << RANK_BITS) - 1
/** Appended entries after which a row switches to dense registers. */
const DENSE_AFTER = 1024

/** The packed register entry `index << 6 | rank` that a hash (two 32-bit halves) sets at precision p. */
export function registerEntry(hi: number, lo: number, precision: number): number {
  const shift = 32 - precision
  const index = hi >>> shift
  const rest = hi << precision
  const rank = rest !== 0 ? Math.clz32(rest) + 1 : shift + 1 + Math.clz32(lo)
  return (index << RANK_BITS) | rank
}

/**
 * Registers of one aggregate row while a rebuild builds it. Small rows (the many rows of one path in
 * one hour) keep an append-only list of entries (sorted and deduplicated once, when serialized or
 * merged into); rows past DENSE_AFTER appends, or with more than 1/8 of the registers set, switch to
 * the plain 2^p bytes.
 */
export class RegisterSet {
  private entries: Uint32Array | null = null
  private count = 0
  private dense: Uint8Array | null = null
  /** Registers set (non-zero) in `dense`, kept as they are set: serializing needs no count pass. */
  private denseSet = 0
  private readonly denseAt: number

  constructor(readonly precision: number) {
    this.denseAt = Math.min(DENSE_AFTER, Math.max(16, (1 << precision) >>> 3))
  }

  add(entry: number): void {
    const dense = this.dense
    if (dense !== null) {
      const i = entry >>> RANK_BITS
      const r = entry & RANK_MASK
      const was = dense[i]!
      if (r > was) {
        if (was === 0) this.denseSet++
        dense[i] = r
      }
      return
    }
    let entries = this.entries
    if (entries === null) {
      entries = new Uint32Array(8)
      this.entries = entries
    } else if (this.count === entries.length) {
      // A row this busy (a top page, an hour's totals) goes dense. Below that the entries just grow:
      // at most 4 bytes per event added, and they are sorted once, when the row is serialized.
      if (entries.length >= DENSE_AFTER) {
        this.toDense()
        this.add(entry)
        return
      }
      const grown = new Uint32Array(entries.length * 2)
      grown.set(entries)
      this.entries = grown
      entries = grown
    }
    entries[this.count++] = entry
  }

  /** Sorts the entries and keeps one per register (the highest rank); dense beyond the threshold. */
  private compact(): void {
    const entries = this.entries
    if (entries === null || this.count === 0) return
    const list = entries.subarray(0, this.count)
    if (this.count <= INSERTION_SORT_MAX) insertionSort(entries, this.count)
    else list.sort()
    let k = 0
    for (let i = 0; i < list.length; i++) {
      const e = list[i]!
      // Sorted by index then rank: a later entry of the same register has the higher rank.
      if (k > 0 && list[k - 1]! >>> RANK_BITS === e >>> RANK_BITS) list[k - 1] = e
      else list[k++] = e
    }
    this.count = k
    if (k > this.denseAt) this.toDense()
  }

  private toDense(): Uint8Array {
    if (this.dense !== null) return this.dense
    const dense = new Uint8Array(1 << this.precision)
    const entries = this.entries
    let set = 0
    if (entries !== null) {
      for (let i = 0; i < this.count; i++) {
        const e = entries[i]!
        const idx = e >>> RANK_BITS
        const r = e & RANK_MASK
        const was = dense[idx]!
        if (r > was) {
          if (was === 0) set++
          dense[idx] = r
        }
      }
    }
    this.denseSet = set
    this.dense = dense
    this.entries = null
    this.count = 0
    return dense
  }

  /** Adds every register of `other` (register-wise maximum). */
  merge(other: RegisterSet): void {
    if (other.precision !== this.precision)
      throw new RangeError('cannot merge registers of different precision')
    if (other.dense !== null) {
      const a = this.toDense()
      const b = other.dense
      const words = wordsOf(b)
      let set = this.denseSet
      // Four registers at a time: most words of a row's registers are zero (few visitors).
      for (let w = 0; w < words.length; w++) {
        if (words[w] === 0) continue
        for (let i = w << 2, end = i + 4; i < end; i++) {
          const r = b[i]!
          const was = a[i]!
          if (r > was) {
            if (was === 0) set++
            a[i] = r
          }
        }
      }
      this.denseSet = set
      return
    }
    const entries = other.entries
    if (entries === null) return
    const n = other.count
    const mine = this.entries
    // Appended at once while they fit below the dense threshold (registers depend only on the set
    // of entries, not on when a row goes dense).
    if (this.dense === null && this.count + n <= DENSE_AFTER) {
      if (mine === null || this.count + n > mine.length) {
        let size = mine === null ? 8 : mine.length * 2
        while (size < this.count + n) size *= 2
        const grown = new Uint32Array(size)
        if (mine !== null) grown.set(mine.subarray(0, this.count))
        this.entries = grown
      }
      this.entries!.set(entries.subarray(0, n), this.count)
      this.count += n
      return
    }
    for (let i = 0; i < n; i++) this.add(entries[i]!)
  }

  isEmpty(): boolean {
    return this.dense === null && this.count === 0
  }

  /** The registers as a HyperLogLog sketch (core/hll.ts), through its own validated byte format. */
  toSketch(): HyperLogLog {
    if (this.dense !== null) {
      const bytes = new Uint8Array(3 + this.dense.length)
      bytes[0] = HLL_FORMAT_VERSION
      bytes[1] = this.precision
      bytes[2] = 0
      bytes.set(this.dense, 3)
      return HyperLogLog.fromBytes(bytes)
    }
    this.compact()
    if (this.dense !== null) return this.toSketch()
    const n = this.count
    const bytes = new Uint8Array(7 + 3 * n)
    bytes[0] = HLL_FORMAT_VERSION
    bytes[1] = this.precision
    bytes[2] = 1
    new DataView(bytes.buffer).setUint32(3, n)
    const entries = this.entries
    for (let i = 0, at = 7; i < n; i++, at += 3) {
      const e = entries![i]!
      bytes[at] = e >>> 16
      bytes[at + 1] = (e >>> 8) & 0xff
      bytes[at + 2] = e & 0xff
    }
    return HyperLogLog.fromBytes(bytes)
  }

  /**
   * The serialized sketch, exactly as `HyperLogLog.toBytes()` writes it (core/hll.ts, format version
   * 1): the sparse encoding when it is strictly smaller than the dense one, else the dense one.
   * Written directly — a rebuild serializes every row — and checked byte for byte against
   * HyperLogLog by test/unit/batch-registers.test.ts.
   */
  toBytes(): Uint8Array {
    const m = 1 << this.precision
    if (this.dense === null) this.compact()
    const dense = this.dense
    const n = dense !== null ? this.denseSet : this.count
    if (7 + 3 * n >= 3 + m) {
      const out = new Uint8Array(3 + m)
      out[0] = HLL_FORMAT_VERSION
      out[1] = this.precision
      out[2] = 0
      if (dense !== null) out.set(dense, 3)
      else {
        const entries = this.entries!
        for (let k = 0; k < n; k++) out[3 + (entries[k]! >>> RANK_BITS)] = entries[k]! & RANK_MASK
      }
      return out
    }
    const out = new Uint8Array(7 + 3 * n)
    out[0] = HLL_FORMAT_VERSION
    out[1] = this.precision
    out[2] = 1
    // The entry count, a big-endian uint32.
    out[3] = n >>> 24
    out[4] = (n >>> 16) & 0xff
    out[5] = (n >>> 8) & 0xff
    out[6] = n & 0xff
    let at = 7
    if (dense !== null) {
      const words = wordsOf(dense)
      for (let w = 0; w < words.length; w++) {
        if (words[w] === 0) continue
        for (let i = w << 2, end = i + 4; i < end; i++) {
          const r = dense[i]!
          if (r === 0) continue
          const e = (i << RANK_BITS) | r
          out[at] = e >>> 16
          out[at + 1] = (e >>> 8) & 0xff
          out[at + 2] = e & 0xff
          at += 3
        }
      }
    } else {
      const entries = this.entries!
      for (let k = 0; k < n; k++) {
        const e = entries[k]!
        out[at] = e >>> 16
        out[at + 1] = (e >>> 8) & 0xff
        out[at + 2] = e & 0xff
        at += 3
      }
    }
    return out
  }
}

/**
 * Dense registers as 32-bit words, to skip four zero registers at once. Dense arrays are 2^p bytes
 * (p ≥ 4) at offset 0 of their own buffer, so the view covers them exactly.
 */
function wordsOf(dense: Uint8Array): Uint32Array {
  return new Uint32Array(dense.buffer, dense.byteOffset, dense.length >>> 2)
}

/** Below this many entries `compact` sorts in place by insertion (a typed array's sort costs more to call). */
const INSERTION_SORT_MAX = 24

function insertionSort(a: Uint32Array, n: number): void {
  for (let i = 1; i < n; i++) {
    const v = a[i]!
    let j = i - 1
    while (j >= 0 && a[j]! > v) {
      a[j + 1] = a[j]!
      j--
    }
    a[j + 1] = v
  }
}
