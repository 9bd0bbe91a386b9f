import type { Command } from 'commander'
import { formatJobs, progressPrinter } from '../../batch/index.js'
import { UsageError } from '../../core/errors.js'
import { createLogger } from '../../core/log.js'
import { normalizeEvent } from '../../ingest/normalize.js'
import { UserAgentParser } from '../../ingest/user-agent.js'
import { importFile, listJobs, rebuild, startArchiver, startBatch } from '../start.js'
import type { ConfigLoader } from './config-loader.js'
import { announceBackend, runRole } from './run-role.js'

function positiveInt(name: string) {
  return (raw: string): number => {
    if (!/^\d+$/.test(raw) || Number(raw) < 1)
      throw new UsageError(`${name} must be a positive integer, got "${raw}"`)
    return Number(raw)
  }
}

function nonNegativeInt(name: string) {
  return (raw: string): number => {
    if (!/^\d+$/.test(raw) || Number(raw) > 86_400_000)
      throw new UsageError(`${name} must be an integer from 0 to 86400000, got "${raw}"`)
    return Number(raw)
  }
}

export function registerBatchCommands(program: Command, getConfig: ConfigLoader): void {
  program
    .command('batch')
    .description(
      'run the rebuild scheduler (node-cron + Cassandra leases) and an archiver; /metrics on port 9465 unless PORT is set',
    )
    .option(
      '--hourly <cron>',
      'when the hourly rebuild of the last closed hours runs; "" turns it off',
      '5 * * * *',
    )
    .option('--hours <n>', 'closed hours the hourly rebuild covers', positiveInt('--hours'), 2)
    .option(
      '--nightly <cron>',
      'when the rebuild of the previous UTC day runs; "" turns it off',
      '30 0 * * *',
    )
    .option('--no-archive', 'do not run an archiver in this process (run `tally archive` elsewhere)')
    .option('--archive-dir <dir>', 'archive folder (default TALLY_DATA_DIR/archive)')
    .addHelpText(
      'after',
      `
Several batch processes may run: a lease per range (with a fencing token checked when final rows
are written) makes each range run once at a time; a job that loses its lease stops without writing.`,
    )
    .action(
      async (opts: {
        hourly: string
        hours: number
        nightly: string
        archive: boolean
        archiveDir?: string
      }) => {
        await runRole(getConfig, 'batch', (config, logger) =>
          startBatch(config, logger, {
            hourlyCron: opts.hourly,
            hourlyHours: opts.hours,
            nightlyCron: opts.nightly,
            archive: opts.archive,
            ...(opts.archiveDir ? { archiveDir: opts.archiveDir } : {}),
          }),
        )
      },
    )

  program
    .command('archive')
    .description(
      'run an archiver: raw topic → Arrow IPC segments by event hour and partition (consumer group TALLY_ARCHIVE_GROUP, default tally-archive); /metrics on 9466',
    )
    .option('--archive-dir <dir>', 'archive folder (default TALLY_DATA_DIR/archive)')
    .action(async (opts: { archiveDir?: string }) => {
      await runRole(getConfig, 'archive', (config, logger) =>
        startArchiver(config, logger, opts.archiveDir ? { archiveDir: opts.archiveDir } : {}),
      )
    })

  program
    .command('rebuild')
    .description(
      'rebuild final aggregates of a range from the Arrow archive (progress bar and ETA on a terminal); each site-day switches to its new numbers at once, when all its rows are written, so an interrupted rebuild leaves the days it did not finish as they were; visits are recomputed per UTC day, from the whole days the range touches',
    )
    .requiredOption('--from <time>', 'range start, ISO 8601 (rounded down to the hour)')
    .requiredOption('--to <time>', 'range end, exclusive (rounded up to the hour)')
    .option('--site <siteId>', 'one site (default: every site in the archive)')
    .option('--skip-corrupt', 'skip corrupt or truncated segments (each reported) instead of failing', false)
    .option(
      '--wait-archive-ms <ms>',
      'wait at most this long for the archive to hold the log before failing (default TALLY_REBUILD_WAIT_ARCHIVE_MS, 300000)',
      nonNegativeInt('--wait-archive-ms'),
    )
    .option(
      '--allow-incomplete',
      'do not wait for the archive: commit what is archived, the windows it may lack stay provisional (not final)',
      false,
    )
    .option('--archive-dir <dir>', 'archive folder (default TALLY_DATA_DIR/archive)')
    .option('--json', 'print the result as JSON', false)
    .addHelpText(
      'after',
      `
Before reading, the rebuild waits (with progress) until the archive holds every record the log had
when it started, so it never replaces the stream's numbers with a partial count; when the wait runs
out it exits non-zero (TALLY_ERR_ARCHIVE_BEHIND) naming how far the archive is. The embedded backend
does not wait (its archiver runs in \`tally all\`). With --allow-incomplete the windows the archive
may lack are committed but reported provisional in \`meta\`, and the run records a warning. A
rebuild that reads 0 events in hours where the stream counted some warns (log, stderr, \`tally jobs\`).`,
    )
    .action(
      async (opts: {
        from: string
        to: string
        site?: string
        skipCorrupt: boolean
        waitArchiveMs?: number
        allowIncomplete: boolean
        archiveDir?: string
        json: boolean
      }) => {
        for (const [name, v] of [
          ['--from', opts.from],
          ['--to', opts.to],
        ] as const) {
          if (Number.isNaN(Date.parse(v)))
            throw new UsageError(`${name} "${v}" is not an ISO 8601 date or date-time`)
        }
        const config = getConfig()
        announceBackend(config, 'rebuild', 'on-terminal')
        const logger = createLogger(opts.json ? 'warn' : config.logLevel, { role: 'rebuild' })
        const progress = progressPrinter()
        const result = await rebuild(config, logger, {
          from: opts.from,
          to: opts.to,
          skipCorrupt: opts.skipCorrupt,
          onProgress: (p) => progress.update(p),
          onArchiveWait: (w) => progress.archive(w),
          allowIncomplete: opts.allowIncomplete,
          ...(opts.waitArchiveMs === undefined ? {} : { waitArchiveMs: opts.waitArchiveMs }),
          ...(opts.site ? { site: opts.site } : {}),
          ...(opts.archiveDir ? { archiveDir: opts.archiveDir } : {}),
        })
        progress.done()
        process.stdout.write(
          opts.json ? `${JSON.stringify(result)}\n` : `${JSON.stringify(result, null, 2)}\n`,
        )
        for (const w of result.run.warnings) process.stderr.write(`tally: warning: ${w}\n`)
      },
    )

  program
    .command('jobs')
    .description('list rebuild runs: status, range, events read, windows written, duration, error, warnings')
    .option('--limit <n>', 'most runs, newest first', positiveInt('--limit'), 50)
    .option('--days <n>', 'how far back', positiveInt('--days'), 7)
    .option('--json', 'print JSON', false)
    .action(async (opts: { limit: number; days: number; json: boolean }) => {
      const config = getConfig()
      announceBackend(config, 'jobs', 'on-terminal')
      const runs = await listJobs(config, createLogger('warn'), { limit: opts.limit, days: opts.days })
      process.stdout.write(opts.json ? `${JSON.stringify(runs)}\n` : `${formatJobs(runs)}\n`)
    })

  program
    .command('import')
    .description(
      'append historical events (NDJSON of Segment payloads, .gz allowed) to the raw log with their original timestamps',
    )
    .argument('<file>', 'NDJSON file, one event per line')
    .requiredOption('--site <siteId>', 'the site the events belong to')
    .option('--json', 'print the result as JSON', false)
    .addHelpText(
      'after',
      '\nThe stream leaves events older than its grace period to the batch layer: the next rebuild of their range counts them. Events older than TALLY_IMPORT_MAX_PAST_DAYS (1830) are rejected (TALLY_ERR_TIMESTAMP_TOO_OLD); ones more than TALLY_MAX_FUTURE_MS ahead take the import time (timestampClamped).',
    )
    .action(async (file: string, opts: { site: string; json: boolean }) => {
      const config = getConfig()
      announceBackend(config, 'import', 'on-terminal')
      const logger = createLogger(config.logLevel, { role: 'import' })
      const ua = new UserAgentParser()
      const limits = config.ingest
      const result = await importFile(config, logger, {
        file,
        siteId: opts.site,
        normalize: (payload, receivedAtMs) =>
          normalizeEvent(
            payload,
            {
              siteId: opts.site,
              userAgent: undefined,
              receivedAtMs,
              batchSentAt: undefined,
              routeType: undefined,
              imported: true,
            },
            limits,
            ua,
          ),
      })
      process.stdout.write(
        opts.json
          ? `${JSON.stringify(result)}\n`
          : `${result.accepted} imported, ${result.rejected} rejected of ${result.lines} lines\n`,
      )
      if (result.accepted === 0 && result.lines > 0) process.exitCode = 1
    })
}
