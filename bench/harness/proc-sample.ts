import { readFileSync } from 'node:fs'

/**
 * What a process used so far, read from /proc by its PID (Linux): its CPU time (user + system,
 * every thread) and its resident set now. Read from outside, so the process measured does no
 * work for it and reports nothing it could get wrong.
 */

/** Clock ticks per second of /proc/PID/stat's times (USER_HZ: 100 on every Linux this runs on). */
const TICKS_PER_SEC = 100

export interface ProcSample {
  /** CPU seconds (user + system) since the process started; resolution 10 ms. */
  cpuSec: number
  /** VmRSS now (bytes). */
  rssBytes: number
  /** performance.now() of the reading. */
  atMs: number
}

/** The process's CPU time and RSS now; throws when it is gone or this is not Linux. */
export function sampleProc(pid: number): ProcSample {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  // Fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the state field here.
  const ticks = Number(fields[11]) + Number(fields[12])
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const rss = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status)
  if (!Number.isFinite(ticks) || !rss) throw new Error(`/proc/${pid}: no CPU times or VmRSS`)
  return { cpuSec: ticks / TICKS_PER_SEC, rssBytes: Number(rss[1]) * 1024, atMs: performance.now() }
}
