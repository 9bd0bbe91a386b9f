import type { Client } from 'cassandra-driver'
import { concurrent, types } from 'cassandra-driver'
import { type Granularity, totalsBucket } from '../aggregate/definition.js'
import { TallyError } from '../errors.js'
import type {
  DedupChunk,
  PartitionRef,
  RowKey,
  RowWrite,
  StoredRow,
  StreamCheckpoint,
  StreamStore,
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

const TOTALS_COLS = 'events, pageviews, bot_events, visitors, through_offset'

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
      'TALLY_ERR_EPOCH_CONTENDED',
      `could not take partition ${ref.partition} of ${ref.topic}: too much contention`,
      {
        retriable: true,
      },
    )
  }

  async readCheckpoint(ref: PartitionRef): Promise<StreamCheckpoint | undefined> {
    const rs = await this.client.execute(
      'SELECT next_offset, watermark_ms, epoch FROM stream_checkpoints WHERE consumer_group = ? AND topic = ? AND partition = ?',
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
    await this.client.execute(
      'INSERT INTO stream_checkpoints (consumer_group, topic, partition, next_offset, watermark_ms, epoch, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?',
      [
        ref.group,
        ref.topic,
        ref.partition,
        types.Long.fromNumber(cp.nextOffset),
        types.Long.fromNumber(cp.watermarkMs),
        cp.epoch,
        new Date(),
        fencedTimestamp(cp.epoch, cp.nextOffset),
      ],
      { prepare: true },
    )
  }

  async loadRows(keys: readonly RowKey[]): Promise<Map<string, StoredRow>> {
    const out = new Map<string, StoredRow>()
    const queries = keys.map((k) => this.selectOne(k))
    let i = 0
    const worker = async () => {
      while (i < queries.length) {
        const idx = i++
        const q = queries[idx]!
        const rs = await this.client.execute(q.query, q.params, { prepare: true })
        const row = rs.first()
        if (row) {
          out.set(rowId(keys[idx]!), {
            events: Number(row.get('events') ?? 0),
            pageviews: Number(row.get('pageviews') ?? 0),
            botEvents: Number(row.get('bot_events') ?? 0),
            visitors: (row.get('visitors') as Buffer | null) ?? new Uint8Array(0),
            throughOffset: row.get('through_offset') === null ? -1 : Number(row.get('through_offset')),
          })
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(this.concurrency, queries.length) }, worker))
    return out
  }

  private selectOne(k: RowKey): { query: string; params: unknown[] } {
    if (k.dimension === undefined) {
      return {
        query: `SELECT ${TOTALS_COLS} FROM agg_totals WHERE site_id = ? AND granularity = ? AND bucket = ? AND window_start = ? AND source_partition = ?`,
        params: [
          k.siteId,
          k.granularity,
          totalsBucket(k.windowStart, k.granularity),
          new Date(k.windowStart),
          k.sourcePartition,
        ],
      }
    }
    return {
      query: `SELECT ${TOTALS_COLS} FROM agg_dims WHERE site_id = ? AND granularity = ? AND dimension = ? AND window_start = ? AND value = ? AND source_partition = ?`,
      params: [k.siteId, k.granularity, k.dimension, new Date(k.windowStart), k.value, k.sourcePartition],
    }
  }

  private ttlOf(g: Granularity): number {
    return this.ttl[g]
  }

  async writeRows(rows: readonly RowWrite[], epoch: number): Promise<void> {
    if (rows.length === 0) return
    const queries = rows.map((r) => {
      const k = r.key
      const ts = fencedTimestamp(epoch, r.throughOffset)
      const values = [
        types.Long.fromNumber(r.values.events),
        types.Long.fromNumber(r.values.pageviews),
        types.Long.fromNumber(r.values.botEvents),
        Buffer.from(r.values.visitors),
        types.Long.fromNumber(r.throughOffset),
        k.sourcePartition < 0,
      ]
      if (k.dimension === undefined) {
        return {
          query: `INSERT INTO agg_totals (site_id, granularity, bucket, window_start, source_partition, ${TOTALS_COLS}, final) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?`,
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
        query: `INSERT INTO agg_dims (site_id, granularity, dimension, window_start, value, source_partition, ${TOTALS_COLS}, final) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?`,
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
    })
    await concurrent.executeConcurrent(this.client, queries, {
      concurrencyLevel: this.concurrency,
      raiseOnFirstError: true,
    })
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
}
