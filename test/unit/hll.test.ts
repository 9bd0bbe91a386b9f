import { describe, expect, it } from 'vitest'
import {
  DEFAULT_PRECISION,
  HLL_ERROR_BOUND_SIGMAS,
  HLL_FORMAT_VERSION,
  HyperLogLog,
  hash64,
  hashHalves,
  hllErrorBound,
  hllRelativeError,
  hllSparseLimit,
  MAX_PRECISION,
  MIN_PRECISION,
  mergeAll,
} from '../../core/hll.js'

function ids(from: number, to: number, prefix = 'visitor-'): string[] {
  const out: string[] = []
  for (let i = from; i < to; i++) out.push(`${prefix}${i}`)
  return out
}

function sketchOf(values: Iterable<string>, p = DEFAULT_PRECISION): HyperLogLog {
  const h = new HyperLogLog(p)
  for (const v of values) h.add(v)
  return h
}

function sketchOfRange(from: number, to: number, p = DEFAULT_PRECISION): HyperLogLog {
  const h = new HyperLogLog(p)
  for (let i = from; i < to; i++) h.add(`visitor-${i}`)
  return h
}

/** Deterministic Fisher–Yates shuffle (mulberry32). */
function shuffled<T>(values: readonly T[], seed: number): T[] {
  const out = values.slice()
  let s = seed >>> 0
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32
  }
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1))
    const tmp = out[i]!
    out[i] = out[j]!
    out[j] = tmp
  }
  return out
}

function relativeError(estimate: number, n: number): number {
  return Math.abs(estimate - n) / n
}

describe('hash64', () => {
  it('is XXH64 with seed 0 of the UTF-8 bytes (known answers)', () => {
    // Cross-checked against the reference C implementation via @node-rs/xxhash.
    expect(hash64('')).toBe(0xef46db3751d8e999n)
    expect(hash64('a')).toBe(0xd24ec4f1a98c6e5bn)
    expect(hash64('abc')).toBe(0x44bc2cf5ad770999n)
    expect(hash64('visitor-1')).toBe(0xb7db4eb3b829e88dn)
    expect(hash64('anon-ü-😀')).toBe(0x0acb722c313e4bfdn)
  })

  it('returns an unsigned 64-bit value', () => {
    for (const id of ids(0, 100)) {
      const h = hash64(id)
      expect(h >= 0n && h < 1n << 64n).toBe(true)
    }
  })
})

describe('error bound', () => {
  it('is 1.04/sqrt(m) per standard error and three of them for the bound', () => {
    expect(hllRelativeError(14)).toBeCloseTo(0.008125, 10)
    expect(hllRelativeError()).toBe(hllRelativeError(DEFAULT_PRECISION))
    expect(hllRelativeError(4)).toBeCloseTo(0.26, 10)
    expect(HLL_ERROR_BOUND_SIGMAS).toBe(3)
    expect(hllErrorBound(14)).toBeCloseTo(0.024375, 10)
    expect(() => hllRelativeError(3)).toThrow(RangeError)
  })
})

describe('HyperLogLog construction', () => {
  it('defaults to p = 14 with 16384 zero registers', () => {
    const h = new HyperLogLog()
    expect(h.precision).toBe(14)
    expect(h.registers).toBeInstanceOf(Uint8Array)
    expect(h.registers.length).toBe(16384)
    expect(h.registers.every((r) => r === 0)).toBe(true)
    expect(h.isEmpty()).toBe(true)
    expect(h.estimate()).toBe(0)
  })

  it('accepts every precision from 4 to 18', () => {
    for (let p = MIN_PRECISION; p <= MAX_PRECISION; p++) {
      expect(new HyperLogLog(p).registers.length).toBe(2 ** p)
    }
  })

  it('rejects other precisions with a RangeError naming the value', () => {
    for (const p of [3, 19, 0, -1, 14.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => new HyperLogLog(p)).toThrow(RangeError)
    }
    expect(() => new HyperLogLog(19)).toThrow(/precision must be an integer from 4 to 18, got 19/)
  })
})

describe('adding ids', () => {
  it('reports whether a register changed', () => {
    const h = new HyperLogLog()
    expect(h.add('alice')).toBe(true)
    expect(h.add('alice')).toBe(false)
    expect(h.isEmpty()).toBe(false)
    const before = h.registers.slice()
    expect(h.add('alice')).toBe(false)
    expect(h.registers).toEqual(before)
  })

  it('addHash(hash64(id)) is the same as add(id)', () => {
    const a = sketchOf(ids(0, 5000))
    const b = new HyperLogLog()
    for (const id of ids(0, 5000)) b.addHash(hash64(id))
    expect(b.equals(a)).toBe(true)
  })

  it('hashHalves + addHalves is the same as add(id), dense or sparse, at every width of the halves', () => {
    for (const p of [4, 10, 14, 18]) {
      const a = new HyperLogLog(p)
      const b = new HyperLogLog(p)
      const halves = { hi: 0, lo: 0 }
      for (const id of ids(0, 5000)) {
        const h = hash64(id)
        hashHalves(id, halves)
        expect((BigInt(halves.hi) << 32n) | BigInt(halves.lo)).toBe(h)
        expect(b.addHalves(halves.hi, halves.lo)).toBe(a.add(id))
      }
      expect(b.equals(a)).toBe(true)
    }
    const h = new HyperLogLog(14)
    // All-zero remaining bits: the maximum rank, 65 − p.
    h.addHalves(0, 0)
    expect(h.registers[0]).toBe(51)
    h.addHalves(0xffffffff, 0xffffffff)
    expect(h.registers[(1 << 14) - 1]).toBe(1)
  })

  it('takes the index from the top p bits and the rank from the rest', () => {
    const p = 14
    const h = new HyperLogLog(p)
    // Index 5, remaining 50 bits 0…01: 49 leading zeros, rank 50.
    h.addHash((5n << 50n) | 1n)
    expect(h.registers[5]).toBe(50)
    // Index 6, first set remaining bit is hash bit 32 (in the low half): rank 49 − 32 + 1 = 18.
    h.addHash((6n << 50n) | (1n << 32n))
    expect(h.registers[6]).toBe(18)
    // Index 7, first set remaining bit is hash bit 33 (lowest of the high half): rank 17.
    h.addHash((7n << 50n) | (1n << 33n) | 1n)
    expect(h.registers[7]).toBe(17)
    // All ones: last index, rank 1.
    h.addHash((1n << 64n) - 1n)
    expect(h.registers[16383]).toBe(1)
    // Zero: index 0, all 50 remaining bits zero, the maximum rank 65 − p.
    h.addHash(0n)
    expect(h.registers[0]).toBe(65 - p)
    // A smaller rank never lowers a register.
    expect(h.addHash((5n << 50n) | (1n << 49n))).toBe(false)
    expect(h.registers[5]).toBe(50)
    expect(h.nonZeroRegisters()).toBe(5)
  })

  it('rejects hashes outside the unsigned 64-bit range', () => {
    const h = new HyperLogLog()
    expect(() => h.addHash(-1n)).toThrow(RangeError)
    expect(() => h.addHash(1n << 64n)).toThrow(/unsigned 64-bit/)
    expect(h.isEmpty()).toBe(true)
  })

  it('builds byte-identical registers whatever the order of the ids', () => {
    const values = ids(0, 20000)
    const forward = sketchOf(values)
    const backward = sketchOf(values.slice().reverse())
    const mixed = sketchOf(shuffled(values, 42))
    const withDuplicates = sketchOf([...shuffled(values, 7), ...values.slice(0, 5000)])
    expect(backward.registers).toEqual(forward.registers)
    expect(mixed.registers).toEqual(forward.registers)
    expect(withDuplicates.registers).toEqual(forward.registers)
    expect(mixed.equals(forward)).toBe(true)
  })
})

describe('estimate', () => {
  it('is exact for tiny sets once rounded', () => {
    expect(new HyperLogLog().estimate()).toBe(0)
    for (let n = 1; n <= 30; n++) {
      expect(Math.round(sketchOfRange(0, n).estimate())).toBe(n)
    }
    expect(Math.round(sketchOf(['a', 'b', 'c', 'a', 'b']).estimate())).toBe(3)
  })

  it('is exact once rounded for a few ids at every precision', () => {
    for (let p = MIN_PRECISION; p <= MAX_PRECISION; p++) {
      expect(Math.round(sketchOfRange(0, 1, p).estimate())).toBe(1)
    }
    for (let p = 10; p <= MAX_PRECISION; p++) {
      expect(Math.round(sketchOfRange(0, 3, p).estimate())).toBe(3)
    }
  })

  it.each([1_000, 100_000, 1_000_000])(
    'stays within the documented bound for %i distinct ids at p = 14',
    (n) => {
      const h = sketchOfRange(0, n)
      const error = relativeError(h.estimate(), n)
      expect(error).toBeLessThan(hllErrorBound(14))
    },
  )

  it('stays within the documented bound at every precision', () => {
    const n = 20_000
    for (let p = MIN_PRECISION; p <= MAX_PRECISION; p++) {
      const h = sketchOfRange(0, n, p)
      expect(relativeError(h.estimate(), n)).toBeLessThan(hllErrorBound(p))
    }
  })

  it('stays within the bound for other id shapes', () => {
    const n = 50_000
    const h = new HyperLogLog()
    for (let i = 0; i < n; i++) h.add(`${(i * 2654435761) >>> 0}:${i % 97}`)
    expect(relativeError(h.estimate(), n)).toBeLessThan(hllErrorBound(14))
  })
})

describe('merge', () => {
  it('of two disjoint halves equals the sketch of the union byte for byte', () => {
    const union = sketchOfRange(0, 200_000)
    const a = sketchOfRange(0, 100_000)
    const b = sketchOfRange(100_000, 200_000)
    expect(a.clone().merge(b).registers).toEqual(union.registers)
    expect(b.clone().merge(a).equals(union)).toBe(true)
  })

  it('of overlapping parts equals the sketch of the union', () => {
    const union = sketchOfRange(0, 30_000)
    const merged = sketchOfRange(0, 20_000).merge(sketchOfRange(10_000, 30_000))
    expect(merged.equals(union)).toBe(true)
  })

  it('is idempotent: merging the same sketch again changes nothing', () => {
    const a = sketchOfRange(0, 5_000)
    const b = sketchOfRange(3_000, 9_000)
    const once = a.clone().merge(b)
    const twice = a.clone().merge(b).merge(b)
    expect(twice.registers).toEqual(once.registers)
    expect(a.clone().merge(a).equals(a)).toBe(true)
    expect(once.clone().merge(a).equals(once)).toBe(true)
  })

  it('is commutative and associative', () => {
    const parts = [sketchOfRange(0, 4_000), sketchOfRange(2_000, 7_000), sketchOfRange(6_000, 12_000)]
    const [a, b, c] = parts as [HyperLogLog, HyperLogLog, HyperLogLog]
    const left = a.clone().merge(b).merge(c)
    const right = a.clone().merge(b.clone().merge(c))
    const reversed = c.clone().merge(b).merge(a)
    expect(right.equals(left)).toBe(true)
    expect(reversed.equals(left)).toBe(true)
    expect(left.equals(sketchOfRange(0, 12_000))).toBe(true)
  })

  it('with an empty sketch is the identity', () => {
    const a = sketchOfRange(0, 1_000)
    expect(a.clone().merge(new HyperLogLog()).equals(a)).toBe(true)
    expect(new HyperLogLog().merge(a).equals(a)).toBe(true)
  })

  it('returns this', () => {
    const a = new HyperLogLog()
    expect(a.merge(sketchOfRange(0, 10))).toBe(a)
  })

  it('rejects sketches of different precision', () => {
    const a = sketchOfRange(0, 100, 14)
    const before = a.registers.slice()
    expect(() => a.merge(sketchOfRange(0, 100, 12))).toThrow(RangeError)
    expect(() => a.merge(sketchOfRange(0, 100, 12))).toThrow(/different precision \(14 and 12\)/)
    expect(a.registers).toEqual(before)
  })

  it('mergeAll merges into a new sketch and leaves the inputs alone', () => {
    const parts = [sketchOfRange(0, 1_000), sketchOfRange(1_000, 2_000), sketchOfRange(500, 2_500)]
    const copies = parts.map((s) => s.clone())
    const merged = mergeAll(parts)
    expect(merged.equals(sketchOfRange(0, 2_500))).toBe(true)
    parts.forEach((s, i) => {
      expect(s.equals(copies[i]!)).toBe(true)
    })
    expect(mergeAll(shuffled(parts, 3)).equals(merged)).toBe(true)
    expect(mergeAll([...parts, ...parts]).equals(merged)).toBe(true)
  })

  it('mergeAll of nothing is an empty sketch', () => {
    const none = mergeAll([])
    expect(none.precision).toBe(DEFAULT_PRECISION)
    expect(none.isEmpty()).toBe(true)
    expect(mergeAll([], 10).precision).toBe(10)
  })

  it('mergeAll rejects mixed precisions', () => {
    expect(() => mergeAll([sketchOfRange(0, 10, 14), sketchOfRange(0, 10, 10)])).toThrow(RangeError)
    expect(() => mergeAll([sketchOfRange(0, 10, 14)], 12)).toThrow(/different precision/)
  })
})

describe('different precisions', () => {
  it('downsample gives exactly the sketch built at the lower precision', () => {
    const values = ids(0, 30_000)
    const fine = sketchOf(values, 14)
    for (const p of [14, 13, 12, 10, 8, 4]) {
      const down = fine.downsample(p)
      expect(down.precision).toBe(p)
      expect(down.registers).toEqual(sketchOf(values, p).registers)
    }
    expect(sketchOf(values, 18).downsample(11).equals(sketchOf(values, 11))).toBe(true)
  })

  it('downsample keeps tiny and extreme sketches exact', () => {
    const fine = new HyperLogLog(16)
    fine.addHash(0n)
    fine.addHash((1n << 64n) - 1n)
    fine.addHash(3n << 48n)
    const coarse = new HyperLogLog(12)
    coarse.addHash(0n)
    coarse.addHash((1n << 64n) - 1n)
    coarse.addHash(3n << 48n)
    expect(fine.downsample(12).registers).toEqual(coarse.registers)
    expect(coarse.registers[0]).toBe(65 - 12)
  })

  it('downsampled sketches merge with sketches kept at the lower precision', () => {
    const merged = sketchOfRange(0, 5_000, 14)
      .downsample(10)
      .merge(sketchOfRange(5_000, 10_000, 10))
    expect(merged.equals(sketchOfRange(0, 10_000, 10))).toBe(true)
  })

  it('downsample does not go up and does not change the source', () => {
    const h = sketchOfRange(0, 100, 10)
    expect(() => h.downsample(12)).toThrow(/only to a lower one/)
    expect(() => h.downsample(3)).toThrow(RangeError)
    const copy = h.clone()
    h.downsample(6)
    expect(h.equals(copy)).toBe(true)
  })

  it('sketches of different precision are never equal', () => {
    expect(new HyperLogLog(10).equals(new HyperLogLog(11))).toBe(false)
  })
})

describe('clone and equals', () => {
  it('clone is independent of the original', () => {
    const a = sketchOfRange(0, 100)
    const b = a.clone()
    expect(b.equals(a)).toBe(true)
    expect(b.registers).not.toBe(a.registers)
    b.add('someone-new-1')
    b.add('someone-new-2')
    expect(b.equals(a)).toBe(false)
    expect(a.equals(sketchOfRange(0, 100))).toBe(true)
  })
})

describe('toBytes / fromBytes', () => {
  it('writes the version and precision header', () => {
    const bytes = sketchOfRange(0, 3, 12).toBytes()
    expect(bytes[0]).toBe(HLL_FORMAT_VERSION)
    expect(bytes[1]).toBe(12)
  })

  it('encodes an empty sketch in 7 bytes', () => {
    const bytes = new HyperLogLog().toBytes()
    expect(Array.from(bytes)).toEqual([1, 14, 1, 0, 0, 0, 0])
    const back = HyperLogLog.fromBytes(bytes)
    expect(back.precision).toBe(14)
    expect(back.isEmpty()).toBe(true)
  })

  it('round-trips a small sketch through the sparse encoding', () => {
    const h = sketchOfRange(0, 5)
    const bytes = h.toBytes()
    expect(bytes[2]).toBe(1)
    expect(bytes.length).toBe(7 + 3 * h.nonZeroRegisters())
    expect(bytes.length).toBeLessThanOrEqual(22)
    const back = HyperLogLog.fromBytes(bytes)
    expect(back.equals(h)).toBe(true)
    expect(back.registers).toEqual(h.registers)
    expect(back.estimate()).toBe(h.estimate())
  })

  it('round-trips a large sketch through the dense encoding', () => {
    const h = sketchOfRange(0, 100_000)
    const bytes = h.toBytes()
    expect(bytes[2]).toBe(0)
    expect(bytes.length).toBe(3 + 16384)
    const back = HyperLogLog.fromBytes(bytes)
    expect(back.registers).toEqual(h.registers)
    expect(back.toBytes()).toEqual(bytes)
  })

  it('round-trips the extreme register values', () => {
    for (const p of [MIN_PRECISION, 14, MAX_PRECISION]) {
      const h = new HyperLogLog(p)
      h.addHash(0n) // index 0, maximum rank 65 − p
      h.addHash((1n << 64n) - 1n) // last index, rank 1
      const back = HyperLogLog.fromBytes(h.toBytes())
      expect(back.registers[0]).toBe(65 - p)
      expect(back.registers[2 ** p - 1]).toBe(1)
      expect(back.equals(h)).toBe(true)
    }
  })

  it('picks whichever encoding is smaller, at every fill level', () => {
    const p = 8
    const m = 2 ** p
    const h = new HyperLogLog(p)
    let sawSparse = false
    let sawDense = false
    for (let i = 0; i < 3000; i++) {
      h.add(`visitor-${i}`)
      const k = h.nonZeroRegisters()
      const bytes = h.toBytes()
      const sparse = 7 + 3 * k
      const dense = 3 + m
      expect(bytes.length).toBe(Math.min(sparse, dense))
      expect(bytes[2]).toBe(sparse < dense ? 1 : 0)
      if (bytes[2] === 1) sawSparse = true
      else sawDense = true
      expect(HyperLogLog.fromBytes(bytes).equals(h)).toBe(true)
    }
    expect(sawSparse && sawDense).toBe(true)
  })

  it('gives equal bytes for equal sketches', () => {
    const values = ids(0, 300)
    expect(sketchOf(values).toBytes()).toEqual(sketchOf(shuffled(values, 9)).toBytes())
  })

  it('reads from a Buffer and from a view at an offset, and copies the input', () => {
    const h = sketchOfRange(0, 50)
    const bytes = h.toBytes()
    expect(HyperLogLog.fromBytes(Buffer.from(bytes)).equals(h)).toBe(true)
    const padded = new Uint8Array(bytes.length + 5)
    padded.set(bytes, 5)
    const view = padded.subarray(5)
    const fromView = HyperLogLog.fromBytes(view)
    expect(fromView.equals(h)).toBe(true)
    view.fill(0, 7)
    expect(fromView.equals(h)).toBe(true)

    const dense = sketchOfRange(0, 50_000).toBytes()
    const fromDense = HyperLogLog.fromBytes(dense)
    dense.fill(0, 3)
    expect(fromDense.isEmpty()).toBe(false)
  })

  it('round-trips sketches of every precision', () => {
    for (let p = MIN_PRECISION; p <= MAX_PRECISION; p++) {
      for (const n of [0, 3, 2 ** p]) {
        const h = sketchOfRange(0, n, p)
        const back = HyperLogLog.fromBytes(h.toBytes())
        expect(back.precision).toBe(p)
        expect(back.equals(h)).toBe(true)
      }
    }
  })
})

describe('fromBytes rejects malformed bytes', () => {
  /** A valid sparse encoding at p = 14 with the given (index, value) entries. */
  function sparse(entries: Array<[number, number]>, count = entries.length, p = 14): Uint8Array {
    const out = new Uint8Array(7 + 3 * entries.length)
    out.set([1, p, 1])
    new DataView(out.buffer).setUint32(3, count)
    entries.forEach(([index, value], k) => {
      const e = (index << 6) | value
      out.set([e >>> 16, (e >>> 8) & 0xff, e & 0xff], 7 + 3 * k)
    })
    return out
  }

  function dense(p = 10): Uint8Array {
    const out = new Uint8Array(3 + 2 ** p)
    out.set([1, p, 0])
    return out
  }

  it('accepts the hand-built encodings these cases start from', () => {
    const s = HyperLogLog.fromBytes(
      sparse([
        [0, 1],
        [5, 51],
        [16383, 2],
      ]),
    )
    expect(s.registers[0]).toBe(1)
    expect(s.registers[5]).toBe(51)
    expect(s.registers[16383]).toBe(2)
    expect(s.nonZeroRegisters()).toBe(3)
    expect(HyperLogLog.fromBytes(dense()).isEmpty()).toBe(true)
  })

  it('rejects what is not a Uint8Array', () => {
    expect(() => HyperLogLog.fromBytes('0101' as unknown as Uint8Array)).toThrow(TypeError)
    expect(() => HyperLogLog.fromBytes([1, 14, 1, 0, 0, 0, 0] as unknown as Uint8Array)).toThrow(
      /expects a Uint8Array/,
    )
    expect(() => HyperLogLog.fromBytes(null as unknown as Uint8Array)).toThrow(TypeError)
  })

  it('rejects input shorter than the header', () => {
    expect(() => HyperLogLog.fromBytes(new Uint8Array(0))).toThrow(/too short: 0 bytes/)
    expect(() => HyperLogLog.fromBytes(Uint8Array.of(1, 14))).toThrow(RangeError)
  })

  it('rejects an unknown version', () => {
    const bytes = sparse([])
    bytes[0] = 2
    expect(() => HyperLogLog.fromBytes(bytes)).toThrow(/unsupported format version 2/)
    bytes[0] = 0
    expect(() => HyperLogLog.fromBytes(bytes)).toThrow(RangeError)
  })

  it('rejects a precision out of range', () => {
    for (const p of [0, 3, 19, 255]) {
      const bytes = sparse([])
      bytes[1] = p
      expect(() => HyperLogLog.fromBytes(bytes)).toThrow(new RegExp(`precision in bytes .* got ${p}`))
    }
  })

  it('rejects an unknown encoding', () => {
    const bytes = sparse([])
    bytes[2] = 7
    expect(() => HyperLogLog.fromBytes(bytes)).toThrow(/unknown encoding 7/)
  })

  it('rejects dense bytes of the wrong length', () => {
    const bytes = dense(10)
    expect(() => HyperLogLog.fromBytes(bytes.subarray(0, bytes.length - 1))).toThrow(
      /dense bytes have wrong length 1026, expected 1027/,
    )
    const longer = new Uint8Array(bytes.length + 1)
    longer.set(bytes)
    expect(() => HyperLogLog.fromBytes(longer)).toThrow(RangeError)
    const otherPrecision = dense(10)
    otherPrecision[1] = 11
    expect(() => HyperLogLog.fromBytes(otherPrecision)).toThrow(/wrong length/)
  })

  it('rejects a dense register above the maximum rank', () => {
    const bytes = dense(10)
    bytes[3 + 17] = 55 // max at p = 10 is 55
    expect(HyperLogLog.fromBytes(bytes).registers[17]).toBe(55)
    bytes[3 + 17] = 56
    expect(() => HyperLogLog.fromBytes(bytes)).toThrow(/dense register 17 has value 56, more than 55/)
  })

  it('rejects sparse bytes without an entry count', () => {
    expect(() => HyperLogLog.fromBytes(Uint8Array.of(1, 14, 1, 0, 0))).toThrow(/sparse bytes too short/)
  })

  it('rejects sparse bytes whose length does not match the count', () => {
    const bytes = sparse([
      [1, 1],
      [2, 1],
    ])
    expect(() => HyperLogLog.fromBytes(bytes.subarray(0, bytes.length - 1))).toThrow(
      /sparse bytes have wrong length 12, expected 13 for 2 entries/,
    )
    expect(() => HyperLogLog.fromBytes(bytes.subarray(0, bytes.length - 3))).toThrow(RangeError)
    expect(() => HyperLogLog.fromBytes(sparse([[1, 1]], 2))).toThrow(/wrong length/)
    expect(() => HyperLogLog.fromBytes(sparse([], 0xffffffff))).toThrow(/entry count 4294967295 exceeds/)
  })

  it('rejects a sparse index beyond the registers', () => {
    expect(() => HyperLogLog.fromBytes(sparse([[1024, 1]], 1, 10))).toThrow(
      /sparse entry 0 has index 1024, beyond the 1024 registers/,
    )
  })

  it('rejects sparse entries out of order or repeated', () => {
    expect(() =>
      HyperLogLog.fromBytes(
        sparse([
          [9, 1],
          [3, 1],
        ]),
      ),
    ).toThrow(/entry 1 has index 3, not above the previous 9/)
    expect(() =>
      HyperLogLog.fromBytes(
        sparse([
          [3, 1],
          [3, 2],
        ]),
      ),
    ).toThrow(/strictly ascending/)
  })

  it('rejects a sparse value of zero or above the maximum rank', () => {
    expect(() => HyperLogLog.fromBytes(sparse([[4, 0]]))).toThrow(
      /entry 0 \(index 4\) has value 0, expected 1\.\.51/,
    )
    expect(() => HyperLogLog.fromBytes(sparse([[4, 52]]))).toThrow(/has value 52/)
    expect(HyperLogLog.fromBytes(sparse([[4, 51]])).registers[4]).toBe(51)
  })
})

describe('sparse in-memory representation', () => {
  /** The same ids added to a sketch forced dense from the start. */
  function denseSketchOf(values: Iterable<string>, p = DEFAULT_PRECISION): HyperLogLog {
    const h = new HyperLogLog(p).densify()
    for (const v of values) h.add(v)
    return h
  }

  /** Everything observable must agree, whichever form each sketch is in. */
  function expectSameSketch(a: HyperLogLog, b: HyperLogLog): void {
    expect(a.equals(b)).toBe(true)
    expect(b.equals(a)).toBe(true)
    // Buffer.equals: a deep toEqual on 2^p bytes at every fill level would dominate the run time.
    expect(Buffer.from(a.toBytes()).equals(b.toBytes())).toBe(true)
    expect(Buffer.from(a.registers).equals(b.registers)).toBe(true)
    expect(a.estimate()).toBe(b.estimate())
    expect(a.nonZeroRegisters()).toBe(b.nonZeroRegisters())
    expect(a.isEmpty()).toBe(b.isEmpty())
  }

  it('hllSparseLimit is 2^p / 8, capped at 4096', () => {
    expect(hllSparseLimit()).toBe(2048)
    expect(hllSparseLimit(14)).toBe(2048)
    expect(hllSparseLimit(4)).toBe(2)
    expect(hllSparseLimit(8)).toBe(32)
    expect(hllSparseLimit(15)).toBe(4096)
    expect(hllSparseLimit(18)).toBe(4096)
    expect(() => hllSparseLimit(19)).toThrow(RangeError)
  })

  it('a new sketch is sparse and allocates no registers', () => {
    const h = new HyperLogLog()
    expect(h.isSparse()).toBe(true)
    expect(h.byteSize()).toBe(0)
    expect(h.registers.length).toBe(16384)
  })

  it('a sketch of 5 ids takes a few dozen bytes instead of 2^p', () => {
    const h = sketchOfRange(0, 5)
    expect(h.isSparse()).toBe(true)
    expect(h.nonZeroRegisters()).toBe(5)
    expect(h.byteSize()).toBeLessThanOrEqual(32)
    expect(h.byteSize()).toBeLessThan(2 ** DEFAULT_PRECISION / 100)
    expect(Math.round(h.estimate())).toBe(5)
    expect(denseSketchOf(ids(0, 5)).byteSize()).toBe(2 ** DEFAULT_PRECISION)

    // The stream worker's shape: many sketches with a handful of visitors each.
    let total = 0
    let sparse = 0
    for (let s = 0; s < 10_000; s++) {
      const w = new HyperLogLog()
      for (let j = 0; j < 5; j++) w.add(`site-${s}-visitor-${j}`)
      if (w.isSparse()) sparse++
      total += w.byteSize()
    }
    expect(sparse).toBe(10_000)
    expect(total).toBeLessThanOrEqual(10_000 * 32)
  })

  it('turns dense exactly when the non-zero registers exceed the limit, at every precision', () => {
    for (let p = MIN_PRECISION; p <= MAX_PRECISION; p++) {
      const m = 2 ** p
      const limit = hllSparseLimit(p)
      const h = new HyperLogLog(p)
      let i = 0
      while (h.isSparse()) {
        expect(h.nonZeroRegisters()).toBeLessThanOrEqual(limit)
        expect(h.byteSize()).toBeLessThanOrEqual(4 * limit)
        expect(h.byteSize()).toBeLessThanOrEqual(m / 2)
        h.add(`visitor-${i++}`)
      }
      expect(h.nonZeroRegisters()).toBe(limit + 1)
      expect(h.byteSize()).toBe(m)
      expect(h.equals(sketchOfRange(0, i, p).densify())).toBe(true)
      // Once dense, always dense.
      h.add('one-more')
      expect(h.isSparse()).toBe(false)
    }
  })

  it('matches a dense sketch of the same ids at every fill level across the threshold', () => {
    for (const p of [4, 8, 10]) {
      const values = shuffled([...ids(0, 3 * 2 ** p), ...ids(0, 2 ** p)], p)
      const auto = new HyperLogLog(p)
      const dense = new HyperLogLog(p).densify()
      let sawSparse = false
      for (const id of values) {
        expect(auto.add(id)).toBe(dense.add(id))
        if (auto.isSparse()) sawSparse = true
        expectSameSketch(auto, dense)
      }
      expect(sawSparse).toBe(true)
      expect(auto.isSparse()).toBe(false)
    }
  })

  it('matches a dense sketch of the same ids around the threshold at p = 14', () => {
    const auto = new HyperLogLog()
    const dense = new HyperLogLog().densify()
    const limit = hllSparseLimit(14)
    let wasSparse = true
    for (let i = 0; i < 4_000; i++) {
      const id = `visitor-${i}`
      expect(auto.addHash(hash64(id))).toBe(dense.add(id))
      const n = auto.nonZeroRegisters()
      if (i % 250 === 0 || Math.abs(n - limit) <= 3 || auto.isSparse() !== wasSparse) {
        expect(auto.isSparse()).toBe(n <= limit)
        expectSameSketch(auto, dense)
      }
      wasSparse = auto.isSparse()
    }
    expectSameSketch(auto, dense)
  })

  it('keeps the extreme register values of the extreme indices', () => {
    for (const p of [MIN_PRECISION, 5, 14, MAX_PRECISION]) {
      // index 0 and the last index, maximum rank 65 − p and rank 1; then index 1 (p = 4 holds only 2)
      const hashes = [0n, (1n << 64n) - 1n, 1n << BigInt(64 - p)].slice(0, hllSparseLimit(p))
      const h = new HyperLogLog(p)
      const dense = new HyperLogLog(p).densify()
      for (const hash of hashes) {
        expect(h.addHash(hash)).toBe(true)
        dense.addHash(hash)
      }
      expect(h.isSparse()).toBe(true)
      expect(h.registers[0]).toBe(65 - p)
      expect(h.registers[2 ** p - 1]).toBe(1)
      if (hashes.length > 2) expect(h.registers[1]).toBe(65 - p)
      expect(h.addHash(0n)).toBe(false)
      expectSameSketch(h, dense)
      expectSameSketch(HyperLogLog.fromBytes(h.toBytes()), dense)
    }
  })

  it('merges across representations into the sketch of the union', () => {
    const p = 12 // limit 512
    const small1 = ids(0, 150)
    const small2 = ids(100, 300)
    const big = ids(200, 3_000)
    const union = (...parts: string[][]) => denseSketchOf(parts.flat(), p)
    const sparse = (values: string[]) => {
      const h = sketchOf(values, p)
      expect(h.isSparse()).toBe(true)
      return h
    }
    const dense = (values: string[]) => denseSketchOf(values, p)

    // sparse + sparse, staying sparse
    const ss = sparse(small1).merge(sparse(small2))
    expect(ss.isSparse()).toBe(true)
    expectSameSketch(ss, union(small1, small2))
    // sparse + sparse, outgrowing the limit
    const a = sparse(ids(0, 450))
    const b = sparse(ids(450, 900))
    const grown = a.clone().merge(b)
    expect(grown.isSparse()).toBe(false)
    expectSameSketch(grown, union(ids(0, 900)))
    expectSameSketch(b.clone().merge(a), grown)
    // sparse + dense and dense + sparse
    const sd = sparse(small1).merge(dense(big))
    expect(sd.isSparse()).toBe(false)
    expectSameSketch(sd, union(small1, big))
    expectSameSketch(dense(big).merge(sparse(small1)), union(small1, big))
    expectSameSketch(dense(small1).merge(sparse(small2)), union(small1, small2))
    // dense + dense of few ids, and sparse with an empty or its own self
    expectSameSketch(dense(small1).merge(dense(small2)), ss)
    expectSameSketch(sparse(small1).merge(new HyperLogLog(p)), union(small1))
    expectSameSketch(new HyperLogLog(p).merge(sparse(small1)), union(small1))
    const self = sparse(small1)
    expectSameSketch(self.merge(self), union(small1))

    // The argument is left alone, and mergeAll works over mixed forms.
    const arg = sparse(small2)
    const before = arg.toBytes()
    sparse(small1).merge(arg)
    dense(small1).merge(arg)
    expect(arg.toBytes()).toEqual(before)
    expect(arg.isSparse()).toBe(true)
    expectSameSketch(mergeAll([sparse(small1), dense(big), sparse(small2)]), union(small1, small2, big))
    expectSameSketch(mergeAll([sparse(small1), sparse(small2)]), ss)
  })

  it('sparse merges are order-independent with overlapping registers of different values', () => {
    const parts = [ids(0, 300), ids(250, 600), ids(500, 1_000)].map((v) => sketchOf(v, 13))
    const [a, b, c] = parts as [HyperLogLog, HyperLogLog, HyperLogLog]
    const left = a.clone().merge(b).merge(c)
    const right = c.clone().merge(b.clone().merge(a))
    expect(left.isSparse()).toBe(true)
    expectSameSketch(left, right)
    expectSameSketch(left, denseSketchOf(ids(0, 1_000), 13))
  })

  it('equals compares registers, not representations', () => {
    const s = new HyperLogLog(10)
    s.addHash(5n << 54n) // index 5, maximum rank
    const d = new HyperLogLog(10).densify()
    d.addHash(5n << 54n)
    expect(s.equals(d) && d.equals(s)).toBe(true)
    // Same index, different value.
    const lower = new HyperLogLog(10).densify()
    lower.addHash((5n << 54n) | 1n)
    expect(s.equals(lower) || lower.equals(s)).toBe(false)
    // Same count, different index.
    const moved = new HyperLogLog(10).densify()
    moved.addHash(6n << 54n)
    expect(s.equals(moved) || moved.equals(s)).toBe(false)
    // One extra register on either side.
    d.addHash(7n << 54n)
    expect(s.equals(d) || d.equals(s)).toBe(false)
    s.addHash(7n << 54n)
    s.addHash(8n << 54n)
    expect(s.equals(d) || d.equals(s)).toBe(false)
    expect(new HyperLogLog(10).equals(new HyperLogLog(10).densify())).toBe(true)
    expect(new HyperLogLog(10).equals(new HyperLogLog(11))).toBe(false)
  })

  it('clone keeps the form and is independent', () => {
    const a = sketchOfRange(0, 40)
    const b = a.clone()
    expect(b.isSparse()).toBe(true)
    expect(b.byteSize()).toBeLessThanOrEqual(a.byteSize())
    for (const id of ids(0, 100, 'someone-new-')) b.add(id)
    expect(a.equals(sketchOfRange(0, 40))).toBe(true)
    expect(b.equals(a)).toBe(false)
    expect(new HyperLogLog().clone().isSparse()).toBe(true)
    const d = a.clone().densify().clone()
    expect(d.isSparse()).toBe(false)
    expectSameSketch(d, a)
  })

  it('downsample of a sparse sketch is sparse and exact', () => {
    const values = ids(0, 900)
    const fine = sketchOf(values, 14)
    expect(fine.isSparse()).toBe(true)
    for (const p of [14, 13, 12, 10]) {
      const down = fine.downsample(p)
      expectSameSketch(down, sketchOf(values, p))
      expectSameSketch(down, fine.clone().densify().downsample(p))
      expect(down.isSparse()).toBe(down.nonZeroRegisters() <= hllSparseLimit(p))
    }
    expect(fine.downsample(13).isSparse()).toBe(true)
    expect(fine.downsample(10).isSparse()).toBe(false)
  })

  it('fromBytes of a sparse encoding loads a sparse sketch sized to its entries', () => {
    const h = sketchOfRange(0, 5)
    const back = HyperLogLog.fromBytes(h.toBytes())
    expect(back.isSparse()).toBe(true)
    expect(back.byteSize()).toBe(4 * 5)
    expectSameSketch(back, h)
    // It keeps growing normally after the load.
    for (const id of ids(5, 200)) {
      back.add(id)
      h.add(id)
    }
    expect(back.isSparse()).toBe(true)
    expectSameSketch(back, h)

    const empty = HyperLogLog.fromBytes(new HyperLogLog().toBytes())
    expect(empty.isSparse()).toBe(true)
    expect(empty.byteSize()).toBe(0)

    // Loading thousands of small sketches stays cheap.
    let total = 0
    let entries = 0
    for (let s = 0; s < 5_000; s++) {
      const small = sketchOfRange(s, s + 3)
      total += HyperLogLog.fromBytes(small.toBytes()).byteSize()
      entries += small.nonZeroRegisters()
    }
    expect(total).toBe(4 * entries)
  })

  it('fromBytes loads dense beyond the sparse limit, whatever the encoding', () => {
    const h = sketchOfRange(0, 3_000) // about 2750 non-zero registers: sparse bytes, dense in memory
    const bytes = h.toBytes()
    expect(bytes[2]).toBe(1)
    expect(h.nonZeroRegisters()).toBeGreaterThan(hllSparseLimit(14))
    const back = HyperLogLog.fromBytes(bytes)
    expect(back.isSparse()).toBe(false)
    expectSameSketch(back, h)
    const large = HyperLogLog.fromBytes(sketchOfRange(0, 50_000).toBytes())
    expect(large.isSparse()).toBe(false)
    expect(large.byteSize()).toBe(16384)
  })

  it('registers of a sparse sketch is a fresh copy each time and leaves the sketch sparse', () => {
    const h = sketchOfRange(0, 10)
    const r1 = h.registers
    const r2 = h.registers
    expect(r1).not.toBe(r2)
    expect(r1).toEqual(r2)
    r1.fill(0)
    expect(h.nonZeroRegisters()).toBe(10)
    expect(h.isSparse()).toBe(true)
    const d = h.clone().densify()
    expect(d.registers).toBe(d.registers)
  })

  it('densify changes nothing observable, returns this and is idempotent', () => {
    const h = sketchOfRange(0, 100)
    const before = h.toBytes()
    const estimate = h.estimate()
    expect(h.densify()).toBe(h)
    expect(h.densify()).toBe(h)
    expect(h.isSparse()).toBe(false)
    expect(h.toBytes()).toEqual(before)
    expect(h.estimate()).toBe(estimate)
  })
})
