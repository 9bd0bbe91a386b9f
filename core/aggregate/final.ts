import type { Granularity } from './definition.js'

/**
 * How a rebuild's final rows replace the stream's numbers all at once, the same for every store.
 *
 * A rebuild writes its rows as one *generation*: source_partition = −generation, where the
 * generation comes from the rebuild's fencing token. Readers ignore those rows until the rebuild
 * *commits* the generation for a span (one commit row per span, written after every row of the
 * span): from then on, within each window of the span the generation's row replaces the stream
 * partials. Rows of other generations (earlier rebuilds, or a rebuild killed before its commit) are
 * never read. A span is an hour for minute and hour windows (the hour the window starts in) and
 * the day for day windows, so a rebuild killed while writing leaves every span it had not
 * committed with its previous numbers.
 */

export type FinalScope = 'hour' | 'day'

/** A span of windows one commit covers. */
export interface FinalSpan {
  scope: FinalScope
  /** Start of the hour (scope hour) or of the day (scope day). */
  startMs: number
  /**
   * The rebuild's archive did not cover the span (`tally rebuild --allow-incomplete`): readers use
   * its numbers but do not report its windows as final. Default false.
   */
  provisional?: boolean
}

const HOUR_MS = 3_600_000

/** Largest generation: source_partition is a 32-bit signed integer. */
const MAX_GENERATION = 2 ** 31 - 1

/** The scope of the commit covering windows of `g`. */
export function scopeOf(g: Granularity): FinalScope {
  return g === 'day' ? 'day' : 'hour'
}

/** Start of the span covering the window of `g` that starts at `windowStartMs`. */
export function spanStartOf(g: Granularity, windowStartMs: number): number {
  return g === 'day' ? windowStartMs : Math.floor(windowStartMs / HOUR_MS) * HOUR_MS
}

/**
 * The generation of a rebuild's rows, from its fencing token: 1 … 2³¹−1. Two rebuilds of one span
 * share a generation only when their tokens differ by a multiple of 2³¹−2 (chance about 2⁻³¹). Even
 * then the numbers end right: a rebuild writes a row (zero if need be) for every row key its spans
 * hold, with its higher token, so no row of the other rebuild is left to be read; only that
 * rebuild's switch is then not all at once.
 */
export function generationOf(token: number): number {
  if (!Number.isSafeInteger(token) || token < 0)
    throw new RangeError(`a fencing token must be a non-negative integer, got ${token}`)
  return 1 + (token % (MAX_GENERATION - 1))
}

/** The committed generation of each span of one site and scope, as a reader loaded them. */
export class CommittedGenerations {
  private readonly bySpan = new Map<number, number>()
  /** Spans whose commit is provisional (FinalSpan.provisional). */
  private readonly provisionalSpans = new Set<number>()

  constructor(
    readonly scope: FinalScope,
    entries: Iterable<readonly [spanStartMs: number, generation: number, provisional?: boolean]>,
  ) {
    for (const [span, generation, provisional] of entries) {
      this.bySpan.set(span, generation)
      if (provisional) this.provisionalSpans.add(span)
    }
  }

  /** The committed generation of the window of `g` starting at `windowStartMs`; 0 when none. */
  of(g: Granularity, windowStartMs: number): number {
    if (this.bySpan.size === 0) return 0
    return this.bySpan.get(spanStartOf(g, windowStartMs)) ?? 0
  }

  /** Whether the commit of that window's span is provisional: its rows are read but are not final. */
  provisional(g: Granularity, windowStartMs: number): boolean {
    return this.provisionalSpans.size > 0 && this.provisionalSpans.has(spanStartOf(g, windowStartMs))
  }

  static readonly NONE = new CommittedGenerations('hour', [])
}

/** The range of span starts a reader loads for windows of `g` starting in [fromMs, toMs). */
export function spanRange(g: Granularity, fromMs: number, toMs: number): { fromMs: number; toMs: number } {
  return { fromMs: spanStartOf(g, fromMs), toMs }
}

/**
 * The spans a rebuild commits for the hour-aligned range [fromMs, toMs) inside one day: each hour,
 * and the day when the range is the whole day.
 */
export function spansOfDay(dayMs: number, fromMs: number, toMs: number): FinalSpan[] {
  const spans: FinalSpan[] = []
  for (let h = fromMs; h < toMs; h += HOUR_MS) spans.push({ scope: 'hour', startMs: h })
  if (fromMs === dayMs && toMs === dayMs + 24 * HOUR_MS) spans.push({ scope: 'day', startMs: dayMs })
  return spans
}

/**
 * Seconds a commit lives, given the rows' lifetimes per granularity (0: forever): as long as the
 * longest-lived rows of its span.
 */
export function commitTtlSeconds(
  span: FinalSpan,
  ttl: { readonly minute: number; readonly hour: number; readonly day: number },
): number {
  if (span.scope === 'day') return ttl.day
  return ttl.minute === 0 || ttl.hour === 0 ? 0 : Math.max(ttl.minute, ttl.hour)
}
