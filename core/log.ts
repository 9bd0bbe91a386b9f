import { type Logger, pino } from 'pino'
import type { LogLevel } from './config.js'

export type { Logger }

/** One JSON logger per process; components take children with their own bindings. */
export function createLogger(level: LogLevel, bindings: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings }, timestamp: pino.stdTimeFunctions.isoTime })
}
