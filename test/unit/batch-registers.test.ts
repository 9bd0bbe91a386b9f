import { describe, expect, it } from 'vitest'
import { RegisterSet, registerEntry } from '../../batch/registers.js'
import { HyperLogLog, hash64 } from '../../core/hll.js'

function halves(h: bigint): [number, number] {
  return [Number(h >> 32n), Number(h & 0xffffffffn)]
}

function both(ids: readonly string[], p: number): { sketch: HyperLogLog; set: RegisterSet } {
  const sketch = new HyperLogLog(p)
  const set = new RegisterSet(p)
  for (const id of ids) {
    sketch.add(id)
    const [hi, lo] = halves(hash64(id))
    set.add(registerEntry(hi, lo, p))
  }
  return { sketch, set }
}

describe('batch registers (HyperLogLog from precomputed hashes)', () => {
  it('gives byte-identical sketches to HyperLogLog.add, sparse and dense, at several precisions', () => {
    for (const p of [4, 10, 14, 16]) {
      for (const n of [0, 1, 7, 300, 3000, 40_000]) {
        // Repeats on purpose: the same visitor seen many times.
        const ids = Array.from({ length: n }, (_, i) => `visitor-${i % Math.max(1, Math.floor(n * 0.7))}`)
        const { sketch, set } = both(ids, p)
        expect(Buffer.from(set.toBytes()).equals(Buffer.from(sketch.toBytes())), `p=${p} n=${n}`).toBe(true)
      }
    }
  })

  it('merges to the registers of the union (how hours make days)', () => {
    const ids = Array.from({ length: 5000 }, (_, i) => `v${i}`)
    const whole = both(ids, 14)
    const a = both(ids.slice(0, 2500), 14).set
    const b = both(ids.slice(2000), 14).set
    a.merge(b)
    expect(Buffer.from(a.toBytes()).equals(Buffer.from(whole.sketch.toBytes()))).toBe(true)
    const small = both(['x', 'y'], 14).set
    small.merge(both(ids, 14).set)
    small.merge(new RegisterSet(14))
    expect(
      Buffer.from(small.toBytes()).equals(Buffer.from(both([...ids, 'x', 'y'], 14).sketch.toBytes())),
    ).toBe(true)
  })

  it('maps a hash to the register and rank of HyperLogLog for edge hashes', () => {
    for (const h of [0n, 1n, (1n << 64n) - 1n, 1n << 63n, 0x00000000ffffffffn, 0xffffffff00000000n]) {
      const s = new HyperLogLog(12)
      s.addHash(h)
      const r = new RegisterSet(12)
      const [hi, lo] = halves(h)
      r.add(registerEntry(hi, lo, 12))
      expect(Buffer.from(r.toBytes()).equals(Buffer.from(s.toBytes())), `hash ${h}`).toBe(true)
    }
  })

  it('refuses to merge different precisions', () => {
    expect(() => new RegisterSet(12).merge(new RegisterSet(14))).toThrow(RangeError)
  })
})
