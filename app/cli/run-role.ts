import { backendOf, type TallyConfig } from '../../core/config.js'
import { type Closable, serveUntilSignal } from '../../core/lifecycle.js'
import { createLogger, type Logger } from '../../core/log.js'
import { describeBackend, requireSeparateProcessBackend } from '../backend.js'
import type { ConfigLoader } from './config-loader.js'

/**
 * Says on stderr which backend `command` talks to (see describeBackend). Long-running commands say
 * it always, as their first log line when given their logger (stderr then holds log lines only,
 * JSON unless on a terminal); one-shot commands (`sites`, `migrate`, `jobs`, …) only on a terminal,
 * so that a script reading their stderr sees nothing but errors.
 */
export function announceBackend(
  config: TallyConfig,
  command: string,
  when: 'always' | 'on-terminal',
  stderr: Pick<NodeJS.WriteStream, 'write' | 'isTTY'> = process.stderr,
  logger?: Pick<Logger, 'info'>,
): void {
  const line = `tally ${command}: ${describeBackend(config)}`
  if (when === 'always' && logger) {
    logger.info({ backend: backendOf(config) }, line)
    return
  }
  if (when === 'on-terminal' && !stderr.isTTY) return
  stderr.write(`${line}\n`)
}

/**
 * Runs a long-lived role the same way for every command: load the configuration, refuse the
 * embedded backend (its log and stores live in one process: `tally all`), say which backend it
 * uses, log with the role's name, start it, then close it in order on SIGTERM/SIGINT within the
 * shutdown deadline.
 */
export async function runRole(
  getConfig: ConfigLoader,
  role: string,
  start: (config: TallyConfig, logger: Logger) => Promise<Closable>,
): Promise<void> {
  const config = getConfig()
  requireSeparateProcessBackend(config, role)
  const logger = createLogger(config.logLevel, { role })
  announceBackend(config, role, 'always', process.stderr, logger)
  process.exitCode = await serveUntilSignal(() => start(config, logger), logger, config.shutdownTimeoutMs)
}
