/**
 * HyperLogLog sketch for the `visitors` metric (distinct visitor ids).
 *
 * - Dense in memory: `2^p` one-byte registers in a `Uint8Array`, p in 4..18 (default 14 → 16384
 *   registers, 16 KiB).
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
 * A dense HyperLogLog sketch. Not safe to share between threads; cheap to {@link clone}.
 *
 * Hashing: the top p bits of the 64-bit hash pick the register, the rank (leading zeros + 1) of the
 * remaining 64 − p bits is the candidate value; the register keeps the maximum.
 */
export class HyperLogLog {
  /** p: the sketch has 2^p registers. */
  readonly precision: number
  /**
   * The registers, one byte each, values 0..65 − p. Exposed for comparison and storage; change them
   * only through the methods, which keep them valid.
   */
  readonly registers: Uint8Array
  private readonly shift: number

  /** An empty sketch with 2^p registers; p from 4 to 18, default 14. */
  constructor(precision: number = DEFAULT_PRECISION) {
    this.precision = checkPrecision(precision)
    this.shift = 32 - this.precision
    this.registers = new Uint8Array(1 << this.precision)
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

  private addHalves(hi: number, lo: number): boolean {
    const index = hi >>> this.shift
    // The 32 − p hash bits left in `hi`, moved to the top; zero when they are all zero.
    const rest = hi << this.precision
    const rank = rest !== 0 ? Math.clz32(rest) + 1 : this.shift + 1 + Math.clz32(lo)
    const registers = this.registers
    if (rank > registers[index]!) {
      registers[index] = rank
      return true
    }
    return false
  }

  /**
   * Merges another sketch into this one (register-wise maximum) and returns this. Commutative,
   * associative and idempotent. Both sketches must have the same precision: to combine sketches of
   * different precision, {@link downsample} the finer one first.
   */
  merge(other: HyperLogLog): this {
    if (!(other instanceof HyperLogLog)) throw new TypeError('HyperLogLog.merge expects a HyperLogLog')
    if (other.precision !== this.precision) {
      throw new RangeError(
        `cannot merge HyperLogLog sketches of different precision (${this.precision} and ${other.precision}); downsample the finer one first`,
      )
    }
    const a = this.registers
    const b = other.registers
    for (let i = 0; i < a.length; i++) {
      const v = b[i]!
      if (v > a[i]!) a[i] = v
    }
    return this
  }

  /**
   * The estimated number of distinct ids (not rounded; 0 for an empty sketch). Relative standard error
   * {@link hllRelativeError}; for a few ids it is exact once rounded.
   */
  estimate(): number {
    const registers = this.registers
    const m = registers.length
    const q = 64 - this.precision
    const counts = new Float64Array(q + 2)
    for (let i = 0; i < m; i++) counts[registers[i]!]!++
    const zeros = counts[0]!
    if (zeros === m) return 0
    let z = m * tau(1 - counts[q + 1]! / m)
    for (let k = q; k >= 1; k--) z = 0.5 * (z + counts[k]!)
    z += m * sigma(zeros / m)
    return (ALPHA_INF * m * m) / z
  }

  /** True when no id has been added. */
  isEmpty(): boolean {
    const registers = this.registers
    for (let i = 0; i < registers.length; i++) if (registers[i] !== 0) return false
    return true
  }

  /** Number of registers that are not zero. */
  nonZeroRegisters(): number {
    const registers = this.registers
    let n = 0
    for (let i = 0; i < registers.length; i++) if (registers[i] !== 0) n++
    return n
  }

  /** An independent copy. */
  clone(): HyperLogLog {
    const copy = new HyperLogLog(this.precision)
    copy.registers.set(this.registers)
    return copy
  }

  /** Same precision and byte-identical registers. */
  equals(other: HyperLogLog): boolean {
    if (other.precision !== this.precision) return false
    const a = this.registers
    const b = other.registers
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
    return true
  }

  /**
   * A new sketch at a lower (or equal) precision. Exact: the result is byte-identical to the sketch
   * built from the same ids at that precision, so it can then be merged with sketches kept at it.
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
    const lowMask = (1 << d) - 1
    const src = this.registers
    const dst = out.registers
    for (let i = 0; i < src.length; i++) {
      const r = src[i]!
      if (r === 0) continue
      // The d low bits of the old index become the first d of the new index's remaining bits.
      const low = i & lowMask
      const rank = low !== 0 ? Math.clz32(low) - (32 - d) + 1 : d + r
      const j = i >>> d
      if (rank > dst[j]!) dst[j] = rank
    }
    return out
  }

  /**
   * Serializes: byte 0 the format version (1), byte 1 the precision, byte 2 the encoding, then
   * - dense (0): the 2^p registers, one byte each; or
   * - sparse (1): a 32-bit big-endian count, then per non-zero register, by ascending index, 3 bytes
   *   big-endian of `index << 6 | value`.
   * Whichever is smaller is chosen (dense on a tie), so equal sketches serialize to equal bytes.
   */
  toBytes(): Uint8Array {
    const registers = this.registers
    const m = registers.length
    const n = this.nonZeroRegisters()
    const sparseLength = SPARSE_HEADER_BYTES + n * SPARSE_ENTRY_BYTES
    const denseLength = HEADER_BYTES + m
    if (sparseLength >= denseLength) {
      const out = new Uint8Array(denseLength)
      out[0] = HLL_FORMAT_VERSION
      out[1] = this.precision
      out[2] = ENCODING_DENSE
      out.set(registers, HEADER_BYTES)
      return out
    }
    const out = new Uint8Array(sparseLength)
    out[0] = HLL_FORMAT_VERSION
    out[1] = this.precision
    out[2] = ENCODING_SPARSE
    new DataView(out.buffer).setUint32(HEADER_BYTES, n)
    let at = SPARSE_HEADER_BYTES
    for (let i = 0; i < m; i++) {
      const v = registers[i]!
      if (v === 0) continue
      const entry = (i << 6) | v
      out[at] = entry >>> 16
      out[at + 1] = (entry >>> 8) & 0xff
      out[at + 2] = entry & 0xff
      at += SPARSE_ENTRY_BYTES
    }
    return out
  }

  /**
   * Reads what {@link toBytes} wrote (either encoding). The bytes are copied. Throws a TypeError for
   * input that is not a Uint8Array and a RangeError naming the problem for malformed bytes.
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
    const registers = sketch.registers
    const m = registers.length
    const max = maxRank(precision)
    const encoding = bytes[2]!
    if (encoding === ENCODING_DENSE) {
      if (bytes.length !== HEADER_BYTES + m) {
        throw new RangeError(
          `HyperLogLog dense bytes have wrong length ${bytes.length}, expected ${HEADER_BYTES + m} for precision ${precision}`,
        )
      }
      for (let i = 0; i < m; i++) {
        const v = bytes[HEADER_BYTES + i]!
        if (v > max) {
          throw new RangeError(
            `HyperLogLog dense register ${i} has value ${v}, more than ${max} at precision ${precision}`,
          )
        }
        registers[i] = v
      }
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
    let previous = -1
    for (let k = 0, at = SPARSE_HEADER_BYTES; k < count; k++, at += SPARSE_ENTRY_BYTES) {
      const entry = (bytes[at]! << 16) | (bytes[at + 1]! << 8) | bytes[at + 2]!
      const index = entry >>> 6
      const value = entry & 0x3f
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
      registers[index] = value
      previous = index
    }
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
