import { readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { describe, expect, it } from 'vitest'
import { ERR, ERRORS, errorTableMarkdown } from '../../core/error-codes.js'
import { TallyError } from '../../core/errors.js'
import { readmePath, withErrorTable } from '../../scripts/docs-config.js'

const root = dirname(readmePath())
const SOURCE_FOLDERS = ['app', 'core', 'ingest', 'stream', 'batch', 'query', 'schemas', 'bin', 'scripts']
const CATALOGUE = 'core/error-codes.ts'
/**
 * A whole string literal that is an error code: 'TALLY_ERR_X' or "TALLY_ERR_X" (codes named in
 * prose, help texts and markdown `TALLY_ERR_X` are documentation, not code).
 */
const CODE_LITERAL = /(['"])TALLY_ERR_[A-Z0-9_]+\1/g

function sourceFiles(dir: string): string[] {
  const out: string[] = []
  for (const name of readdirSync(dir)) {
    const path = join(dir, name)
    if (statSync(path).isDirectory()) out.push(...sourceFiles(path))
    else if (/\.(ts|js|mjs|cjs)$/.test(name)) out.push(path)
  }
  return out
}

/** `file:line: literal` for every code literal in product code outside the catalogue. */
function literalsOutsideCatalogue(): string[] {
  const found: string[] = []
  for (const folder of SOURCE_FOLDERS) {
    for (const path of sourceFiles(join(root, folder))) {
      const rel = relative(root, path)
      if (rel === CATALOGUE) continue
      readFileSync(path, 'utf8')
        .split('\n')
        .forEach((line, i) => {
          for (const m of line.matchAll(CODE_LITERAL)) found.push(`${rel}:${i + 1}: ${m[0]}`)
        })
    }
  }
  return found
}

describe('the error catalogue', () => {
  it('names each entry by its code, once', () => {
    for (const [name, entry] of Object.entries(ERRORS)) expect(entry.code).toBe(`TALLY_ERR_${name}`)
    const codes = Object.values(ERRORS).map((e) => e.code)
    expect(new Set(codes).size).toBe(codes.length)
    expect(ERR.INVALID_WRITE_KEY).toBe('TALLY_ERR_INVALID_WRITE_KEY')
    expect(Object.keys(ERR)).toEqual(Object.keys(ERRORS))
  })

  it('gives an error thrown by name the status it declares (500 for a code that is no HTTP answer)', () => {
    for (const entry of Object.values(ERRORS)) {
      const err = new TallyError(entry.code, 'm')
      expect([entry.code, err.statusCode]).toEqual([entry.code, 'status' in entry ? entry.status : 500])
    }
    expect(new TallyError(ERR.BAD_PARAMETER, 'm', { statusCode: 422 }).statusCode).toBe(422)
  })

  it('is the only product file that spells a code as a string literal (use ERR.<NAME>)', () => {
    expect(literalsOutsideCatalogue()).toEqual([])
  })

  it('notices a code literal outside the catalogue', () => {
    expect("throw new TallyError('TALLY_ERR_X', 'm')".match(CODE_LITERAL)).toEqual(["'TALLY_ERR_X'"])
    expect('err.code === "TALLY_ERR_Y"'.match(CODE_LITERAL)).toEqual(['"TALLY_ERR_Y"'])
    expect('`TALLY_ERR_*` in prose, TALLY_ERR_X in text'.match(CODE_LITERAL)).toBeNull()
  })

  it('is listed whole in README.md (run `npm run docs:config` when this fails)', () => {
    const readme = readFileSync(readmePath(), 'utf8')
    expect(withErrorTable(readme)).toBe(readme)
    for (const e of Object.values(ERRORS)) expect(readme).toContain(`| \`${e.code}\` |`)
    expect(errorTableMarkdown().split('\n')).toHaveLength(Object.keys(ERRORS).length + 2)
  })

  it('is noticed as stale when a row is missing', () => {
    const readme = readFileSync(readmePath(), 'utf8')
    const stale = readme.replace(/^\| `TALLY_ERR_JAVA` .*\n/m, '')
    expect(stale).not.toBe(readme)
    expect(withErrorTable(stale)).not.toBe(stale)
  })
})
