import type { AggregateReader, StreamProgress } from '../core/ports/aggregate-store.js'

/**
 * How fresh the aggregates are, from the stream's checkpoints.
 *
 * A stream worker counts an event unless its minute ended before its partition's watermark (the
 * latest receivedAt seen) minus the grace period; such late events are left to the batch rebuild.
 * The watermark only grows, so once a window ends at or before `watermark − grace` on every source
 * partition, no on-time event can change it any more: the stream's numbers for it are complete,
 * and only a batch rebuild (late data) can still revise them. Hence
 *
 *   complete_through = floor_minute(min over partitions of checkpoint.watermark_ms − grace)
 *
 * The minimum is taken over the partitions that have a checkpoint (a partition that never saw an
 * event has none). An idle partition keeps its old watermark and so holds complete_through back:
 * the value errs on the early side, never the late one.
 */
export interface Freshness {
  /** Windows ending at or before this are complete in the stream; undefined before any checkpoint. */
  completeThroughMs: number | undefined
  /** The smallest checkpoint watermark: events received before it are counted (or left to batch when late). */
  receivedThroughMs: number | undefined
  /** The stream's grace period. */
  graceMs: number
  /** Source partitions with a checkpoint. */
  partitionsReporting: number
  /** Source partitions of the raw topic. */
  partitionsExpected: number
}

export interface FreshnessSource {
  current(): Promise<Freshness>
}

/** What a site's aggregates looked like at one moment: freshness, and a version of the data. */
export interface DataSnapshot {
  freshness: Freshness
  /**
   * Changes whenever the site's aggregates may have changed: it combines the stream's checkpoints
   * (each written after the rows it covers) and the site's final mark (written after the batch's
   * rows). Equal versions mean the rows read under the first are still the rows.
   */
  version: string
  /** The site's final mark alone: changes only when a rebuild wrote final rows of the site. */
  finalMark: string
}

/** A freshness source that can also tell the version of a site's data, read fresh (not cached). */
export interface SnapshotSource extends FreshnessSource {
  snapshot(siteId: string): Promise<DataSnapshot>
}

/** A snapshot source that may also give a snapshot at once, without a read. */
export interface RecentSnapshotSource extends SnapshotSource {
  recentSnapshot(siteId: string): DataSnapshot | undefined
}

export function hasRecentSnapshots(s: FreshnessSource): s is RecentSnapshotSource {
  return typeof (s as Partial<RecentSnapshotSource>).recentSnapshot === 'function'
}

export function isSnapshotSource(s: FreshnessSource): s is SnapshotSource {
  return typeof (s as Partial<SnapshotSource>).snapshot === 'function'
}

export interface CheckpointFreshnessOptions {
  /** Consumer group of the stream workers. */
  group: string
  /** The raw topic. */
  topic: string
  /** Partitions of the raw topic. */
  partitions: number
  /** The stream's grace period (TALLY_GRACE_MS). */
  graceMs: number
  /** Checkpoints are re-read at most this often. Default 1000 ms. */
  cacheMs?: number
  /**
   * A snapshot whose reads started at most this long ago (ms) is given to new requests instead of
   * a new read (TALLY_QUERY_VERSION_MAX_AGE_MS): bounded staleness, for sites asked far more often
   * than their data changes. Default 0: only a read still running is shared.
   */
  snapshotMaxAgeMs?: number
  /**
   * Whether progress notices are heard (core/ports/progress-notices.ts). While `live()`, a notice
   * (`notify`) is what makes the checkpoints be read again, and without one a snapshot serves up to
   * `notifiedMaxAgeMs`; otherwise `snapshotMaxAgeMs` applies.
   */
  notices?: { live(): boolean }
  /**
   * With notices heard, a snapshot's reads are redone at least this often anyway
   * (TALLY_QUERY_NOTIFIED_VERSION_MAX_AGE_MS): a lost notice, or a rebuild's final mark, which no
   * notice announces, waits at most this long. Default 1000 ms.
   */
  notifiedMaxAgeMs?: number
  /** Clock (tests). */
  now?: () => number
}

const MINUTE_MS = 60_000

/** Sites whose last reads are remembered (versions reused) before the memory is cleared. */
const MAX_REMEMBERED_SITES = 100_000

/** A read's value and when the read started (its age counts from then). */
interface Read<T> {
  value: T
  startedAt: number
}

interface Progress {
  freshness: Freshness
  /** The checkpoints as they enter a version. */
  key: string
}

/**
 * Freshness from the stream's checkpoints, cached briefly and shared by concurrent requests;
 * snapshots combine two reads: the checkpoints (they belong to the stream: one read shared by the
 * requests of every site) and the site's final mark (one read shared by the requests of one site).
 *
 * By default every snapshot reads both afresh (a running read is shared by the requests that
 * arrive meanwhile). With `snapshotMaxAgeMs`, reads that started at most that long ago are reused,
 * and redone in the background past half that age, so a busy site never waits for them. With
 * progress notices heard, the checkpoints are read again after a notice (the data moved), and
 * otherwise only from half of `notifiedMaxAgeMs` on: reads follow writes instead of a clock.
 */
export class CheckpointFreshness implements RecentSnapshotSource {
  private cached: Freshness | undefined
  private expires = 0
  private progressLoading: Promise<Read<Progress>> | undefined
  /** The last checkpoint read that ended (only kept while versions may be reused). */
  private progress: Read<Progress> | undefined
  private readonly markLoading = new Map<string, Promise<Read<string>>>()
  /** The last final-mark read of each site that ended (only kept while versions may be reused). */
  private readonly marks = new Map<string, Read<string>>()
  /** The snapshot last made of each site, and the two reads it was made of. */
  private readonly made = new Map<
    string,
    { progress: Read<Progress>; mark: Read<string>; snapshot: DataSnapshot }
  >()
  /** When the last progress notice arrived. */
  private noticeAt = Number.NEGATIVE_INFINITY
  /** Whether the notices were heard at the last look, and since when. */
  private wasLive = false
  private liveSince = Number.NEGATIVE_INFINITY
  private readonly cacheMs: number
  private readonly snapshotMaxAgeMs: number
  private readonly notifiedMaxAgeMs: number
  private readonly now: () => number

  constructor(
    private readonly reader: Pick<AggregateReader, 'streamProgress' | 'finalMark'>,
    private readonly options: CheckpointFreshnessOptions,
  ) {
    this.cacheMs = options.cacheMs ?? 1000
    this.snapshotMaxAgeMs = options.snapshotMaxAgeMs ?? 0
    this.notifiedMaxAgeMs = options.notifiedMaxAgeMs ?? 1000
    this.now = options.now ?? Date.now
  }

  async current(): Promise<Freshness> {
    if (this.cached && this.now() < this.expires) return this.cached
    try {
      // A checkpoint read already running is shared (readProgress).
      return (await this.readProgress()).value.freshness
    } catch (err) {
      // Meta must not fail an answer: the last value is still a correct lower bound.
      if (this.cached) return this.cached
      throw err
    }
  }

  /**
   * A stream worker wrote a checkpoint: the next request reads the checkpoints again (in the
   * background; it and those arriving meanwhile still get the version read before). Reads follow
   * requests, so a role nobody asks reads nothing.
   */
  notify(): void {
    this.noticeAt = this.now()
  }

  /**
   * How long a read may be reused: `snapshotMaxAgeMs` (0: not at all), or `notifiedMaxAgeMs` while
   * notices are heard (never less than the former).
   */
  private reuseMs(): number {
    const base = this.snapshotMaxAgeMs
    if (base <= 0 || !this.options.notices) return base
    const live = this.options.notices.live()
    // Checkpoints written while the bus was not heard (starting, Kafka away) had no notice here:
    // becoming live counts as one, so reads older than that are not kept for the longer age.
    if (live && !this.wasLive) this.liveSince = this.now()
    this.wasLive = live
    return live ? Math.max(base, this.notifiedMaxAgeMs) : base
  }

  /**
   * The checkpoints of `read` may be older than the last notice (a read that started in the same
   * millisecond may too), or than the moment the bus became heard.
   */
  private outdated(read: Read<Progress>): boolean {
    return read.startedAt <= this.noticeAt || read.startedAt < this.liveSince
  }

  /**
   * The snapshot a request may use without a read: one whose two reads started at most the reuse
   * age ago (never with snapshotMaxAgeMs 0), else undefined.
   */
  recentSnapshot(siteId: string): DataSnapshot | undefined {
    const maxAgeMs = this.reuseMs()
    if (maxAgeMs <= 0) return undefined
    const progress = this.progress
    // Once a notice says the checkpoints moved, the next request starts their read in the
    // background whatever else it finds (a site asked for the first time included).
    if (progress && this.outdated(progress) && !this.progressLoading)
      void this.readProgress().catch(() => undefined)
    const mark = this.marks.get(siteId)
    if (!progress || !mark) return undefined
    const t = this.now()
    const progressAge = t - progress.startedAt
    const markAge = t - mark.startedAt
    if (progressAge > maxAgeMs || markAge > maxAgeMs) return undefined
    // Refresh ahead: past half its age a read starts in the background, so a site asked all the
    // time has its next version before this one expires and no request waits for a read.
    if (progressAge >= maxAgeMs / 2 && !this.progressLoading) void this.readProgress().catch(() => undefined)
    if (markAge >= maxAgeMs / 2 && !this.markLoading.has(siteId))
      void this.readMark(siteId).catch(() => undefined)
    return this.snapshotOf(siteId, progress, mark)
  }

  snapshot(siteId: string): Promise<DataSnapshot> {
    const recent = this.recentSnapshot(siteId)
    if (recent) return Promise.resolve(recent)
    // Reads what is too old (or missing); a read still running is shared.
    const maxAgeMs = this.reuseMs()
    const t = this.now()
    const usable = <T>(r: Read<T> | undefined): r is Read<T> =>
      maxAgeMs > 0 && r !== undefined && t - r.startedAt <= maxAgeMs
    const progress = this.progress
    const mark = this.marks.get(siteId)
    // This request waits for a read anyway: checkpoints older than the last notice are read again
    // with it (or the read already running is shared).
    const snapshot = Promise.all([
      usable(progress) && !this.outdated(progress) ? progress : this.readProgress(),
      usable(mark) ? mark : this.readMark(siteId),
    ]).then(([p, m]) => this.snapshotOf(siteId, p, m))
    // A failure reaches every caller that awaits it; none is needed for it to count as handled.
    snapshot.catch(() => undefined)
    return snapshot
  }

  /** The site's snapshot made of two reads; made once per pair of reads (a version is a string). */
  private snapshotOf(siteId: string, progress: Read<Progress>, mark: Read<string>): DataSnapshot {
    const made = this.made.get(siteId)
    if (made && made.progress === progress && made.mark === mark) return made.snapshot
    const snapshot: DataSnapshot = {
      freshness: progress.value.freshness,
      version: `${mark.value}|${progress.value.key}`,
      finalMark: mark.value,
    }
    if (this.snapshotMaxAgeMs > 0) {
      if (this.made.size >= MAX_REMEMBERED_SITES) this.made.clear()
      this.made.set(siteId, { progress, mark, snapshot })
    }
    return snapshot
  }

  /**
   * The stream's checkpoints, read afresh; one read shared by every caller (any site) that asks
   * while it runs. They belong to the stream, not to a site: a query role serving many sites makes
   * one such read at a time, not one per site.
   */
  private readProgress(): Promise<Read<Progress>> {
    if (!this.progressLoading) {
      const { group, topic, partitions } = this.options
      const startedAt = this.now()
      this.progressLoading = this.reader
        .streamProgress(group, topic, partitions)
        .then((all) => {
          const read = { value: this.progressOf(all), startedAt }
          // A read that started earlier must not replace a newer one that finished first.
          if (this.snapshotMaxAgeMs > 0 && !(this.progress && this.progress.startedAt > startedAt))
            this.progress = read
          return read
        })
        .finally(() => {
          this.progressLoading = undefined
        })
    }
    return this.progressLoading
  }

  /** The site's final mark, read afresh; one read shared by the callers asking while it runs. */
  private readMark(siteId: string): Promise<Read<string>> {
    let loading = this.markLoading.get(siteId)
    if (!loading) {
      const startedAt = this.now()
      loading = this.reader
        .finalMark(siteId)
        .then((value) => {
          const read = { value, startedAt }
          const last = this.marks.get(siteId)
          if (this.snapshotMaxAgeMs > 0 && !(last && last.startedAt > startedAt)) {
            if (this.marks.size >= MAX_REMEMBERED_SITES) this.marks.clear()
            this.marks.set(siteId, read)
          }
          return read
        })
        .finally(() => this.markLoading.delete(siteId))
      this.markLoading.set(siteId, loading)
    }
    return loading
  }

  /** Freshness and the version key of checkpoints; keeps the freshness as the cached value. */
  private progressOf(all: readonly StreamProgress[]): Progress {
    const { partitions, graceMs } = this.options
    const progress = all.filter((p) => p.watermarkMs > 0)
    const minWatermark = progress.length > 0 ? Math.min(...progress.map((p) => p.watermarkMs)) : undefined
    const fresh: Freshness = {
      completeThroughMs:
        minWatermark === undefined ? undefined : Math.floor((minWatermark - graceMs) / MINUTE_MS) * MINUTE_MS,
      receivedThroughMs: minWatermark,
      graceMs,
      partitionsReporting: progress.length,
      partitionsExpected: partitions,
    }
    this.cached = fresh
    this.expires = this.now() + this.cacheMs
    return {
      freshness: fresh,
      key: all.map((p) => `${p.partition}:${p.nextOffset}:${p.watermarkMs}:${p.updatedAtMs}`).join(','),
    }
  }
}
