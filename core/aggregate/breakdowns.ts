import {
  DIMENSIONS,
  ROW_DIMENSIONS,
  type RowDimension,
  SESSION_DIMENSIONS,
  type VISIT_DIMENSIONS,
} from './definition.js'

/**
 * The breakdown dimensions a deployment aggregates (TALLY_BREAKDOWNS): each one adds a row per
 * event to every hour and day window (and a visit's session values add rows per visit), so an
 * operator who needs no country or no utm_content saves those rows. Stream, rebuild and query read
 * the same list: the stream and the rebuild write rows of these dimensions only, and the query
 * refuses a breakdown or a filter on another (nothing is stored for it). Totals, custom properties
 * (`prop:KEY`, declared per site) and goals (per site) are not in the list: they have their own
 * switches.
 */

/** The dimensions TALLY_BREAKDOWNS may name: an event's, then a visit's own (entry/exit page). */
export type BreakdownDimension = (typeof DIMENSIONS)[number] | (typeof VISIT_DIMENSIONS)[number]
export const BREAKDOWN_DIMENSIONS: readonly BreakdownDimension[] =
  ROW_DIMENSIONS as readonly BreakdownDimension[]

/**
 * The dimensions Tally had before issue 17 added the country, source, channel and the rest of the
 * UTM set: the bench's "before" (bench/scenarios/stream.ts).
 */
export const ORIGINAL_BREAKDOWNS: readonly BreakdownDimension[] = [
  'event',
  'path',
  'referrer',
  'utm_source',
  'browser',
  'os',
  'device',
  'entry_page',
  'exit_page',
]

/**
 * Parses a comma-separated list of breakdown dimensions (spaces around names ignored, repeats
 * allowed) into BREAKDOWN_DIMENSIONS order; empty or unset: all of them. `bad` names the first entry
 * that is not one (an empty entry between commas included).
 */
export function parseBreakdowns(
  raw: string | undefined,
): { ok: true; dimensions: readonly BreakdownDimension[] } | { ok: false; bad: string } {
  if (raw === undefined || raw.trim() === '') return { ok: true, dimensions: BREAKDOWN_DIMENSIONS }
  const names = raw.split(',').map((s) => s.trim())
  for (const n of names) {
    if (!(BREAKDOWN_DIMENSIONS as readonly string[]).includes(n)) return { ok: false, bad: n }
  }
  return { ok: true, dimensions: BREAKDOWN_DIMENSIONS.filter((d) => names.includes(d)) }
}

/**
 * Which rows of the breakdowns kept are written, as index lists computed once (the stream's aggregate
 * step walks `event` per event, so a skipped dimension costs nothing per event).
 */
export class KeptBreakdowns {
  /** DIMENSIONS indexes kept, in order. */
  readonly event: readonly number[]
  /** SESSION_DIMENSIONS indexes kept, in order (a visit's session values). */
  readonly session: readonly number[]
  readonly entryPage: boolean
  readonly exitPage: boolean
  private readonly kept: ReadonlySet<string>

  constructor(readonly dimensions: readonly BreakdownDimension[] = BREAKDOWN_DIMENSIONS) {
    this.kept = new Set(dimensions)
    this.event = indexesKept(DIMENSIONS, this.kept)
    this.session = indexesKept(SESSION_DIMENSIONS, this.kept)
    this.entryPage = this.kept.has('entry_page')
    this.exitPage = this.kept.has('exit_page')
  }

  /** Whether rows of `dimension` are written: totals (undefined), props and goals always are. */
  keeps(dimension: RowDimension | undefined): boolean {
    return (
      dimension === undefined ||
      this.kept.has(dimension) ||
      !(ROW_DIMENSIONS as readonly string[]).includes(dimension)
    )
  }

  /** All of BREAKDOWN_DIMENSIONS are kept. */
  get all(): boolean {
    return this.kept.size === BREAKDOWN_DIMENSIONS.length
  }
}

function indexesKept(list: readonly string[], kept: ReadonlySet<string>): number[] {
  const out: number[] = []
  list.forEach((d, i) => {
    if (kept.has(d)) out.push(i)
  })
  return out
}
