import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'

const root = resolve(import.meta.dirname, '../..')
const depcruise = join(root, 'node_modules', '.bin', 'depcruise')
const config = join(root, '.dependency-cruiser.cjs')

/** A small tree that breaks each rule once, plus imports the rules allow. */
const FIXTURE: Record<string, string> = {
  'tsconfig.json': JSON.stringify({ compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext' } }),
  'core/kernel.ts': `export const k = 1\n`,
  'core/upward.ts': `import { i } from '../ingest/a.js'\nexport const u = i\n`,
  'core/cycle-a.ts': `import { b } from './cycle-b.js'\nexport const a = () => b\n`,
  'core/cycle-b.ts': `import { a } from './cycle-a.js'\nexport const b = () => a\n`,
  'core/kafka/client.ts': `export const kafka = 1\n`,
  'ingest/a.ts': `import { k } from '../core/kernel.js'\nimport { s } from '../stream/b.js'\nexport const i = k + s\n`,
  'ingest/ok.ts': `import { i } from './a.js'\nexport const ok = i\n`,
  'stream/b.ts': `import { kafka } from '../core/kafka/client.js'\nexport const s = kafka\n`,
  'query/c.ts': `import { main } from '../app/main.js'\nexport const q = main\n`,
  'schemas/events.ts': `import { q } from '../query/c.js'\nexport const e = q\n`,
  'app/main.ts': `import { i } from '../ingest/a.js'\nexport const main = i\n`,
}

function cruise(cwd: string, outputType: 'json' | 'err', ...args: string[]) {
  const res = spawnSync(depcruise, [...args, '--config', config, '--output-type', outputType], {
    cwd,
    encoding: 'utf8',
    timeout: 60_000,
  })
  return { code: res.status, out: res.stdout, err: res.stderr }
}

const dir = mkdtempSync(join(tmpdir(), 'tally-depcheck-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('dependency check (npm run depcheck)', () => {
  it('fails on an import from core/ upward, from one role into another, into app/ or an adapter, from schemas/ upward, and on a cycle', () => {
    for (const [path, text] of Object.entries(FIXTURE)) {
      mkdirSync(dirname(join(dir, path)), { recursive: true })
      writeFileSync(join(dir, path), text)
    }
    const folders = ['app', 'core', 'ingest', 'stream', 'query', 'schemas']
    // The err reporter is what `npm run depcheck` prints: it exits non-zero on a violation.
    expect(cruise(dir, 'err', ...folders).code).not.toBe(0)
    const res = cruise(dir, 'json', ...folders)
    const violations = (
      JSON.parse(res.out) as {
        summary: { violations: Array<{ from: string; to: string; rule: { name: string } }> }
      }
    ).summary.violations.map((v) => `${v.rule.name}: ${v.from} → ${v.to}`)
    expect(violations).toEqual(
      expect.arrayContaining([
        'core-imports-upward: core/upward.ts → ingest/a.ts',
        'role-imports-role: ingest/a.ts → stream/b.ts',
        'role-imports-app: query/c.ts → app/main.ts',
        'role-imports-adapter: stream/b.ts → core/kafka/client.ts',
        'schemas-imports-upward: schemas/events.ts → query/c.ts',
      ]),
    )
    expect(violations.some((v) => v.startsWith('no-circular: core/cycle-'))).toBe(true)
    // Allowed: a role's own files, a role into the kernel, app/ into a role.
    expect(violations.some((v) => v.includes('ingest/ok.ts'))).toBe(false)
    expect(violations.some((v) => v.startsWith('role-imports-role: ingest/a.ts → core/'))).toBe(false)
    expect(violations.some((v) => v.includes('app/main.ts → ingest/'))).toBe(false)
  })

  it('passes on this repository', () => {
    const res = spawnSync('npm', ['run', '--silent', 'depcheck'], {
      cwd: root,
      encoding: 'utf8',
      timeout: 60_000,
    })
    expect(res.status, `${res.stdout}\n${res.stderr}`).toBe(0)
  })
})
