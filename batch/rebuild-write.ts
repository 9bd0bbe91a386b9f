import { DIMENSION_GRANULARITIES, type Granularity, ROW_DIMENSIONS } from '../core/aggregate/definition.js'
import { spansOfDay } from '../core/aggregate/final.js'
import { type AggregateValues, hasVisits, type VisitCounts } from '../core/ports/aggregate-store.js'
import type { FinalRow, FinalRowStore } from '../core/ports/batch-store.js'
import { RegisterSet } from './registers.js'
import type { StagingArea } from './staging.js'

/** The write of a rebuild (batch/rebuild.ts, its commit step): staged rows → final rows, committed per site-day. */

const HOUR_MS = 3_600_000
const DAY_MS = 86_400_000

function rowKey(r: {
  granularity: Granularity
  windowStart: number
  dimension: string | undefined
  value: string
}): string {
  return `${r.granularity}\u0001${r.windowStart}\u0001${r.dimension ?? ''}\u0001${r.value}`
}

const NO_VISITS: VisitCounts = { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 }

/** Every dimension a final row can have: the events' and the visits' own (entry_page, exit_page). */

/**
 * One staged row of a window from the aggregation (no visit counts) and one from the visits (visit
 * counts only; batch/rebuild.ts stages them apart because a day's visits are known at its end).
 */
function mergeStaged(a: AggregateValues, b: AggregateValues): AggregateValues {
  const [counts, visits] = hasVisits(a) ? [b, a] : [a, b]
  if (hasVisits(counts) || !hasVisits(visits))
    throw new Error('a staged window has two rows of the same kind (aggregation or visits)')
  return {
    ...counts,
    visits: visits.visits,
    bounces: visits.bounces,
    visitDurationMs: visits.visitDurationMs,
    visitPageviews: visits.visitPageviews,
  }
}

export interface WriteOptions {
  siteId: string | undefined
  fromMs: number
  toMs: number
  /** Spans ending after this are committed provisional (RebuildRequest.archiveCompleteThroughMs). */
  completeThroughMs: number | undefined
  /** A site-day's hours the rebuild found empty although the stream counted events in them. */
  onZeroed: (siteId: string, hours: number[], streamEvents: number) => void
  token: number
  /**
   * The result has visit counts (RebuildSettings.countsVisits): every row carries them. Without
   * (a measuring run), rows are written without visit data.
   */
  countsVisits: boolean
  precision: number
  chunk: number
  /** Before each chunk of rows and each commit. */
  beforeChunk: () => Promise<void>
  /** After each chunk and each day: days done, rows written. */
  onWritten: (daysDone: number, rowsWritten: number) => void
}

/**
 * Writes the staged rows day by day, site by site, as the job's generation, and commits each
 * site's day (its hours, and the day when whole) once all its rows are written: readers switch
 * from the previous numbers to the new ones at the commit, so a job killed while writing leaves
 * every uncommitted day as it was (core/aggregate/final.ts). Row keys the store holds for a window
 * of the range that the result lacks (stream partials of events now known to be duplicates,
 * values of an older rebuild, entry and exit pages of visits that moved) get final rows of zeros, so
 * readers see exactly the rebuild's numbers. Every row written carries visit counts (0 where no
 * visit started), so the windows read as having visit data.
 */
export async function writeDays(
  store: FinalRowStore,
  area: StagingArea,
  days: readonly number[],
  o: WriteOptions,
): Promise<{ rows: number; windows: number }> {
  let rows = 0
  let windows = 0
  let daysDone = 0
  const empty = new RegisterSet(o.precision).toBytes()
  o.onWritten(0, 0)
  for (const day of days) {
    const bySite = new Map<string, Map<string, FinalRow>>()
    for await (const row of area.read(day)) {
      let m = bySite.get(row.siteId)
      if (!m) {
        m = new Map()
        bySite.set(row.siteId, m)
      }
      const k = rowKey(row)
      const had = m.get(k)
      m.set(k, had ? { ...row, values: mergeStaged(had.values, row.values) } : row)
    }
    if (o.siteId !== undefined && !bySite.has(o.siteId)) bySite.set(o.siteId, new Map())
    const from = Math.max(day, o.fromMs)
    const to = Math.min(day + DAY_MS, o.toMs)
    const wholeDay = day >= o.fromMs && day + DAY_MS <= o.toMs
    for (const [siteId, produced] of bySite) {
      // Every row carries visit counts: a window where no visit started has 0 visits, known.
      const noVisits = o.countsVisits ? NO_VISITS : {}
      const out: FinalRow[] = [...produced.values()].map((r) =>
        hasVisits(r.values) ? r : { ...r, values: { ...r.values, ...noVisits } },
      )
      const zero = (
        granularity: Granularity,
        windowStart: number,
        dimension: FinalRow['dimension'],
        value: string,
      ) =>
        out.push({
          siteId,
          granularity,
          windowStart,
          dimension,
          value,
          values: { events: 0, pageviews: 0, botEvents: 0, visitors: empty, ...noVisits },
        })
      const granularities: Granularity[] = wholeDay ? ['minute', 'hour', 'day'] : ['minute', 'hour']
      const zeroedHours: number[] = []
      for (const g of granularities) {
        for (const ws of await store.existingWindows(siteId, g, from, to)) {
          if (!produced.has(rowKey({ granularity: g, windowStart: ws, dimension: undefined, value: '' }))) {
            zero(g, ws, undefined, '')
            if (g === 'hour') zeroedHours.push(ws)
          }
          if (!DIMENSION_GRANULARITIES.includes(g)) continue
          for (const d of ROW_DIMENSIONS) {
            for (const value of await store.existingValues(siteId, g, d, ws)) {
              if (!produced.has(rowKey({ granularity: g, windowStart: ws, dimension: d, value })))
                zero(g, ws, d, value)
            }
          }
        }
      }
      // An hour the store has rows for but the archive had no event of: if the stream counted
      // events there, the rebuild is about to replace real counts with zeros (a lagging or missing
      // archive, a wrong --archive-dir): the caller says so loudly.
      if (zeroedHours.length > 0) {
        const counted = await store.streamHourEvents(siteId, from, to)
        const hours = zeroedHours.filter((h) => (counted.get(h) ?? 0) > 0).sort((a, b) => a - b)
        if (hours.length > 0)
          o.onZeroed(
            siteId,
            hours,
            hours.reduce((n, h) => n + (counted.get(h) ?? 0), 0),
          )
      }
      const keys = new Set(out.map((r) => `${r.granularity}\u0001${r.windowStart}`))
      windows += keys.size
      for (let i = 0; i < out.length; i += o.chunk) {
        await o.beforeChunk()
        const part = out.slice(i, i + o.chunk)
        await store.writeFinal(part, o.token)
        rows += part.length
        o.onWritten(daysDone, rows)
      }
      await o.beforeChunk()
      const through = o.completeThroughMs
      const spans = spansOfDay(day, from, to).map((span) => {
        const end = span.startMs + (span.scope === 'day' ? DAY_MS : HOUR_MS)
        return through !== undefined && end > through ? { ...span, provisional: true } : span
      })
      await store.commitFinal(siteId, spans, o.token)
    }
    o.onWritten(++daysDone, rows)
  }
  return { rows, windows }
}
