import type { Granularity } from '../aggregate/definition.js'
import type {
  AggregateValues,
  DedupChunk,
  PartitionRef,
  RowKey,
  RowWrite,
  StoredRow,
  StreamCheckpoint,
  StreamStore,
  VisitCounts,
  VisitStateSnapshot,
} from '../ports/aggregate-store.js'
import { rowId } from '../ports/aggregate-store.js'
import type { Db } from './sqlite.js'

export interface EmbeddedTtlConfig {
  /** Seconds each granularity's rows live after their last write; 0 keeps them forever. */
  minute: number
  hour: number
  day: number
}

/** Dedup chunks live this long after they were written, like stream_dedup's table TTL in Cassandra. */
export const DEDUP_TTL_MS = 2 * 86_400_000

/**
 * The fence of an owner's write: the value Cassandra uses as write timestamp
 * (core/cassandra/stream-store.ts fencedTimestamp), the epoch in the high bits, the source offset
 * below. A later epoch always wins; within an epoch the later flush wins. A BigInt: epochs past
 * 8191 take it beyond 2^53.
 */
export function fenceOf(epoch: number, offset: number): bigint {
  return (BigInt(epoch) << 40n) + BigInt(Math.max(0, offset))
}

function checkEpoch(epoch: number): void {
  if (!Number.isSafeInteger(epoch) || epoch < 0)
    throw new RangeError(`epoch must be a non-negative integer, got ${epoch}`)
}

interface RowRecord {
  events: number
  pageviews: number
  bot_events: number
  visitors: Buffer
  through_offset: number
  visits: number | null
  bounces: number | null
  visit_duration_ms: number | null
  visit_pageviews: number | null
}

/** The visit columns of agg_totals and agg_dims (schema step 7), in this order. */
export const VISIT_COLUMNS = 'visits, bounces, visit_duration_ms, visit_pageviews'

/**
 * The upsert of the visit columns: values without visit counts (NULL) keep what the row had, as an
 * unset column does in Cassandra (core/cassandra/stream-store.ts visitParams).
 */
export function visitUpdate(table: string): string {
  return VISIT_COLUMNS.split(', ')
    .map((c) => `${c} = COALESCE(excluded.${c}, ${table}.${c})`)
    .join(', ')
}

/** Bound values of the visit columns: NULL when the values carry no visit counts. */
export function visitBinds(v: AggregateValues): Array<number | null> {
  if (v.visits === undefined) return [null, null, null, null]
  return [v.visits, v.bounces ?? 0, v.visitDurationMs ?? 0, v.visitPageviews ?? 0]
}

/** The visit counts of a row read with {@link VISIT_COLUMNS}; empty when it has none. */
export function visitValuesOf(r: {
  visits: number | null
  bounces: number | null
  visit_duration_ms: number | null
  visit_pageviews: number | null
}): Partial<VisitCounts> {
  if (r.visits === null) return {}
  return {
    visits: r.visits,
    bounces: r.bounces ?? 0,
    visitDurationMs: r.visit_duration_ms ?? 0,
    visitPageviews: r.visit_pageviews ?? 0,
  }
}

/**
 * The stream side of the embedded aggregate store (StreamStore), with the fencing of the Cassandra
 * one: epochs only grow, and a write carrying a lower (epoch, offset) than the stored row's loses.
 * Each call is one SQLite transaction, durable when it resolves.
 */
export class EmbeddedStreamStore implements StreamStore {
  private readonly stmt

  constructor(
    private readonly db: Db,
    private readonly ttl: EmbeddedTtlConfig,
    private readonly now: () => number = Date.now,
  ) {
    const live = '(expires_at_ms IS NULL OR expires_at_ms > ?)'
    const values = `events, pageviews, bot_events, visitors, through_offset, fence, expires_at_ms, ${VISIT_COLUMNS}`
    const update = (table: string) =>
      `DO UPDATE SET events = excluded.events, pageviews = excluded.pageviews, bot_events = excluded.bot_events, visitors = excluded.visitors, through_offset = excluded.through_offset, fence = excluded.fence, expires_at_ms = excluded.expires_at_ms, ${visitUpdate(table)} WHERE excluded.fence >= ${table}.fence`
    this.stmt = {
      epoch: db.prepare(
        'SELECT epoch FROM stream_epochs WHERE consumer_group = ? AND topic = ? AND partition = ?',
      ),
      setEpoch: db.prepare(
        'INSERT INTO stream_epochs (consumer_group, topic, partition, epoch, owner, acquired_at_ms) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET epoch = excluded.epoch, owner = excluded.owner, acquired_at_ms = excluded.acquired_at_ms',
      ),
      checkpoint: db.prepare(
        'SELECT next_offset, watermark_ms, epoch FROM stream_checkpoints WHERE consumer_group = ? AND topic = ? AND partition = ?',
      ),
      writeCheckpoint: db.prepare(
        `INSERT INTO stream_checkpoints (consumer_group, topic, partition, next_offset, watermark_ms, epoch, fence, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET next_offset = excluded.next_offset, watermark_ms = excluded.watermark_ms, epoch = excluded.epoch, fence = excluded.fence, updated_at_ms = excluded.updated_at_ms
         WHERE excluded.fence >= stream_checkpoints.fence`,
      ),
      totalsRow: db.prepare(
        `SELECT events, pageviews, bot_events, visitors, through_offset, ${VISIT_COLUMNS} FROM agg_totals WHERE site_id = ? AND granularity = ? AND window_start = ? AND source_partition = ? AND ${live}`,
      ),
      dimsRow: db.prepare(
        `SELECT events, pageviews, bot_events, visitors, through_offset, ${VISIT_COLUMNS} FROM agg_dims WHERE site_id = ? AND granularity = ? AND dimension = ? AND window_start = ? AND value = ? AND source_partition = ? AND ${live}`,
      ),
      writeTotals: db.prepare(
        `INSERT INTO agg_totals (site_id, granularity, window_start, source_partition, ${values}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (site_id, granularity, window_start, source_partition) ${update('agg_totals')}`,
      ),
      writeDims: db.prepare(
        `INSERT INTO agg_dims (site_id, granularity, dimension, window_start, value, source_partition, ${values}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (site_id, granularity, dimension, window_start, value, source_partition) ${update('agg_dims')}`,
      ),
      dedup: db.prepare(
        'SELECT first_offset, last_offset, max_received_ms, hashes FROM stream_dedup WHERE consumer_group = ? AND topic = ? AND partition = ? AND last_offset < ? AND max_received_ms >= ? AND written_at_ms > ? ORDER BY last_offset DESC',
      ),
      writeDedup: db.prepare(
        `INSERT INTO stream_dedup (consumer_group, topic, partition, last_offset, first_offset, max_received_ms, hashes, fence, written_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (consumer_group, topic, partition, last_offset) DO UPDATE SET first_offset = excluded.first_offset, max_received_ms = excluded.max_received_ms, hashes = excluded.hashes, fence = excluded.fence, written_at_ms = excluded.written_at_ms
         WHERE excluded.fence >= stream_dedup.fence`,
      ),
      visitState: db.prepare(
        'SELECT next_offset, state FROM stream_visit_state WHERE consumer_group = ? AND topic = ? AND partition = ?',
      ),
      writeVisitState: db.prepare(
        `INSERT INTO stream_visit_state (consumer_group, topic, partition, next_offset, state, epoch, fence, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET next_offset = excluded.next_offset, state = excluded.state, epoch = excluded.epoch, fence = excluded.fence, updated_at_ms = excluded.updated_at_ms
         WHERE excluded.fence >= stream_visit_state.fence`,
      ),
    }
  }

  async acquireEpoch(ref: PartitionRef, owner: string): Promise<number> {
    // One process, one connection: read and write in one transaction cannot interleave.
    return this.db.transaction(() => {
      const row = this.stmt.epoch.get(ref.group, ref.topic, ref.partition) as { epoch: number } | undefined
      const next = (row?.epoch ?? 0) + 1
      this.stmt.setEpoch.run(ref.group, ref.topic, ref.partition, next, owner, this.now())
      return next
    })()
  }

  async readCheckpoint(ref: PartitionRef): Promise<StreamCheckpoint | undefined> {
    const row = this.stmt.checkpoint.get(ref.group, ref.topic, ref.partition) as
      | { next_offset: number; watermark_ms: number; epoch: number }
      | undefined
    if (!row) return undefined
    return { nextOffset: row.next_offset, watermarkMs: row.watermark_ms, epoch: row.epoch }
  }

  async writeCheckpoint(ref: PartitionRef, cp: StreamCheckpoint): Promise<void> {
    checkEpoch(cp.epoch)
    this.stmt.writeCheckpoint.run(
      ref.group,
      ref.topic,
      ref.partition,
      cp.nextOffset,
      cp.watermarkMs,
      cp.epoch,
      fenceOf(cp.epoch, cp.nextOffset),
      this.now(),
    )
  }

  async loadRows(keys: readonly RowKey[]): Promise<Map<string, StoredRow>> {
    const out = new Map<string, StoredRow>()
    const now = this.now()
    for (const k of keys) {
      const row = (
        k.dimension === undefined
          ? this.stmt.totalsRow.get(k.siteId, k.granularity, k.windowStart, k.sourcePartition, now)
          : this.stmt.dimsRow.get(
              k.siteId,
              k.granularity,
              k.dimension,
              k.windowStart,
              k.value,
              k.sourcePartition,
              now,
            )
      ) as RowRecord | undefined
      if (!row) continue
      out.set(rowId(k), {
        events: row.events,
        pageviews: row.pageviews,
        botEvents: row.bot_events,
        visitors: row.visitors,
        throughOffset: row.through_offset,
        ...visitValuesOf(row),
      })
    }
    return out
  }

  private expiresAt(g: Granularity, now: number): number | null {
    const seconds = this.ttl[g]
    return seconds > 0 ? now + seconds * 1000 : null
  }

  async writeRows(rows: readonly RowWrite[], epoch: number): Promise<void> {
    if (rows.length === 0) return
    checkEpoch(epoch)
    const now = this.now()
    this.db.transaction(() => {
      for (const r of rows) {
        const k = r.key
        const values = [
          r.values.events,
          r.values.pageviews,
          r.values.botEvents,
          Buffer.from(r.values.visitors),
          r.throughOffset,
          fenceOf(epoch, r.throughOffset),
          this.expiresAt(k.granularity, now),
          ...visitBinds(r.values),
        ]
        if (k.dimension === undefined) {
          this.stmt.writeTotals.run(k.siteId, k.granularity, k.windowStart, k.sourcePartition, ...values)
        } else {
          this.stmt.writeDims.run(
            k.siteId,
            k.granularity,
            k.dimension,
            k.windowStart,
            k.value,
            k.sourcePartition,
            ...values,
          )
        }
      }
    })()
  }

  async loadDedup(ref: PartitionRef, belowOffset: number, sinceMs: number): Promise<DedupChunk[]> {
    const rows = this.stmt.dedup.all(
      ref.group,
      ref.topic,
      ref.partition,
      belowOffset,
      sinceMs,
      this.now() - DEDUP_TTL_MS,
    ) as Array<{ first_offset: number; last_offset: number; max_received_ms: number; hashes: Buffer }>
    return rows.map((r) => ({
      firstOffset: r.first_offset,
      lastOffset: r.last_offset,
      maxReceivedMs: r.max_received_ms,
      entries: r.hashes,
    }))
  }

  async writeDedup(ref: PartitionRef, chunk: DedupChunk, epoch: number): Promise<void> {
    checkEpoch(epoch)
    this.stmt.writeDedup.run(
      ref.group,
      ref.topic,
      ref.partition,
      chunk.lastOffset,
      chunk.firstOffset,
      chunk.maxReceivedMs,
      chunk.entries,
      fenceOf(epoch, chunk.lastOffset),
      this.now(),
    )
  }

  async loadVisitState(ref: PartitionRef): Promise<VisitStateSnapshot | undefined> {
    const row = this.stmt.visitState.get(ref.group, ref.topic, ref.partition) as
      | { next_offset: number; state: Buffer }
      | undefined
    return row ? { nextOffset: row.next_offset, state: row.state } : undefined
  }

  async writeVisitState(ref: PartitionRef, snapshot: VisitStateSnapshot, epoch: number): Promise<void> {
    checkEpoch(epoch)
    this.stmt.writeVisitState.run(
      ref.group,
      ref.topic,
      ref.partition,
      snapshot.nextOffset,
      Buffer.from(snapshot.state.buffer, snapshot.state.byteOffset, snapshot.state.byteLength),
      epoch,
      fenceOf(epoch, snapshot.nextOffset),
      this.now(),
    )
  }

  /**
   * Deletes expired aggregate rows, final commits and dedup chunks (what Cassandra's TTLs do).
   * Returns rows deleted.
   */
  purgeExpired(): number {
    const now = this.now()
    return this.db.transaction(() => {
      let n = 0
      n += this.db.prepare('DELETE FROM agg_totals WHERE expires_at_ms <= ?').run(now).changes
      n += this.db.prepare('DELETE FROM agg_dims WHERE expires_at_ms <= ?').run(now).changes
      n += this.db.prepare('DELETE FROM agg_final_commits WHERE expires_at_ms <= ?').run(now).changes
      n += this.db
        .prepare('DELETE FROM stream_dedup WHERE written_at_ms <= ?')
        .run(now - DEDUP_TTL_MS).changes
      return n
    })()
  }
}
