import {
  DIMENSION_GRANULARITIES,
  DIMENSIONS,
  type Dimension,
  dimensionsOf,
  GRANULARITIES,
  isPageview,
  kindOf,
  NONE,
  SESSION_DIMENSIONS,
  visitorId,
  windowStart,
} from '../core/aggregate/definition.js'
import {
  GOAL_BY_DIMENSIONS,
  GOAL_BY_EXIT_PAGE,
  GOAL_DIMENSION,
  type GoalMatcher,
  goalByDimension,
  goalByValue,
} from '../core/aggregate/goals.js'
import { isCappedDimension, propDimension, propValueOf } from '../core/aggregate/props.js'
import {
  addTo,
  type EndedVisit,
  type Extension,
  newExtension,
  type VisitState,
  visitCounts,
  visitDeltas,
  visitEventOf,
  zero,
} from '../core/aggregate/visits.js'
import type { StreamConfig } from '../core/config.js'
import { type HashHalves, hashHalves } from '../core/hll.js'
import type { Logger } from '../core/log.js'
import type { VisitCounts } from '../core/ports/aggregate-store.js'
import type { ConsumedRecord, RecordBatch } from '../core/ports/event-log.js'
import { checkEvent, type DecodedEvent, decodeValue } from '../core/record/codec.js'
import { HEADERS } from '../core/record/headers.js'
import { dedupKey } from '../core/record/keys.js'
import type { RawEntry } from '../core/record/packed.js'
import { drop, ok, type StepResult } from '../core/record/result.js'
import type { DedupSet } from './dedup.js'
import {
  apply,
  applyConverter,
  applyVisitPageRows,
  applyVisitRows,
  applyVisits,
  BOT,
  type Loading,
  PAGEVIEW,
  propRowOf,
  type RowTable,
  rowOf,
  rowToLoad,
} from './rows.js'

/**
 * The per-record pipeline of the stream worker, as the README names it: decode → validate → dedup →
 * classify → aggregate → visits (the flush, with the loading of rows and the checkpoint, is the worker's:
 * stream/worker.ts). Each step before aggregate returns the raw-record module's StepResult: ok,
 * dead-letter (poison: goes to the DLQ with its reason) or drop (counted, not an error).
 * `countRecords` runs a batch through them; the worker times it as one step.
 */

/**
 * Step 1: bytes → JSON object. Step 2: the version and the fields the steps read (ingest validated
 * the whole event with the TypeBox schema before writing it; codec.ts checkEvent).
 */
export { checkEvent as validate, decodeValue as decode }

/** Step 3: a messageId seen within the horizon is a client retry. */
export function dedup(d: DecodedEvent, seen: DedupSet): StepResult<DecodedEvent> {
  // Server-assigned ids are unique by construction: no need to remember them.
  if (d.event.messageIdAssigned) return ok(d)
  return seen.addId(dedupKey(d.event), d.receivedMs) ? ok(d) : drop('duplicate')
}

/**
 * Step 4: identify/group/alias are not activity; events whose windows closed go to batch, and so do
 * events timed after `futureAfterMs` (ingest clamps those since issue 19, but the log may hold older
 * records or other writers' ones): their windows would stay open in memory until that time comes.
 */
export function classify(
  d: DecodedEvent,
  lateBeforeMs: number,
  futureAfterMs: number,
): StepResult<DecodedEvent> {
  if (kindOf(d.event) === 'ignored') return drop('not_counted')
  // An event is late when its minute window ended before the grace line.
  const minuteEnd = Math.floor(d.timestampMs / 60_000) * 60_000 + 60_000
  if (minuteEnd <= lateBeforeMs) return drop('late')
  if (d.timestampMs > futureAfterMs) return drop('future')
  return ok(d)
}

/** Scratch for the visitor hash of the event being counted (the steps run one event at a time). */
const visitorHash: HashHalves = { hi: 0, lo: 0 }

/**
 * Step 5: counts the event in every row it touches (totals of each granularity, one row per
 * dimension for hour and day), each row once per offset. A row not in memory is added without its
 * value and listed in `loading`: the event waits in it until the worker has loaded the batch's rows.
 */
export function aggregate(
  d: DecodedEvent,
  offset: number,
  table: RowTable,
  sourcePartition: number,
  loading: Loading[],
  eventDims?: Record<Dimension, string>,
  props?: PipelineProps,
): void {
  // The event as every row sees it: offset, bot/pageview flags and the visitor hash (once).
  const e = d.event
  const visitor = visitorHash
  hashHalves(visitorId(e), visitor)
  const flags = (kindOf(e) === 'bot' ? BOT : 0) | (isPageview(e) ? PAGEVIEW : 0)
  let dims = eventDims
  // The goals the event completes, matched once for its hour and day windows.
  let reached: readonly string[] | undefined
  for (let gi = 0; gi < GRANULARITIES.length; gi++) {
    const granularity = GRANULARITIES[gi]!
    const ws = windowStart(d.timestampMs, granularity)
    const w = table.window(gi, e.siteId, ws)
    const totals =
      w.totals ??
      rowToLoad(table, loading, w, -1, {
        siteId: e.siteId,
        granularity,
        windowStart: ws,
        dimension: undefined,
        value: '',
        sourcePartition,
      })
    apply(table, totals, offset, flags, visitor.hi, visitor.lo)
    if (w.dims.length === 0) continue
    dims ??= dimensionsOf(e)
    // The breakdowns kept (TALLY_BREAKDOWNS): DIMENSIONS indexes computed once with the table.
    const kept = table.kept.event
    for (let k = 0; k < kept.length; k++) {
      const di = kept[k]!
      const dimension = DIMENSIONS[di]!
      // A capped dimension's value, or `(other)` (core/aggregate/props.ts, TALLY_DIMENSION_VALUES_MAX).
      const value = w.valueOf(di, dims[dimension])
      const row =
        w.dims[di]!.get(value) ??
        rowToLoad(table, loading, w, di, {
          siteId: e.siteId,
          granularity,
          windowStart: ws,
          dimension,
          value,
          sourcePartition,
        })
      apply(table, row, offset, flags, visitor.hi, visitor.lo)
    }
    if (props === undefined) continue
    // The site's custom properties (core/aggregate/props.ts): one row per key, under its value or
    // `(other)` when the cap rule can no longer keep the value in this window.
    for (const key of props.keysOf(e.siteId)) {
      const dimension = propDimension(key)
      const pr = w.propRows(dimension, props.maxValues)
      const value = pr.admission.admit(propValueOf(e, key))
      const row = propRowOf(table, loading, w, pr, {
        siteId: e.siteId,
        granularity,
        windowStart: ws,
        dimension,
        value,
        sourcePartition,
      })
      apply(table, row, offset, flags, visitor.hi, visitor.lo)
    }
    // The site's goals (core/aggregate/goals.ts): a counted event that completes goals counts in
    // the `goal` row of each (bots complete none).
    const goals = props.goalsOf?.(e.siteId)
    if (goals === undefined || goals.empty || (flags & BOT) !== 0) continue
    reached ??= goals.reached(e.type, dims.event, dims.path)
    for (const name of reached) {
      const gr = w.propRows(GOAL_DIMENSION, GOAL_ROWS_MAX)
      const row = propRowOf(table, loading, w, gr, {
        siteId: e.siteId,
        granularity,
        windowStart: ws,
        dimension: GOAL_DIMENSION,
        value: name,
        sourcePartition,
      })
      apply(table, row, offset, flags, visitor.hi, visitor.lo)
    }
  }
}

/**
 * Goal names a window's `goal` rows admit (core/aggregate/props.ts ValueAdmission): far above the
 * 20 goals a site defines, so none is folded into `(other)` even when goals change in a window.
 */
const GOAL_ROWS_MAX = 1000

/** The custom properties the aggregate step counts: each site's declared keys and the cap. */
export interface PipelineProps {
  /** The site's declared keys (stream/prop-keys.ts PropKeyCache, refreshed before the batch). */
  keysOf(siteId: string): readonly string[]
  /** Whether the site's keys were read: a pass stops before an event of a site not read yet. */
  known(siteId: string): boolean
  /** Values kept per key and window (TALLY_PROP_VALUES_MAX). */
  maxValues: number
  /** The site's goals (read with its keys); absent: no goal is counted. */
  goalsOf?(siteId: string): GoalMatcher
}

/**
 * Step 6: the event's visit (core/aggregate/visits.ts). The partition's VisitState takes the event
 * and tells which visits it changed; the rows of their start windows change by the difference,
 * each at most once per offset (a replay skips rows written through it). An event the state already
 * holds (below `visits.nextOffset`: restored from a state written after it) changes nothing: its
 * changes are in the rows, which were written before that state. `propKeys`: the site's declared
 * custom property keys; a new visit keeps its first event's values of them (its `prop:KEY` rows).
 */
export function countVisit(
  d: DecodedEvent,
  offset: number,
  visits: PartitionVisits,
  table: RowTable,
  sourcePartition: number,
  loading: Loading[],
  dims: Record<Dimension, string>,
  propKeys?: readonly string[],
): void {
  eventVisit.session = undefined
  if (offset < visits.nextOffset) {
    // Held already (restored): the visit the state has for it, for the conversions by dimension.
    const held = visits.state.visitAt(d.event.siteId, visitorId(d.event), d.timestampMs)
    eventVisit.session = held?.session
    eventVisit.entryPage = held?.entryPage
    return
  }
  const e = d.event
  if (kindOf(e) !== 'event') return
  // Not offset + 1: the next event of a packed record (format 2) shares this offset.
  visits.nextOffset = offset
  visits.changed = true
  // The common case: the event extends one visit after its start (same rows, new counts).
  const x = extension
  if (visits.state.extend(e.siteId, visitorId(e), d.timestampMs, isPageview(e), dims.path, x)) {
    eventVisit.session = x.session
    eventVisit.entryPage = x.entryAfter
    countExtension(x, offset, table, sourcePartition, loading)
    return
  }
  const change = visits.state.add(visitEventOf(e, d.timestampMs, dims, propKeys)!)
  eventVisit.session = change.added.session
  eventVisit.entryPage = change.added.entryPage
  if (change.removed.length === 0) {
    // A new visit: +1 visit in each of its rows.
    const v = change.added
    const c = visitCounts(v)
    applyVisitRows(
      table,
      loading,
      sourcePartition,
      v.siteId,
      v.startMs,
      v.session,
      v.entryPage,
      v.exitPage,
      offset,
      c,
    )
    return
  }
  for (const { key, delta } of visitDeltas(change, sourcePartition))
    if (table.kept.keeps(key.dimension)) applyVisits(table, rowOf(table, loading, key), offset, delta)
}

/**
 * The visit of the event the visits step took last (after it was added): its first event's session
 * values and its entry page so far; session undefined when the event has no visit (not counted).
 */
const eventVisit: { session: readonly string[] | undefined; entryPage: string | undefined } = {
  session: undefined,
  entryPage: undefined,
}

const SESSION_INDEX = new Map<string, number>(SESSION_DIMENSIONS.map((d, i) => [d, i]))
const GOAL_BY_GRANULARITIES = GRANULARITIES.map((g) => DIMENSION_GRANULARITIES.includes(g))
const GOAL_BY_ROW_DIMENSIONS = GOAL_BY_DIMENSIONS.map((d) => goalByDimension(d))
const GOAL_BY_CAPPED = GOAL_BY_DIMENSIONS.map((d) => isCappedDimension(d))

/**
 * Step 6b: conversions by another dimension (core/aggregate/goals.ts `goal|DIM`). A counted event
 * that completes goals counts, in its hour and day windows, in the row of each goal and each
 * GOAL_BY_DIMENSIONS dimension, valued by the visit's values (session dimensions: its first
 * event's; entry_page: its entry page so far) or the event's own (path, event, and the site's
 * declared custom properties, `goal|prop:KEY`, capped by TALLY_PROP_VALUES_MAX). Runs after the
 * visits step, which leaves the event's visit in `eventVisit`. A capped dimension's values go
 * through the same cap rule per goal and window (ValueAdmission), else count under `(other)`.
 *
 * Exact for events in order. An event arriving later than a conversion but timed before the
 * visit's first event changes the visit's values; the conversion stays where it was counted (a
 * visitor cannot be taken out of a register): the stream's rows are provisional, the rebuild's
 * exact, and a rebuilt window reads the rebuild's alone (isRebuiltOnly).
 */
export function countGoalsBy(
  d: DecodedEvent,
  offset: number,
  table: RowTable,
  sourcePartition: number,
  loading: Loading[],
  dims: Record<Dimension, string>,
  props: PipelineProps,
  reached: readonly string[],
): void {
  const e = d.event
  const session = eventVisit.session
  if (session === undefined || reached.length === 0) return
  const visitor = visitorHash
  hashHalves(visitorId(e), visitor)
  const flags = isPageview(e) ? PAGEVIEW : 0
  for (let gi = 0; gi < GRANULARITIES.length; gi++) {
    if (!GOAL_BY_GRANULARITIES[gi]) continue
    const granularity = GRANULARITIES[gi]!
    const ws = windowStart(d.timestampMs, granularity)
    const w = table.window(gi, e.siteId, ws)
    for (let k = 0; k < GOAL_BY_DIMENSIONS.length; k++) {
      const dim = GOAL_BY_DIMENSIONS[k]!
      const raw =
        dim === 'path'
          ? dims.path
          : dim === 'event'
            ? dims.event
            : dim === 'entry_page'
              ? (eventVisit.entryPage ?? NONE)
              : session[SESSION_INDEX.get(dim)!]!
      const dimension = GOAL_BY_ROW_DIMENSIONS[k]!
      for (const name of reached) {
        // Rows and admission per goal and dimension: the cap rule applies to each goal's values.
        const pr = w.propRows(goalByValue(dimension, name), table.dimensionValuesMax)
        const value = goalByValue(name, GOAL_BY_CAPPED[k] ? pr.admission.admit(raw) : raw)
        const row = propRowOf(table, loading, w, pr, {
          siteId: e.siteId,
          granularity,
          windowStart: ws,
          dimension,
          value,
          sourcePartition,
        })
        apply(table, row, offset, flags, visitor.hi, visitor.lo)
      }
    }
    // The site's custom properties: the completing event's own value of each declared key, capped
    // per goal and window by TALLY_PROP_VALUES_MAX (the `prop:KEY` rows' cap).
    for (const key of props.keysOf(e.siteId)) {
      const dimension = goalByDimension(propDimension(key))
      const raw = propValueOf(e, key)
      for (const name of reached) {
        const pr = w.propRows(goalByValue(dimension, name), props.maxValues)
        const value = goalByValue(name, pr.admission.admit(raw))
        const row = propRowOf(table, loading, w, pr, {
          siteId: e.siteId,
          granularity,
          windowStart: ws,
          dimension,
          value,
          sourcePartition,
        })
        apply(table, row, offset, flags, visitor.hi, visitor.lo)
      }
    }
  }
}

const NO_GOALS: readonly string[] = []

/** The goals of its site a counted, non-bot event completes (none for a site without goals). */
function goalsReached(
  d: DecodedEvent,
  dims: Record<Dimension, string>,
  props: PipelineProps,
): readonly string[] {
  const e = d.event
  if (kindOf(e) !== 'event') return NO_GOALS
  const goals = props.goalsOf?.(e.siteId)
  if (goals === undefined || goals.empty) return NO_GOALS
  return goals.reached(e.type, dims.event, dims.path)
}

/**
 * Step 6c: the goals a counted, non-bot event completes (`reached`) are marked on its visit in the
 * state, for the conversions by exit page written when the visit ends (countEndedGoals). An event
 * the state held already (below `visits.nextOffset`) marked them then: the state restored has them.
 */
export function markGoals(
  d: DecodedEvent,
  offset: number,
  visits: PartitionVisits,
  reached: readonly string[],
): void {
  if (offset < visits.nextOffset || reached.length === 0) return
  if (visits.state.reachGoals(d.event.siteId, visitorId(d.event), d.timestampMs, reached))
    visits.changed = true
}

/**
 * Conversions by exit page of visits the state evicted as ended (VisitState.evict's `ended`): per
 * visit, goal and start window (hour, day), the visitor added to the register of the
 * `goal|exit_page` row valued `NAME` U+001F the exit page (`(none)` without a pageview), as the
 * rebuild's batch/visits.ts goalRows. Registers only (applyConverter): a replay that evicts the
 * visit again adds nothing. Rows not held are listed in `loading`.
 */
export function countEndedGoals(
  ended: readonly EndedVisit[],
  table: RowTable,
  sourcePartition: number,
  loading: Loading[],
): void {
  const dimension = goalByDimension(GOAL_BY_EXIT_PAGE)
  const visitor = visitorHash
  for (const v of ended) {
    hashHalves(v.visitor, visitor)
    const raw = v.exitPage ?? NONE
    for (let gi = 0; gi < GRANULARITIES.length; gi++) {
      if (!GOAL_BY_GRANULARITIES[gi]) continue
      const granularity = GRANULARITIES[gi]!
      const ws = windowStart(v.startMs, granularity)
      const w = table.window(gi, v.siteId, ws)
      for (const name of v.goals) {
        const pr = w.propRows(goalByValue(dimension, name), table.dimensionValuesMax)
        const value = goalByValue(name, raw)
        const row = propRowOf(table, loading, w, pr, {
          siteId: v.siteId,
          granularity,
          windowStart: ws,
          dimension,
          value,
          sourcePartition,
        })
        applyConverter(table, row, visitor.hi, visitor.lo)
      }
    }
  }
}

/** Scratch of the visits step (the steps run one event at a time). */
const extension: Extension = newExtension()
const diff: VisitCounts = zero()
const removedCounts: VisitCounts = zero()

/**
 * The rows of a visit extended in place (core/aggregate/visits.ts `visitDeltas` for a visit that
 * kept its start and first event, same rows and deltas): every row of the visit changes by
 * after − before, except an entry or exit page row whose page moved, which loses the visit
 * (−before) while the new page's row gains it (+after).
 */
function countExtension(
  x: Extension,
  offset: number,
  table: RowTable,
  sourcePartition: number,
  loading: Loading[],
): void {
  diff.visits = 0
  diff.bounces = x.after.bounces - x.before.bounces
  diff.visitDurationMs = x.after.visitDurationMs - x.before.visitDurationMs
  diff.visitPageviews = x.after.visitPageviews - x.before.visitPageviews
  const entryMoved = x.entryBefore !== x.entryAfter
  const exitMoved = x.exitBefore !== x.exitAfter
  if (diff.bounces !== 0 || diff.visitDurationMs !== 0 || diff.visitPageviews !== 0)
    applyVisitRows(
      table,
      loading,
      sourcePartition,
      x.siteId,
      x.startMs,
      x.session,
      entryMoved ? undefined : x.entryAfter,
      exitMoved ? undefined : x.exitAfter,
      offset,
      diff,
    )
  if (!entryMoved && !exitMoved) return
  removedCounts.visits = 0
  removedCounts.bounces = 0
  removedCounts.visitDurationMs = 0
  removedCounts.visitPageviews = 0
  addTo(removedCounts, x.before, -1)
  const page = (exit: boolean, from: string | undefined, to: string | undefined): void => {
    if (from !== undefined)
      applyVisitPageRows(
        table,
        loading,
        sourcePartition,
        x.siteId,
        x.startMs,
        exit,
        from,
        offset,
        removedCounts,
      )
    if (to !== undefined)
      applyVisitPageRows(table, loading, sourcePartition, x.siteId, x.startMs, exit, to, offset, x.after)
  }
  if (entryMoved) page(false, x.entryBefore, x.entryAfter)
  if (exitMoved) page(true, x.exitBefore, x.exitAfter)
}

/** The open visits of one owned partition, as the visits step keeps them. */
export interface PartitionVisits {
  readonly state: VisitState
  /** Events below this offset are in the state already (restored): not added again. */
  nextOffset: number
  /** Changed since last written (an event added, or visits evicted). */
  changed: boolean
}

/** What the steps read and change of one owned partition (the worker's PartitionState). */
export interface PipelineState {
  readonly ref: { readonly partition: number }
  readonly rows: RowTable
  readonly dedup: DedupSet
  /** The partition's open visits; absent: visits are not counted (the rows carry none). */
  readonly visits?: PartitionVisits
  /** Custom properties; absent: none are counted. */
  readonly props?: PipelineProps
  /** Latest receivedAt seen (ms): lateness is decided on it, so a replay decides the same. */
  watermarkMs: number
  /** Records below this offset are already in memory (or stored): skipped. */
  readonly processedNext: number
}

/**
 * The stream settings the steps use (StreamConfig): the grace and the future bound of classify, and
 * the open windows a partition may hold (a batch stops before a record that could pass it).
 */
export type PipelineSettings = Pick<StreamConfig, 'graceMs' | 'maxFutureMs' | 'maxOpenWindows'>

/** A poison event (or a whole record whose framing is corrupt), for the dead-letter topic. */
export interface DeadLetterRecord {
  offset: number
  /** The event's index inside its packed record (0 in a version-1 record). */
  index: number
  code: string
  reason: string
  value: Buffer | undefined
  headers: Record<string, string>
}

/** What running a batch through the steps leaves for the worker. */
export interface BatchPass {
  /** Index of the first record not processed (the batch's length when all were). */
  next: number
  /** Offset of the last record looked at (−1: none). */
  lastOffset: number
  /** Events counted in rows. */
  counted: number
  /** Records not counted, by outcome of `tally_stream_records_total` (replayed, duplicate, late, …). */
  outcomes: Map<string, number>
  deadLetters: DeadLetterRecord[]
  /** Rows first touched by this batch, waiting for their stored values. */
  loading: Loading[]
  /** The pass stopped before an event of this site, whose property keys are not read yet. */
  unknownSite?: string
}

function tally(outcomes: Map<string, number>, outcome: string): void {
  outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1)
}

/**
 * Runs the batch's events from index `from` on through the steps, stopping before a record that
 * could take the partition's open windows past the cap (an event opens at most one per granularity,
 * and its visit change one more: its visit's start window). The worker gives the batch's records
 * unpacked into events (core/record/packed.ts entriesOf); the first event of a record is counted
 * even when the cap would be passed, so a packed record can go past it by its own events' windows.
 */
export function countRecords(
  state: PipelineState,
  batch: Pick<RecordBatch, 'records'> | { records: readonly RawEntry[] },
  from: number,
  settings: PipelineSettings,
  logger: Logger,
): BatchPass {
  const pass: BatchPass = {
    next: from,
    lastOffset: -1,
    counted: 0,
    outcomes: new Map(),
    deadLetters: [],
    loading: [],
  }
  const table = state.rows
  const opens = GRANULARITIES.length * (state.visits ? 2 : 1)
  const records: readonly (ConsumedRecord | RawEntry)[] = batch.records
  let i = from
  for (; i < records.length; i++) {
    const record = records[i]!
    // Only between log records: the rows and the checkpoint count whole records (the events of a
    // packed one share its offset), so a record's events are counted together, all of them.
    if ('index' in record) {
      if (record.index === 0 && i > from && table.windows + opens * record.count > settings.maxOpenWindows)
        break
    } else if (i > from && table.windows + opens > settings.maxOpenWindows) break
    const before = pass.lastOffset
    pass.lastOffset = record.offset
    // Below processedNext: already in memory (or, below the checkpoint, already stored).
    if (record.offset < state.processedNext) {
      tally(pass.outcomes, 'replayed')
      continue
    }
    if (!countRecord(record, state, settings, logger, pass)) {
      // Paused before this event (its site's property keys are read first, then it goes on from
      // here): the offsets passed must not cover its record, whose other events may already count.
      pass.lastOffset = before === record.offset ? record.offset - 1 : before
      break
    }
  }
  pass.next = i
  return pass
}

/**
 * One record through the steps, in order. A step that does not return ok ends the record here, with
 * its outcome in `pass`. False: the record was not processed (its site's property keys are not
 * read yet; `pass.unknownSite`). A new per-event step goes in this sequence where its input is ready: after
 * classify it sees the counted events only, in offset order, with the partition's watermark.
 */
function countRecord(
  record: ConsumedRecord | RawEntry,
  state: PipelineState,
  s: PipelineSettings,
  logger: Logger,
  pass: BatchPass,
): boolean {
  const decoded = decodeValue(record)
  const valid = decoded.ok ? checkEvent(decoded.event) : decoded
  if (!valid.ok) {
    pass.deadLetters.push({
      offset: record.offset,
      index: 'index' in record ? record.index : 0,
      code: valid.code,
      reason: valid.reason,
      value: record.value,
      headers: record.headers,
    })
    return true
  }
  const d = valid.event
  // Before any state changes: the worker reads the site's keys and runs the record again.
  if (state.props && !state.props.known(d.event.siteId)) {
    pass.unknownSite = d.event.siteId
    return false
  }
  if (d.receivedMs > state.watermarkMs) state.watermarkMs = d.receivedMs
  const unique = dedup(d, state.dedup)
  if (!unique.ok) {
    tally(pass.outcomes, 'duplicate')
    return true
  }
  const counts = classify(d, state.watermarkMs - s.graceMs, state.watermarkMs + s.maxFutureMs)
  if (!counts.ok) {
    tally(pass.outcomes, counts.kind === 'drop' ? counts.reason : 'dead_letter')
    if (counts.kind === 'drop' && (counts.reason === 'late' || counts.reason === 'future')) {
      logger.debug(
        {
          partition: state.ref.partition,
          offset: record.offset,
          traceparent: record.headers[HEADERS.traceparent],
        },
        `${counts.reason} event left to batch`,
      )
    }
    return true
  }
  if (state.visits) {
    // Counts first, then the visit change: a row both touch at this offset gets both.
    const dims = dimensionsOf(d.event)
    aggregate(d, record.offset, state.rows, state.ref.partition, pass.loading, dims, state.props)
    countVisit(
      d,
      record.offset,
      state.visits,
      state.rows,
      state.ref.partition,
      pass.loading,
      dims,
      state.props?.keysOf(d.event.siteId),
    )
    if (state.props) {
      const reached = goalsReached(d, dims, state.props)
      countGoalsBy(
        d,
        record.offset,
        state.rows,
        state.ref.partition,
        pass.loading,
        dims,
        state.props,
        reached,
      )
      markGoals(d, record.offset, state.visits, reached)
    }
  } else aggregate(d, record.offset, state.rows, state.ref.partition, pass.loading, undefined, state.props)
  pass.counted++
  return true
}
