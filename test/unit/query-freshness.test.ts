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
    const s = store()
    const clock = { t: 0 }
    const f = source(s, clock, { snapshotMaxAgeMs: 100 })
    const first = f.snapshot('site')
    await s.release()
    const v1 = (await first).version

    // A write meanwhile: within 100 ms of the first read's start it is not seen, no read is made.
    s.state.offset = 2
    clock.t = 100
    expect((await f.snapshot('site')).version).toBe(v1)
    expect(s.state.reads).toBe(1)

    // Later than that: a new read, which sees the write.
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
