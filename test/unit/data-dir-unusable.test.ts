import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { lockDataDir } from '../../core/embedded/lock.js'
import { TallyError } from '../../core/errors.js'

/**
 * A careless operator points TALLY_DATA_DIR where no folder can be made (under a file here; a
 * read-only mount or another user's folder fail the same way). The embedded backend must say so
 * with a code, the variable and the path, not Node's bare "ENOTDIR: not a directory, mkdir …".
 */

const root = mkdtempSync(join(tmpdir(), 'tally-datadir-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))

describe('an unusable data folder', () => {
  it('is refused with TALLY_ERR_DATA_DIR_UNUSABLE naming TALLY_DATA_DIR, the path and the reason', () => {
    const file = join(root, 'a-file')
    writeFileSync(file, 'not a folder')
    const dataDir = join(file, 'data')
    let thrown: unknown
    try {
      lockDataDir(dataDir)
    } catch (err) {
      thrown = err
    }
    expect(thrown).toBeInstanceOf(TallyError)
    const err = thrown as TallyError
    expect(err.code).toBe('TALLY_ERR_DATA_DIR_UNUSABLE')
    expect(err.where).toBe('TALLY_DATA_DIR')
    expect(err.message).toContain(dataDir)
    expect(err.message).toContain('ENOTDIR')
  })
})
