import { randomUUID } from 'node:crypto'
import type { Granularity, RowDimension } from '../aggregate/definition.js'
import { commitTtlSeconds, type FinalSpan, generationOf } from '../aggregate/final.js'
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
import type { Db } from './sqlite.js'
import { type EmbeddedTtlConfig, VISIT_COLUMNS, visitBinds, visitUpdate } from './stream-store.js'

/**
 * The batch side of the embedded store (core/ports/batch-store.ts): archive commits, leases with
 * their fencing tokens, job runs and final rows, with the semantics of the Cassandra one
 * (core/cassandra/batch-store.ts). What Cassandra does with a lightweight transaction is here one
 * SQLite transaction: one process and one connection, so a read and the write that depends on it
 * cannot interleave with another call. Each call is one transaction, durable when it resolves.
 */

type Now = () => number

function pendingJson(pending: ReadonlyMap<string, string>): string {
  // Sorted by final path, as Cassandra keeps a map.
  return JSON.stringify(Object.fromEntries([...pending].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))))
}

function pendingOf(text: string): Map<string, string> {
  const parsed = JSON.parse(text) as Record<string, unknown>
  return new Map(Object.entries(parsed).map(([k, v]) => [k, String(v)]))
}

interface ArchiveRow {
  epoch: number
  next_offset: number
  watermark_ms: number
  pending: string
}

export class EmbeddedArchiveStateStore implements ArchiveStateStore {
  private readonly stmt

  constructor(
    private readonly db: Db,
    private readonly now: Now = Date.now,
  ) {
    this.stmt = {
      read: db.prepare(
        'SELECT epoch, next_offset, watermark_ms, pending FROM archive_partitions WHERE archive = ? AND partition = ?',
      ),
      insert: db.prepare(
        "INSERT INTO archive_partitions (archive, partition, epoch, owner, next_offset, watermark_ms, pending, committed_at_ms) VALUES (?, ?, 1, ?, 0, 0, '{}', ?)",
      ),
      take: db.prepare(
        'UPDATE archive_partitions SET epoch = epoch + 1, owner = ? WHERE archive = ? AND partition = ?',
      ),
      commit: db.prepare(
        'UPDATE archive_partitions SET next_offset = ?, watermark_ms = ?, pending = ?, committed_at_ms = ? WHERE archive = ? AND partition = ? AND epoch = ? AND next_offset = ?',
      ),
      progress: db.prepare(
        'SELECT partition, next_offset, watermark_ms, committed_at_ms FROM archive_partitions WHERE archive = ? AND partition >= 0 AND partition < ? ORDER BY partition',
      ),
    }
  }

  private readRow(archive: string, partition: number): ArchivePartitionState | undefined {
    const row = this.stmt.read.get(archive, partition) as ArchiveRow | undefined
    if (!row) return undefined
    return {
      epoch: row.epoch,
      nextOffset: row.next_offset,
      watermarkMs: row.watermark_ms,
      pending: pendingOf(row.pending),
    }
  }

  async acquire(archive: string, partition: number, owner: string): Promise<ArchivePartitionState> {
    return this.db.transaction(() => {
      const row = this.readRow(archive, partition)
      if (!row) {
        this.stmt.insert.run(archive, partition, owner, this.now())
        return { epoch: 1, nextOffset: 0, watermarkMs: 0, pending: new Map<string, string>() }
      }
      this.stmt.take.run(owner, archive, partition)
      return { ...row, epoch: row.epoch + 1 }
    })()
  }

  async read(archive: string, partition: number): Promise<ArchivePartitionState | undefined> {
    return this.readRow(archive, partition)
  }

  async commit(archive: string, partition: number, epoch: number, c: ArchiveCommit): Promise<boolean> {
    const res = this.stmt.commit.run(
      c.nextOffset,
      c.watermarkMs,
      pendingJson(c.pending),
      this.now(),
      archive,
      partition,
      epoch,
      c.firstOffset,
    )
    return res.changes === 1
  }

  async progress(archive: string, partitions: number): Promise<ArchiveProgress[]> {
    if (partitions <= 0) return []
    const rows = this.stmt.progress.all(archive, partitions) as Array<{
      partition: number
      next_offset: number
      watermark_ms: number
      committed_at_ms: number
    }>
    return rows.map((r) => ({
      partition: r.partition,
      nextOffset: r.next_offset,
      watermarkMs: r.watermark_ms,
      committedAtMs: r.committed_at_ms,
    }))
  }
}

const FENCE = 'rebuild'

export class EmbeddedLeaseStore implements LeaseStore {
  private readonly stmt

  constructor(
    private readonly db: Db,
    private readonly now: Now = Date.now,
  ) {
    this.stmt = {
      fence: db.prepare('SELECT fence_token FROM batch_fence WHERE name = ?'),
      setFence: db.prepare(
        'INSERT INTO batch_fence (name, fence_token) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET fence_token = excluded.fence_token',
      ),
      live: db.prepare('SELECT holder, fence_token FROM batch_leases WHERE name = ? AND expires_at_ms > ?'),
      take: db.prepare(
        `INSERT INTO batch_leases (name, holder, fence_token, acquired_at_ms, renewed_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, fence_token = excluded.fence_token, acquired_at_ms = excluded.acquired_at_ms, renewed_at_ms = excluded.renewed_at_ms, expires_at_ms = excluded.expires_at_ms`,
      ),
      renew: db.prepare(
        'UPDATE batch_leases SET renewed_at_ms = ?, expires_at_ms = ? WHERE name = ? AND holder = ? AND fence_token = ? AND expires_at_ms > ?',
      ),
      release: db.prepare('DELETE FROM batch_leases WHERE name = ? AND holder = ?'),
      purge: db.prepare('DELETE FROM batch_leases WHERE expires_at_ms <= ?'),
    }
  }

  /**
   * The next fencing token (call inside a transaction): above every token handed out before, and at
   * least the wall clock in microseconds, like the Cassandra counter (so tokens stay above earlier
   * ones even if the counter row were lost).
   */
  private nextToken(nowMs: number): number {
    const row = this.stmt.fence.get(FENCE) as { fence_token: number } | undefined
    const nowMicros = nowMs * 1000
    const next = row ? Math.max(row.fence_token + 1, nowMicros) : nowMicros
    this.stmt.setFence.run(FENCE, next)
    return next
  }

  async tryAcquire(name: string, holder: string, ttlMs: number): Promise<Lease | undefined> {
    return this.db.transaction(() => {
      const now = this.now()
      if (this.stmt.live.get(name, now)) return undefined
      // Taken while the lease is being taken, so it is above the token of every earlier holder.
      const token = this.nextToken(now)
      this.stmt.take.run(name, holder, token, now, now, now + ttlMs)
      return { name, holder, token, ttlMs, acquiredAtMs: now }
    })()
  }

  async renew(lease: Lease): Promise<boolean> {
    const now = this.now()
    const res = this.stmt.renew.run(now, now + lease.ttlMs, lease.name, lease.holder, lease.token, now)
    return res.changes === 1
  }

  async release(lease: Lease): Promise<void> {
    this.stmt.release.run(lease.name, lease.holder)
  }

  async current(name: string): Promise<{ holder: string; token: number } | undefined> {
    const row = this.stmt.live.get(name, this.now()) as { holder: string; fence_token: number } | undefined
    if (!row) return undefined
    return { holder: row.holder, token: row.fence_token }
  }

  /** Deletes expired leases (what Cassandra's TTL does). Returns the rows deleted. */
  purgeExpired(): number {
    return this.stmt.purge.run(this.now()).changes
  }
}

const DAY_MS = 86_400_000
/** Runs are kept this long after their last write (batch_jobs' default_time_to_live in Cassandra). */
export const JOB_TTL_MS = 90 * DAY_MS

const JOB_COLUMNS =
  'started_at_ms, job_id, kind, site_id, range_from_ms, range_to_ms, status, holder, lease_name, fence_token, segments_read, events_read, duplicates, windows_written, rows_written, corrupt_segments, error, finished_at_ms, duration_ms, warnings'

interface JobRow {
  started_at_ms: number
  job_id: string
  kind: string
  site_id: string | null
  range_from_ms: number
  range_to_ms: number
  status: string
  holder: string
  lease_name: string
  fence_token: number
  segments_read: number
  events_read: number
  duplicates: number
  windows_written: number
  rows_written: number
  corrupt_segments: string
  error: string | null
  finished_at_ms: number | null
  duration_ms: number | null
  warnings: string
}

function jobOf(r: JobRow): JobRun {
  return {
    jobId: r.job_id,
    kind: r.kind,
    siteId: r.site_id ?? undefined,
    fromMs: r.range_from_ms,
    toMs: r.range_to_ms,
    status: r.status as JobStatus,
    holder: r.holder,
    leaseName: r.lease_name,
    token: r.fence_token,
    startedAtMs: r.started_at_ms,
    finishedAtMs: r.finished_at_ms ?? undefined,
    durationMs: r.duration_ms ?? undefined,
    segmentsRead: r.segments_read,
    eventsRead: r.events_read,
    duplicates: r.duplicates,
    windowsWritten: r.windows_written,
    rowsWritten: r.rows_written,
    corruptSegments: (JSON.parse(r.corrupt_segments) as unknown[]).map(String),
    warnings: (JSON.parse(r.warnings) as unknown[]).map(String),
    error: r.error ?? undefined,
  }
}

export class EmbeddedJobStore implements JobStore {
  private readonly stmt

  constructor(
    db: Db,
    private readonly now: Now = Date.now,
  ) {
    const updates = JOB_COLUMNS.split(', ')
      .filter((c) => c !== 'started_at_ms' && c !== 'job_id')
      .map((c) => `${c} = excluded.${c}`)
      .join(', ')
    this.stmt = {
      save: db.prepare(
        `INSERT INTO batch_jobs (${JOB_COLUMNS}, expires_at_ms) VALUES (${Array(21).fill('?').join(', ')})
         ON CONFLICT (started_at_ms, job_id) DO UPDATE SET ${updates}, expires_at_ms = excluded.expires_at_ms`,
      ),
      // Newest first, from the start of the current UTC day back to `since` (the days Cassandra reads).
      list: db.prepare(
        `SELECT ${JOB_COLUMNS} FROM batch_jobs WHERE started_at_ms >= ? AND started_at_ms < ? AND expires_at_ms > ? ORDER BY started_at_ms DESC, job_id ASC LIMIT ?`,
      ),
      lastSuccess: db.prepare(
        'SELECT fingerprint, job_id, finished_at_ms FROM batch_ranges WHERE range_key = ?',
      ),
      recordSuccess: db.prepare(
        `INSERT INTO batch_ranges (range_key, fingerprint, job_id, finished_at_ms) VALUES (?, ?, ?, ?)
         ON CONFLICT (range_key) DO UPDATE SET fingerprint = excluded.fingerprint, job_id = excluded.job_id, finished_at_ms = excluded.finished_at_ms`,
      ),
      purge: db.prepare('DELETE FROM batch_jobs WHERE expires_at_ms <= ?'),
    }
  }

  async save(run: JobRun): Promise<void> {
    this.stmt.save.run(
      run.startedAtMs,
      run.jobId,
      run.kind,
      run.siteId ?? null,
      run.fromMs,
      run.toMs,
      run.status,
      run.holder,
      run.leaseName,
      run.token,
      run.segmentsRead,
      run.eventsRead,
      run.duplicates,
      run.windowsWritten,
      run.rowsWritten,
      JSON.stringify(run.corruptSegments),
      run.error ?? null,
      run.finishedAtMs ?? null,
      run.durationMs ?? null,
      JSON.stringify(run.warnings),
      this.now() + JOB_TTL_MS,
    )
  }

  async list(sinceMs: number, limit: number): Promise<JobRun[]> {
    if (limit <= 0) return []
    const now = this.now()
    const endOfToday = Math.floor(now / DAY_MS) * DAY_MS + DAY_MS
    const firstDay = Math.floor(sinceMs / DAY_MS) * DAY_MS
    if (firstDay >= endOfToday) return []
    const rows = this.stmt.list.all(sinceMs, endOfToday, now, limit) as JobRow[]
    return rows.map(jobOf)
  }

  async lastSuccess(rangeKey: string): Promise<RangeRecord | undefined> {
    const row = this.stmt.lastSuccess.get(rangeKey) as
      | { fingerprint: string; job_id: string; finished_at_ms: number }
      | undefined
    if (!row) return undefined
    return { fingerprint: row.fingerprint, jobId: row.job_id, finishedAtMs: row.finished_at_ms }
  }

  async recordSuccess(rangeKey: string, record: RangeRecord): Promise<void> {
    this.stmt.recordSuccess.run(rangeKey, record.fingerprint, record.jobId, record.finishedAtMs)
  }

  /** Deletes runs past their lifetime. Returns the rows deleted. */
  purgeExpired(): number {
    return this.stmt.purge.run(this.now()).changes
  }
}

/**
 * Final rows: source_partition = −generation (core/aggregate/final.ts), through_offset = -1, and
 * the lease's fencing token as `fence` (Cassandra's write timestamp): an upsert replaces a row only
 * when its token is not lower, so the results of a job that took its lease later win even when an
 * older job's writes arrive last. Commits are fenced the same way. Stream rows are other rows
 * (source_partition >= 0), fenced among themselves; readers let the committed generation's row of a
 * window replace its partials (core/aggregate/merge.ts), in both stores alike.
 */
export class EmbeddedFinalRowStore implements FinalRowStore {
  private readonly stmt

  constructor(
    private readonly db: Db,
    private readonly ttl: EmbeddedTtlConfig,
    private readonly now: Now = Date.now,
  ) {
    const live = '(expires_at_ms IS NULL OR expires_at_ms > ?)'
    const values = `events, pageviews, bot_events, visitors, through_offset, fence, expires_at_ms, ${VISIT_COLUMNS}`
    const update = (table: string) =>
      `DO UPDATE SET events = excluded.events, pageviews = excluded.pageviews, bot_events = excluded.bot_events, visitors = excluded.visitors, through_offset = excluded.through_offset, fence = excluded.fence, expires_at_ms = excluded.expires_at_ms, ${visitUpdate(table)} WHERE excluded.fence >= ${table}.fence`
    this.stmt = {
      windows: db.prepare(
        `SELECT DISTINCT window_start FROM agg_totals WHERE site_id = ? AND granularity = ? AND window_start >= ? AND window_start < ? AND ${live} ORDER BY window_start`,
      ),
      streamHours: db.prepare(
        `SELECT window_start, SUM(events + bot_events) AS events FROM agg_totals WHERE site_id = ? AND granularity = 'hour' AND window_start >= ? AND window_start < ? AND source_partition >= 0 AND ${live} GROUP BY window_start`,
      ),
      values: db.prepare(
        `SELECT DISTINCT value FROM agg_dims WHERE site_id = ? AND granularity = ? AND dimension = ? AND window_start = ? AND ${live}`,
      ),
      writeTotals: db.prepare(
        `INSERT INTO agg_totals (site_id, granularity, window_start, source_partition, ${values}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, -1, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (site_id, granularity, window_start, source_partition) ${update('agg_totals')}`,
      ),
      writeDims: db.prepare(
        `INSERT INTO agg_dims (site_id, granularity, dimension, window_start, value, source_partition, ${values}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, -1, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (site_id, granularity, dimension, window_start, value, source_partition) ${update('agg_dims')}`,
      ),
      commit: db.prepare(
        `INSERT INTO agg_final_commits (site_id, scope, span_start, generation, fence, committed_at_ms, expires_at_ms, provisional) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (site_id, scope, span_start) DO UPDATE SET generation = excluded.generation, fence = excluded.fence, committed_at_ms = excluded.committed_at_ms, expires_at_ms = excluded.expires_at_ms, provisional = excluded.provisional WHERE excluded.fence >= agg_final_commits.fence`,
      ),
      mark: db.prepare(
        `INSERT INTO agg_final_marks (site_id, mark, written_at_ms) VALUES (?, ?, ?)
         ON CONFLICT (site_id) DO UPDATE SET mark = excluded.mark, written_at_ms = excluded.written_at_ms`,
      ),
    }
  }

  async existingWindows(
    siteId: string,
    granularity: Granularity,
    fromMs: number,
    toMs: number,
  ): Promise<number[]> {
    const rows = this.stmt.windows.all(siteId, granularity, fromMs, toMs, this.now()) as Array<{
      window_start: number
    }>
    return rows.map((r) => r.window_start)
  }

  async streamHourEvents(siteId: string, fromMs: number, toMs: number): Promise<Map<number, number>> {
    const rows = this.stmt.streamHours.all(siteId, fromMs, toMs, this.now()) as Array<{
      window_start: number
      events: number
    }>
    return new Map(rows.map((r) => [r.window_start, r.events]))
  }

  async existingValues(
    siteId: string,
    granularity: Granularity,
    dimension: RowDimension,
    windowStart: number,
  ): Promise<string[]> {
    const rows = this.stmt.values.all(siteId, granularity, dimension, windowStart, this.now()) as Array<{
      value: string
    }>
    return rows.map((r) => r.value)
  }

  private expiresAt(g: Granularity, now: number): number | null {
    const seconds = this.ttl[g]
    return seconds > 0 ? now + seconds * 1000 : null
  }

  async writeFinal(rows: readonly FinalRow[], token: number): Promise<void> {
    if (rows.length === 0) return
    const sourcePartition = -generationOf(token)
    const now = this.now()
    this.db.transaction(() => {
      for (const r of rows) {
        const v = r.values
        const visitors = Buffer.from(v.visitors.buffer, v.visitors.byteOffset, v.visitors.byteLength)
        const expires = this.expiresAt(r.granularity, now)
        if (r.dimension === undefined) {
          this.stmt.writeTotals.run(
            r.siteId,
            r.granularity,
            r.windowStart,
            sourcePartition,
            v.events,
            v.pageviews,
            v.botEvents,
            visitors,
            token,
            expires,
            ...visitBinds(v),
          )
        } else {
          this.stmt.writeDims.run(
            r.siteId,
            r.granularity,
            r.dimension,
            r.windowStart,
            r.value,
            sourcePartition,
            v.events,
            v.pageviews,
            v.botEvents,
            visitors,
            token,
            expires,
            ...visitBinds(v),
          )
        }
      }
    })()
  }

  async commitFinal(siteId: string, spans: readonly FinalSpan[], token: number): Promise<void> {
    if (spans.length === 0) return
    const generation = generationOf(token)
    const now = this.now()
    // One transaction: readers see every span switch, and the new mark, at once.
    this.db.transaction(() => {
      for (const span of spans) {
        const seconds = commitTtlSeconds(span, this.ttl)
        const expires = seconds > 0 ? now + seconds * 1000 : null
        this.stmt.commit.run(
          siteId,
          span.scope,
          span.startMs,
          generation,
          token,
          now,
          expires,
          span.provisional ? 1 : 0,
        )
      }
      this.stmt.mark.run(siteId, randomUUID(), now)
    })()
  }
}
