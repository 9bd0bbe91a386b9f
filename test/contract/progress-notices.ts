import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type {
  ProgressListener,
  ProgressNotice,
  ProgressPublisher,
} from '../../core/ports/progress-notices.js'
import { eventually, uniqueName } from '../helpers/context.js'

/** What the progress-notice contract needs from one implementation. */
export interface ProgressHarness {
  publisher(onSend?: (ok: boolean) => void): ProgressPublisher
  /** A listener for the notices of stream group `group` reading `streamTopic`. */
  listener(group: string, streamTopic: string): ProgressListener
  /** A publisher whose bus cannot be reached (see ProgressBusFeatures.canBeAway). */
  unreachablePublisher?(onSend: (ok: boolean) => void): ProgressPublisher
  /** Writes a record that is not a notice onto the bus (see ProgressBusFeatures.carriesOtherRecords). */
  writeJunk?(value: string): Promise<void>
  /** How long a started listener may take to become live (a Kafka group join takes seconds). */
  liveWithinMs: number
  /** Closes everything the harness opened. */
  close(): Promise<void>
}

/** What a bus can meet at all, which decides the cases that apply to it. */
export interface ProgressBusFeatures {
  /** The bus is a server that can be away (Kafka), not the process itself (embedded). */
  canBeAway: boolean
  /** Records that are not notices can reach a listener (anything can be written to a topic). */
  carriesOtherRecords: boolean
}

/** Starts `listener` and keeps what it hears. */
function collect(listener: ProgressListener): ProgressNotice[] {
  const heard: ProgressNotice[] = []
  listener.start((n) => heard.push(n))
  return heard
}

async function waitLive(listener: ProgressListener, withinMs: number): Promise<void> {
  await eventually(async () => (listener.live() ? true : undefined), withinMs, 'the listener to be live')
}

/** Waits until `heard` holds at least `count` notices. */
async function waitHeard(heard: readonly ProgressNotice[], count: number): Promise<void> {
  await eventually(async () => (heard.length >= count ? true : undefined), 15_000, `${count} notices`)
}

/**
 * What every progress bus (Kafka, embedded) must do: a live listener hears every notice of its
 * stream group and topic published after it became live, whole and in order, and nothing else;
 * publishing never throws, even with the bus away, and reports the failure instead.
 */
export function progressNoticesContract(
  name: string,
  make: () => Promise<ProgressHarness>,
  features: ProgressBusFeatures,
): void {
  describe(`progress notices contract: ${name}`, () => {
    let bus: ProgressHarness
    const group = uniqueName('group')
    const streamTopic = `test.${uniqueName('raw')}`
    let seq = 0
    const notice = (over: Partial<ProgressNotice> = {}): ProgressNotice => {
      seq++
      return {
        group,
        topic: streamTopic,
        partition: seq % 3,
        // Past 2^32 and with an epoch that uses its bits: numbers must come through unrounded.
        nextOffset: 5_000_000_000 + seq,
        epoch: 70_000 + seq,
        writtenAtMs: Date.UTC(2026, 0, 2, 3, 4, 5) + seq,
        ...over,
      }
    }

    beforeAll(async () => {
      bus = await make()
    })

    afterAll(async () => {
      await bus?.close()
    })

    it('is not live before start, turns live after it, and not live after close', async () => {
      const listener = bus.listener(group, streamTopic)
      expect(listener.live()).toBe(false)
      collect(listener)
      await waitLive(listener, bus.liveWithinMs)
      const closing = listener.close()
      expect(listener.close()).toBe(closing)
      await closing
      expect(listener.live()).toBe(false)
    })

    it('delivers every notice published after the listener became live, whole and in order, to every listener', async () => {
      const first = bus.listener(group, streamTopic)
      const second = bus.listener(group, streamTopic)
      const heardFirst = collect(first)
      const heardSecond = collect(second)
      const sent: boolean[] = []
      const publisher = bus.publisher((ok) => sent.push(ok))
      try {
        await waitLive(first, bus.liveWithinMs)
        await waitLive(second, bus.liveWithinMs)
        const notices = Array.from({ length: 6 }, () => notice())
        for (const n of notices) publisher.publish(n)
        await waitHeard(heardFirst, notices.length)
        await waitHeard(heardSecond, notices.length)
        expect(heardFirst).toEqual(notices)
        expect(heardSecond).toEqual(notices)
        await eventually(async () => (sent.length === notices.length ? true : undefined), 15_000, 'sends')
        expect(sent.every((ok) => ok)).toBe(true)
      } finally {
        await publisher.close()
        await first.close()
        await second.close()
      }
    })

    it('delivers only the notices of its own stream group and topic', async () => {
      const otherGroup = uniqueName('other-group')
      const mine = bus.listener(group, streamTopic)
      const theirs = bus.listener(otherGroup, streamTopic)
      const heardMine = collect(mine)
      const heardTheirs = collect(theirs)
      const publisher = bus.publisher()
      try {
        await waitLive(mine, bus.liveWithinMs)
        await waitLive(theirs, bus.liveWithinMs)
        const ofOtherGroup = notice({ group: otherGroup })
        const ofOtherTopic = notice({ topic: `${streamTopic}.other` })
        const own = [notice(), notice()]
        // The foreign ones go first: notices arrive in order, so once the last own one is heard the
        // foreign ones would have been too.
        publisher.publish(ofOtherGroup)
        publisher.publish(ofOtherTopic)
        for (const n of own) publisher.publish(n)
        await waitHeard(heardMine, own.length)
        await waitHeard(heardTheirs, 1)
        expect(heardMine).toEqual(own)
        expect(heardTheirs).toEqual([ofOtherGroup])
      } finally {
        await publisher.close()
        await mine.close()
        await theirs.close()
      }
    })

    it('hears no more notices after close', async () => {
      const closed = bus.listener(group, streamTopic)
      const open = bus.listener(group, streamTopic)
      const heardClosed = collect(closed)
      const heardOpen = collect(open)
      const publisher = bus.publisher()
      try {
        await waitLive(closed, bus.liveWithinMs)
        await waitLive(open, bus.liveWithinMs)
        await closed.close()
        const n = notice()
        publisher.publish(n)
        // The listener still open hears it; by then the closed one would have too.
        await waitHeard(heardOpen, 1)
        expect(heardOpen).toEqual([n])
        expect(heardClosed).toEqual([])
      } finally {
        await publisher.close()
        await open.close()
      }
    })

    it('reports a notice published after close as failed, without throwing', async () => {
      const outcomes: boolean[] = []
      const publisher = bus.publisher((ok) => outcomes.push(ok))
      const closing = publisher.close()
      expect(publisher.close()).toBe(closing)
      await closing
      expect(() => publisher.publish(notice())).not.toThrow()
      expect(outcomes).toEqual([false])
    })

    if (features.carriesOtherRecords) {
      it('skips records that are not notices and goes on', async () => {
        const listener = bus.listener(group, streamTopic)
        const heard = collect(listener)
        const publisher = bus.publisher()
        try {
          await waitLive(listener, bus.liveWithinMs)
          await bus.writeJunk!('{not json')
          await bus.writeJunk!(JSON.stringify({ ...notice(), nextOffset: 'soon' }))
          const n = notice()
          publisher.publish(n)
          await waitHeard(heard, 1)
          expect(heard).toEqual([n])
          expect(listener.live()).toBe(true)
        } finally {
          await publisher.close()
          await listener.close()
        }
      })
    }

    if (features.canBeAway) {
      it('publish never throws nor waits with the bus away: each notice is reported failed', async () => {
        const outcomes: boolean[] = []
        const publisher = bus.unreachablePublisher!((ok) => outcomes.push(ok))
        try {
          expect(() => {
            publisher.publish(notice())
            publisher.publish(notice())
          }).not.toThrow()
          // Nothing is known yet when publish returns: it did not wait for the send.
          expect(outcomes).toEqual([])
          await eventually(async () => (outcomes.length >= 2 ? true : undefined), 15_000, 'two failed sends')
          expect(outcomes).toEqual([false, false])
        } finally {
          await publisher.close()
        }
      })
    }
  })
}
