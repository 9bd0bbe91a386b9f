import type { Granularity, RowDimension } from '../aggregate/definition.js'

/**
 * What the visits that started in a window (and have a dimension value) add up to
 * (core/aggregate/visits.ts). Counts and sums only: rates are computed when read, so merging
 * windows, partitions and ranges adds them up and never averages averages.
 */
export interface VisitCounts {
  visits: number
  /** Visits with exactly one pageview and no other counted event. */
  bounces: number
  /** Sum over the visits of last − first event time (ms). */
  visitDurationMs: number
  /** Sum over the visits of their pageviews (views per visit = visitPageviews / visits). */
  visitPageviews: number
}

/**
 * Counts of one window (and dimension value), for one source partition or final. The visit counts
 * are all present or all absent: absent when the row was written without visit data (before
 * visits existed, or by a writer that does not count them); stores keep them absent (null), and
 * readers report such windows as having no visit data until a rebuild writes them again.
 */
export interface AggregateValues extends Partial<VisitCounts> {
  events: number
  pageviews: number
  botEvents: number
  /** HyperLogLog registers, serialized (core/hll.ts). */
  visitors: Uint8Array
}

/** Whether values carry visit counts (see {@link AggregateValues}). */
export function hasVisits<T extends Partial<VisitCounts>>(v: T): v is T & VisitCounts {
  return v.visits !== undefined
}

/** A row of the aggregate store. `dimension` undefined = the window's totals. */
export interface RowKey {
  siteId: string
  granularity: Granularity
  windowStart: number
  dimension: RowDimension | undefined
  value: string
  /** Source partition of the stream; -1 for rows written by a batch rebuild (final). */
  sourcePartition: number
}

export interface StoredRow extends AggregateValues {
  /** The last source offset whose event is counted in this row (−1 when none). */
  throughOffset: number
}

export interface RowWrite {
  key: RowKey
  values: AggregateValues
  throughOffset: number
}

export interface StreamCheckpoint {
  /** Every event below this offset is in the aggregates. */
  nextOffset: number
  /** Max receivedAt (ms) seen: decides which windows are closed. */
  watermarkMs: number
  epoch: number
}

export interface DedupChunk {
  firstOffset: number
  lastOffset: number
  /** Latest receivedAt (ms) among the entries. */
  maxReceivedMs: number
  /** 12 bytes per entry: 64-bit messageId hash (big-endian) + uint32 receivedAt minute. */
  entries: Buffer
}

/**
 * The stream's open visits of one source partition (core/aggregate/visits.ts VisitState), as
 * persisted with the checkpoint: written after the rows and before the checkpoint, fenced by the
 * same epoch.
 */
export interface VisitStateSnapshot {
  /** The state holds every counted event below this offset (a replay adds none of those again). */
  nextOffset: number
  /** `VisitState.serialize()` bytes (empty: no open visit). */
  state: Uint8Array
}

export interface PartitionRef {
  group: string
  topic: string
  partition: number
}

/**
 * What a stream worker needs from the aggregate store. Every write of an owner is fenced by its
 * epoch: after another worker acquired the partition, a stale owner's writes lose.
 */
export interface StreamStore {
  /** Takes ownership of a source partition: returns a new epoch, higher than any before. */
  acquireEpoch(ref: PartitionRef, owner: string): Promise<number>
  readCheckpoint(ref: PartitionRef): Promise<StreamCheckpoint | undefined>
  writeCheckpoint(ref: PartitionRef, checkpoint: StreamCheckpoint): Promise<void>
  /** Reads rows by full key; rows that do not exist are absent from the map (keyed by rowId). */
  loadRows(keys: readonly RowKey[]): Promise<Map<string, StoredRow>>
  writeRows(rows: readonly RowWrite[], epoch: number): Promise<void>
  /** Dedup chunks with lastOffset below `belowOffset` and entries received at or after `sinceMs`. */
  loadDedup(ref: PartitionRef, belowOffset: number, sinceMs: number): Promise<DedupChunk[]>
  writeDedup(ref: PartitionRef, chunk: DedupChunk, epoch: number): Promise<void>
  /** The partition's last visit state written (undefined: none yet). */
  loadVisitState(ref: PartitionRef): Promise<VisitStateSnapshot | undefined>
  /**
   * Replaces the partition's visit state, whole and at once (a reader never sees part of one write),
   * fenced like a checkpoint by (epoch, nextOffset): a stale epoch loses even with a higher offset.
   */
  writeVisitState(ref: PartitionRef, snapshot: VisitStateSnapshot, epoch: number): Promise<void>
}

/** A stable string id of a row key (map key in memory). */
export function rowId(k: RowKey): string {
  return `${k.siteId}\u0001${k.granularity}\u0001${k.windowStart}\u0001${k.dimension ?? ''}\u0001${k.value}\u0001${k.sourcePartition}`
}

/**
 * One window (or one dimension value over a set of windows) after merging every partial. Visit
 * counts: of one window, present when every row read for it had visit data; over several windows,
 * the sums of the windows that had (present when at least one had; {@link MergedWindow} and
 * {@link BreakdownResult} tell which windows had none).
 */
export interface MergedValues extends Partial<VisitCounts> {
  events: number
  pageviews: number
  botEvents: number
  /** Merged HyperLogLog registers (serialized). Empty when the caller asked for no visitors. */
  visitors: Uint8Array
}

export interface MergedWindow extends MergedValues {
  windowStart: number
  /** True when a batch rebuild wrote this window (final); false while only stream partials exist. */
  final: boolean
}

/** One dimension value in one window, after merging its partials (bulk export). */
export interface MergedDimensionRow extends MergedWindow {
  value: string
}

/** A breakdown over a range, with what each window it read was made of. */
export interface BreakdownResult {
  /** Per value of the dimension, merged over every window read. */
  values: Map<string, MergedValues & { final: boolean }>
  /** Windows that hold at least one row, with whether a batch rebuild wrote them. */
  windows: Map<number, { final: boolean }>
  /**
   * Windows among {@link windows} with a row read without visit data (written before visits
   * existed): they show no visits until a rebuild writes them again.
   */
  windowsWithoutVisits: Set<number>
}

/** Options of a read. */
export interface ReadOptions {
  /** Merge the HyperLogLog registers (default true). Without, `visitors` comes back empty. */
  visitors?: boolean
}

/** Progress of the stream on one source partition, from its checkpoint. */
export interface StreamProgress {
  partition: number
  /** Every event below this offset is in the aggregates. */
  nextOffset: number
  /** Max receivedAt (ms) among the events counted so far. */
  watermarkMs: number
  /** When the checkpoint was last written (ms). */
  updatedAtMs: number
}

/** What the query side reads. Never writes. */
export interface AggregateReader {
  /** Totals of every window of `granularity` starting in [fromMs, toMs). */
  totals(
    siteId: string,
    granularity: Granularity,
    fromMs: number,
    toMs: number,
    options?: ReadOptions,
  ): Promise<MergedWindow[]>
  /** Per value of `dimension`, merged over the windows of `granularity` starting in [fromMs, toMs). */
  breakdown(
    siteId: string,
    granularity: Granularity,
    dimension: RowDimension,
    fromMs: number,
    toMs: number,
  ): Promise<Map<string, MergedValues & { final: boolean }>>
  /**
   * Like {@link breakdown}, plus which windows held rows and whether a batch wrote them; `values`
   * (when given) restricts the read to those values of the dimension.
   */
  breakdownDetailed(
    siteId: string,
    granularity: Granularity,
    dimension: RowDimension,
    fromMs: number,
    toMs: number,
    options?: ReadOptions & { values?: readonly string[] },
  ): Promise<BreakdownResult>
  /**
   * Per window of `granularity` starting in [fromMs, toMs), the events having one of `values` for
   * `dimension` (counts summed, visitors merged over the values). Windows without such events are absent.
   */
  dimensionWindows(
    siteId: string,
    granularity: Granularity,
    dimension: RowDimension,
    values: readonly string[],
    fromMs: number,
    toMs: number,
    options?: ReadOptions,
  ): Promise<MergedWindow[]>
  /** Totals window by window in time order, reading one page at a time (bulk export). */
  streamTotals(
    siteId: string,
    granularity: Granularity,
    fromMs: number,
    toMs: number,
  ): AsyncIterable<MergedWindow>
  /** Every (window, value) row of `dimension` in window then value order, one page at a time (bulk export). */
  streamDimension(
    siteId: string,
    granularity: Granularity,
    dimension: RowDimension,
    fromMs: number,
    toMs: number,
  ): AsyncIterable<MergedDimensionRow>
  /** The stream's checkpoints of consumer group `group` on `topic`, partitions 0..partitions-1 that have one. */
  streamProgress(group: string, topic: string, partitions: number): Promise<StreamProgress[]>
  /**
   * A mark that changes after every write of final (batch) rows of the site ('' before the first).
   * With the stream's checkpoints (written after the rows they cover) it tells a reader whether the
   * aggregates of a site may have changed since it last read them.
   */
  finalMark(siteId: string): Promise<string>
}
