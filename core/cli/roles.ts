import type { Command } from 'commander'
import { startIngest } from '../../ingest/role.js'
import { untilSignal } from '../lifecycle.js'
import { createLogger } from '../log.js'
import type { ConfigLoader } from './main.js'

export function registerRoleCommands(program: Command, getConfig: ConfigLoader): void {
  program
    .command('ingest')
    .description(
      'run the ingest API (Segment-compatible /v1/track, /v1/batch, … → Kafka); port 8080 unless PORT is set',
    )
    .addHelpText(
      'after',
      `
Endpoints: POST /v1/track|page|screen|identify|group|alias (and /v1/t|p|s|i|g|a), /v1/batch (/v1/b),
/v1/import; GET /v1/pixel.gif; GET /healthz, /readyz, /metrics.
A 2xx means every accepted event is durably in the raw topic (acks=all).
Limits: TALLY_MAX_BODY_BYTES, TALLY_MAX_EVENT_BYTES, TALLY_MAX_BATCH_EVENTS, TALLY_MAX_DEPTH,
TALLY_RATE_LIMIT_SITE, TALLY_RATE_LIMIT_CLIENT, TALLY_APPEND_TIMEOUT_MS (see tally --help).
SIGTERM: stop accepting, finish in-flight requests, flush the producer, exit.`,
    )
    .action(async () => {
      const config = getConfig()
      const logger = createLogger(config.logLevel, { role: 'ingest' })
      const running = await startIngest(config, logger)
      process.exitCode = await untilSignal(running, logger, config.shutdownTimeoutMs)
    })
}
