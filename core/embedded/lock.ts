import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { ERR } from '../error-codes.js'
import { errorMessage, TallyError } from '../errors.js'
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE } from '../private-files.js'

/**
 * One process per embedded data folder. The embedded log and store are files that a single
 * process writes; a second process on the same folder would corrupt nothing (SQLite locks the
 * files) but would fail in confusing ways, so it is refused at start with a message naming the
 * owner. The lock file holds the owner's PID; a lock left by a process that no longer runs
 * (SIGKILL, power loss) is stale and taken over. The SQLite files are opened in exclusive locking
 * mode as well (or, when `tally all` shares them between its threads, a guard file is: index.ts
 * GUARD_FILE), so even two processes racing for a stale lock cannot both open the data.
 */

export const LOCK_FILE = 'tally.lock'

/** What the lock file says about its owner. */
export interface LockOwner {
  pid: number
  hostname: string
  /** When the owner took the lock (ISO). */
  startedAt: string
  /** Linux /proc start time of the owner (clock ticks since boot), so a reused PID is not taken for it. */
  procStart?: string
}

export interface DataDirLock {
  readonly dataDir: string
  readonly path: string
  readonly owner: LockOwner
  /** The stale owner this lock replaced, if any (worth a log line). */
  readonly replaced: LockOwner | undefined
  /** Removes the lock file if it is still ours. Calling it twice is harmless. */
  release(): void
}

/** The error a second process gets; `owner` is undefined when the lock file could not be read. */
export function dataDirLockedError(
  dataDir: string,
  owner: LockOwner | undefined,
  cause?: unknown,
): TallyError {
  const who = owner
    ? `process ${owner.pid} on ${owner.hostname} (since ${owner.startedAt})`
    : 'another process'
  return new TallyError(
    ERR.DATA_DIR_LOCKED,
    `the data folder ${dataDir} is in use by ${who}. The embedded mode allows one Tally process per ` +
      'data folder: stop the other process, or set TALLY_DATA_DIR to another folder.',
    { where: join(dataDir, LOCK_FILE), cause },
  )
}

/** Field 22 of /proc/PID/stat (start time in clock ticks since boot); undefined off Linux or when gone. */
function procStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name (field 2) is in parentheses and may hold spaces: count from its end.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return fields[19]
  } catch {
    // No /proc (not Linux) or no such process: the caller falls back to a liveness check.
    return undefined
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    // EPERM: it exists but belongs to another user.
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** True when the owner named by a lock file still runs (on this machine). */
function ownerRuns(owner: LockOwner): boolean {
  if (!isAlive(owner.pid)) return false
  if (owner.procStart === undefined) return true
  const now = procStart(owner.pid)
  // Same PID, other start time: the PID was reused by an unrelated process.
  return now === undefined || now === owner.procStart
}

function readOwner(path: string): LockOwner | undefined {
  try {
    const parsed = JSON.parse(readFileSync(path, 'utf8')) as Partial<LockOwner>
    if (typeof parsed.pid !== 'number' || typeof parsed.hostname !== 'string') return undefined
    return {
      pid: parsed.pid,
      hostname: parsed.hostname,
      startedAt: String(parsed.startedAt ?? ''),
      ...(typeof parsed.procStart === 'string' ? { procStart: parsed.procStart } : {}),
    }
  } catch {
    return undefined
  }
}

/** TALLY_ERR_DATA_DIR_UNUSABLE: the folder cannot be made or written, with the system's reason. */
function dataDirUnusable(dataDir: string, cause: unknown): TallyError {
  return new TallyError(
    ERR.DATA_DIR_UNUSABLE,
    `cannot use ${dataDir} as the data folder: ${errorMessage(cause)}; set TALLY_DATA_DIR to a folder this user can create and write`,
    { where: 'TALLY_DATA_DIR', cause },
  )
}

/** A lock file nobody could have written yet is younger than this; an unreadable older one is stale. */
const UNREADABLE_GRACE_MS = 5000

/**
 * Takes the data folder (creating it), or throws TALLY_ERR_DATA_DIR_LOCKED naming the process that
 * holds it. A lock whose owner is no longer running is replaced.
 */
export function lockDataDir(dataDir: string): DataDirLock {
  // A folder this creates is owner-only; one the operator made keeps the mode they chose.
  try {
    mkdirSync(dataDir, { recursive: true, mode: PRIVATE_DIR_MODE })
  } catch (err) {
    throw dataDirUnusable(dataDir, err)
  }
  const path = join(dataDir, LOCK_FILE)
  const start = procStart(process.pid)
  const owner: LockOwner = {
    pid: process.pid,
    hostname: hostname(),
    startedAt: new Date().toISOString(),
    ...(start === undefined ? {} : { procStart: start }),
  }
  let replaced: LockOwner | undefined
  for (let attempt = 0; attempt < 3; attempt++) {
    let fd: number
    try {
      fd = openSync(path, 'wx', PRIVATE_FILE_MODE)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw dataDirUnusable(dataDir, err)
      const current = readOwner(path)
      if (current === undefined) {
        // Just created by a process that has not written it yet, or left half-written by a crash.
        let ageMs = 0
        try {
          ageMs = Date.now() - statSync(path).mtimeMs
        } catch {
          // Removed meanwhile: try again.
          continue
        }
        if (ageMs < UNREADABLE_GRACE_MS) throw dataDirLockedError(dataDir, undefined)
      } else {
        if (current.hostname !== owner.hostname) {
          // A folder shared between machines: a PID from elsewhere cannot be checked here.
          throw dataDirLockedError(dataDir, current)
        }
        if (current.pid === process.pid || ownerRuns(current)) throw dataDirLockedError(dataDir, current)
        replaced = current
      }
      try {
        unlinkSync(path)
      } catch (unlinkErr) {
        if ((unlinkErr as NodeJS.ErrnoException).code !== 'ENOENT') throw unlinkErr
      }
      continue
    }
    try {
      writeSync(fd, `${JSON.stringify(owner)}\n`)
      fsyncSync(fd)
    } finally {
      closeSync(fd)
    }
    let released = false
    return {
      dataDir,
      path,
      owner,
      replaced,
      release() {
        if (released) return
        released = true
        const now = readOwner(path)
        if (now?.pid !== owner.pid || now.startedAt !== owner.startedAt) return
        try {
          unlinkSync(path)
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
            throw new TallyError(ERR.DATA_DIR_LOCK, `cannot remove ${path}: ${errorMessage(err)}`, {
              cause: err,
              where: path,
            })
          }
        }
      },
    }
  }
  throw dataDirLockedError(dataDir, readOwner(path))
}
