/**
 * Stand-alone entry of the archiver (`node dist/app/run-archiver.js [options]`), what `tally
 * archive` runs; used by the SIGKILL tests. Configuration from the environment (core/config.ts).
 *
 *   --archive-dir DIR            archive root (default $TALLY_DATA_DIR/archive)
 *   --group NAME                 consumer group (default tally-archive)
 *   --flush-interval-ms N        close buffered events into segments at least this often (default 30000)
 *   --max-buffered-events N      flush a partition at this many buffered events (default 50000)
 */
import { parseArgs } from 'node:util'
import type { ArchiverRoleOptions } from '../batch/archive-role.js'
import { loadConfig } from '../core/config.js'
import { errorMessage } from '../core/errors.js'
import { untilSignal } from '../core/lifecycle.js'
import { createLogger } from '../core/log.js'
import { startArchiver } from './start.js'

function positive(name: string, raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined
  if (!/^\d+$/.test(raw) || Number(raw) < 1)
    throw new Error(`--${name} must be a positive integer, got ${raw}`)
  return Number(raw)
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      'archive-dir': { type: 'string' },
      group: { type: 'string' },
      'flush-interval-ms': { type: 'string' },
      'max-buffered-events': { type: 'string' },
    },
  })
  const config = loadConfig()
  const logger = createLogger(config.logLevel, { role: 'archive' })
  const options: ArchiverRoleOptions = {}
  if (values['archive-dir']) options.archiveDir = values['archive-dir']
  if (values.group) options.group = values.group
  const flush = positive('flush-interval-ms', values['flush-interval-ms'])
  if (flush !== undefined) options.flushIntervalMs = flush
  const max = positive('max-buffered-events', values['max-buffered-events'])
  if (max !== undefined) options.maxBufferedEvents = max
  const running = await startArchiver(config, logger, options)
  return untilSignal(running, logger, config.shutdownTimeoutMs)
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`tally archive: ${errorMessage(err)}\n`)
    process.exit(1)
  },
)
