import { mkdir, readdir, rename, stat, unlink } from 'node:fs/promises'
import { hostname } from 'node:os'
import { dirname, join } from 'node:path'
import { windowStart } from '../core/aggregate/definition.js'
import { archiveKey } from '../core/archive/paths.js'
import {
  archiveTopicDir,
  fsyncDir,
  hourRelDir,
  rawSidecarName,
  segmentFileName,
  stagingRelDir,
  writeFileDurably,
} from '../core/archive/segment-file.js'
import { type ArchivedEvent, encodeSegment } from '../core/archive/segment-writer.js'
import { errorMessage, isProgrammingError } from '../core/errors.js'
import type { Logger } from '../core/log.js'
import type { ArchivePartitionState, ArchiveStateStore } from '../core/ports/batch-store.js'
import type { BatchControl, EventLogConsumer, LogOffsets, RecordBatch } from '../core/ports/event-log.js'
import { backoffDelayMs, sleep } from '../core/retry.js'
import { decodeRecord } from './decode.js'
import type { ArchiveMetrics } from './metrics.js'

export interface ArchiverOptions {
  /** Root folder of the archive; this topic's segments go under `<archiveDir>/<topic>/`. */
  archiveDir: string
  topic: string
  /** Consumer group of the archivers (also names the archive's commit rows). */
  group: string
  /** A partition's buffered events are closed into segments at least this often. Default 30000 ms. */
  flushIntervalMs?: number
  /** A partition flushes as soon as it buffers this many events (bounds memory). Default 50000. */
  maxBufferedEvents?: number
  /** …or this many bytes of raw events. Default 16 MiB. */
  maxBufferedBytes?: number
  /**
   * Event hours a partition buffers at once: an event of a further hour first closes the buffers
   * into segments, so one flush writes at most this many segments (and hour folders), however far
   * apart the events' times are. Default 64 (TALLY_ARCHIVE_MAX_OPEN_HOURS).
   */
  maxOpenHours?: number
  /** Overrides the owner name recorded with epochs. */
  owner?: string
}

export interface ArchiverDeps {
  consumer: EventLogConsumer
  store: ArchiveStateStore
  offsets?: LogOffsets
  metrics: ArchiveMetrics
  logger: Logger
}

function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  )
}

interface StagedFile {
  final: string
  staging: string
  bytes: number
}

/** What the archiver holds for one partition it owns. */
class ArchivePartition {
  /** Events by event-hour start, not yet in a closed segment. */
  readonly buffers = new Map<number, ArchivedEvent[]>()
  buffered = 0
  bufferedBytes = 0
  /** When the oldest record not yet committed was read (0: none). */
  openSinceMs = 0
  processedNext: number
  /** Segments of the last commit not yet renamed to their final names. */
  renames: StagedFile[] = []
  private chain: Promise<void> = Promise.resolve()

  constructor(
    readonly partition: number,
    public epoch: number,
    /** Every record below it is committed. */
    public nextOffset: number,
    public watermarkMs: number,
  ) {
    this.processedNext = nextOffset
  }

  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn)
    this.chain = run.then(
      () => undefined,
      () => undefined,
    )
    return run
  }
}

/**
 * The archiver: a consumer group on the raw topic that writes every event into Arrow segments by
 * event hour and partition, exactly once across crashes and rebalances.
 *
 * A flush of a partition covers the records [nextOffset, processedNext):
 * 1. one segment per event hour is written to the partition's staging folder and fsynced;
 * 2. the commit — next offset, watermark, and the staging → final names — is one conditional write
 *    in the store (`IF epoch = mine AND next_offset = first`): the commit point;
 * 3. the segments are renamed to their final names (closed; never changed again).
 * A new owner (after a crash, SIGKILL or rebalance) takes a new epoch, so an older owner can no
 * longer commit; finishes the renames of the last commit (roll forward); deletes uncommitted staging
 * files; and resumes after the committed offset. A record is therefore in exactly one closed segment.
 */
export class Archiver {
  private readonly states = new Map<number, ArchivePartition>()
  private readonly restoring = new Map<number, Promise<ArchivePartition>>()
  /** The partitions the group gave this member (undefined until the first assignment). */
  private assigned: Set<number> | undefined
  private readonly topicDir: string
  private readonly key: string
  private readonly owner: string
  private readonly flushIntervalMs: number
  private readonly maxBuffered: number
  private readonly maxBufferedBytes: number
  private readonly maxOpenHours: number
  private timer: NodeJS.Timeout | undefined
  private lagTimer: NodeJS.Timeout | undefined
  private closing: Promise<void> | undefined
  private stopping = false

  constructor(
    private readonly deps: ArchiverDeps,
    private readonly options: ArchiverOptions,
  ) {
    this.topicDir = archiveTopicDir(options.archiveDir, options.topic)
    this.key = archiveKey(options.group, options.topic)
    this.owner = options.owner ?? `${hostname()}:${process.pid}`
    this.flushIntervalMs = options.flushIntervalMs ?? 30_000
    this.maxBuffered = options.maxBufferedEvents ?? 50_000
    this.maxBufferedBytes = options.maxBufferedBytes ?? 16 * 1024 * 1024
    this.maxOpenHours = options.maxOpenHours ?? 64
  }

  async start(): Promise<void> {
    await mkdir(this.topicDir, { recursive: true })
    await this.deps.consumer.start({
      onBatch: (batch, control) => this.onBatch(batch, control),
      onAssignment: (partitions) => this.onAssignment(partitions),
    })
    this.timer = setInterval(
      () => void this.flushIdle(),
      Math.max(20, Math.min(1000, this.flushIntervalMs / 2)),
    )
    this.timer.unref()
    if (this.deps.offsets) {
      this.lagTimer = setInterval(() => void this.reportLag(), 5000)
      this.lagTimer.unref()
    }
  }

  ownedPartitions(): number[] {
    return [...this.states.keys()].sort((a, b) => a - b)
  }

  private onAssignment(partitions: number[]): void {
    const assigned = new Set(partitions)
    this.assigned = assigned
    // Buffers of a partition taken away are dropped: its new owner reads from the last commit.
    for (const p of [...this.states.keys()]) {
      if (!assigned.has(p)) this.drop(p)
    }
    // Taken at once, not at the first record: a commit whose renames a crash interrupted is rolled
    // forward even when no new event arrives.
    for (const p of assigned) {
      if (this.states.has(p) || this.closing) continue
      this.stateFor(p).catch((err: unknown) =>
        this.deps.logger.error({ err: errorMessage(err), partition: p }, 'cannot take archive partition'),
      )
    }
  }

  private drop(partition: number): void {
    const state = this.states.get(partition)
    if (!state) return
    this.states.delete(partition)
    this.deps.metrics.buffered.dec(state.buffered)
    this.deps.metrics.lag.remove({ partition: String(partition) })
  }

  private stateFor(partition: number): Promise<ArchivePartition> {
    const existing = this.states.get(partition)
    if (existing) return Promise.resolve(existing)
    let pending = this.restoring.get(partition)
    if (!pending) {
      pending = this.restore(partition).finally(() => this.restoring.delete(partition))
      this.restoring.set(partition, pending)
    }
    return pending
  }

  private isAssigned(partition: number): boolean {
    return this.assigned === undefined || this.assigned.has(partition)
  }

  /**
   * Takes the partition in the store: a new epoch (no older owner can commit any more), the last
   * commit's renames finished (roll forward), and the staging files nobody committed deleted.
   */
  private async takeOver(partition: number): Promise<ArchivePartitionState> {
    const { store, logger } = this.deps
    const taken = await this.withStoreRetry(
      () => store.acquire(this.key, partition, this.owner),
      'take partition',
    )
    let rolledForward = 0
    const dirs = new Set<string>()
    // Sidecars first, as a flush renames them.
    const pending = [...taken.pending].sort(
      ([a], [b]) => Number(!a.endsWith('.raw.arrow')) - Number(!b.endsWith('.raw.arrow')),
    )
    for (const [final, staging] of pending) {
      const target = join(this.topicDir, final)
      await mkdir(dirname(target), { recursive: true })
      try {
        await rename(join(this.topicDir, staging), target)
        rolledForward++
        dirs.add(dirname(target))
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
        // Renamed already (by the previous owner), or lost: the latter must not pass silently.
        if (!(await exists(target)))
          logger.error({ partition, segment: final }, 'a committed segment is missing from the archive')
      }
    }
    for (const dir of dirs) await fsyncDir(dir)
    const stagingDir = join(this.topicDir, stagingRelDir(partition))
    await mkdir(stagingDir, { recursive: true })
    let removed = 0
    for (const name of await readdir(stagingDir)) {
      // Written by an owner that never committed them (this one's own are written again).
      await unlink(join(stagingDir, name)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err
      })
      removed++
    }
    logger.info(
      { partition, epoch: taken.epoch, nextOffset: taken.nextOffset, rolledForward, removedStaging: removed },
      'archive partition restored',
    )
    return taken
  }

  private async restore(partition: number): Promise<ArchivePartition> {
    const taken = await this.takeOver(partition)
    const state = new ArchivePartition(partition, taken.epoch, taken.nextOffset, taken.watermarkMs)
    // Unassigned meanwhile (a rebalance): the state is not kept, its batches are stale.
    if (this.isAssigned(partition) && !this.closing) this.states.set(partition, state)
    return state
  }

  /**
   * Another archiver took the epoch while this one still owns the partition in the group (a
   * rebalance in flight, or a member that took it by mistake): take it back, keeping what is
   * buffered past the other's last commit, so nothing read is lost — Kafka will not deliver it again.
   */
  private async retake(state: ArchivePartition): Promise<void> {
    const taken = await this.takeOver(state.partition)
    state.epoch = taken.epoch
    const cut = taken.nextOffset
    if (cut > state.nextOffset) {
      let kept = 0
      let keptBytes = 0
      for (const [hour, events] of state.buffers) {
        const rest = events.filter((e) => e.offset >= cut)
        if (rest.length === 0) state.buffers.delete(hour)
        else state.buffers.set(hour, rest)
        kept += rest.length
        for (const e of rest) keptBytes += e.raw.length
      }
      state.bufferedBytes = keptBytes
      this.deps.metrics.buffered.dec(state.buffered - kept)
      state.buffered = kept
      state.nextOffset = cut
      state.watermarkMs = taken.watermarkMs
      if (cut > state.processedNext) state.processedNext = cut
      if (state.processedNext === state.nextOffset) state.openSinceMs = 0
    }
  }

  private async onBatch(batch: RecordBatch, control: BatchControl): Promise<void> {
    if (this.closing || control.isStale() || !this.isAssigned(batch.partition)) return
    const state = await this.stateFor(batch.partition)
    await state.exclusive(() => this.process(state, batch, control))
  }

  private async process(state: ArchivePartition, batch: RecordBatch, control: BatchControl): Promise<void> {
    if (this.states.get(state.partition) !== state || control.isStale()) return
    const { metrics, logger } = this.deps
    let archived = 0
    for (const record of batch.records) {
      if (record.offset < state.processedNext) {
        metrics.records.inc({ outcome: 'replayed' })
        continue
      }
      const decoded = decodeRecord(record)
      const hour = decoded.ok ? windowStart(decoded.event.timestampMs, 'hour') : 0
      if (decoded.ok && !state.buffers.has(hour) && state.buffers.size >= this.maxOpenHours) {
        // Everything before this record is closed first: a flush commits a whole offset range, so
        // the oldest hour alone cannot be closed.
        metrics.buffered.inc(archived)
        archived = 0
        await this.flush(state, control)
        if (this.states.get(state.partition) !== state) return
        // Taken back from another archiver that had committed past this record.
        if (record.offset < state.processedNext) continue
      }
      if (state.openSinceMs === 0) state.openSinceMs = Date.now()
      state.processedNext = record.offset + 1
      if (!decoded.ok) {
        metrics.records.inc({ outcome: 'invalid' })
        logger.debug(
          { partition: state.partition, offset: record.offset, code: decoded.code },
          `not archived: ${decoded.reason}`,
        )
        continue
      }
      let list = state.buffers.get(hour)
      if (!list) {
        list = []
        state.buffers.set(hour, list)
      }
      list.push(decoded.event)
      state.buffered++
      state.bufferedBytes += decoded.event.raw.length
      archived++
    }
    metrics.buffered.inc(archived)
    metrics.lag.set(
      { partition: String(state.partition) },
      Math.max(0, batch.highWatermark - state.nextOffset),
    )
    if (
      state.buffered >= this.maxBuffered ||
      state.bufferedBytes >= this.maxBufferedBytes ||
      Date.now() - state.openSinceMs >= this.flushIntervalMs
    ) {
      await this.flush(state, control)
    }
  }

  /**
   * Closes what a partition buffered into segments (see the class comment for the steps). Failures
   * of the disk or the store are retried for as long as it takes — consumption of the partition waits
   * meanwhile — because what was read is not read again unless the partition is restored.
   */
  private async flush(state: ArchivePartition, control?: BatchControl): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        if (state.renames.length === 0) await this.flushOnce(state, control)
        if (state.renames.length > 0) await this.finishRenames(state)
        return
      } catch (err) {
        if (isProgrammingError(err) || this.stopping) throw err
        const delay = backoffDelayMs(attempt, 200, 5000)
        this.deps.logger.warn(
          { err: errorMessage(err), partition: state.partition, attempt, delayMs: delay },
          'archive flush failed; retrying',
        )
        await sleep(delay)
        if (control) await control.heartbeat().catch(() => undefined)
      }
    }
  }

  private async flushOnce(state: ArchivePartition, control?: BatchControl): Promise<void> {
    if (state.processedNext === state.nextOffset || this.states.get(state.partition) !== state) return
    const { metrics, logger } = this.deps
    const started = process.hrtime.bigint()
    const first = state.nextOffset
    const next = state.processedNext
    const staged: StagedFile[] = []
    let watermarkMs = state.watermarkMs
    for (const [hour, events] of state.buffers) {
      for (const e of events) if (e.receivedMs > watermarkMs) watermarkMs = e.receivedMs
      const encoded = encodeSegment(events, {
        topic: this.options.topic,
        partition: state.partition,
        hourStartMs: hour,
        firstOffset: first,
        lastOffset: next - 1,
      })
      const hourDir = hourRelDir(hour)
      const name = segmentFileName({
        partition: state.partition,
        firstOffset: first,
        lastOffset: next - 1,
        rows: encoded.rows,
        crc32: encoded.crc32,
      })
      const base = `${stagingRelDir(state.partition)}/${state.epoch}-${first}-${next - 1}-${hourDir.replace('/', 'T')}`
      // The sidecar first: a segment visible under its final name always has its raw data beside it.
      for (const [final, staging, bytes] of [
        [`${hourDir}/${rawSidecarName(name)}`, `${base}.raw.arrow.tmp`, encoded.raw.bytes],
        [`${hourDir}/${name}`, `${base}.arrow.tmp`, encoded.bytes],
      ] as const) {
        const path = join(this.topicDir, staging)
        // Left by a failed attempt of this same flush.
        await unlink(path).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'ENOENT') throw err
        })
        await writeFileDurably(path, bytes)
        staged.push({ final, staging, bytes: bytes.length })
      }
    }
    if (staged.length > 0) await fsyncDir(join(this.topicDir, stagingRelDir(state.partition)))
    const commit = {
      firstOffset: first,
      nextOffset: next,
      watermarkMs,
      pending: new Map(staged.map((f) => [f.final, f.staging])),
    }
    const committed = await this.commitFlush(state, commit, control)
    if (!committed) {
      metrics.commitRefused.inc()
      if (!this.isAssigned(state.partition) || this.closing) {
        // Its new owner reads from the last commit and clears these staging files.
        logger.warn(
          { partition: state.partition, epoch: state.epoch },
          'archive partition taken over; flush dropped',
        )
        this.drop(state.partition)
        return
      }
      logger.warn(
        { partition: state.partition, epoch: state.epoch },
        'archive epoch taken by another archiver; taking it back',
      )
      await this.retake(state)
      return
    }
    metrics.buffered.dec(state.buffered)
    metrics.records.inc({ outcome: 'archived' }, state.buffered)
    state.buffers.clear()
    state.buffered = 0
    state.bufferedBytes = 0
    state.openSinceMs = 0
    state.nextOffset = next
    state.watermarkMs = watermarkMs
    state.renames = staged
    metrics.flushSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9)
  }

  /** Step 3: the committed segments get their final names. Idempotent. */
  private async finishRenames(state: ArchivePartition): Promise<void> {
    const dirs = new Set<string>()
    for (const f of state.renames) {
      const target = join(this.topicDir, f.final)
      await mkdir(dirname(target), { recursive: true })
      try {
        await rename(join(this.topicDir, f.staging), target)
      } catch (err) {
        // Done by an earlier attempt.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || !(await exists(target))) throw err
      }
      dirs.add(dirname(target))
    }
    for (const dir of dirs) await fsyncDir(dir)
    this.deps.metrics.segments.inc(state.renames.length / 2)
    this.deps.metrics.bytes.inc(state.renames.reduce((n, f) => n + f.bytes, 0))
    state.renames = []
    // Kafka's own offsets serve lag tools and the restart position; the store stays the truth.
    this.deps.consumer.commit(state.partition, state.nextOffset).catch((err: unknown) => {
      this.deps.logger.debug({ err: errorMessage(err) }, 'offset commit failed')
    })
  }

  /**
   * The conditional commit, retried while the store fails. A write that timed out may still have
   * been applied, so a refused retry checks whether the store already holds this very commit.
   */
  private async commitFlush(
    state: ArchivePartition,
    commit: { firstOffset: number; nextOffset: number; watermarkMs: number; pending: Map<string, string> },
    control?: BatchControl,
  ): Promise<boolean> {
    let uncertain = false
    for (let attempt = 1; ; attempt++) {
      try {
        if (await this.deps.store.commit(this.key, state.partition, state.epoch, commit)) return true
        if (!uncertain) return false
        const now = await this.deps.store.read(this.key, state.partition)
        return now?.epoch === state.epoch && now.nextOffset === commit.nextOffset
      } catch (err) {
        if (isProgrammingError(err) || this.stopping) throw err
        uncertain = true
        const delay = backoffDelayMs(attempt, 200, 5000)
        this.deps.logger.warn(
          { err: errorMessage(err), attempt, delayMs: delay },
          'archive commit failed; retrying',
        )
        await sleep(delay)
        if (control) await control.heartbeat().catch(() => undefined)
      }
    }
  }

  private async flushIdle(): Promise<void> {
    const now = Date.now()
    for (const state of this.states.values()) {
      if (state.openSinceMs === 0 || now - state.openSinceMs < this.flushIntervalMs) continue
      await state
        .exclusive(() => this.flush(state))
        .catch((err: unknown) => {
          this.deps.logger.error(
            { err: errorMessage(err), partition: state.partition },
            'archive flush failed',
          )
        })
    }
  }

  private async reportLag(): Promise<void> {
    try {
      const ends = await this.deps.offsets!.endOffsets(this.options.topic)
      for (const state of this.states.values()) {
        const end = ends.get(state.partition)
        if (end !== undefined)
          this.deps.metrics.lag.set(
            { partition: String(state.partition) },
            Math.max(0, end - state.nextOffset),
          )
      }
    } catch (err) {
      this.deps.logger.debug({ err: errorMessage(err) }, 'lag poll failed')
    }
  }

  private async withStoreRetry<T>(fn: () => Promise<T>, what: string): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn()
      } catch (err) {
        if (isProgrammingError(err) || this.stopping) throw err
        const delay = backoffDelayMs(attempt, 200, 5000)
        this.deps.logger.warn({ err: errorMessage(err), attempt, delayMs: delay }, `${what} failed; retrying`)
        await sleep(delay)
      }
    }
  }

  /**
   * After a crash (an uncaught error in this process): leave the group without closing buffers
   * into segments, so the partitions move at once instead of after the session timeout. The next
   * owner re-reads from the last archived offset.
   */
  abort(): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.timer)
      clearInterval(this.lagTimer)
      this.stopping = true
      await this.deps.consumer.close()
    })()
    return this.closing
  }

  /** SIGTERM: close every partition's buffer into segments, then leave the group. Repeat-safe. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.timer)
      clearInterval(this.lagTimer)
      for (const state of [...this.states.values()]) {
        await state
          .exclusive(() => this.flush(state))
          .catch((err: unknown) => {
            this.deps.logger.error(
              { err: errorMessage(err), partition: state.partition },
              'final archive flush failed',
            )
          })
      }
      this.stopping = true
      await this.deps.consumer.close()
    })()
    return this.closing
  }
}
