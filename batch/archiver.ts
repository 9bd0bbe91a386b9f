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
import type { Logger } from '../core/log.js'
import { OwnedPartition, PartitionOwner } from '../core/partition-owner.js'
import type { ArchivePartitionState, ArchiveStateStore } from '../core/ports/batch-store.js'
import type { BatchControl, EventLogConsumer, LogOffsets, RecordBatch } from '../core/ports/event-log.js'
import { entriesOf } from '../core/record/packed.js'
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
class ArchivePartition extends OwnedPartition {
  /** Events by event-hour start, not yet in a closed segment. */
  readonly buffers = new Map<number, ArchivedEvent[]>()
  buffered = 0
  bufferedBytes = 0
  /** When the oldest record not yet committed was read (0: none). */
  openSinceMs = 0
  processedNext: number
  /** Segments of the last commit not yet renamed to their final names. */
  renames: StagedFile[] = []

  constructor(
    partition: number,
    public epoch: number,
    /** Every record below it is committed. */
    public nextOffset: number,
    public watermarkMs: number,
  ) {
    super(partition)
    this.processedNext = nextOffset
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
 *
 * Assignment, the per-partition chain, idle flushes, lag, retries and close come from
 * PartitionOwner; partitions are taken as soon as they are assigned, and a flush is due once the
 * oldest record not yet committed was read `flushIntervalMs` ago.
 */
export class Archiver extends PartitionOwner<ArchivePartition> {
  private readonly topicDir: string
  private readonly key: string
  private readonly owner: string
  private readonly flushIntervalMs: number
  private readonly maxBuffered: number
  private readonly maxBufferedBytes: number
  private readonly maxOpenHours: number

  constructor(
    private readonly deps: ArchiverDeps,
    private readonly options: ArchiverOptions,
  ) {
    const flushIntervalMs = options.flushIntervalMs ?? 30_000
    super(
      { consumer: deps.consumer, offsets: deps.offsets, logger: deps.logger, lag: deps.metrics.lag },
      {
        topic: options.topic,
        idleCheckMs: Math.max(20, Math.min(1000, flushIntervalMs / 2)),
        takeOnAssignment: true,
        logPrefix: 'archive ',
      },
    )
    this.topicDir = archiveTopicDir(options.archiveDir, options.topic)
    this.key = archiveKey(options.group, options.topic)
    this.owner = options.owner ?? `${hostname()}:${process.pid}`
    this.flushIntervalMs = flushIntervalMs
    this.maxBuffered = options.maxBufferedEvents ?? 50_000
    this.maxBufferedBytes = options.maxBufferedBytes ?? 16 * 1024 * 1024
    this.maxOpenHours = options.maxOpenHours ?? 64
  }

  override async start(): Promise<void> {
    await mkdir(this.topicDir, { recursive: true })
    await super.start()
  }

  protected override onDropped(state: ArchivePartition): void {
    this.deps.metrics.buffered.dec(state.buffered)
  }

  /**
   * Takes the partition in the store: a new epoch (no older owner can commit any more), the last
   * commit's renames finished (roll forward), and the staging files nobody committed deleted.
   */
  private async takeOver(partition: number): Promise<ArchivePartitionState> {
    const { store, logger } = this.deps
    const taken = await this.untilStopped(
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

  protected async restore(partition: number): Promise<ArchivePartition> {
    const taken = await this.takeOver(partition)
    return new ArchivePartition(partition, taken.epoch, taken.nextOffset, taken.watermarkMs)
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

  protected async process(state: ArchivePartition, batch: RecordBatch, control: BatchControl): Promise<void> {
    const { metrics, logger } = this.deps
    let archived = 0
    // The offset of the record being taken: the events of a packed record (format 2) share it, and
    // a flush commits whole records, so the record's further events follow its first one.
    let taking = -1
    for (const record of entriesOf(batch.records)) {
      if (record.index === 0 ? record.offset < state.processedNext : record.offset !== taking) {
        metrics.records.inc({ outcome: 'replayed' })
        continue
      }
      const decoded = decodeRecord(record)
      const hour = decoded.ok ? windowStart(decoded.event.timestampMs, 'hour') : 0
      // Checked before a record's first event only (a flush cannot cut a record): a packed record's
      // further events may open hours past the cap, at most as many as it has events.
      if (
        record.index === 0 &&
        decoded.ok &&
        !state.buffers.has(hour) &&
        state.buffers.size >= this.maxOpenHours
      ) {
        // Everything before this record is closed first: a flush commits a whole offset range, so
        // the oldest hour alone cannot be closed.
        metrics.buffered.inc(archived)
        archived = 0
        await this.flush(state, control)
        if (!this.owns(state)) return
        // Taken back from another archiver that had committed past this record.
        if (record.offset < state.processedNext) continue
      }
      if (state.openSinceMs === 0) state.openSinceMs = Date.now()
      state.processedNext = record.offset + 1
      taking = record.offset
      if (!decoded.ok) {
        metrics.records.inc({ outcome: 'invalid' })
        logger.debug(
          { partition: state.partition, offset: record.offset, index: record.index, code: decoded.code },
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
    this.setLag(state, batch.highWatermark)
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
  protected flush(state: ArchivePartition, control?: BatchControl): Promise<void> {
    return this.untilStopped(
      async () => {
        if (state.renames.length === 0) await this.flushOnce(state, control)
        if (state.renames.length > 0) await this.finishRenames(state)
      },
      'archive flush',
      control,
      state.partition,
    )
  }

  private async flushOnce(state: ArchivePartition, control?: BatchControl): Promise<void> {
    if (state.processedNext === state.nextOffset || !this.owns(state)) return
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
      if (!this.isAssigned(state.partition) || this.isClosing) {
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
    this.commitOffset(state.partition, state.nextOffset)
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
    return this.untilStopped(
      async () => {
        try {
          if (await this.deps.store.commit(this.key, state.partition, state.epoch, commit)) return true
          if (!uncertain) return false
          const now = await this.deps.store.read(this.key, state.partition)
          return now?.epoch === state.epoch && now.nextOffset === commit.nextOffset
        } catch (err) {
          uncertain = true
          throw err
        }
      },
      'archive commit',
      control,
    )
  }

  protected idleFlushDue(state: ArchivePartition, nowMs: number): boolean {
    return state.openSinceMs !== 0 && nowMs - state.openSinceMs >= this.flushIntervalMs
  }

  /** Lag counts the records not yet in a closed segment. */
  protected position(state: ArchivePartition): number {
    return state.nextOffset
  }
}
