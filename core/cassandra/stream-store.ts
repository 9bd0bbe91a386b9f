import type { Client } from 'cassandra-driver'
import { types } from 'cassandra-driver'
import { type Granularity, totalsBucket } from '../aggregate/definition.js'
import { ERR } from '../error-codes.js'
import { TallyError } from '../errors.js'
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

export interface TtlConfig {
  /** Seconds each granularity's rows live; 0 keeps them forever. */
  minute: number
  hour: number
  day: number
}

/**
 * Write timestamp that fences an owner: the epoch in the high bits, the source offset below.
 * A later epoch always wins; within an epoch the later flush wins.
 */
export function fencedTimestamp(epoch: number, offset: number): types.Long {
  return types.Long.fromNumber(epoch)
    .shiftLeft(40)
    .add(types.Long.fromNumber(Math.max(0, offset)))
}

/** The visit columns of agg_totals and agg_dims (schemas/cql/0009_visits.cql), in this order. */
export const VISIT_COLUMNS = 'visits, bounces, visit_duration_ms, visit_pageviews'

/**
 * Bound values of the visit columns. Values without visit counts leave them unset (undefined: no
 * tombstone, and a row written before keeps what it had), so rows of writers that do not count
 * visits read back without visit data.
 */
export function visitParams(v: AggregateValues): Array<types.Long | undefined> {
  if (v.visits === undefined) return [undefined, undefined, undefined, undefined]
  return [
    types.Long.fromNumber(v.visits),
    types.Long.fromNumber(v.bounces ?? 0),
    types.Long.fromNumber(v.visitDurationMs ?? 0),
    types.Long.fromNumber(v.visitPageviews ?? 0),
  ]
}

/** The visit counts of a row read with {@link VISIT_COLUMNS}; empty when it has none (null). */
export function visitValuesOf(row: types.Row): Partial<VisitCounts> {
  const visits = row.get('visits') as types.Long | null | undefined
  if (visits === null || visits === undefined) return {}
  return {
    visits: Number(visits),
    bounces: Number(row.get('bounces') ?? 0),
    visitDurationMs: Number(row.get('visit_duration_ms') ?? 0),
    visitPageviews: Number(row.get('visit_pageviews') ?? 0),
  }
}

const TOTALS_COLS = `events, pageviews, bot_events, visitors, through_offset, ${VISIT_COLUMNS}`

const INSERT_TOTALS = `INSERT INTO agg_totals (site_id, granularity, bucket, window_start, source_partition, ${TOTALS_COLS}, final) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?`
const INSERT_DIMS = `INSERT INTO agg_dims (site_id, granularity, dimension, window_start, value, source_partition, ${TOTALS_COLS}, final) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?`

/** Most rows one read asks for (`IN` list of one Cassandra partition). */
const LOAD_IN_LIMIT = 100
/**
 * Estimated payload of one write batch: under Cassandra's batch_size_warn_threshold (5 KiB by
 * default; batches above 50 KiB fail).
 */
const BATCH_BYTES = 4096
/** Most rows in one write batch. */
const BATCH_ROWS = 64

/** Rough bytes a row write adds to a batch: the sketch, the dimension value and the fixed columns. */
function rowBytes(r: RowWrite): number {
  return r.values.visitors.byteLength + r.key.value.length * 3 + 64
}

/** The Cassandra partition a row lives in (agg_totals or agg_dims), as a map key. */
function partitionOf(k: RowKey): string {
  return k.dimension === undefined
    ? `t\u0001${k.siteId}\u0001${k.granularity}\u0001${totalsBucket(k.windowStart, k.granularity)}\u0001${k.sourcePartition}`
    : `d\u0001${k.siteId}\u0001${k.granularity}\u0001${k.dimension}\u0001${k.windowStart}\u0001${k.sourcePartition}`
}

function groupByPartition<T>(items: readonly T[], keyOf: (item: T) => string): Map<string, T[]> {
  const out = new Map<string, T[]>()
  for (const item of items) {
    const key = keyOf(item)
    const group = out.get(key)
    if (group) group.push(item)
    else out.set(key, [item])
  }
  return out
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}

/**
 * Bytes per chunk of a visit state (stream_visit_state, schemas/cql/0011_stream_visit_state.cql):
 * blobs stay well under the native protocol's frame and the chunks of one state are one mutation.
 */
export const VISIT_STATE_CHUNK_BYTES = 1 << 20

/** The stream side of the Cassandra aggregate store. */
export class CassandraStreamStore implements StreamStore {
  constructor(
    private readonly client: Client,
    private readonly ttl: TtlConfig,
    /** Writes and reads in flight at once. */
    private readonly concurrency = 64,
  ) {}

  async acquireEpoch(ref: PartitionRef, owner: string): Promise<number> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const rs = await this.client.execute(
        'SELECT epoch FROM stream_epochs WHERE consumer_group = ? AND topic = ? AND partition = ?',
        [ref.group, ref.topic, ref.partition],
        { prepare: true },
      )
      const current = rs.first()?.get('epoch') as number | null | undefined
      const next = (current ?? 0) + 1
      const res =
        current === undefined || current === null
          ? await this.client.execute(
              'INSERT INTO stream_epochs (consumer_group, topic, partition, epoch, owner, acquired_at) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS',
              [ref.group, ref.topic, ref.partition, next, owner, new Date()],
              { prepare: true },
            )
          : await this.client.execute(
              'UPDATE stream_epochs SET epoch = ?, owner = ?, acquired_at = ? WHERE consumer_group = ? AND topic = ? AND partition = ? IF epoch = ?',
              [next, owner, new Date(), ref.group, ref.topic, ref.partition, current],
              { prepare: true },
            )
      if (res.wasApplied()) return next
    }
    throw new TallyError(
      ERR.EPOCH_CONTENDED,
      `could not take partition ${ref.partition} of ${ref.topic}: too much contention`,
      {
        retriable: true,
      },
    )
  }

  /**
   * The partition's checkpoint from stream_group_checkpoints, or, when that has no row for it, from
   * stream_checkpoints, where checkpoints were kept before (a worker that starts before `tally
   * migrate` copied them over).
   */
  async readCheckpoint(ref: PartitionRef): Promise<StreamCheckpoint | undefined> {
    return (
      (await this.readCheckpointFrom('stream_group_checkpoints', ref)) ??
      (await this.readCheckpointFrom('stream_checkpoints', ref))
    )
  }

  private async readCheckpointFrom(
    table: 'stream_group_checkpoints' | 'stream_checkpoints',
    ref: PartitionRef,
  ): Promise<StreamCheckpoint | undefined> {
    const rs = await this.client.execute(
      `SELECT next_offset, watermark_ms, epoch FROM ${table} WHERE consumer_group = ? AND topic = ? AND partition = ?`,
      [ref.group, ref.topic, ref.partition],
      { prepare: true },
    )
    const row = rs.first()
    if (!row) return undefined
    return {
      nextOffset: Number(row.get('next_offset')),
      watermarkMs: Number(row.get('watermark_ms')),
      epoch: Number(row.get('epoch')),
    }
  }

  async writeCheckpoint(ref: PartitionRef, cp: StreamCheckpoint): Promise<void> {
    const [query, params] = checkpointInsert('stream_group_checkpoints', ref, cp)
    await this.client.execute(query, params, { prepare: true })
  }

  async loadRows(keys: readonly RowKey[]): Promise<Map<string, StoredRow>> {
    const out = new Map<string, StoredRow>()
    // One read per Cassandra partition (and per LOAD_IN_LIMIT rows of it) instead of one per row.
    const reads = [...groupByPartition(keys, partitionOf).values()].flatMap((group) =>
      chunks(group, LOAD_IN_LIMIT),
    )
    await this.forEachConcurrently(reads, async (group) => {
      const first = group[0]!
      const byClustering = new Map<string | number, RowKey>()
      let rows: types.Row[]
      if (first.dimension === undefined) {
        for (const k of group) byClustering.set(k.windowStart, k)
        const rs = await this.client.execute(
          `SELECT window_start, ${TOTALS_COLS} FROM agg_totals WHERE site_id = ? AND granularity = ? AND bucket = ? AND window_start IN ? AND source_partition = ?`,
          [
            first.siteId,
            first.granularity,
            totalsBucket(first.windowStart, first.granularity),
            group.map((k) => new Date(k.windowStart)),
            first.sourcePartition,
          ],
          { prepare: true, fetchSize: LOAD_IN_LIMIT + 1 },
        )
        rows = rs.rows
      } else {
        for (const k of group) byClustering.set(k.value, k)
        const rs = await this.client.execute(
          `SELECT value, ${TOTALS_COLS} FROM agg_dims WHERE site_id = ? AND granularity = ? AND dimension = ? AND window_start = ? AND value IN ? AND source_partition = ?`,
          [
            first.siteId,
            first.granularity,
            first.dimension,
            new Date(first.windowStart),
            group.map((k) => k.value),
            first.sourcePartition,
          ],
          { prepare: true, fetchSize: LOAD_IN_LIMIT + 1 },
        )
        rows = rs.rows
      }
      for (const row of rows) {
        const clustering =
          first.dimension === undefined
            ? (row.get('window_start') as Date).getTime()
            : (row.get('value') as string)
        const k = byClustering.get(clustering)
        if (!k) continue
        out.set(rowId(k), {
          events: Number(row.get('events') ?? 0),
          pageviews: Number(row.get('pageviews') ?? 0),
          botEvents: Number(row.get('bot_events') ?? 0),
          visitors: (row.get('visitors') as Buffer | null) ?? new Uint8Array(0),
          throughOffset: row.get('through_offset') === null ? -1 : Number(row.get('through_offset')),
          ...visitValuesOf(row),
        })
      }
    })
    return out
  }

  /** Runs `fn` over `items`, at most `concurrency` at a time; the first failure rejects. */
  private async forEachConcurrently<T>(items: readonly T[], fn: (item: T) => Promise<void>): Promise<void> {
    let next = 0
    const worker = async () => {
      while (next < items.length) await fn(items[next++]!)
    }
    await Promise.all(Array.from({ length: Math.min(this.concurrency, items.length) }, worker))
  }

  private ttlOf(g: Granularity): number {
    return this.ttl[g]
  }

  async writeRows(rows: readonly RowWrite[], epoch: number): Promise<void> {
    if (rows.length === 0) return
    // Rows of one Cassandra partition go together in unlogged batches: a single-partition batch
    // is one mutation, applied atomically, for the price of one request. Each statement keeps its
    // own fencing timestamp. Batches stay under Cassandra's batch size warning; a row too large
    // for one (a dense sketch) goes alone.
    const requests: Array<Array<{ query: string; params: unknown[] }>> = []
    for (const group of groupByPartition(rows, (r) => partitionOf(r.key)).values()) {
      let batch: Array<{ query: string; params: unknown[] }> = []
      let bytes = 0
      for (const r of group) {
        const size = rowBytes(r)
        if (batch.length > 0 && (bytes + size > BATCH_BYTES || batch.length >= BATCH_ROWS)) {
          requests.push(batch)
          batch = []
          bytes = 0
        }
        batch.push(this.insert(r, epoch))
        bytes += size
      }
      if (batch.length > 0) requests.push(batch)
    }
    await this.forEachConcurrently(requests, async (batch) => {
      if (batch.length === 1) await this.client.execute(batch[0]!.query, batch[0]!.params, { prepare: true })
      else await this.client.batch(batch, { prepare: true, logged: false })
    })
  }

  private insert(r: RowWrite, epoch: number): { query: string; params: unknown[] } {
    const k = r.key
    const ts = fencedTimestamp(epoch, r.throughOffset)
    const values = [
      types.Long.fromNumber(r.values.events),
      types.Long.fromNumber(r.values.pageviews),
      types.Long.fromNumber(r.values.botEvents),
      Buffer.from(r.values.visitors.buffer, r.values.visitors.byteOffset, r.values.visitors.byteLength),
      types.Long.fromNumber(r.throughOffset),
      ...visitParams(r.values),
      k.sourcePartition < 0,
    ]
    if (k.dimension === undefined) {
      return {
        query: INSERT_TOTALS,
        params: [
          k.siteId,
          k.granularity,
          totalsBucket(k.windowStart, k.granularity),
          new Date(k.windowStart),
          k.sourcePartition,
          ...values,
          this.ttlOf(k.granularity),
          ts,
        ],
      }
    }
    return {
      query: INSERT_DIMS,
      params: [
        k.siteId,
        k.granularity,
        k.dimension,
        new Date(k.windowStart),
        k.value,
        k.sourcePartition,
        ...values,
        this.ttlOf(k.granularity),
        ts,
      ],
    }
  }

  async loadDedup(ref: PartitionRef, belowOffset: number, sinceMs: number): Promise<DedupChunk[]> {
    const out: DedupChunk[] = []
    const days = new Set([new Date(sinceMs).toISOString().slice(0, 10)])
    // Offsets grow with time but receivedAt of neighbours may differ by the append timeout: read
    // every day from the horizon's to today's.
    for (let t = sinceMs; t <= Date.now() + 86_400_000; t += 86_400_000)
      days.add(new Date(t).toISOString().slice(0, 10))
    for (const day of days) {
      const rows = this.client.stream(
        'SELECT first_offset, last_offset, max_received_ms, hashes FROM stream_dedup WHERE consumer_group = ? AND topic = ? AND partition = ? AND day = ? AND last_offset < ?',
        [ref.group, ref.topic, ref.partition, day, types.Long.fromNumber(belowOffset)],
        { prepare: true, fetchSize: 200 },
      )
      for await (const row of rows as unknown as AsyncIterable<types.Row>) {
        const maxReceivedMs = Number(row.get('max_received_ms'))
        if (maxReceivedMs < sinceMs) break
        out.push({
          firstOffset: Number(row.get('first_offset')),
          lastOffset: Number(row.get('last_offset')),
          maxReceivedMs,
          entries: row.get('hashes') as Buffer,
        })
      }
    }
    return out
  }

  async writeDedup(ref: PartitionRef, chunk: DedupChunk, epoch: number): Promise<void> {
    await this.client.execute(
      'INSERT INTO stream_dedup (consumer_group, topic, partition, day, last_offset, first_offset, max_received_ms, hashes) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?',
      [
        ref.group,
        ref.topic,
        ref.partition,
        new Date(chunk.maxReceivedMs).toISOString().slice(0, 10),
        types.Long.fromNumber(chunk.lastOffset),
        types.Long.fromNumber(chunk.firstOffset),
        types.Long.fromNumber(chunk.maxReceivedMs),
        chunk.entries,
        fencedTimestamp(epoch, chunk.lastOffset),
      ],
      { prepare: true },
    )
  }

  async loadVisitState(ref: PartitionRef): Promise<VisitStateSnapshot | undefined> {
    const rs = await this.client.execute(
      'SELECT chunk, data, next_offset, chunks FROM stream_visit_state WHERE consumer_group = ? AND topic = ? AND partition = ?',
      [ref.group, ref.topic, ref.partition],
      { prepare: true, fetchSize: 64 },
    )
    const rows: types.Row[] = []
    for await (const row of rs as unknown as AsyncIterable<types.Row>) rows.push(row)
    const head = rows[0]
    const count = head?.get('chunks') as number | null | undefined
    if (!head || count === null || count === undefined) return undefined
    const parts: Buffer[] = []
    for (const row of rows) {
      const i = row.get('chunk') as number | null
      if (i !== null && i < count) parts[i] = (row.get('data') as Buffer | null) ?? Buffer.alloc(0)
    }
    for (let i = 0; i < count; i++) {
      if (parts[i] === undefined)
        throw new TallyError(
          ERR.SERVICE_UNAVAILABLE,
          `visit state of partition ${ref.partition} of ${ref.topic}: chunk ${i} of ${count} missing`,
          { retriable: true },
        )
    }
    return { nextOffset: Number(head.get('next_offset')), state: Buffer.concat(parts.slice(0, count)) }
  }

  async writeVisitState(ref: PartitionRef, snapshot: VisitStateSnapshot, epoch: number): Promise<void> {
    // One single-partition batch: one mutation, so a reader sees all of this write or none of it
    // (Cassandra does not apply the batch size limits to a batch of one mutation).
    const ts = fencedTimestamp(epoch, snapshot.nextOffset)
    const bytes = snapshot.state
    const count = Math.ceil(bytes.byteLength / VISIT_STATE_CHUNK_BYTES)
    const key = [ref.group, ref.topic, ref.partition]
    const queries: Array<{ query: string; params: unknown[] }> = [
      {
        query:
          'UPDATE stream_visit_state USING TIMESTAMP ? SET next_offset = ?, chunks = ?, epoch = ?, updated_at = ? WHERE consumer_group = ? AND topic = ? AND partition = ?',
        params: [ts, types.Long.fromNumber(snapshot.nextOffset), count, epoch, new Date(), ...key],
      },
    ]
    for (let i = 0; i < count; i++) {
      const part = bytes.subarray(i * VISIT_STATE_CHUNK_BYTES, (i + 1) * VISIT_STATE_CHUNK_BYTES)
      queries.push({
        query:
          'INSERT INTO stream_visit_state (consumer_group, topic, partition, chunk, data) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?',
        params: [...key, i, Buffer.from(part.buffer, part.byteOffset, part.byteLength), ts],
      })
    }
    await this.client.batch(queries, { prepare: true, logged: false })
  }
}

/**
 * The write of a checkpoint into `table` (stream_group_checkpoints; stream_checkpoints before
 * migration 0006), with its fenced write timestamp: a stale owner's write never replaces a newer one.
 * `copy` keeps the write timestamp and write time of a row copied from elsewhere instead.
 */
export function checkpointInsert(
  table: string,
  ref: PartitionRef,
  cp: StreamCheckpoint,
  copy?: { timestamp: types.Long; updatedAt: Date | null },
): [string, unknown[]] {
  return [
    `INSERT INTO ${table} (consumer_group, topic, partition, next_offset, watermark_ms, epoch, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?`,
    [
      ref.group,
      ref.topic,
      ref.partition,
      types.Long.fromNumber(cp.nextOffset),
      types.Long.fromNumber(cp.watermarkMs),
      cp.epoch,
      copy ? copy.updatedAt : new Date(),
      copy ? copy.timestamp : fencedTimestamp(cp.epoch, cp.nextOffset),
    ],
  ]
}
