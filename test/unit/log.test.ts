import { closeSync, mkdtempSync, openSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { createLogger } from '../../core/log.js'

function logged(isTTY: boolean): string {
  const file = join(mkdtempSync(join(tmpdir(), 'tally-log-')), 'out')
  const fd = openSync(file, 'w')
  createLogger('info', { role: 'test' }, { fd, isTTY }).info({ partition: 3 }, 'partitions assigned')
  closeSync(fd)
  return readFileSync(file, 'utf8')
}

describe('createLogger', () => {
  it('writes JSON lines when the output is not a terminal', () => {
    const line = JSON.parse(logged(false).trim()) as Record<string, unknown>
    expect(line).toMatchObject({ level: 30, role: 'test', partition: 3, msg: 'partitions assigned' })
  })

  it('writes readable lines on a terminal', () => {
    const text = logged(true)
    expect(text).toContain('partitions assigned')
    expect(text).toContain('partition')
    expect(() => JSON.parse(text.trim())).toThrow()
  })
})
