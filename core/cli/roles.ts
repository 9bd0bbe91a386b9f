import type { Command } from 'commander'
import { BATCH_DEFAULT_PORT, startBatch } from '../../batch/role.js'
import { startIngest } from '../../ingest/role.js'
import { QUERY_DEFAULT_PORT, startQuery } from '../../query/role.js'
import { STREAM_DEFAULT_PORT, startStream } from '../../stream/role.js'
import { once, untilSignal } from '../lifecycle.js'
import { createLogger } from '../log.js'
import { prepareQuickstart } from '../quickstart.js'
import type { ConfigLoader } from './main.js'
import { runRole } from './run-role.js'

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
    .action(() => runRole(getConfig, 'ingest', (config, logger) => startIngest(config, logger)))

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
    .action(() => runRole(getConfig, 'stream', (config, logger) => startStream(config, logger)))

  program
    .command('query')
    .description('run the query API (/v1/stats/*, exports, /docs); port 8081 unless PORT is set')
    .addHelpText(
      'after',
      `
Endpoints: GET /v1/stats/aggregate|timeseries|breakdown|realtime, GET /v1/export/aggregates
(NDJSON or Arrow IPC), GET /docs (OpenAPI at /docs/openapi.json), /healthz, /readyz, /metrics.
Auth: Authorization: Bearer <read token> (tally sites add / tally sites token).
Reads only; every answer carries meta: complete_through, final vs provisional windows, and the
error bound of approximate metrics (visitors).`,
    )
    .action(() => runRole(getConfig, 'query', (config, logger) => startQuery(config, logger)))

  program
    .command('all')
    .description(
      'run ingest, a stream worker, the query API, an archiver and the rebuild scheduler in one process (what `npm start` runs)',
    )
    .option(
      '--quickstart',
      'start local Kafka/Cassandra when none is configured, migrate, create a default site and print how to use it',
      false,
    )
    .addHelpText(
      'after',
      `
Ingest listens on PORT (default 8080), the query API on 8081, the stream worker's /metrics on 9464,
the batch scheduler's (with the archiver) on 9465.
With --quickstart the default site's keys are kept in TALLY_DATA_DIR/quickstart.json.`,
    )
    .action(async (opts: { quickstart: boolean }) => {
      const config = getConfig()
      const logger = createLogger(config.logLevel, { role: 'all' })
      const site = opts.quickstart ? await prepareQuickstart(config, logger) : undefined
      const ingest = await startIngest(config, logger)
      // The worker's metrics server needs a port of its own.
      const stream = await startStream(config, logger, { port: STREAM_DEFAULT_PORT })
      const query = await startQuery(config, logger, { port: QUERY_DEFAULT_PORT })
      const batch = await startBatch(config, logger, { port: BATCH_DEFAULT_PORT })
      if (site) {
        const host = ingest.url
        process.stdout.write(
          [
            '',
            `Tally is running: ingest ${host}, query ${query.url} (docs ${query.url}/docs), stream worker metrics ${stream.url}/metrics`,
            `  site        ${site.siteId}`,
            `  write key   ${site.writeKey}`,
            `  read token  ${site.readToken}`,
            '',
            'Send an event:',
            `  curl -u ${site.writeKey}: -H 'content-type: application/json' ${host}/v1/track -d '{"event":"Signed Up","anonymousId":"visitor-1"}'`,
            'Read the numbers back (visible within about a second):',
            `  curl -H 'authorization: Bearer ${site.readToken}' '${query.url}/v1/stats/aggregate?site=${site.siteId}&period=day&metrics=events,visitors'`,
            '',
          ].join('\n'),
        )
      }
      const all = {
        // Ingest first (stop taking events), then the worker flushes and leaves its group.
        close: once(async () => {
          await ingest.close()
          await stream.close()
          await batch.close()
          await query.close()
        }),
      }
      process.exitCode = await untilSignal(all, logger, config.shutdownTimeoutMs)
    })
}
