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
  const state = { offset: 1, mark: 'm1', reads: 0, fail: false }
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
    finalMark: async () => state.mark,
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
async function reusing(maxAgeMs: number) {
  const s = store()
  const clock = { t: 0 }
  const f = source(s, clock, { snapshotMaxAgeMs: maxAgeMs })
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
    // Sites are apart.
    void f.snapshot('other')
    expect(s.state.reads).toBe(3)
    await s.release()
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
