import { chmod, open, readdir } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE } from '../private-files.js'

/**
 * Where archive segments live and what their names say.
 *
 * ```
 * <archiveDir>/<topic>/
 *   2024-05-01/13/p2-1200-1399-187-9f0c3a1e.arrow       closed segments, by event hour
 *   2024-05-01/13/p2-1200-1399-187-9f0c3a1e.raw.arrow   …and their raw sidecars
 *   _staging/p2/…arrow.tmp                               written, fsynced, not yet committed or renamed
 * ```
 * A closed segment's name is `p<partition>-<firstOffset>-<lastOffset>-<rows>-<crc32>.arrow`: the
 * partition and offset range of the archiver flush it came from (one flush writes one segment per
 * event hour it holds, all with the same range), its row count, and the CRC-32 of the whole file,
 * so a reader detects truncation and damage before parsing. The sidecar's CRC-32 is in the segment's
 * metadata. Closed segments are never changed.
 */

const HOUR_MS = 3_600_000
const SEGMENT_NAME = /^p(\d+)-(\d+)-(\d+)-(\d+)-([0-9a-f]{8})\.arrow$/
const RAW_SUFFIX = '.raw.arrow'

export interface SegmentName {
  partition: number
  firstOffset: number
  lastOffset: number
  rows: number
  crc32: number
}

export interface SegmentRef extends SegmentName {
  /** Absolute path. */
  path: string
  /** Path relative to the topic folder (`2024-05-01/13/p2-….arrow`). */
  relPath: string
  hourStartMs: number
}

/** The folder of one topic's archive. */
export function archiveTopicDir(archiveDir: string, topic: string): string {
  return join(archiveDir, topic)
}

/** `YYYY-MM-DD/HH` of an hour (UTC). */
export function hourRelDir(hourStartMs: number): string {
  const iso = new Date(hourStartMs).toISOString()
  return `${iso.slice(0, 10)}/${iso.slice(11, 13)}`
}

export function stagingRelDir(partition: number): string {
  return `_staging/p${partition}`
}

export function segmentFileName(n: SegmentName): string {
  return `p${n.partition}-${n.firstOffset}-${n.lastOffset}-${n.rows}-${(n.crc32 >>> 0).toString(16).padStart(8, '0')}.arrow`
}

/** The raw sidecar of a segment (same folder, same base name). */
export function rawSidecarName(segmentName: string): string {
  return segmentName.replace(/\.arrow$/, RAW_SUFFIX)
}

export function parseSegmentFileName(name: string): SegmentName | undefined {
  const m = SEGMENT_NAME.exec(name)
  if (!m) return undefined
  return {
    partition: Number(m[1]),
    firstOffset: Number(m[2]),
    lastOffset: Number(m[3]),
    rows: Number(m[4]),
    crc32: Number.parseInt(m[5]!, 16),
  }
}

export interface SegmentListing {
  /** Sorted by hour, partition, first offset. */
  segments: SegmentRef[]
  /** `.arrow` files in an hour folder whose name is not a segment name (reported as corrupt). */
  misnamed: string[]
}

/** Closed segments whose event hour starts in [fromMs, toMs) (`fromMs` rounded down to the hour). */
export async function listSegments(topicDir: string, fromMs: number, toMs: number): Promise<SegmentListing> {
  const segments: SegmentRef[] = []
  const misnamed: string[] = []
  for (let hour = Math.floor(fromMs / HOUR_MS) * HOUR_MS; hour < toMs; hour += HOUR_MS) {
    const rel = hourRelDir(hour)
    let names: string[]
    try {
      names = await readdir(join(topicDir, rel))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue
      throw err
    }
    const inHour: SegmentRef[] = []
    for (const name of names) {
      if (!name.endsWith('.arrow') || name.endsWith(RAW_SUFFIX)) continue
      const parsed = parseSegmentFileName(name)
      if (!parsed) {
        misnamed.push(join(topicDir, rel, name))
        continue
      }
      inHour.push({
        ...parsed,
        path: join(topicDir, rel, name),
        relPath: `${rel}/${name}`,
        hourStartMs: hour,
      })
    }
    inHour.sort((a, b) => a.partition - b.partition || a.firstOffset - b.firstOffset)
    segments.push(...inHour)
  }
  return { segments, misnamed }
}

/** Writes a new file (never an existing one, owner-only) and fsyncs it before closing. */
export async function writeFileDurably(path: string, bytes: Uint8Array): Promise<void> {
  const fh = await open(path, 'wx', PRIVATE_FILE_MODE)
  try {
    let at = 0
    while (at < bytes.length) {
      const { bytesWritten } = await fh.write(bytes, at, bytes.length - at)
      at += bytesWritten
    }
    await fh.sync()
  } finally {
    await fh.close()
  }
}

const DAY_DIR = /^\d{4}-\d{2}-\d{2}$/

/**
 * fsyncs a folder, so the names created or renamed in it survive a crash. The archiver syncs every
 * folder it writes into (an hour folder, a partition's staging folder) after creating it with
 * mkdir's default mode, so this is also where they, and their parent day or `_staging` folder, are
 * made owner-only; the topic folder above them is made so when the archiver starts (archive-role).
 */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.chmod(PRIVATE_DIR_MODE)
    const parent = dirname(dir)
    const name = basename(parent)
    if (DAY_DIR.test(name) || name === '_staging') await chmod(parent, PRIVATE_DIR_MODE)
    await fh.sync()
  } finally {
    await fh.close()
  }
}
