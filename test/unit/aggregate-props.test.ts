import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { NONE } from '../../core/aggregate/definition.js'
import {
  capValues,
  checkPropKey,
  isPropDimension,
  keptValues,
  OTHER,
  propValueOf,
  ValueAdmission,
} from '../../core/aggregate/props.js'
import { parseProperty } from '../../query/params.js'

/** A deterministic shuffle (seeded by the test, no Math.random), to show order does not matter. */
function shuffled<T>(xs: readonly T[], seed: string): T[] {
  const key = (x: T, i: number) =>
    createHash('sha256')
      .update(`${seed}:${String(x)}:${i}`)
      .digest('hex')
  return xs
    .map((x, i) => ({ x, k: key(x, i) }))
    .sort((a, b) => (a.k < b.k ? -1 : 1))
    .map((e) => e.x)
}

describe('custom property keys', () => {
  it('takes 1–64 letters, digits, _ - . starting with a letter or digit', () => {
    for (const ok of ['plan', 'Plan_2', 'a', 'x.y-z', '9lives', 'k'.repeat(64)])
      expect(checkPropKey(ok)).toBe(ok)
  })

  it('refuses anything else with TALLY_ERR_PROP_KEY_INVALID naming the key', () => {
    for (const bad of ['', '_plan', '-x', 'with space', 'ü', 'a/b', 'k'.repeat(65), 'a:b']) {
      expect(() => checkPropKey(bad)).toThrow(
        expect.objectContaining({ code: 'TALLY_ERR_PROP_KEY_INVALID', where: 'key' }),
      )
    }
  })

  it('names dimensions prop:KEY', () => {
    expect(isPropDimension('prop:plan')).toBe(true)
    expect(isPropDimension('prop:')).toBe(false)
    expect(isPropDimension('prop:a b')).toBe(false)
    expect(isPropDimension('plan')).toBe(false)
  })

  it('reads a value: strings (clipped to 256), numbers and booleans as JSON writes them, (none) otherwise', () => {
    const v = (x: unknown) => propValueOf({ properties: { k: x } }, 'k')
    expect(v('pro')).toBe('pro')
    expect(v('p'.repeat(300))).toBe('p'.repeat(256))
    expect(v(42)).toBe('42')
    expect(v(false)).toBe('false')
    for (const none of [undefined, null, '', { a: 1 }, [1]]) expect(v(none)).toBe(NONE)
  })
})

describe('the cap rule (bottom-N by hash)', () => {
  const values = Array.from({ length: 500 }, (_, i) => `v${i}`)

  it('keeps every value up to the cap, and (none) and (other) always', () => {
    expect(keptValues([...values.slice(0, 10), NONE, OTHER], 10)).toEqual(
      new Set([...values.slice(0, 10), NONE, OTHER]),
    )
  })

  it('keeps the same `max` values whatever the order, and a part of a set keeps every kept value it holds', () => {
    const max = 50
    const kept = keptValues(values, max)
    expect(kept.size).toBe(max)
    expect(keptValues(shuffled(values, 'a'), max)).toEqual(kept)
    // Any part (a partition's share, an hour of the day) keeps the whole's kept values it holds.
    for (const seed of ['p0', 'p1', 'p2']) {
      const part = shuffled(values, seed).slice(0, 200)
      const partKept = keptValues(part, max)
      for (const v of part) if (kept.has(v)) expect(partKept.has(v)).toBe(true)
    }
  })

  it('folds values past the cap into (other) on read, the same as capping the whole directly', () => {
    const max = 30
    // Counts per value, split over three "partitions" that each admitted values by the stream rule.
    const counts = new Map<string, number>()
    const parts = [new Map<string, number>(), new Map<string, number>(), new Map<string, number>()]
    const admissions = parts.map(() => new ValueAdmission(max))
    shuffled(
      values.flatMap((v, i) => Array.from({ length: (i % 3) + 1 }, () => v)),
      'events',
    ).forEach((v, i) => {
      counts.set(v, (counts.get(v) ?? 0) + 1)
      const p = i % 3
      const under = admissions[p]!.admit(v)
      parts[p]!.set(under, (parts[p]!.get(under) ?? 0) + 1)
    })
    // Truth: cap the whole at once.
    const kept = keptValues(counts.keys(), max)
    const truth = new Map<string, number>()
    for (const [v, n] of counts) {
      const k = kept.has(v) ? v : OTHER
      truth.set(k, (truth.get(k) ?? 0) + n)
    }
    // Reader: merge the partitions' rows, then apply the rule again.
    const merged = new Map<string, number>()
    for (const part of parts) for (const [v, n] of part) merged.set(v, (merged.get(v) ?? 0) + n)
    const { values: read, hit } = capValues(merged, max, (a, b) => (a ?? 0) + b)
    expect(hit).toBe(true)
    expect(read).toEqual(truth)
    // Each partition held far fewer rows than values.
    for (const part of parts) expect(part.size).toBeLessThan(values.length / 2)
  })
})

describe('the query property of a custom property', () => {
  it('takes prop:KEY with a valid key and refuses others with TALLY_ERR_BAD_PARAMETER', () => {
    expect(parseProperty('prop:plan', 'property')).toBe('prop:plan')
    for (const bad of ['prop:', 'prop:a b', 'props:plan', 'plan']) {
      expect(() => parseProperty(bad, 'property')).toThrow(
        expect.objectContaining({ code: 'TALLY_ERR_BAD_PARAMETER' }),
      )
    }
  })
})
