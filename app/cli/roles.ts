import { type Command, InvalidArgumentError } from 'commander'
import { BATCH_DEFAULT_PORT } from '../../batch/role.js'
import { serveUntilSignal } from '../../core/lifecycle.js'
import { createLogger } from '../../core/log.js'
import { QUERY_DEFAULT_PORT } from '../../query/role.js'
import { STREAM_DEFAULT_PORT } from '../../stream/role.js'
import { startIngest, startQuery, startStream } from '../start.js'
import { quickstartBanner, startAll } from './all.js'
import type { ConfigLoader } from './config-loader.js'
import { announceBackend, runRole } from './run-role.js'

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
/v1/import; GET /v1/pixel.gif; GET /healthz, /readyz, /metrics; GET /docs (OpenAPI at
/docs/openapi.json, Swagger UI at /docs/ui).
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
SIGTERM: flush, checkpoint, leave the group. An uncaught error leaves the group without the final
flush. After a SIGKILL the partitions move after TALLY_STREAM_SESSION_TIMEOUT_MS plus a rebalance.
/metrics is bound before joining: a taken port fails at once (PORT=0: any free port).`,
    )
    .action(() => runRole(getConfig, 'stream', (config, logger) => startStream(config, logger)))

  program
    .command('query')
    .description('run the query API (/v1/stats/*, exports, /docs); port 8081 unless PORT is set')
    .addHelpText(
      'after',
      `
Endpoints: GET /v1/stats/aggregate|timeseries|breakdown|realtime, GET /v1/export/aggregates and
GET /v1/export/events (raw events from the archive, at most 744 hours per export, 2 at once;
both NDJSON or Arrow IPC), GET /docs (OpenAPI at /docs/openapi.json, Swagger UI at /docs/ui),
/healthz, /readyz, /metrics.
Auth: Authorization: Bearer <read token> (tally sites add / tally sites token).
Reads only; every answer carries meta: complete_through, final vs provisional windows, and the
error bound of approximate metrics (visitors).`,
    )
    .action(() => runRole(getConfig, 'query', (config, logger) => startQuery(config, logger)))

  program
    .command('all')
    .description(
      'run ingest, a stream worker, the query API, an archiver and the rebuild scheduler in one process (what `npm start` runs); on the embedded backend unless Kafka/Cassandra is configured',
    )
    .option(
      '--quickstart',
      'create a default site once and print its keys and two ready-to-paste curls',
      false,
    )
    .option('--query-port <port>', 'port of the query API (0: any free port)', parsePort, QUERY_DEFAULT_PORT)
    .option('--stream-port <port>', "port of the stream worker's /metrics", parsePort, STREAM_DEFAULT_PORT)
    .option(
      '--batch-port <port>',
      "port of the batch scheduler's and archiver's /metrics",
      parsePort,
      BATCH_DEFAULT_PORT,
    )
    .addHelpText(
      'after',
      `
Ingest listens on PORT (default 8080).
Backend: TALLY_BACKEND=auto (default) runs on the embedded backend (SQLite files in TALLY_DATA_DIR:
a durable log and the aggregates, for one process on one machine) unless KAFKA_BROKERS or
CASSANDRA_CONTACT_POINTS is set; TALLY_BACKEND=kafka-cassandra uses Kafka and Cassandra (with
--quickstart the local ones of \`tally services up\` are started when none is configured).
A second \`tally all\` on the same data folder refuses to start and names the process holding it.
On the embedded backend the stream worker, the archiver and the rebuild scheduler run in a worker
thread of this process, off ingest's event loop; a crash of that thread exits 1.
SIGTERM: ingest stops taking requests and finishes its own, the stream worker finishes its batch
and checkpoints, the archiver and the scheduler stop, then the query API; files closed last.
With --quickstart the default site's keys are kept in TALLY_DATA_DIR/quickstart.json.`,
    )
    .action(
      async (opts: { quickstart: boolean; queryPort: number; streamPort: number; batchPort: number }) => {
        const config = getConfig()
        const logger = createLogger(config.logLevel, { role: 'all' })
        announceBackend(config, 'all', 'always', process.stderr, logger)
        process.exitCode = await serveUntilSignal(
          async () => {
            const all = await startAll(config, logger, opts)
            if (all.site) process.stdout.write(quickstartBanner(all, all.site))
            return all
          },
          logger,
          config.shutdownTimeoutMs,
        )
      },
    )
}

function parsePort(value: string): number {
  if (!/^\d{1,5}$/.test(value) || Number(value) > 65535)
    throw new InvalidArgumentError('expected a port number from 0 to 65535')
  return Number(value)
}
