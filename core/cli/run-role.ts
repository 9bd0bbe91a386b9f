import type { TallyConfig } from '../config.js'
import { type Closable, untilSignal } from '../lifecycle.js'
import { createLogger, type Logger } from '../log.js'
import type { ConfigLoader } from './main.js'

/**
 * Runs a long-lived role the same way for every command: load the configuration, log with the
 * role's name, start it, then close it in order on SIGTERM/SIGINT within the shutdown deadline.
 */
export async function runRole(
  getConfig: ConfigLoader,
  role: string,
  start: (config: TallyConfig, logger: Logger) => Promise<Closable>,
): Promise<void> {
  const config = getConfig()
  const logger = createLogger(config.logLevel, { role })
  const running = await start(config, logger)
  process.exitCode = await untilSignal(running, logger, config.shutdownTimeoutMs)
}
