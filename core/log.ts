import { type Logger, pino } from 'pino'
import pretty from 'pino-pretty'
import type { LogLevel } from './config.js'

export type { Logger }

/** Where a logger writes: a file descriptor, and whether it is a terminal (then pretty lines). */
export interface LogOutput {
  fd: number
  isTTY: boolean
}

/** stderr: stdout carries results (`--json`, the `tally all` banner, a rebuild's progress lines). */
const STDERR: LogOutput = { fd: 2, isTTY: process.stderr.isTTY === true }

/**
 * One logger per process, to stderr: JSON lines (for collectors) unless stderr is a terminal, where
 * pino-pretty prints readable lines. Components take children with their own bindings. Writes are
 * synchronous, as pino's default, so nothing is lost when the process exits.
 */
export function createLogger(
  level: LogLevel,
  bindings: Record<string, unknown> = {},
  output: LogOutput = STDERR,
): Logger {
  const options = { level, base: { pid: process.pid, ...bindings }, timestamp: pino.stdTimeFunctions.isoTime }
  if (output.isTTY) {
    return pino(
      options,
      pretty({
        destination: output.fd,
        sync: true,
        colorize: true,
        translateTime: 'SYS:HH:MM:ss.l',
        ignore: 'pid,hostname',
      }),
    )
  }
  return pino(options, pino.destination({ dest: output.fd, sync: true }))
}
