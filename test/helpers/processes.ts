import { type ChildProcess, spawn } from 'node:child_process'
import { createWriteStream, mkdirSync } from 'node:fs'
import { join } from 'node:path'

/** A `tally` role run as its own process (for SIGKILL and SIGTERM tests), logging to test-artifacts/. */
export interface RoleProcess {
  child: ChildProcess
  logFile: string
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

let counter = 0

/** Runs `tally <role> [args…]`; `role` may carry the command's arguments (`['all', '--quickstart']`). */
export function spawnRole(
  role: string | readonly string[],
  env: Record<string, string>,
  name = typeof role === 'string' ? role : (role[0] ?? 'tally'),
): RoleProcess {
  mkdirSync('test-artifacts', { recursive: true })
  const logFile = join('test-artifacts', `${name}-${process.pid}-${++counter}.log`)
  const out = createWriteStream(logFile)
  const child = spawn(process.execPath, ['bin/tally.js', ...(typeof role === 'string' ? [role] : role)], {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', LOG_LEVEL: 'info', PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  child.stdout?.pipe(out)
  child.stderr?.pipe(out)
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  )
  return { child, logFile, exited }
}

/** A small seeded PRNG (mulberry32) so a failing chaos run can be replayed from its seed. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Waits until the role's log has a line matching `pattern` (e.g. a partition restored). */
export async function waitForLog(p: RoleProcess, pattern: RegExp, timeoutMs = 60_000): Promise<void> {
  const { readFile } = await import('node:fs/promises')
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const text = await readFile(p.logFile, 'utf8').catch(() => '')
    if (pattern.test(text)) return
    if (p.child.exitCode !== null || p.child.signalCode !== null)
      throw new Error(`${p.logFile}: process exited before logging ${pattern}`)
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`${p.logFile}: no line matching ${pattern} within ${timeoutMs} ms`)
}
