import { describe, expect, it } from 'vitest'
import { DedupSet } from '../../stream/dedup.js'

const MINUTE = 60_000

describe('DedupSet', () => {
  it('answers seen ids across minute buckets and expires whole buckets', () => {
    const s = new DedupSet()
    expect(s.addId('a', 0)).toBe(true)
    expect(s.addId('b', 5 * MINUTE)).toBe(true)
    expect(s.addId('a', 10 * MINUTE)).toBe(false)
    expect(s.addId('b', 10 * MINUTE)).toBe(false)
    expect(s.size).toBe(2)
    s.expire(5 * MINUTE)
    expect(s.size).toBe(1)
    // "a" was first seen in minute 0, now expired: a later copy counts again.
    expect(s.addId('a', 10 * MINUTE)).toBe(true)
    expect(s.addId('b', 11 * MINUTE)).toBe(false)
  })

  it('persists new entries once and reloads them as seen, skipping those before the horizon', () => {
    const s = new DedupSet()
    for (let i = 0; i < 1000; i++) s.addId(`m-${i}`, i * 1000)
    const drained = s.drainNew()
    expect(drained?.count).toBe(1000)
    expect(drained?.entries.length).toBe(12 * 1000)
    expect(drained?.maxReceivedMs).toBe(999_000)
    expect(s.drainNew()).toBeUndefined()
    s.addId('late', 2_000_000)
    expect(s.drainNew()?.count).toBe(1)

    const t = new DedupSet()
    t.load(drained!.entries, 10 * MINUTE)
    // Minutes 10..16 of the 1000 seconds survive the horizon.
    expect(t.size).toBe(1000 - 600)
    expect(t.addId('m-999', 999_000)).toBe(false)
    expect(t.addId('m-0', 999_000)).toBe(true)
    // Loaded entries are not new.
    expect(t.drainNew()?.count).toBe(1)
  })
})
