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
   * A snapshot whose read started at most this long ago (ms) is given to new requests instead of
   * a new read (TALLY_QUERY_VERSION_MAX_AGE_MS): bounded staleness, for sites asked far more often
   * than their data changes. Default 0: only a read still running is shared.
   */
  snapshotMaxAgeMs?: number
  /** Clock (tests). */
  now?: () => number
}

const MINUTE_MS = 60_000

/** Sites whose last snapshot is remembered (snapshotMaxAgeMs > 0) before the memory is cleared. */
const MAX_REMEMBERED_SITES = 100_000

/**
 * Freshness from the stream's checkpoints, cached briefly and shared by concurrent requests;
 * snapshots read the checkpoints and the site's final mark afresh, one read shared by the requests
 * that arrive while it runs (or, with `snapshotMaxAgeMs`, one that started at most that long ago).
 * The checkpoint read is shared by the requests of every site, the final mark's by those of one.
 */
export class CheckpointFreshness implements SnapshotSource {
  private cached: Freshness | undefined
  private expires = 0
  private loading: Promise<Freshness> | undefined
  private progressLoading: Promise<StreamProgress[]> | undefined
  private progressStartedAt = 0
  private readonly snapshots = new Map<string, Promise<DataSnapshot>>()
  /** The last snapshot of each site and when its read started (only with snapshotMaxAgeMs > 0). */
  private readonly recent = new Map<string, { startedAt: number; snapshot: DataSnapshot }>()
  private readonly cacheMs: number
  private readonly snapshotMaxAgeMs: number
  private readonly now: () => number

  constructor(
    private readonly reader: Pick<AggregateReader, 'streamProgress' | 'finalMark'>,
    private readonly options: CheckpointFreshnessOptions,
  ) {
    this.cacheMs = options.cacheMs ?? 1000
    this.snapshotMaxAgeMs = options.snapshotMaxAgeMs ?? 0
    this.now = options.now ?? Date.now
  }

  async current(): Promise<Freshness> {
    if (this.cached && this.now() < this.expires) return this.cached
    this.loading ??= this.load().finally(() => {
      this.loading = undefined
    })
    try {
      return await this.loading
    } catch (err) {
      // Meta must not fail an answer: the last value is still a correct lower bound.
      if (this.cached) return this.cached
      throw err
    }
  }

  /**
   * The snapshot a request may use without a read: one whose read started at most
   * `snapshotMaxAgeMs` ago (never with the default 0), else undefined.
   */
  recentSnapshot(siteId: string): DataSnapshot | undefined {
    const maxAgeMs = this.snapshotMaxAgeMs
    if (maxAgeMs <= 0) return undefined
    const last = this.recent.get(siteId)
    if (!last) return undefined
    const age = this.now() - last.startedAt
    if (age > maxAgeMs) return undefined
    // Refresh ahead: past half its age a new read starts in the background, so a site asked all
    // the time has its next version before this one expires and no request waits for a read.
    if (age >= maxAgeMs / 2 && !this.snapshots.has(siteId)) void this.read(siteId)
    return last.snapshot
  }

  snapshot(siteId: string): Promise<DataSnapshot> {
    const recent = this.recentSnapshot(siteId)
    if (recent) return Promise.resolve(recent)
    return this.snapshots.get(siteId) ?? this.read(siteId)
  }

  /** Starts a snapshot read of the site, shared until it ends; remembered when versions may be reused. */
  private read(siteId: string): Promise<DataSnapshot> {
    const startedAt = this.now()
    const loading = this.loadSnapshot(siteId).finally(() => this.snapshots.delete(siteId))
    if (this.snapshotMaxAgeMs > 0) {
      loading.then(
        ({ snapshot, progressStartedAt }) => {
          // Its age counts from the older of its two reads (the checkpoint read may be shared).
          const at = Math.min(startedAt, progressStartedAt)
          const last = this.recent.get(siteId)
          // A read that started earlier must not replace a newer one that finished first.
          if (last && last.startedAt > at) return
          if (this.recent.size >= MAX_REMEMBERED_SITES) this.recent.clear()
          this.recent.set(siteId, { startedAt: at, snapshot })
        },
        // The caller gets the failure through `loading`; nothing is remembered.
        () => undefined,
      )
    }
    const snapshot = loading.then((r) => r.snapshot)
    // A failure reaches every caller that awaits it; none is needed for it to count as handled.
    snapshot.catch(() => undefined)
    this.snapshots.set(siteId, snapshot)
    return snapshot
  }

  /**
   * The stream's checkpoints, read afresh; one read shared by every caller (any site) that asks
   * while it runs. They belong to the stream, not to a site: a query role serving many sites makes
   * one such read at a time, not one per site.
   */
  private readProgress(): Promise<StreamProgress[]> {
    if (!this.progressLoading) {
      const { group, topic, partitions } = this.options
      this.progressStartedAt = this.now()
      this.progressLoading = this.reader.streamProgress(group, topic, partitions).finally(() => {
        this.progressLoading = undefined
      })
    }
    return this.progressLoading
  }

  private async loadSnapshot(siteId: string): Promise<{ snapshot: DataSnapshot; progressStartedAt: number }> {
    const progressRead = this.readProgress()
    const progressStartedAt = this.progressStartedAt
    const [progress, mark] = await Promise.all([progressRead, this.reader.finalMark(siteId)])
    const freshness = this.freshnessOf(progress)
    const checkpoints = progress.map(
      (p) => `${p.partition}:${p.nextOffset}:${p.watermarkMs}:${p.updatedAtMs}`,
    )
    return {
      snapshot: { freshness, version: `${mark}|${checkpoints.join(',')}`, finalMark: mark },
      progressStartedAt,
    }
  }

  private async load(): Promise<Freshness> {
    return this.freshnessOf(await this.readProgress())
  }

  /** Computes freshness from checkpoints and keeps it as the cached value. */
  private freshnessOf(all: readonly StreamProgress[]): Freshness {
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
    return fresh
  }
}
