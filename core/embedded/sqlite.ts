import { closeSync, openSync } from 'node:fs'
import Database from 'better-sqlite3'
import { ERR } from '../error-codes.js'
import { errorMessage, TallyError } from '../errors.js'
import { makePrivateFileSync, PRIVATE_FILE_MODE } from '../private-files.js'

/**
 * SQLite through better-sqlite3, the embedded database of both the log and the store. Every file is
 * opened the same way:
 * - WAL journal with `synchronous = FULL`: a commit returns only after the WAL is fsynced, so what
 *   a caller was told is stored survives SIGKILL and power loss;
 * - `locking_mode = EXCLUSIVE`, taken at open: the OS lock belongs to this process until it closes
 *   the file or dies, so a second process cannot open the data even in a race for a stale lock file;
 * - a schema version in `PRAGMA user_version`, migrations applied in order inside one transaction.
 *
 * better-sqlite3 is synchronous: a statement blocks the event loop for its duration (a durable
 * commit of a batch costs about a millisecond here), which is what makes one process the limit.
 */

export type Db = Database.Database
export type Statement = Database.Statement<unknown[]>

/** Raised when another process (or another handle in this one) holds the file. */
export class DatabaseLockedError extends TallyError {
  constructor(path: string, cause: unknown) {
    super(ERR.DATA_DIR_LOCKED, `${path} is opened by another process`, { where: path, cause })
    this.name = 'DatabaseLockedError'
  }
}

export interface OpenDatabaseOptions {
  /**
   * Let other connections of this process (the threads of `tally all`) open the file too: normal
   * locking instead of EXCLUSIVE, and a writer that finds the file busy waits up to `busyTimeoutMs`
   * for the other's transaction (WAL: one writer at a time, readers never wait). Another process is
   * kept out by the data folder's lock and by a guard file the owner holds exclusively (index.ts).
   */
  shared?: boolean
  /** With `shared`: how long a write waits for another connection's transaction, in ms. Default 5000. */
  busyTimeoutMs?: number
}

/**
 * Opens (creating it) a database file with the settings above and brings its schema to the last of
 * `migrations` (each a SQL script; index + 1 is its version).
 */
export function openDatabase(
  path: string,
  migrations: readonly string[],
  options: OpenDatabaseOptions = {},
): Db {
  // SQLite creates a database with mode 0644 less the umask, and its -wal and -shm files with the
  // database's own mode: created here first as 0600, the three are owner-only whatever the umask.
  // Files of an older version are narrowed too.
  closeSync(openSync(path, 'a', PRIVATE_FILE_MODE))
  for (const file of [path, `${path}-wal`, `${path}-shm`, `${path}-journal`]) makePrivateFileSync(file)
  // timeout 0: a locked file fails at once instead of waiting for a lock that is never released.
  const db = new Database(path, { timeout: options.shared ? (options.busyTimeoutMs ?? 5000) : 0 })
  try {
    if (!options.shared) db.pragma('locking_mode = EXCLUSIVE')
    db.pragma('journal_mode = WAL')
    db.pragma('synchronous = FULL')
    // Takes the exclusive lock now rather than at the first write.
    if (!options.shared) db.exec('BEGIN EXCLUSIVE; COMMIT')
    migrate(db, path, migrations)
    if (options.shared) beginImmediately(db)
    return db
  } catch (err) {
    db.close()
    if ((err as { code?: string }).code === 'SQLITE_BUSY') throw new DatabaseLockedError(path, err)
    throw err
  }
}

function migrate(db: Db, path: string, migrations: readonly string[]): void {
  const current = db.pragma('user_version', { simple: true }) as number
  if (current > migrations.length) {
    throw new TallyError(
      ERR.EMBEDDED_SCHEMA,
      `${path} has schema version ${current}, newer than this Tally (${migrations.length}): upgrade Tally`,
      { where: path },
    )
  }
  if (current === migrations.length) return
  db.transaction(() => {
    for (let v = current; v < migrations.length; v++) {
      try {
        db.exec(migrations[v]!)
      } catch (err) {
        throw new TallyError(
          ERR.EMBEDDED_SCHEMA,
          `${path}: schema step ${v + 1} failed: ${errorMessage(err)}`,
          { where: path, cause: err },
        )
      }
    }
    db.pragma(`user_version = ${migrations.length}`)
  })()
}

/**
 * Makes every `db.transaction(fn)` of a shared file begin IMMEDIATE: a deferred transaction that
 * reads before it writes fails at once with SQLITE_BUSY (no busy wait) when another connection
 * committed in between; one that takes the write lock first waits its turn (busy timeout) instead.
 */
function beginImmediately(db: Db): void {
  const transaction = db.transaction.bind(db)
  db.transaction = ((fn: (...args: never[]) => unknown) => {
    const t = transaction(fn)
    return Object.assign((...args: never[]) => t.immediate(...args), {
      default: t.immediate,
      deferred: t.deferred,
      immediate: t.immediate,
      exclusive: t.exclusive,
    })
  }) as Db['transaction']
}
