import type { Command } from 'commander'
import { startIngest } from '../../ingest/role.js'
import { startStream } from '../../stream/role.js'
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

  program
    .command('stream')
    .description(
      'run a stream worker: raw topic → minute/hour/day aggregates in Cassandra; /metrics on port 9464 unless PORT is set',
    )
    .addHelpText(
      'after',
      `
Workers of one consumer group (TALLY_STREAM_GROUP) share the raw topic's partitions: run more
copies to scale, up to the partition count. Exactly-once effect: aggregates are absolute values
checkpointed with their source offsets and fenced by an epoch per partition; replays change no
number. Events later than TALLY_GRACE_MS are left to the batch rebuild; poison records go to the
dead-letter topic. Settings: TALLY_FLUSH_INTERVAL_MS, TALLY_DEDUP_HORIZON_MS, TALLY_HLL_PRECISION,
TALLY_STREAM_CONCURRENCY, TALLY_TTL_*_DAYS (see tally --help).
SIGTERM: flush, checkpoint, leave the group.`,
    )
    .action(async () => {
      const config = getConfig()
      const logger = createLogger(config.logLevel, { role: 'stream' })
      const running = await startStream(config, logger)
      process.exitCode = await untilSignal(running, logger, config.shutdownTimeoutMs)
    })
}
