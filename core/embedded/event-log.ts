import { ERR } from '../error-codes.js'
import { errorMessage, ServiceUnavailableError, TallyError } from '../errors.js'
import type { Logger } from '../log.js'
import type { ConsumedRecord, LogOffsets, LogRecord } from '../ports/event-log.js'
import { EmbeddedGroupConsumer, type EmbeddedGroupConsumerOptions, GroupCoordinator } from './consumer.js'
import { partitionForKey } from './partitioner.js'
import type { Db, Statement } from './sqlite.js'
import { EmbeddedLogWriter } from './writer.js'

/** A topic to create (the embedded twin of core/kafka/client.ts TopicSpec; replication is moot). */
export interface EmbeddedTopicSpec {
  topic: string
  partitions: number
}

/** How long a failed commit keeps the log unhealthy when no append follows (ms). */
const UNHEALTHY_AFTER_FAILURE_MS = 1000

interface TopicState {
  id: number
  partitions: number
  /** Next offset per partition (= end offset), as committed. */
  ends: number[]
}

interface PendingAppend {
  topic: TopicState
  records: readonly LogRecord[]
  resolve: () => void
  reject: (err: Error) => void
}

export interface EmbeddedEventLogOptions {
  logger?: Logger
  /**
   * Other connections (threads of this process) append to the same file: each group commit reads
   * the end offsets inside its transaction instead of trusting this instance's copy. Default false.
   */
  shared?: boolean
  /** Told after each commit which partitions grew and to what end offset (to wake readers elsewhere). */
  onAppended?: (topic: string, partition: number, end: number) => void
}

/**
 * The durable local log behind the event-log port: Kafka's model (topics, partitions chosen by key
 * hash, offsets per partition, consumer groups with committed offsets) stored in one SQLite file.
 *
 * Appends are group-committed: every append made during one turn of the event loop goes into one
 * transaction, and each resolves only after that transaction is on disk (WAL fsynced). Readers are
 * woken by appends, so a consumer sees a record within a tick of its commit.
 */
export class EmbeddedEventLog implements LogOffsets {
  private readonly topics = new Map<string, TopicState>()
  private queue: PendingAppend[] = []
  private scheduled = false
  private lastOk = true
  private lastFailureMs = 0
  private closed = false
  /** Wakes readers waiting for records past their position: key `topicId:partition`. */
  private readonly waiters = new Map<string, Set<() => void>>()
  private readonly groups = new Map<string, GroupCoordinator>()
  private readonly consumers = new Set<EmbeddedGroupConsumer>()
  private readonly stmt: {
    insert: Statement
    setEnd: Statement
    read: Statement
    commit: Statement
    committed: Statement
    first: Statement
    trim: Statement
    ends: Statement
  }

  constructor(
    private readonly db: Db,
    private readonly options: EmbeddedEventLogOptions = {},
  ) {
    for (const t of db.prepare('SELECT topic_id, name, partitions FROM topics').all() as Array<{
      topic_id: number
      name: string
      partitions: number
    }>) {
      const ends = new Array<number>(t.partitions).fill(0)
      for (const e of db
        .prepare('SELECT partition, next_offset FROM partition_ends WHERE topic_id = ?')
        .all(t.topic_id) as Array<{ partition: number; next_offset: number }>) {
        if (e.partition < ends.length) ends[e.partition] = e.next_offset
      }
      this.topics.set(t.name, { id: t.topic_id, partitions: t.partitions, ends })
    }
    this.stmt = {
      insert: db.prepare(
        'INSERT INTO records (topic_id, partition, offset, key, value, headers, timestamp_ms) VALUES (?, ?, ?, ?, ?, ?, ?)',
      ),
      setEnd: db.prepare(
        'INSERT INTO partition_ends (topic_id, partition, next_offset) VALUES (?, ?, ?) ON CONFLICT (topic_id, partition) DO UPDATE SET next_offset = excluded.next_offset',
      ),
      read: db.prepare(
        'SELECT offset, key, value, headers, timestamp_ms FROM records WHERE topic_id = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?',
      ),
      commit: db.prepare(
        'INSERT INTO group_offsets (group_id, topic_id, partition, next_offset, committed_at_ms) VALUES (?, ?, ?, ?, ?) ON CONFLICT (group_id, topic_id, partition) DO UPDATE SET next_offset = excluded.next_offset, committed_at_ms = excluded.committed_at_ms',
      ),
      committed: db.prepare(
        'SELECT partition, next_offset FROM group_offsets WHERE group_id = ? AND topic_id = ?',
      ),
      first: db.prepare(
        'SELECT offset FROM records WHERE topic_id = ? AND partition = ? ORDER BY offset LIMIT 1',
      ),
      trim: db.prepare(
        'DELETE FROM records WHERE topic_id = ? AND partition = ? AND offset < ? AND timestamp_ms < ?',
      ),
      ends: db.prepare('SELECT partition, next_offset FROM partition_ends WHERE topic_id = ?'),
    }
  }

  /** Creates the topics that do not exist yet (an existing topic keeps its partitions). Returns the names created. */
  ensureTopics(specs: readonly EmbeddedTopicSpec[]): string[] {
    const created: string[] = []
    for (const spec of specs) {
      if (this.topics.has(spec.topic)) continue
      if (!Number.isInteger(spec.partitions) || spec.partitions < 1 || spec.partitions > 10_000) {
        throw new RangeError(
          `${spec.topic}: partitions must be an integer from 1 to 10000, got ${spec.partitions}`,
        )
      }
      const info = this.db
        .prepare('INSERT INTO topics (name, partitions, created_at_ms) VALUES (?, ?, ?)')
        .run(spec.topic, spec.partitions, Date.now())
      this.topics.set(spec.topic, {
        id: Number(info.lastInsertRowid),
        partitions: spec.partitions,
        ends: new Array<number>(spec.partitions).fill(0),
      })
      created.push(spec.topic)
    }
    return created
  }

  /** Partitions of `topic`, or undefined when it does not exist. */
  partitionsOf(topic: string): number | undefined {
    return this.topics.get(topic)?.partitions
  }

  /** Topic names with their partition counts. */
  listTopics(): EmbeddedTopicSpec[] {
    return [...this.topics].map(([topic, t]) => ({ topic, partitions: t.partitions }))
  }

  private topic(name: string): TopicState {
    const t = this.topics.get(name)
    if (!t) {
      throw new TallyError(ERR.UNKNOWN_TOPIC, `the embedded log has no topic ${name}`, {
        where: name,
      })
    }
    return t
  }

  /** A writer handle (EventLogWriter) of its own: closing it does not close the log. */
  writer(): EmbeddedLogWriter {
    return new EmbeddedLogWriter(this)
  }

  /** A member of consumer group `groupId` on `topic` (EventLogConsumer). */
  consumer(options: EmbeddedGroupConsumerOptions): EmbeddedGroupConsumer {
    const key = `${options.groupId}\u0000${options.topic}`
    let group = this.groups.get(key)
    if (!group) {
      group = new GroupCoordinator()
      this.groups.set(key, group)
    }
    const consumer = new EmbeddedGroupConsumer(this, group, {
      ...options,
      ...(options.logger || !this.options.logger ? {} : { logger: this.options.logger }),
    })
    this.consumers.add(consumer)
    return consumer
  }

  /**
   * False after a failed commit, until one succeeds. Without traffic no commit can prove the disk
   * is writable again, and a not-ready instance gets no traffic: so a failure counts for
   * {@link UNHEALTHY_AFTER_FAILURE_MS} only, then appends are let through to try again.
   */
  healthy(): boolean {
    if (this.closed) return false
    return this.lastOk || Date.now() - this.lastFailureMs > UNHEALTHY_AFTER_FAILURE_MS
  }

  /**
   * Appends records (partition by key hash) and resolves once they are durably stored. Rejects with a
   * retriable 503 error when the commit fails (disk full, I/O error); nothing of that call is stored.
   */
  append(topic: string, records: readonly LogRecord[]): Promise<void> {
    if (this.closed) return Promise.reject(closedError())
    let state: TopicState
    try {
      state = this.topic(topic)
    } catch (err) {
      return Promise.reject(err)
    }
    if (records.length === 0) return Promise.resolve()
    // A bad record would fail the whole group commit, other callers' records with it: refuse it here.
    for (const r of records) {
      if (typeof r.key !== 'string' || !(r.value instanceof Uint8Array)) {
        return Promise.reject(new TypeError(`${topic}: a record needs a string key and a Buffer value`))
      }
    }
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ topic: state, records, resolve, reject })
      if (!this.scheduled) {
        this.scheduled = true
        // Appends of the same event-loop turn (concurrent requests) share one fsync.
        setImmediate(() => this.flush())
      }
    })
  }

  private flush(): void {
    this.scheduled = false
    const batch = this.queue
    this.queue = []
    if (batch.length === 0) return
    const ends = new Map<TopicState, number[]>()
    const now = Date.now()
    try {
      this.db.transaction(() => {
        for (const p of batch) {
          let next = ends.get(p.topic)
          if (!next) {
            // Shared file: another connection may have appended since; the transaction holds the
            // write lock, so what it reads now is the end.
            if (this.options.shared) this.loadEnds(p.topic)
            next = [...p.topic.ends]
            ends.set(p.topic, next)
          }
          for (const r of p.records) {
            const partition = partitionForKey(r.key, p.topic.partitions)
            const offset = next[partition]!
            next[partition] = offset + 1
            this.stmt.insert.run(
              p.topic.id,
              partition,
              offset,
              r.key,
              r.value,
              JSON.stringify(r.headers),
              r.timestampMs ?? now,
            )
          }
        }
        for (const [t, next] of ends) {
          for (let partition = 0; partition < next.length; partition++) {
            if (next[partition] !== t.ends[partition]) this.stmt.setEnd.run(t.id, partition, next[partition])
          }
        }
      })()
    } catch (err) {
      this.lastOk = false
      this.lastFailureMs = Date.now()
      this.options.logger?.warn(
        { err: errorMessage(err), appends: batch.length },
        'embedded log write failed',
      )
      const wrapped = new ServiceUnavailableError('embedded log', `write failed: ${errorMessage(err)}`, err)
      for (const p of batch) p.reject(wrapped)
      return
    }
    this.lastOk = true
    for (const [t, next] of ends) {
      for (let partition = 0; partition < next.length; partition++) {
        if (next[partition] === t.ends[partition]) continue
        t.ends[partition] = next[partition]!
        this.wake(t.id, partition)
        if (this.options.onAppended) this.notifyAppended(t, partition)
      }
    }
    for (const p of batch) p.resolve()
  }

  private loadEnds(t: TopicState): void {
    for (const e of this.stmt.ends.all(t.id) as Array<{ partition: number; next_offset: number }>) {
      if (e.partition < t.ends.length && e.next_offset > t.ends[e.partition]!)
        t.ends[e.partition] = e.next_offset
    }
  }

  private notifyAppended(t: TopicState, partition: number): void {
    for (const [name, state] of this.topics) {
      if (state === t) this.options.onAppended?.(name, partition, t.ends[partition]!)
    }
  }

  /**
   * Another connection to the same file (a thread of this process) committed records up to `end`
   * on `partition`: readers waiting here are woken instead of finding them at their next idle poll.
   */
  noteAppended(topic: string, partition: number, end: number): void {
    const t = this.topics.get(topic)
    if (!t || partition < 0 || partition >= t.partitions || end <= (t.ends[partition] ?? 0)) return
    t.ends[partition] = end
    this.wake(t.id, partition)
  }

  /** Pending appends, for a writer's close. */
  async drain(): Promise<void> {
    while (this.queue.length > 0 || this.scheduled) await new Promise((r) => setImmediate(r))
  }

  async endOffsets(topic: string): Promise<Map<number, number>> {
    const t = this.topic(topic)
    return new Map(t.ends.map((end, partition) => [partition, end]))
  }

  /** End offset of one partition (next offset the log will write). */
  endOffset(topic: string, partition: number): number {
    return this.topic(topic).ends[partition] ?? 0
  }

  /** Up to `maxRecords` records of a partition from `fromOffset` on, in offset order. */
  read(topic: string, partition: number, fromOffset: number, maxRecords: number): ConsumedRecord[] {
    const t = this.topic(topic)
    const rows = this.stmt.read.all(t.id, partition, fromOffset, maxRecords) as Array<{
      offset: number
      key: string | null
      value: Buffer | null
      headers: string
      timestamp_ms: number
    }>
    return rows.map((r) => ({
      offset: r.offset,
      key: r.key ?? undefined,
      value: r.value ?? undefined,
      headers: JSON.parse(r.headers) as Record<string, string>,
      timestampMs: r.timestamp_ms,
    }))
  }

  /** Resolves when `partition` has a record at or after `position`, after `timeoutMs`, or on `abort`. */
  waitFor(
    topic: string,
    partition: number,
    position: number,
    timeoutMs: number,
    abort: AbortSignal,
  ): Promise<void> {
    const t = this.topic(topic)
    if ((t.ends[partition] ?? 0) > position || abort.aborted) return Promise.resolve()
    const key = `${t.id}:${partition}`
    return new Promise<void>((resolve) => {
      let set = this.waiters.get(key)
      if (!set) {
        set = new Set()
        this.waiters.set(key, set)
      }
      const done = () => {
        clearTimeout(timer)
        abort.removeEventListener('abort', done)
        set.delete(done)
        resolve()
      }
      const timer = setTimeout(done, timeoutMs)
      abort.addEventListener('abort', done)
      set.add(done)
    })
  }

  private wake(topicId: number, partition: number): void {
    const set = this.waiters.get(`${topicId}:${partition}`)
    if (set) for (const w of [...set]) w()
  }

  /** Records a group's progress on a partition (durable). */
  commitOffset(groupId: string, topic: string, partition: number, nextOffset: number): void {
    const t = this.topic(topic)
    if (!Number.isInteger(partition) || partition < 0 || partition >= t.partitions) {
      throw new RangeError(`${topic} has no partition ${partition}`)
    }
    this.stmt.commit.run(groupId, t.id, partition, nextOffset, Date.now())
  }

  /**
   * Retention: deletes the records of `topic` logged before `beforeMs` that every group in `groups`
   * has committed past (with no groups, by time alone), so a reader that is behind never loses a
   * record it has not processed. At most `maxRecords` per partition per call, one statement each,
   * so the event loop is never held for long; offsets and end offsets do not change. Returns the
   * number of records deleted.
   */
  trim(topic: string, beforeMs: number, groups: readonly string[], maxRecords = 20_000): number {
    const t = this.topics.get(topic)
    if (!t) return 0
    const committed = groups.map((g) => this.committedOffsets(g, topic))
    let deleted = 0
    for (let p = 0; p < t.partitions; p++) {
      let upTo = t.ends[p] ?? 0
      for (const c of committed) upTo = Math.min(upTo, c.get(p) ?? 0)
      const first = this.stmt.first.get(t.id, p) as { offset: number } | undefined
      if (!first || upTo <= first.offset) continue
      deleted += this.stmt.trim.run(t.id, p, Math.min(upTo, first.offset + maxRecords), beforeMs).changes
    }
    return deleted
  }

  /** A group's committed offsets on `topic` (partitions never committed are absent). */
  committedOffsets(groupId: string, topic: string): Map<number, number> {
    const t = this.topic(topic)
    const rows = this.stmt.committed.all(groupId, t.id) as Array<{ partition: number; next_offset: number }>
    return new Map(rows.map((r) => [r.partition, r.next_offset]))
  }

  /**
   * Stops the consumers still running (normally their roles closed them already), writes what is
   * pending, then rejects further appends (the owner closes the database after).
   */
  async close(): Promise<void> {
    await Promise.all([...this.consumers].map((c) => c.close()))
    await this.drain()
    this.closed = true
    for (const set of this.waiters.values()) for (const w of [...set]) w()
  }
}

function closedError(): TallyError {
  return new TallyError(ERR.SHUTTING_DOWN, 'the embedded log is closed', {
    retriable: true,
  })
}
