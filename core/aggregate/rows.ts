import type { RawEventV1 } from '../../schemas/events.js'
import { HyperLogLog } from '../hll.js'
import type { AggregateValues, RowKey, VisitCounts } from '../ports/aggregate-store.js'
import {
  DIMENSION_GRANULARITIES,
  DIMENSIONS,
  dimensionsOf,
  GRANULARITIES,
  isPageview,
  kindOf,
  visitorId,
  windowStart,
} from './definition.js'
import { addTo } from './visits.js'

/** Every row one counted event touches: totals for each granularity, breakdowns for hour and day. */
export function rowKeysFor(e: RawEventV1, timestampMs: number, sourcePartition: number): RowKey[] {
  const keys: RowKey[] = []
  for (const g of GRANULARITIES) {
    keys.push({
      siteId: e.siteId,
      granularity: g,
      windowStart: windowStart(timestampMs, g),
      dimension: undefined,
      value: '',
      sourcePartition,
    })
  }
  const dims = dimensionsOf(e)
  for (const g of DIMENSION_GRANULARITIES) {
    const ws = windowStart(timestampMs, g)
    for (const d of DIMENSIONS) {
      keys.push({
        siteId: e.siteId,
        granularity: g,
        windowStart: ws,
        dimension: d,
        value: dims[d],
        sourcePartition,
      })
    }
  }
  return keys
}

/** Counts of one row while it is being built. */
export class RowAccumulator {
  events = 0
  pageviews = 0
  botEvents = 0
  readonly visitors: HyperLogLog
  visits = 0
  bounces = 0
  visitDurationMs = 0
  visitPageviews = 0
  /**
   * Whether the row carries visit counts: a new row of a writer that counts visits
   * (`countsVisits`), or a stored row that had them. A stored row without them (written before
   * visits existed) stays without: its visits before that are unknown, so {@link values} leaves
   * them absent and readers show no visits for its window until a rebuild.
   */
  readonly visitsKnown: boolean

  constructor(precision: number, stored?: AggregateValues, options: { countsVisits?: boolean } = {}) {
    if (stored) {
      this.events = stored.events
      this.pageviews = stored.pageviews
      this.botEvents = stored.botEvents
      this.visitors =
        stored.visitors.length > 0 ? HyperLogLog.fromBytes(stored.visitors) : new HyperLogLog(precision)
      this.visitsKnown = stored.visits !== undefined
      this.visits = stored.visits ?? 0
      this.bounces = stored.bounces ?? 0
      this.visitDurationMs = stored.visitDurationMs ?? 0
      this.visitPageviews = stored.visitPageviews ?? 0
    } else {
      this.visitors = new HyperLogLog(precision)
      this.visitsKnown = options.countsVisits ?? false
    }
  }

  /** Adds a change of visit counts (core/aggregate/visits.ts `visitDeltas`; negative when visits left). */
  addVisits(delta: VisitCounts): void {
    addTo(this, delta)
  }

  /** Adds one event (the caller decides that it counts and is not a duplicate). */
  add(e: RawEventV1, visitorHash?: bigint): void {
    if (kindOf(e) === 'bot') {
      this.botEvents++
      return
    }
    this.events++
    if (isPageview(e)) this.pageviews++
    if (visitorHash === undefined) this.visitors.add(visitorId(e))
    else this.visitors.addHash(visitorHash)
  }

  /**
   * Adds one counted event already reduced to what a row needs: whether a bot sent it, whether it
   * is a page view, and its visitor id's hash as halves (`hashHalves`). Same effect as {@link add}.
   */
  addCounted(bot: boolean, pageview: boolean, visitorHi: number, visitorLo: number): void {
    if (bot) {
      this.botEvents++
      return
    }
    this.events++
    if (pageview) this.pageviews++
    this.visitors.addHalves(visitorHi, visitorLo)
  }

  values(): AggregateValues {
    const v: AggregateValues = {
      events: this.events,
      pageviews: this.pageviews,
      botEvents: this.botEvents,
      visitors: this.visitors.toBytes(),
    }
    if (this.visitsKnown) {
      v.visits = this.visits
      v.bounces = this.bounces
      v.visitDurationMs = this.visitDurationMs
      v.visitPageviews = this.visitPageviews
    }
    return v
  }
}
