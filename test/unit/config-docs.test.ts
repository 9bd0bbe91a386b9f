import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { CONFIG_VARIABLES, configTableMarkdown, VARIABLES } from '../../core/config.js'
import { readmePath, withConfigTable } from '../../scripts/docs-config.js'

describe('the configuration table', () => {
  it('in README.md is the one generated from core/config.ts (run `npm run docs:config` when this fails)', () => {
    const readme = readFileSync(readmePath(), 'utf8')
    expect(withConfigTable(readme)).toBe(readme)
  })

  it('has one row per declared variable, and --help one line each', () => {
    const names = Object.keys(VARIABLES)
    const rows = configTableMarkdown().split('\n').slice(2)
    expect(rows.map((r) => /^\| `([A-Z_]+)` \|/.exec(r)?.[1])).toEqual(names)
    expect(CONFIG_VARIABLES.map(([n]) => n)).toEqual(names)
    expect(CONFIG_VARIABLES.find(([n]) => n === 'KAFKA_PARTITIONS')?.[1]).toContain(
      'integer 1–10000; default 6',
    )
  })

  it('is noticed as stale when a row is missing', () => {
    const readme = readFileSync(readmePath(), 'utf8')
    const stale = readme.replace(/^\| `TALLY_JAVA` .*\n/m, '')
    expect(stale).not.toBe(readme)
    expect(withConfigTable(stale)).not.toBe(stale)
  })
})
