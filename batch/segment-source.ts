import type { SegmentRef } from '../core/archive/segment-file.js'
import { CorruptSegmentError, readSegment, type SegmentColumns } from '../core/archive/segment-reader.js'
import type { Logger } from '../core/log.js'

export interface SegmentSourceOptions {
  /** Segment bytes kept in memory between the two passes (beyond, pass 2 reads them again). */
  cacheBytes: number
  /** Skip corrupt or truncated segments instead of failing. */
  skipCorrupt: boolean
  /** Told of each corrupt segment skipped (its path). */
  onCorrupt: (path: string) => void
  log: Logger
}

/**
 * The segments of a rebuild's range as its two passes read them, in order: one segment read ahead
 * (the disk works while the CPU handles the current one), the segments of pass 1 kept for pass 2
 * while they fit the budget, corrupt ones skipped when asked (read as undefined).
 */
export class SegmentSource {
  private readonly corrupt = new Set<number>()
  private readonly cache = new Map<number, SegmentColumns>()
  private cached = 0
  private caching = true
  private ahead: { i: number; p: Promise<SegmentColumns | undefined> } | undefined

  constructor(
    readonly segments: readonly SegmentRef[],
    private readonly options: SegmentSourceOptions,
  ) {}

  get length(): number {
    return this.segments.length
  }

  /** Segment `i` (undefined: corrupt and skipped), starting the read of `i + 1`. */
  next(i: number): Promise<SegmentColumns | undefined> {
    const current = this.ahead?.i === i ? this.ahead.p : this.read(i)
    this.ahead = i + 1 < this.segments.length ? { i: i + 1, p: this.read(i + 1) } : undefined
    // Awaited on the next call; a failure here must not go unhandled if the job stops first.
    this.ahead?.p.catch(() => undefined)
    return current
  }

  /** Pass 1 is over: what is cached stays for pass 2, nothing more is added. */
  stopCaching(): void {
    this.caching = false
  }

  private async read(i: number): Promise<SegmentColumns | undefined> {
    if (this.corrupt.has(i)) return undefined
    const hit = this.cache.get(i)
    if (hit) {
      this.cache.delete(i)
      return hit
    }
    try {
      const cols = await readSegment(this.segments[i]!)
      if (this.caching && this.cached + cols.byteLength <= this.options.cacheBytes) {
        this.cache.set(i, cols)
        this.cached += cols.byteLength
      }
      return cols
    } catch (err) {
      if (!(err instanceof CorruptSegmentError) || !this.options.skipCorrupt) throw err
      this.corrupt.add(i)
      this.options.onCorrupt(err.path)
      this.options.log.warn({ path: err.path }, `${err.message}; skipped (--skip-corrupt)`)
      return undefined
    }
  }
}
