import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { StagingArea } from '../../batch/staging.js'
import { fsyncDir, writeFileDurably } from '../../core/archive/segment-file.js'
import { lockDataDir } from '../../core/embedded/lock.js'
import { openDatabase } from '../../core/embedded/sqlite.js'

/**
 * Owner-only data under the usual umask 0o022, including files and folders that already exist with
 * a wider mode (made by an older version): the end-to-end check is
 * test/integration/embedded-files-encoding.test.ts.
 */

let savedUmask = 0
let dir = ''

beforeEach(() => {
  savedUmask = process.umask(0o022)
  dir = mkdtempSync(join(tmpdir(), 'tally-private-'))
})

afterEach(() => {
  process.umask(savedUmask)
  rmSync(dir, { recursive: true, force: true })
})

const modeOf = (path: string) => statSync(path).mode & 0o777

describe('owner-only files and folders', () => {
  it('SQLite: a new database and its WAL are 0600; an old 0644 database and WAL are narrowed', () => {
    const fresh = join(dir, 'fresh.db')
    const db = openDatabase(fresh, ['CREATE TABLE t (x INTEGER)'])
    db.prepare('INSERT INTO t VALUES (1)').run()
    expect(modeOf(fresh)).toBe(0o600)
    expect(modeOf(`${fresh}-wal`)).toBe(0o600)
    db.close()

    const old = join(dir, 'old.db')
    writeFileSync(old, '', { mode: 0o644 })
    writeFileSync(`${old}-wal`, '', { mode: 0o644 })
    expect(modeOf(old)).toBe(0o644)
    const reopened = openDatabase(old, ['CREATE TABLE t (x INTEGER)'])
    reopened.prepare('INSERT INTO t VALUES (1)').run()
    expect(modeOf(old)).toBe(0o600)
    expect(modeOf(`${old}-wal`)).toBe(0o600)
    reopened.close()
  })

  it('the data folder lock file is 0600, and a data folder it creates is 0700', () => {
    const dataDir = join(dir, 'data')
    const lock = lockDataDir(dataDir)
    try {
      expect(modeOf(dataDir)).toBe(0o700)
      expect(modeOf(lock.path)).toBe(0o600)
    } finally {
      lock.release()
    }
  })

  it('archive: segment files are 0600; a synced hour or staging folder and its day or _staging parent are 0700', async () => {
    const hour = join(dir, 'topic', '2026-01-01', '05')
    const staging = join(dir, 'topic', '_staging', 'p3')
    for (const d of [hour, staging]) mkdirSync(d, { recursive: true })
    expect(modeOf(hour)).toBe(0o755)
    await writeFileDurably(join(staging, 'a.arrow.tmp'), new Uint8Array([1, 2, 3]))
    expect(modeOf(join(staging, 'a.arrow.tmp'))).toBe(0o600)
    await fsyncDir(staging)
    await fsyncDir(hour)
    for (const d of [hour, join(dir, 'topic', '2026-01-01'), staging, join(dir, 'topic', '_staging')]) {
      expect(modeOf(d), d).toBe(0o700)
    }
    // Any other parent is not the archiver's to narrow.
    expect(modeOf(join(dir, 'topic'))).toBe(0o755)
  })

  it('rebuild staging: the area, the batch staging folder holding it (even an old 0755 one) and its day files are owner-only', async () => {
    const batchStaging = join(dir, 'batch-staging')
    mkdirSync(batchStaging, { mode: 0o755 })
    const area = await StagingArea.create(join(batchStaging, 'range-1'))
    await area.write(0, {
      siteId: 's',
      granularity: 'day',
      windowStart: 0,
      dimension: undefined,
      value: '',
      values: { events: 1, pageviews: 0, botEvents: 0, visitors: new Uint8Array([1]) },
    })
    expect(await area.finish()).toEqual([0])
    expect(modeOf(batchStaging)).toBe(0o700)
    expect(modeOf(area.dir)).toBe(0o700)
    expect(modeOf(join(area.dir, 'day-0.ndjson'))).toBe(0o600)
    await area.remove()
  })
})
