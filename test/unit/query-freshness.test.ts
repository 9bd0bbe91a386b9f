import { describe, expect, it } from 'vitest'
import type { StreamProgress } from '../../core/ports/aggregate-store.js'
import { CheckpointFreshness, type CheckpointFreshnessOptions } from '../../query/freshness.js'

/**
 * Snapshots of a site's data version on a fake store: by default every request gets a read that
 * was still running when it arrived (one read shared by the requests that arrive meanwhile); with
 * snapshotMaxAgeMs a read that started at most that long ago serves new requests too.
 */

const GRACE = 60_000

/** A store whose reads wait until released, counting them; `offset` is the checkpoint's next offset. */
function store() {
  const state = { offset: 1, mark: 'm1', reads: 0, markReads: 0, fail: false }
  const waiting: Array<() => void> = []
  const reader = {
    streamProgress: async (): Promise<StreamProgress[]> => {
      state.reads++
      const offset = state.offset
      const fail = state.fail
      await new Promise<void>((r) => waiting.push(r))
      if (fail) throw new Error('store down')
      return [{ partition: 0, nextOffset: offset, watermarkMs: 1_000_000, updatedAtMs: offset }]
    },
    finalMark: async () => {
      state.markReads++
      return state.mark
    },
  }
  /** Lets every read started so far finish. */
  const release = async () => {
    for (const r of waiting.splice(0)) r()
    await new Promise((r) => setImmediate(r))
  }
  return { state, reader, release }
}

function source(
  s: ReturnType<typeof store>,
  clock: { t: number },
  options: Partial<CheckpointFreshnessOptions>,
) {
  return new CheckpointFreshness(s.reader, {
    group: 'g',
    topic: 't',
    partitions: 1,
    graceMs: GRACE,
    now: () => clock.t,
    ...options,
  })
}

/** A source reusing versions for `maxAgeMs`, whose first snapshot of 'site' was read at time 0. */
async function reusing(maxAgeMs: number, options: Partial<CheckpointFreshnessOptions> = {}) {
  const s = store()
  const clock = { t: 0 }
  const f = source(s, clock, { snapshotMaxAgeMs: maxAgeMs, ...options })
  const first = f.snapshot('site')
  await s.release()
  return { s, clock, f, v1: (await first).version }
}

describe('CheckpointFreshness.snapshot', () => {
  it('shares a running read, and reads again for a request that arrives after it finished (default)', async () => {
    const s = store()
    const clock = { t: 0 }
    const f = source(s, clock, {})
    const a = f.snapshot('site')
    const b = f.snapshot('site')
    expect(s.state.reads).toBe(1)
    await s.release()
    expect((await a).version).toBe((await b).version)

    s.state.offset = 2
    const c = f.snapshot('site')
    expect(s.state.reads).toBe(2)
    await s.release()
    expect((await c).version).not.toBe((await a).version)
  })

  it('shares one running checkpoint read between sites; each site still reads its own final mark', async () => {
    const s = store()
    const marks: string[] = []
    const reader = {
      ...s.reader,
      finalMark: async (site: string) => {
        marks.push(site)
        return `mark-of-${site}`
      },
    }
    const f = new CheckpointFreshness(reader, { group: 'g', topic: 't', partitions: 1, graceMs: GRACE })
    const a = f.snapshot('a')
    const b = f.snapshot('b')
    expect(s.state.reads).toBe(1)
    await s.release()
    const [sa, sb] = [await a, await b]
    expect(marks.sort()).toEqual(['a', 'b'])
    expect([sa.finalMark, sb.finalMark]).toEqual(['mark-of-a', 'mark-of-b'])
    expect(sa.version).not.toBe(sb.version)
    expect(sa.version.split('|')[1]).toBe(sb.version.split('|')[1])

    // Once finished, the next request (any site) reads the checkpoints again.
    s.state.offset = 2
    const c = f.snapshot('b')
    expect(s.state.reads).toBe(2)
    await s.release()
    expect((await c).version).not.toBe(sb.version)
  })

  it('with snapshotMaxAgeMs, reuses a snapshot whose read started at most that long ago', async () => {
    const { s, clock, f, v1 } = await reusing(100)

    // A write meanwhile: within half the age no read is made and the write is not seen.
    s.state.offset = 2
    clock.t = 49
    expect((await f.snapshot('site')).version).toBe(v1)
    expect(s.state.reads).toBe(1)

    // Later than the whole age, with no read since: a new read, which sees the write.
    clock.t = 101
    const later = f.snapshot('site')
    expect(s.state.reads).toBe(2)
    await s.release()
    expect((await later).version).not.toBe(v1)
    // Another site reuses the checkpoints just read and reads only its own final mark.
    const marksBefore = s.state.markReads
    const other = await f.snapshot('other')
    expect(s.state.reads).toBe(2)
    expect(s.state.markReads).toBe(marksBefore + 1)
    expect(other.version.split('|')[1]).toBe((await later).version.split('|')[1])
  })

  it('with snapshotMaxAgeMs, reads ahead past half the age: requests keep the old version meanwhile, then have the new one without waiting', async () => {
    const { s, clock, f, v1 } = await reusing(100)

    s.state.offset = 2
    clock.t = 50
    // The old version at once, and one read started in the background (not two).
    expect(f.recentSnapshot('site')?.version).toBe(v1)
    expect(f.recentSnapshot('site')?.version).toBe(v1)
    expect(s.state.reads).toBe(2)
    await s.release()

    // Past the first read's age: the version read at 50 serves at once, with the write.
    clock.t = 99
    const v2 = f.recentSnapshot('site')?.version
    expect(v2).toBeDefined()
    expect(v2).not.toBe(v1)
    expect((await f.snapshot('site')).version).toBe(v2)
    expect(s.state.reads).toBe(2)

    // A failed read ahead is not remembered and harms nobody: the current version serves until it
    // expires, then a request reads (and gets the failure).
    s.state.fail = true
    clock.t = 100
    expect(f.recentSnapshot('site')?.version).toBe(v2)
    expect(s.state.reads).toBe(3)
    await s.release()
    clock.t = 151
    expect(f.recentSnapshot('site')).toBeUndefined()
    const failing = f.snapshot('site')
    await s.release()
    await expect(failing).rejects.toThrow('store down')
  })

  it('with snapshotMaxAgeMs, remembers no failed read', async () => {
    const s = store()
    const clock = { t: 0 }
    const f = source(s, clock, { snapshotMaxAgeMs: 1000 })
    s.state.fail = true
    const failed = f.snapshot('site')
    await s.release()
    await expect(failed).rejects.toThrow('store down')
    s.state.fail = false
    const next = f.snapshot('site')
    expect(s.state.reads).toBe(2)
    await s.release()
    expect((await next).version).toContain('m1|')
  })
})

describe('CheckpointFreshness with progress notices', () => {
  /** Versions reused for 100 ms when polling, 1000 ms while notices are heard. */
  async function notified() {
    const bus = { live: true }
    const r = await reusing(100, { notices: { live: () => bus.live }, notifiedMaxAgeMs: 1000 })
    return { ...r, bus }
  }

  it('while notices are heard, reuses a version up to notifiedMaxAgeMs with no read', async () => {
    const { s, clock, f, v1 } = await notified()
    s.state.offset = 2
    clock.t = 499
    expect(f.recentSnapshot('site')?.version).toBe(v1)
    expect([s.state.reads, s.state.markReads]).toEqual([1, 1])
    // Past half that age both reads are redone in the background; the old version serves meanwhile.
    clock.t = 500
    expect(f.recentSnapshot('site')?.version).toBe(v1)
    expect([s.state.reads, s.state.markReads]).toEqual([2, 2])
    await s.release()
    expect(f.recentSnapshot('site')?.version).not.toBe(v1)
  })

  it('a notice makes the next request read the checkpoints (not the final mark) and later ones see the write', async () => {
    const { s, clock, f, v1 } = await notified()
    s.state.offset = 2
    clock.t = 10
    f.notify()
    clock.t = 11
    // The request that finds the notice starts one read and still gets the version read before.
    expect(f.recentSnapshot('site')?.version).toBe(v1)
    expect(f.recentSnapshot('site')?.version).toBe(v1)
    expect([s.state.reads, s.state.markReads]).toEqual([2, 1])
    await s.release()
    const v2 = f.recentSnapshot('site')?.version
    expect(v2).not.toBe(v1)
    expect(v2?.startsWith('m1|')).toBe(true)
    // No notice since: no more reads.
    clock.t = 400
    expect(f.recentSnapshot('site')?.version).toBe(v2)
    expect(s.state.reads).toBe(2)
  })

  it('a notice arriving while a checkpoint read runs makes the read after it happen', async () => {
    const { s, clock, f, v1 } = await notified()
    clock.t = 10
    f.notify()
    expect(f.recentSnapshot('site')?.version).toBe(v1)
    expect(s.state.reads).toBe(2)
    // This read may have started before the write the next notice announces.
    s.state.offset = 3
    clock.t = 12
    f.notify()
    await s.release()
    clock.t = 13
    f.recentSnapshot('site')
    expect(s.state.reads).toBe(3)
    await s.release()
    expect(f.recentSnapshot('site')?.version).toContain(':3:')
  })

  it("after a notice, a site's first request reads the checkpoints with its final mark", async () => {
    const { s, clock, f, v1 } = await notified()
    s.state.offset = 2
    clock.t = 10
    f.notify()
    clock.t = 11
    expect(f.recentSnapshot('other')).toBeUndefined()
    const other = f.snapshot('other')
    expect([s.state.reads, s.state.markReads]).toEqual([2, 2])
    await s.release()
    const seen = await other
    expect(seen.version.split('|')[1]).not.toBe(v1.split('|')[1])
    expect(seen.version).toContain(':2:')
  })

  it('the bus becoming heard counts as a notice: checkpoints read before are read again', async () => {
    const { s, clock, f, bus, v1 } = await notified()
    // Not heard at first (polling): a write meanwhile, read within 100 ms as before.
    bus.live = false
    expect(f.recentSnapshot('site')?.version).toBe(v1)
    s.state.offset = 2
    bus.live = true
    clock.t = 20
    expect(f.recentSnapshot('site')?.version).toBe(v1)
    expect(s.state.reads).toBe(2)
    await s.release()
    expect(f.recentSnapshot('site')?.version).toContain(':2:')
  })

  it('when notices are not heard, falls back to snapshotMaxAgeMs', async () => {
    const { s, clock, f, bus, v1 } = await notified()
    bus.live = false
    s.state.offset = 2
    clock.t = 101
    expect(f.recentSnapshot('site')).toBeUndefined()
    const next = f.snapshot('site')
    await s.release()
    expect((await next).version).not.toBe(v1)
  })

  it('with snapshotMaxAgeMs 0 (a read per request) notices change nothing', async () => {
    const s = store()
    const clock = { t: 0 }
    const f = source(s, clock, { snapshotMaxAgeMs: 0, notices: { live: () => true }, notifiedMaxAgeMs: 1000 })
    const a = f.snapshot('site')
    await s.release()
    await a
    expect(f.recentSnapshot('site')).toBeUndefined()
    const b = f.snapshot('site')
    expect([s.state.reads, s.state.markReads]).toEqual([2, 2])
    await s.release()
    await b
  })
})
