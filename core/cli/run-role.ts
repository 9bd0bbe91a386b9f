import type { TallyConfig } from '../config.js'
import { UsageError } from '../errors.js'
import { type Closable, serveUntilSignal } from '../lifecycle.js'
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
  if (config.backend === 'embedded') {
    throw new UsageError(
      `TALLY_BACKEND=embedded keeps the log and the store inside one process: run \`tally all\`, or run \`tally ${role}\` on Kafka and Cassandra (TALLY_BACKEND=kafka-cassandra, KAFKA_BROKERS, CASSANDRA_CONTACT_POINTS)`,
    )
  }
  const logger = createLogger(config.logLevel, { role })
  process.exitCode = await serveUntilSignal(() => start(config, logger), logger, config.shutdownTimeoutMs)
}
