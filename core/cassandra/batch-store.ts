import { randomUUID } from 'node:crypto'
import type { Client } from 'cassandra-driver'
import { concurrent, types } from 'cassandra-driver'
import { type Granularity, type RowDimension, totalsBucket, windowMs } from '../aggregate/definition.js'
import { commitTtlSeconds, type FinalSpan, generationOf } from '../aggregate/final.js'
import { ERR } from '../error-codes.js'
import { TallyError } from '../errors.js'
import type {
  ArchiveCommit,
  ArchivePartitionState,
  ArchiveProgress,
  ArchiveStateStore,
  FinalRow,
  FinalRowStore,
  JobRun,
  JobStatus,
  JobStore,
  Lease,
  LeaseStore,
  RangeRecord,
} from '../ports/batch-store.js'
import { type TtlConfig, VISIT_COLUMNS, visitParams } from './stream-store.js'

/** The batch side of the Cassandra store: archive commits, leases, job runs and final rows. */

// Reads of rows written with lightweight transactions use SERIAL, so they see every committed
// transaction (a QUORUM read could miss one still being applied).
const SERIAL = { prepare: true, consistency: types.consistencies.serial }
const PREPARED = { prepare: true }

const CAS_ATTEMPTS = 30

function long(n: number): types.Long {
  return types.Long.fromNumber(n)
}

function num(v: unknown, fallback = 0): number {
  if (v === null || v === undefined) return fallback
  return Number(v)
}

/** Short random pause between compare-and-set attempts, so contenders spread out. */
function casPause(attempt: number): Promise<void> {
  return new Promise((r) => setTimeout(r, Math.random() * Math.min(200, 10 * attempt)))
}

function contended(what: string): TallyError {
  return new TallyError(ERR.STORE_CONTENDED, `${what}: too much contention, try again`, {
    retriable: true,
  })
}

function pendingOf(v: unknown): Map<string, string> {
  const out = new Map<string, string>()
  if (v instanceof Map) for (const [k, x] of v) out.set(String(k), String(x))
  else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) out.set(k, String(x))
  return out
}

export class CassandraArchiveStateStore implements ArchiveStateStore {
  constructor(private readonly client: Client) {}

  async acquire(archive: string, partition: number, owner: string): Promise<ArchivePartitionState> {
    for (let attempt = 1; attempt <= CAS_ATTEMPTS; attempt++) {
      const row = await this.read(archive, partition)
      if (!row) {
        const ins = await this.client.execute(
          'INSERT INTO archive_partitions (archive, partition, epoch, owner, next_offset, watermark_ms, pending, committed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS',
          [archive, partition, 1, owner, long(0), long(0), {}, new Date()],
          PREPARED,
        )
        if (ins.wasApplied()) return { epoch: 1, nextOffset: 0, watermarkMs: 0, pending: new Map() }
      } else {
        const { epoch, nextOffset } = row
        // The condition on next_offset too: the state returned is exactly the one the epoch took over.
        const upd = await this.client.execute(
          'UPDATE archive_partitions SET epoch = ?, owner = ? WHERE archive = ? AND partition = ? IF epoch = ? AND next_offset = ?',
          [epoch + 1, owner, archive, partition, epoch, long(nextOffset)],
          PREPARED,
        )
        if (upd.wasApplied()) {
          return { ...row, epoch: epoch + 1 }
        }
      }
      await casPause(attempt)
    }
    throw contended(`taking archive partition ${partition}`)
  }

  async read(archive: string, partition: number): Promise<ArchivePartitionState | undefined> {
    const rs = await this.client.execute(
      'SELECT epoch, next_offset, watermark_ms, pending FROM archive_partitions WHERE archive = ? AND partition = ?',
      [archive, partition],
      SERIAL,
    )
    const row = rs.first()
    if (!row) return undefined
    return {
      epoch: num(row.get('epoch')),
      nextOffset: num(row.get('next_offset')),
      watermarkMs: num(row.get('watermark_ms')),
      pending: pendingOf(row.get('pending')),
    }
  }

  async commit(archive: string, partition: number, epoch: number, c: ArchiveCommit): Promise<boolean> {
    const rs = await this.client.execute(
      'UPDATE archive_partitions SET next_offset = ?, watermark_ms = ?, pending = ?, committed_at = ? WHERE archive = ? AND partition = ? IF epoch = ? AND next_offset = ?',
      [
        long(c.nextOffset),
        long(c.watermarkMs),
        Object.fromEntries(c.pending),
        new Date(),
        archive,
        partition,
        epoch,
        long(c.firstOffset),
      ],
      PREPARED,
    )
    return rs.wasApplied()
  }

  async progress(archive: string, partitions: number): Promise<ArchiveProgress[]> {
    if (partitions <= 0) return []
    const rs = await this.client.execute(
      'SELECT partition, next_offset, watermark_ms, committed_at FROM archive_partitions WHERE archive = ? AND partition IN ?',
      [archive, Array.from({ length: partitions }, (_, i) => i)],
      SERIAL,
    )
    return rs.rows
      .map((r) => ({
        partition: num(r.get('partition')),
        nextOffset: num(r.get('next_offset')),
        watermarkMs: num(r.get('watermark_ms')),
        committedAtMs: (r.get('committed_at') as Date | null)?.getTime() ?? 0,
      }))
      .sort((a, b) => a.partition - b.partition)
  }
}

const FENCE = 'rebuild'

export class CassandraLeaseStore implements LeaseStore {
  constructor(private readonly client: Client) {}

  /**
   * The next fencing token: a CAS on one row. At least the wall clock in microseconds, so tokens stay
   * above any earlier ones even if the counter row were lost.
   */
  async nextToken(): Promise<number> {
    for (let attempt = 1; attempt <= CAS_ATTEMPTS; attempt++) {
      const rs = await this.client.execute(
        'SELECT fence_token FROM batch_fence WHERE name = ?',
        [FENCE],
        SERIAL,
      )
      const row = rs.first()
      const nowMicros = Date.now() * 1000
      if (!row) {
        const ins = await this.client.execute(
          'INSERT INTO batch_fence (name, fence_token) VALUES (?, ?) IF NOT EXISTS',
          [FENCE, long(nowMicros)],
          PREPARED,
        )
        if (ins.wasApplied()) return nowMicros
      } else {
        const current = num(row.get('fence_token'))
        const next = Math.max(current + 1, nowMicros)
        const upd = await this.client.execute(
          'UPDATE batch_fence SET fence_token = ? WHERE name = ? IF fence_token = ?',
          [long(next), FENCE, long(current)],
          PREPARED,
        )
        if (upd.wasApplied()) return next
      }
      await casPause(attempt)
    }
    throw contended('taking a fencing token')
  }

  async tryAcquire(name: string, holder: string, ttlMs: number): Promise<Lease | undefined> {
    const ttl = ttlSeconds(ttlMs)
    const acquiredAt = new Date()
    const ins = await this.client.execute(
      'INSERT INTO batch_leases (name, holder, fence_token, acquired_at, renewed_at) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?',
      [name, holder, long(0), acquiredAt, acquiredAt, ttl],
      PREPARED,
    )
    if (!ins.wasApplied()) return undefined
    // The token is taken while the lease is held, so it is above the token of every earlier holder.
    const token = await this.nextToken()
    const lease: Lease = { name, holder, token: 0, ttlMs, acquiredAtMs: acquiredAt.getTime() }
    const ok = await this.write(lease, token)
    if (!ok) return undefined
    return { ...lease, token }
  }

  private async write(lease: Lease, token: number): Promise<boolean> {
    // Every column is rewritten with the new TTL: the row lives as long as one of its cells does.
    const rs = await this.client.execute(
      'UPDATE batch_leases USING TTL ? SET holder = ?, fence_token = ?, acquired_at = ?, renewed_at = ? WHERE name = ? IF holder = ? AND fence_token = ?',
      [
        ttlSeconds(lease.ttlMs),
        lease.holder,
        long(token),
        new Date(lease.acquiredAtMs),
        new Date(),
        lease.name,
        lease.holder,
        long(lease.token),
      ],
      PREPARED,
    )
    return rs.wasApplied()
  }

  renew(lease: Lease): Promise<boolean> {
    return this.write(lease, lease.token)
  }

  async release(lease: Lease): Promise<void> {
    await this.client.execute(
      'DELETE FROM batch_leases WHERE name = ? IF holder = ?',
      [lease.name, lease.holder],
      PREPARED,
    )
  }

  async current(name: string): Promise<{ holder: string; token: number } | undefined> {
    const rs = await this.client.execute(
      'SELECT holder, fence_token FROM batch_leases WHERE name = ?',
      [name],
      SERIAL,
    )
    const row = rs.first()
    if (!row || row.get('holder') === null) return undefined
    return { holder: String(row.get('holder')), token: num(row.get('fence_token')) }
  }
}

function ttlSeconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000))
}

const DAY_MS = 86_400_000
const HOUR_MS = 3_600_000

const JOB_COLUMNS =
  'day, started_at, job_id, kind, site_id, range_from, range_to, status, holder, lease_name, fence_token, segments_read, events_read, duplicates, windows_written, rows_written, corrupt_segments, error, finished_at, duration_ms, warnings'

function jobOf(row: types.Row): JobRun {
  const finished = row.get('finished_at') as Date | null
  const duration = row.get('duration_ms')
  return {
    jobId: String(row.get('job_id')),
    kind: String(row.get('kind') ?? ''),
    siteId: (row.get('site_id') as string | null) ?? undefined,
    fromMs: (row.get('range_from') as Date).getTime(),
    toMs: (row.get('range_to') as Date).getTime(),
    status: String(row.get('status')) as JobStatus,
    holder: String(row.get('holder') ?? ''),
    leaseName: String(row.get('lease_name') ?? ''),
    token: num(row.get('fence_token')),
    startedAtMs: (row.get('started_at') as Date).getTime(),
    finishedAtMs: finished ? finished.getTime() : undefined,
    durationMs: duration === null || duration === undefined ? undefined : Number(duration),
    segmentsRead: num(row.get('segments_read')),
    eventsRead: num(row.get('events_read')),
    duplicates: num(row.get('duplicates')),
    windowsWritten: num(row.get('windows_written')),
    rowsWritten: num(row.get('rows_written')),
    corruptSegments: ((row.get('corrupt_segments') as string[] | null) ?? []).slice(),
    warnings: ((row.get('warnings') as string[] | null) ?? []).slice(),
    error: (row.get('error') as string | null) ?? undefined,
  }
}

export class CassandraJobStore implements JobStore {
  constructor(private readonly client: Client) {}

  async save(run: JobRun): Promise<void> {
    await this.client.execute(
      `INSERT INTO batch_jobs (${JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [
        new Date(run.startedAtMs).toISOString().slice(0, 10),
        new Date(run.startedAtMs),
        run.jobId,
        run.kind,
        run.siteId ?? null,
        new Date(run.fromMs),
        new Date(run.toMs),
        run.status,
        run.holder,
        run.leaseName,
        long(run.token),
        run.segmentsRead,
        long(run.eventsRead),
        long(run.duplicates),
        long(run.windowsWritten),
        long(run.rowsWritten),
        run.corruptSegments,
        run.error ?? null,
        run.finishedAtMs === undefined ? null : new Date(run.finishedAtMs),
        run.durationMs === undefined ? null : long(run.durationMs),
        run.warnings,
      ],
      PREPARED,
    )
  }

  async list(sinceMs: number, limit: number): Promise<JobRun[]> {
    const out: JobRun[] = []
    const firstDay = Math.floor(sinceMs / DAY_MS) * DAY_MS
    for (
      let day = Math.floor(Date.now() / DAY_MS) * DAY_MS;
      day >= firstDay && out.length < limit;
      day -= DAY_MS
    ) {
      const rs = await this.client.execute(
        `SELECT ${JOB_COLUMNS} FROM batch_jobs WHERE day = ? AND started_at >= ? LIMIT ?`,
        [new Date(day).toISOString().slice(0, 10), new Date(sinceMs), limit - out.length],
        PREPARED,
      )
      for (const row of rs.rows) out.push(jobOf(row))
    }
    return out
  }

  async lastSuccess(rangeKey: string): Promise<RangeRecord | undefined> {
    const rs = await this.client.execute(
      'SELECT fingerprint, job_id, finished_at FROM batch_ranges WHERE range_key = ?',
      [rangeKey],
      PREPARED,
    )
    const row = rs.first()
    if (!row) return undefined
    return {
      fingerprint: String(row.get('fingerprint')),
      jobId: String(row.get('job_id')),
      finishedAtMs: (row.get('finished_at') as Date | null)?.getTime() ?? 0,
    }
  }

  async recordSuccess(rangeKey: string, record: RangeRecord): Promise<void> {
    await this.client.execute(
      'INSERT INTO batch_ranges (range_key, fingerprint, job_id, finished_at) VALUES (?, ?, ?, ?)',
      [rangeKey, record.fingerprint, record.jobId, new Date(record.finishedAtMs)],
      PREPARED,
    )
  }
}

const VALUE_COLUMNS = `events, pageviews, bot_events, visitors, through_offset, ${VISIT_COLUMNS}, final`

export class CassandraFinalRowStore implements FinalRowStore {
  constructor(
    private readonly client: Client,
    private readonly ttl: TtlConfig,
    /** Writes in flight at once. */
    private readonly concurrency = 64,
  ) {}

  async existingWindows(
    siteId: string,
    granularity: Granularity,
    fromMs: number,
    toMs: number,
  ): Promise<number[]> {
    const buckets = new Set<string>()
    const step = windowMs(granularity)
    for (let t = Math.floor(fromMs / step) * step; t < toMs; t += step)
      buckets.add(totalsBucket(t, granularity))
    const out = new Set<number>()
    for (const bucket of buckets) {
      const rows = this.client.stream(
        'SELECT window_start FROM agg_totals WHERE site_id = ? AND granularity = ? AND bucket = ? AND window_start >= ? AND window_start < ?',
        [siteId, granularity, bucket, new Date(fromMs), new Date(toMs)],
        { prepare: true, fetchSize: 5000 },
      ) as unknown as AsyncIterable<types.Row>
      for await (const row of rows) out.add((row.get('window_start') as Date).getTime())
    }
    return [...out].sort((a, b) => a - b)
  }

  async streamHourEvents(siteId: string, fromMs: number, toMs: number): Promise<Map<number, number>> {
    const out = new Map<number, number>()
    for (const bucket of new Set(
      Array.from({ length: Math.max(0, Math.ceil((toMs - fromMs) / HOUR_MS)) }, (_, i) =>
        totalsBucket(fromMs + i * HOUR_MS, 'hour'),
      ),
    )) {
      const rows = this.client.stream(
        'SELECT window_start, source_partition, events, bot_events FROM agg_totals WHERE site_id = ? AND granularity = ? AND bucket = ? AND window_start >= ? AND window_start < ?',
        [siteId, 'hour', bucket, new Date(fromMs), new Date(toMs)],
        { prepare: true, fetchSize: 5000 },
      ) as unknown as AsyncIterable<types.Row>
      for await (const row of rows) {
        // Final rows have source_partition = -generation; only the stream's partials count here.
        if (num(row.get('source_partition')) < 0) continue
        const ws = (row.get('window_start') as Date).getTime()
        out.set(ws, (out.get(ws) ?? 0) + num(row.get('events')) + num(row.get('bot_events')))
      }
    }
    return out
  }

  async existingValues(
    siteId: string,
    granularity: Granularity,
    dimension: RowDimension,
    windowStart: number,
  ): Promise<string[]> {
    const out = new Set<string>()
    const rows = this.client.stream(
      'SELECT value FROM agg_dims WHERE site_id = ? AND granularity = ? AND dimension = ? AND window_start = ?',
      [siteId, granularity, dimension, new Date(windowStart)],
      { prepare: true, fetchSize: 5000 },
    ) as unknown as AsyncIterable<types.Row>
    for await (const row of rows) out.add(String(row.get('value')))
    return [...out]
  }

  async writeFinal(rows: readonly FinalRow[], token: number): Promise<void> {
    if (rows.length === 0) return
    const timestamp = long(token)
    const sourcePartition = -generationOf(token)
    const queries = rows.map((r) => {
      const values = [
        long(r.values.events),
        long(r.values.pageviews),
        long(r.values.botEvents),
        Buffer.from(r.values.visitors.buffer, r.values.visitors.byteOffset, r.values.visitors.byteLength),
        long(-1),
        ...visitParams(r.values),
        true,
      ]
      if (r.dimension === undefined) {
        return {
          query: `INSERT INTO agg_totals (site_id, granularity, bucket, window_start, source_partition, ${VALUE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?`,
          params: [
            r.siteId,
            r.granularity,
            totalsBucket(r.windowStart, r.granularity),
            new Date(r.windowStart),
            sourcePartition,
            ...values,
            this.ttl[r.granularity],
            timestamp,
          ],
        }
      }
      return {
        query: `INSERT INTO agg_dims (site_id, granularity, dimension, window_start, value, source_partition, ${VALUE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?`,
        params: [
          r.siteId,
          r.granularity,
          r.dimension,
          new Date(r.windowStart),
          r.value,
          sourcePartition,
          ...values,
          this.ttl[r.granularity],
          timestamp,
        ],
      }
    })
    await concurrent.executeConcurrent(this.client, queries, {
      concurrencyLevel: this.concurrency,
      raiseOnFirstError: true,
    })
  }

  async commitFinal(siteId: string, spans: readonly FinalSpan[], token: number): Promise<void> {
    if (spans.length === 0) return
    const generation = generationOf(token)
    const now = new Date()
    // One partition (the site): Cassandra applies a single-partition batch atomically and in
    // isolation, so a reader sees all of these spans switch or none.
    await this.client.batch(
      spans.map((span) => ({
        query:
          'INSERT INTO agg_final_commits (site_id, scope, span_start, generation, fence_token, committed_at, provisional) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?',
        params: [
          siteId,
          span.scope,
          new Date(span.startMs),
          generation,
          long(token),
          now,
          span.provisional === true,
          commitTtlSeconds(span, this.ttl),
          long(token),
        ],
      })),
      { prepare: true, logged: false },
    )
    // After the commit: a reader that sees the old mark may have read before or after it; one that
    // sees the new mark reads the committed generation.
    await this.client.execute(
      'INSERT INTO agg_final_marks (site_id, mark, written_at) VALUES (?, ?, ?)',
      [siteId, randomUUID(), now],
      { prepare: true },
    )
  }
}
