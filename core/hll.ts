/**
 * HyperLogLog sketch for the `visitors` metric (distinct visitor ids).
 *
 * - `2^p` one-byte registers, p in 4..18 (default 14 → 16384 registers, 16 KiB when dense).
 * - Sparse in memory while small: most sketches of the stream worker (one per site × window ×
 *   dimension value) hold a handful of visitors, so a sketch starts as a sorted list of its non-zero
 *   registers (4 bytes each) and turns dense by itself once it has more than {@link hllSparseLimit}
 *   of them (2^p / 8, at most 4096: 2048 at p = 14, so at most 8 KiB sparse against 16 KiB dense).
 *   The form is invisible from outside: same registers, estimates, bytes and equality either way.
 * - Deterministic: a register holds the maximum rank seen for its index, so a sketch depends only on
 *   the set of ids added, never on their order or on how they were split. Two sketches of the same set
 *   have byte-identical registers, whether built by the stream worker or by a batch rebuild.
 * - Mergeable: {@link HyperLogLog.merge} is the register-wise maximum, which is commutative,
 *   associative and idempotent. Merging the same partial sketch twice changes nothing, so replays are
 *   safe.
 * - Compact on the wire: {@link HyperLogLog.toBytes} picks a sparse (index, value) list when few
 *   registers are set (a minute window of a small site has a handful of visitors) and the plain dense
 *   array otherwise, whichever is smaller. The round trip is exact.
 * - Estimation: Ertl's improved raw estimator ("New cardinality estimation algorithms for HyperLogLog
 *   sketches", 2017, algorithm 6). It needs neither the empirical bias tables of HLL++ nor a switch to
 *   linear counting: for small cardinalities it behaves like linear counting, for large ones like the
 *   classic estimate. With a 64-bit hash no large-range correction is needed.
 *
 * Relative standard error: `1.04 / sqrt(m)` with `m = 2^p` registers (≈ 0.81 % at p = 14, 1.63 % at
 * p = 12, 3.25 % at p = 10). {@link hllErrorBound} is the bound we test against: three standard errors
 * (≈ 2.44 % at p = 14), which a correct sketch exceeds in about 0.3 % of cases.
 */
// Hash: XXH64 (seed 0) of the id's UTF-8 bytes, from `xxhash-wasm`. Why this library:
// - it is the fastest of the maintained candidates here: its `h64(string)` encodes straight into the
//   WebAssembly memory, about 6-7 M hashes/s on one core for short ids, where `@node-rs/xxhash` pays
//   the N-API string crossing on each call (about 3.5 M/s, below our 5 M/s target);
// - it is pure WebAssembly: no native prebuilt binary per platform, the same bytes everywhere;
// - XXH64 is a fixed, specified algorithm, so hashes (and so registers) are identical across
//   processes, machines and library versions; the tests pin known answers cross-checked against the
//   reference implementation (via `@node-rs/xxhash`).
// Its one cost, an async WebAssembly instantiation, is paid once here with a top-level await; every
// call after that is synchronous.
import xxhash from 'xxhash-wasm'

/** Smallest supported precision (16 registers). */
export const MIN_PRECISION = 4
/** Largest supported precision (262144 registers). */
export const MAX_PRECISION = 18
/** Default precision: 16384 registers, relative standard error ≈ 0.81 %. */
export const DEFAULT_PRECISION = 14
/** Version byte written first by {@link HyperLogLog.toBytes}. */
export const HLL_FORMAT_VERSION = 1
/** How many standard errors {@link hllErrorBound} allows. */
export const HLL_ERROR_BOUND_SIGMAS = 3

const ENCODING_DENSE = 0
const ENCODING_SPARSE = 1
/** version, precision, encoding */
const HEADER_BYTES = 3
/** header + 32-bit big-endian entry count */
const SPARSE_HEADER_BYTES = HEADER_BYTES + 4
/** Each sparse entry is 24 bits: 18 bits of index (p ≤ 18) then 6 bits of value (≤ 61). */
const SPARSE_ENTRY_BYTES = 3
const MAX_HASH = (1n << 64n) - 1n
/** A sparse entry is `index << RANK_BITS | value`, in memory as on the wire. */
const RANK_BITS = 6
const RANK_MASK = (1 << RANK_BITS) - 1
/** Cap on the sparse entries at any precision, so binary insertion stays cheap (see hllSparseLimit). */
const MAX_SPARSE_ENTRIES = 4096
/** First allocation of a sparse entry array (32 bytes); it then doubles up to the sparse limit. */
const INITIAL_SPARSE_CAPACITY = 8
/** The shared entry array of empty sparse sketches and of dense ones; never written (capacity 0). */
const NO_ENTRIES = new Uint32Array(0)
/** alpha for m → ∞: 1 / (2 ln 2) */
const ALPHA_INF = 1 / (2 * Math.LN2)

const { h64 } = await xxhash()

// A 64-bit hash arrives as a BigInt; storing it in this scratch slot and reading the two 32-bit halves
// back avoids any further BigInt arithmetic (and allocation) in the hot path.
const scratch64 = new BigUint64Array(1)
const scratch32 = new Uint32Array(scratch64.buffer)
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1
const HI = LITTLE_ENDIAN ? 1 : 0
const LO = LITTLE_ENDIAN ? 0 : 1

/**
 * The 64-bit hash the sketch uses for an id: XXH64 with seed 0 of the id's UTF-8 bytes (a lone
 * surrogate is encoded as U+FFFD). Stable across processes, machines and versions.
 */
export function hash64(id: string): bigint {
  return h64(id)
}

/** The two 32-bit halves of a 64-bit hash (high first), as {@link hashHalves} fills them. */
export interface HashHalves {
  hi: number
  lo: number
}

/**
 * {@link hash64} of `id`, written as two unsigned 32-bit halves into `out` (returned): the form
 * {@link HyperLogLog.addHalves} takes, so a caller hashing an id once for many sketches pays no
 * BigInt work per sketch.
 */
export function hashHalves(id: string, out: HashHalves): HashHalves {
  scratch64[0] = h64(id)
  out.hi = scratch32[HI]!
  out.lo = scratch32[LO]!
  return out
}

function checkPrecision(p: unknown, what = 'precision'): number {
  if (typeof p !== 'number' || !Number.isInteger(p) || p < MIN_PRECISION || p > MAX_PRECISION) {
    throw new RangeError(
      `HyperLogLog ${what} must be an integer from ${MIN_PRECISION} to ${MAX_PRECISION}, got ${String(p)}`,
    )
  }
  return p
}

/** Largest register value at precision p: all 64 − p remaining hash bits zero gives rank 65 − p. */
function maxRank(p: number): number {
  return 65 - p
}

/**
 * Relative standard error of a HyperLogLog estimate at precision p: `1.04 / sqrt(2^p)`
 * (0.008125 at p = 14).
 */
export function hllRelativeError(p: number = DEFAULT_PRECISION): number {
  checkPrecision(p)
  return 1.04 / Math.sqrt(2 ** p)
}

/**
 * The documented error bound: {@link HLL_ERROR_BOUND_SIGMAS} (3) relative standard errors, ≈ 2.44 % at
 * p = 14. `|estimate − n| / n` stays below it except in about 0.3 % of cases.
 */
export function hllErrorBound(p: number = DEFAULT_PRECISION): number {
  return HLL_ERROR_BOUND_SIGMAS * hllRelativeError(p)
}

function sparseLimitOf(p: number): number {
  return Math.min((1 << p) >>> 3, MAX_SPARSE_ENTRIES)
}

/**
 * How many non-zero registers a sketch of precision p holds in its sparse in-memory form; one more
 * converts it to dense. `min(2^p / 8, 4096)`: 2048 at p = 14. A sparse entry takes 4 bytes, so a sparse
 * sketch's entry array never exceeds half of the 2^p bytes of the dense one (the sparse form stops
 * being smaller at 2^p / 4 entries; the margin covers capacity doubling), and the 4096 cap keeps the
 * sorted insertion (a binary search and a move of at most 16 KiB) fast at p = 16..18.
 */
export function hllSparseLimit(p: number = DEFAULT_PRECISION): number {
  return sparseLimitOf(checkPrecision(p))
}

/** Ertl 2017, σ(x) = x + Σ_{k≥1} x^(2^k) 2^(k−1), for the share of zero registers. */
function sigma(x: number): number {
  if (x === 1) return Number.POSITIVE_INFINITY
  let y = 1
  let z = x
  let zPrev: number
  do {
    x *= x
    zPrev = z
    z += x * y
    y += y
  } while (z !== zPrev)
  return z
}

/** Ertl 2017, τ(x) = (1 − x − Σ_{k≥1} (1 − x^(2^−k))² 2^−k) / 3, for the share of saturated registers. */
function tau(x: number): number {
  if (x === 0 || x === 1) return 0
  let y = 1
  let z = 1 - x
  let zPrev: number
  do {
    x = Math.sqrt(x)
    zPrev = z
    y *= 0.5
    z -= (1 - x) ** 2 * y
  } while (z !== zPrev)
  return z / 3
}

/**
 * A HyperLogLog sketch. Not safe to share between threads; cheap to {@link clone}.
 *
 * Hashing: the top p bits of the 64-bit hash pick the register, the rank (leading zeros + 1) of the
 * remaining 64 − p bits is the candidate value; the register keeps the maximum.
 *
 * Representation (in memory only; it never shows in results, bytes or {@link equals}):
 * - sparse while at most {@link hllSparseLimit}(p) registers are non-zero: a sorted `Uint32Array` of
 *   `index << 6 | value` entries, one per non-zero register (the same packing as the sparse byte
 *   encoding), with binary search and in-place insertion, grown by doubling. 4 bytes per set register
 *   instead of 2^p bytes in all;
 * - dense otherwise: 2^p one-byte registers. The switch is automatic, one way (a dense sketch never
 *   goes back to sparse) and also happens on {@link densify}.
 */
export class HyperLogLog {
  /** p: the sketch has 2^p registers. */
  readonly precision: number
  private readonly shift: number
  /** Most entries the sparse form holds; one more non-zero register converts the sketch to dense. */
  private readonly sparseLimit: number
  /** The 2^p registers once dense; null while sparse. */
  private dense: Uint8Array | null
  /**
   * While sparse: `index << 6 | value` for each non-zero register, by ascending index, in
   * `[0, count)`; the array's length is the capacity. Unused (empty) once dense.
   */
  private entries: Uint32Array
  /** While sparse: how many entries are in use (= the number of non-zero registers). */
  private count: number

  /** An empty sketch with 2^p registers; p from 4 to 18, default 14. Starts sparse (no allocation). */
  constructor(precision: number = DEFAULT_PRECISION) {
    this.precision = checkPrecision(precision)
    this.shift = 32 - this.precision
    this.sparseLimit = sparseLimitOf(this.precision)
    this.dense = null
    this.entries = NO_ENTRIES
    this.count = 0
  }

  /**
   * The 2^p registers, one byte each, values 0..65 − p, for reading only. For a dense sketch this is
   * the live array; for a sparse one it is a fresh array built on each access, which allocates 2^p
   * bytes (16 KiB at p = 14) and does not follow later changes, so in loops over many sketches prefer
   * {@link nonZeroRegisters}, {@link estimate}, {@link equals} or {@link toBytes}. Never write to it:
   * change registers only through the methods, which keep them valid.
   */
  get registers(): Uint8Array {
    return this.dense ?? this.materialize()
  }

  /** True while the sketch is held in the sparse in-memory form (see the class comment). */
  isSparse(): boolean {
    return this.dense === null
  }

  /**
   * Bytes allocated for the registers: the sparse entry array's capacity (4 bytes per entry), or 2^p
   * once dense. Excludes the fixed per-object overhead of the JS objects themselves.
   */
  byteSize(): number {
    return this.dense === null ? this.entries.byteLength : this.dense.byteLength
  }

  /**
   * Converts to the dense in-memory form now (no-op when already dense) and returns this, e.g. for a
   * sketch known to grow large. Changes no register, estimate or bytes.
   */
  densify(): this {
    this.denseRegisters()
    return this
  }

  /** The dense registers, converting from sparse first if needed. */
  private denseRegisters(): Uint8Array {
    let dense = this.dense
    if (dense === null) {
      dense = this.materialize()
      this.dense = dense
      this.entries = NO_ENTRIES
      this.count = 0
    }
    return dense
  }

  /** A new dense register array holding the sparse entries. */
  private materialize(): Uint8Array {
    const out = new Uint8Array(1 << this.precision)
    const entries = this.entries
    for (let k = 0; k < this.count; k++) {
      const e = entries[k]!
      out[e >>> RANK_BITS] = e & RANK_MASK
    }
    return out
  }

  /** Capacity for k sparse entries: a power of two ≥ k, at least 8, at most the sparse limit. */
  private sparseCapacity(k: number): number {
    let capacity = INITIAL_SPARSE_CAPACITY
    while (capacity < k) capacity *= 2
    return Math.min(capacity, this.sparseLimit)
  }

  /** Adds an id. Returns true when a register changed (false for an id already counted). */
  add(id: string): boolean {
    scratch64[0] = h64(id)
    return this.addHalves(scratch32[HI]!, scratch32[LO]!)
  }

  /**
   * Adds a precomputed 64-bit hash ({@link hash64}), e.g. to hash an id once and add it to the
   * sketches of several windows. Returns true when a register changed.
   */
  addHash(hash: bigint): boolean {
    if (typeof hash !== 'bigint') throw new TypeError(`HyperLogLog hash must be a bigint, got ${typeof hash}`)
    if (hash < 0n || hash > MAX_HASH) {
      throw new RangeError(`HyperLogLog hash must be an unsigned 64-bit integer, got ${hash}`)
    }
    scratch64[0] = hash
    return this.addHalves(scratch32[HI]!, scratch32[LO]!)
  }

  /**
   * Adds a precomputed hash given as its two unsigned 32-bit halves ({@link hashHalves}); the same
   * as `addHash((BigInt(hi) << 32n) | BigInt(lo))`. Returns true when a register changed.
   */
  addHalves(hi: number, lo: number): boolean {
    hi >>>= 0
    lo >>>= 0
    const index = hi >>> this.shift
    // The 32 − p hash bits left in `hi`, moved to the top; zero when they are all zero.
    const rest = hi << this.precision
    const rank = rest !== 0 ? Math.clz32(rest) + 1 : this.shift + 1 + Math.clz32(lo)
    return this.raise(index, rank)
  }

  /** Raises register `index` to `rank` (1..65 − p) if that is higher. True when it changed. */
  private raise(index: number, rank: number): boolean {
    const dense = this.dense
    if (dense !== null) {
      if (rank > dense[index]!) {
        dense[index] = rank
        return true
      }
      return false
    }
    const entries = this.entries
    const n = this.count
    const key = index << RANK_BITS
    // First entry with an index ≥ `index` (entries order by index: the value is in the low 6 bits).
    let low = 0
    let high = n
    while (low < high) {
      const mid = (low + high) >>> 1
      if (entries[mid]! < key) low = mid + 1
      else high = mid
    }
    if (low < n) {
      const e = entries[low]!
      if (e >>> RANK_BITS === index) {
        if (rank > (e & RANK_MASK)) {
          entries[low] = key | rank
          return true
        }
        return false
      }
    }
    if (n === this.sparseLimit) {
      this.denseRegisters()[index] = rank
      return true
    }
    if (n === entries.length) {
      const grown = new Uint32Array(this.sparseCapacity(n + 1))
      for (let k = 0; k < low; k++) grown[k] = entries[k]!
      for (let k = low; k < n; k++) grown[k + 1] = entries[k]!
      grown[low] = key | rank
      this.entries = grown
    } else {
      // Short tails (the common case for small sketches) are cheaper to move by hand than with a call.
      if (n - low <= 16) for (let k = n; k > low; k--) entries[k] = entries[k - 1]!
      else entries.copyWithin(low + 1, low, n)
      entries[low] = key | rank
    }
    this.count = n + 1
    return true
  }

  /**
   * Merges another sketch into this one (register-wise maximum) and returns this. Commutative,
   * associative and idempotent. Both sketches must have the same precision: to combine sketches of
   * different precision, {@link downsample} the finer one first. Either may be sparse or dense; this
   * one becomes dense when the other is, or when the union outgrows the sparse limit.
   */
  merge(other: HyperLogLog): this {
    if (!(other instanceof HyperLogLog)) throw new TypeError('HyperLogLog.merge expects a HyperLogLog')
    if (other.precision !== this.precision) {
      throw new RangeError(
        `cannot merge HyperLogLog sketches of different precision (${this.precision} and ${other.precision}); downsample the finer one first`,
      )
    }
    const b = other.dense
    if (b === null) {
      const entries = other.entries
      const count = other.count
      if (count === 0 || other === this) return this
      const a = this.dense
      if (a === null) {
        this.mergeSparse(entries, count)
        return this
      }
      for (let k = 0; k < count; k++) {
        const e = entries[k]!
        const i = e >>> RANK_BITS
        const v = e & RANK_MASK
        if (v > a[i]!) a[i] = v
      }
      return this
    }
    const a = this.denseRegisters()
    for (let i = 0; i < a.length; i++) {
      const v = b[i]!
      if (v > a[i]!) a[i] = v
    }
    return this
  }

  /** Merges sorted sparse entries into this sparse sketch (linear merge), densifying when too many. */
  private mergeSparse(other: Uint32Array, otherCount: number): void {
    const a = this.entries
    const n = this.count
    const out = new Uint32Array(n + otherCount)
    let i = 0
    let j = 0
    let k = 0
    while (i < n && j < otherCount) {
      const x = a[i]!
      const y = other[j]!
      const xi = x >>> RANK_BITS
      const yi = y >>> RANK_BITS
      if (xi < yi) {
        out[k++] = x
        i++
      } else if (xi > yi) {
        out[k++] = y
        j++
      } else {
        // Same index: the larger packed entry has the larger value.
        out[k++] = Math.max(x, y)
        i++
        j++
      }
    }
    while (i < n) out[k++] = a[i++]!
    while (j < otherCount) out[k++] = other[j++]!
    if (k > this.sparseLimit) {
      const dense = new Uint8Array(1 << this.precision)
      for (let t = 0; t < k; t++) {
        const e = out[t]!
        dense[e >>> RANK_BITS] = e & RANK_MASK
      }
      this.dense = dense
      this.entries = NO_ENTRIES
      this.count = 0
      return
    }
    const merged = out.subarray(0, k)
    if (k <= a.length) a.set(merged)
    else {
      const grown = new Uint32Array(this.sparseCapacity(k))
      grown.set(merged)
      this.entries = grown
    }
    this.count = k
  }

  /**
   * The estimated number of distinct ids (not rounded; 0 for an empty sketch). Relative standard error
   * {@link hllRelativeError}; for a few ids it is exact once rounded. Depends only on the registers:
   * a sparse and a dense sketch with the same registers give exactly the same number.
   */
  estimate(): number {
    const m = 1 << this.precision
    const q = 64 - this.precision
    const counts = new Float64Array(q + 2)
    const dense = this.dense
    if (dense === null) {
      const entries = this.entries
      counts[0] = m - this.count
      for (let k = 0; k < this.count; k++) counts[entries[k]! & RANK_MASK]!++
    } else {
      for (let i = 0; i < m; i++) counts[dense[i]!]!++
    }
    const zeros = counts[0]!
    if (zeros === m) return 0
    let z = m * tau(1 - counts[q + 1]! / m)
    for (let k = q; k >= 1; k--) z = 0.5 * (z + counts[k]!)
    z += m * sigma(zeros / m)
    return (ALPHA_INF * m * m) / z
  }

  /** True when no id has been added. */
  isEmpty(): boolean {
    const registers = this.dense
    if (registers === null) return this.count === 0
    for (let i = 0; i < registers.length; i++) if (registers[i] !== 0) return false
    return true
  }

  /** Number of registers that are not zero. */
  nonZeroRegisters(): number {
    const registers = this.dense
    if (registers === null) return this.count
    let n = 0
    for (let i = 0; i < registers.length; i++) if (registers[i] !== 0) n++
    return n
  }

  /** An independent copy, in the same in-memory form (a sparse copy is sized to its entries). */
  clone(): HyperLogLog {
    const copy = new HyperLogLog(this.precision)
    if (this.dense !== null) copy.dense = this.dense.slice()
    else if (this.count > 0) {
      copy.entries = this.entries.slice(0, this.count)
      copy.count = this.count
    }
    return copy
  }

  /** Same precision and the same registers, whichever in-memory form each sketch is in. */
  equals(other: HyperLogLog): boolean {
    if (other.precision !== this.precision) return false
    const a = this.dense
    const b = other.dense
    if (a === null && b === null) {
      if (this.count !== other.count) return false
      const x = this.entries
      const y = other.entries
      for (let k = 0; k < this.count; k++) if (x[k] !== y[k]) return false
      return true
    }
    if (a === null) return other.equals(this)
    if (b === null) {
      // Same number of non-zero registers, and each of the other's entries is in `a`: same registers.
      if (this.nonZeroRegisters() !== other.count) return false
      const entries = other.entries
      for (let k = 0; k < other.count; k++) {
        const e = entries[k]!
        if (a[e >>> RANK_BITS] !== (e & RANK_MASK)) return false
      }
      return true
    }
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
    return true
  }

  /**
   * A new sketch at a lower (or equal) precision. Exact: the result has the same registers as the
   * sketch built from the same ids at that precision, so it can then be merged with sketches kept at
   * it. A sparse sketch downsamples to a sparse one (it has at most as many non-zero registers).
   */
  downsample(precision: number): HyperLogLog {
    checkPrecision(precision, 'target precision')
    if (precision > this.precision) {
      throw new RangeError(
        `cannot downsample a HyperLogLog from precision ${this.precision} up to ${precision}; only to a lower one`,
      )
    }
    const out = new HyperLogLog(precision)
    const d = this.precision - precision
    const src = this.dense
    if (src === null) {
      const entries = this.entries
      for (let k = 0; k < this.count; k++) {
        const e = entries[k]!
        out.fold(e >>> RANK_BITS, e & RANK_MASK, d)
      }
    } else {
      for (let i = 0; i < src.length; i++) {
        const r = src[i]!
        if (r !== 0) out.fold(i, r, d)
      }
    }
    return out
  }

  /**
   * Folds register i (value r ≥ 1) of a sketch d precision steps finer into this one: the d low bits
   * of the old index become the first d of the new index's remaining bits.
   */
  private fold(i: number, r: number, d: number): void {
    const low = i & ((1 << d) - 1)
    const rank = low !== 0 ? Math.clz32(low) - (32 - d) + 1 : d + r
    this.raise(i >>> d, rank)
  }

  /**
   * Serializes: byte 0 the format version (1), byte 1 the precision, byte 2 the encoding, then
   * - dense (0): the 2^p registers, one byte each; or
   * - sparse (1): a 32-bit big-endian count, then per non-zero register, by ascending index, 3 bytes
   *   big-endian of `index << 6 | value`.
   * Whichever is smaller is chosen (dense on a tie), so equal sketches serialize to equal bytes,
   * whichever in-memory form they are in.
   */
  toBytes(): Uint8Array {
    const m = 1 << this.precision
    const n = this.nonZeroRegisters()
    const sparseLength = SPARSE_HEADER_BYTES + n * SPARSE_ENTRY_BYTES
    const denseLength = HEADER_BYTES + m
    if (sparseLength >= denseLength) {
      const out = new Uint8Array(denseLength)
      out[0] = HLL_FORMAT_VERSION
      out[1] = this.precision
      out[2] = ENCODING_DENSE
      out.set(this.registers, HEADER_BYTES)
      return out
    }
    const out = new Uint8Array(sparseLength)
    out[0] = HLL_FORMAT_VERSION
    out[1] = this.precision
    out[2] = ENCODING_SPARSE
    new DataView(out.buffer).setUint32(HEADER_BYTES, n)
    let at = SPARSE_HEADER_BYTES
    const registers = this.dense
    if (registers === null) {
      // The in-memory entries are already the wire entries, in the wire order.
      const entries = this.entries
      for (let k = 0; k < n; k++, at += SPARSE_ENTRY_BYTES) {
        const entry = entries[k]!
        out[at] = entry >>> 16
        out[at + 1] = (entry >>> 8) & 0xff
        out[at + 2] = entry & 0xff
      }
      return out
    }
    for (let i = 0; i < m; i++) {
      const v = registers[i]!
      if (v === 0) continue
      const entry = (i << RANK_BITS) | v
      out[at] = entry >>> 16
      out[at + 1] = (entry >>> 8) & 0xff
      out[at + 2] = entry & 0xff
      at += SPARSE_ENTRY_BYTES
    }
    return out
  }

  /**
   * Reads what {@link toBytes} wrote (either encoding). The bytes are copied. A sparse encoding with at
   * most {@link hllSparseLimit}(p) entries loads as a sparse sketch (4 bytes per entry, no 2^p array),
   * anything else as a dense one. Throws a TypeError for input that is not a Uint8Array and a
   * RangeError naming the problem for malformed bytes.
   */
  static fromBytes(bytes: Uint8Array): HyperLogLog {
    if (!(bytes instanceof Uint8Array)) {
      throw new TypeError('HyperLogLog.fromBytes expects a Uint8Array')
    }
    if (bytes.length < HEADER_BYTES) {
      throw new RangeError(`HyperLogLog bytes too short: ${bytes.length} bytes, the header alone is 3`)
    }
    const version = bytes[0]!
    if (version !== HLL_FORMAT_VERSION) {
      throw new RangeError(`HyperLogLog bytes have unsupported format version ${version}, expected 1`)
    }
    const precision = bytes[1]!
    checkPrecision(precision, 'precision in bytes')
    const sketch = new HyperLogLog(precision)
    const m = 1 << precision
    const max = maxRank(precision)
    const encoding = bytes[2]!
    if (encoding === ENCODING_DENSE) {
      if (bytes.length !== HEADER_BYTES + m) {
        throw new RangeError(
          `HyperLogLog dense bytes have wrong length ${bytes.length}, expected ${HEADER_BYTES + m} for precision ${precision}`,
        )
      }
      const registers = new Uint8Array(m)
      for (let i = 0; i < m; i++) {
        const v = bytes[HEADER_BYTES + i]!
        if (v > max) {
          throw new RangeError(
            `HyperLogLog dense register ${i} has value ${v}, more than ${max} at precision ${precision}`,
          )
        }
        registers[i] = v
      }
      sketch.dense = registers
      return sketch
    }
    if (encoding !== ENCODING_SPARSE) {
      throw new RangeError(
        `HyperLogLog bytes have unknown encoding ${encoding}, expected 0 (dense) or 1 (sparse)`,
      )
    }
    if (bytes.length < SPARSE_HEADER_BYTES) {
      throw new RangeError(`HyperLogLog sparse bytes too short: ${bytes.length} bytes, no entry count`)
    }
    const count = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(HEADER_BYTES)
    if (count > m) {
      throw new RangeError(`HyperLogLog sparse entry count ${count} exceeds the ${m} registers`)
    }
    const expected = SPARSE_HEADER_BYTES + count * SPARSE_ENTRY_BYTES
    if (bytes.length !== expected) {
      throw new RangeError(
        `HyperLogLog sparse bytes have wrong length ${bytes.length}, expected ${expected} for ${count} entries`,
      )
    }
    const entries = count === 0 ? NO_ENTRIES : new Uint32Array(count)
    let previous = -1
    for (let k = 0, at = SPARSE_HEADER_BYTES; k < count; k++, at += SPARSE_ENTRY_BYTES) {
      const entry = (bytes[at]! << 16) | (bytes[at + 1]! << 8) | bytes[at + 2]!
      const index = entry >>> RANK_BITS
      const value = entry & RANK_MASK
      if (index >= m) {
        throw new RangeError(`HyperLogLog sparse entry ${k} has index ${index}, beyond the ${m} registers`)
      }
      if (index <= previous) {
        throw new RangeError(
          `HyperLogLog sparse entry ${k} has index ${index}, not above the previous ${previous} (entries must be strictly ascending)`,
        )
      }
      if (value === 0 || value > max) {
        throw new RangeError(
          `HyperLogLog sparse entry ${k} (index ${index}) has value ${value}, expected 1..${max} at precision ${precision}`,
        )
      }
      entries[k] = entry
      previous = index
    }
    sketch.entries = entries
    sketch.count = count
    if (count > sketch.sparseLimit) sketch.densify()
    return sketch
  }
}

/**
 * Merges sketches into a new one; the inputs are left unchanged. All must share one precision (the
 * `precision` argument, else the first sketch's). With no sketches, an empty sketch of `precision`
 * (default 14).
 */
export function mergeAll(sketches: Iterable<HyperLogLog>, precision?: number): HyperLogLog {
  let out: HyperLogLog | undefined = precision === undefined ? undefined : new HyperLogLog(precision)
  for (const sketch of sketches) {
    if (out === undefined) out = sketch.clone()
    else out.merge(sketch)
  }
  return out ?? new HyperLogLog(DEFAULT_PRECISION)
}
