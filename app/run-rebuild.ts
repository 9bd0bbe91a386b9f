/**
 * Stand-alone entry of a rebuild (`node dist/app/run-rebuild.js --from T1 --to T2 [options]`), what
 * `tally rebuild` runs; used by the kill tests. Prints one JSON line per progress step (and per look
 * at the archive while waiting for it, `{"archive": …}`) on stdout and the result as the last line.
 * Configuration from the environment (core/config.ts).
 *
 *   --site S  --from T1  --to T2  --skip-corrupt  --throttle-ms N  --write-chunk-rows N  --lease-ttl-ms N
 *   --wait-for-lease-ms N  --wait-archive-ms N  --allow-incomplete  --archive-group NAME
 *   --archive-dir DIR  --staging-dir DIR
 */
import { parseArgs } from 'node:util'
import type { RebuildOptions } from '../batch/rebuild-command.js'
import { loadConfig } from '../core/config.js'
import { errorMessage } from '../core/errors.js'
import { createLogger } from '../core/log.js'
import { rebuild } from './start.js'

function int(name: string, raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined
  if (!/^\d+$/.test(raw)) throw new Error(`--${name} must be a non-negative integer, got ${raw}`)
  return Number(raw)
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      site: { type: 'string' },
      from: { type: 'string' },
      to: { type: 'string' },
      'skip-corrupt': { type: 'boolean', default: false },
      'throttle-ms': { type: 'string' },
      'write-chunk-rows': { type: 'string' },
      'lease-ttl-ms': { type: 'string' },
      'wait-for-lease-ms': { type: 'string' },
      'wait-archive-ms': { type: 'string' },
      'allow-incomplete': { type: 'boolean', default: false },
      'archive-group': { type: 'string' },
      'archive-dir': { type: 'string' },
      'staging-dir': { type: 'string' },
    },
  })
  if (!values.from || !values.to) throw new Error('--from and --to are required')
  const config = loadConfig()
  const logger = createLogger(config.logLevel, { role: 'rebuild' })
  const options: RebuildOptions = {
    from: values.from,
    to: values.to,
    skipCorrupt: values['skip-corrupt'] ?? false,
    onProgress: (p) => process.stdout.write(`${JSON.stringify({ progress: p })}\n`),
    onArchiveWait: (w) => process.stdout.write(`${JSON.stringify({ archive: w })}\n`),
    allowIncomplete: values['allow-incomplete'] ?? false,
  }
  if (values.site) options.site = values.site
  // The archivers' group whose progress the rebuild waits for (run-archiver.js --group).
  if (values['archive-group']) options.archiveGroup = values['archive-group']
  if (values['archive-dir']) options.archiveDir = values['archive-dir']
  if (values['staging-dir']) options.stagingDir = values['staging-dir']
  const throttle = int('throttle-ms', values['throttle-ms'])
  if (throttle !== undefined) options.throttleMs = throttle
  const chunk = int('write-chunk-rows', values['write-chunk-rows'])
  if (chunk !== undefined) options.writeChunkRows = chunk
  const ttl = int('lease-ttl-ms', values['lease-ttl-ms'])
  if (ttl !== undefined) options.leaseTtlMs = ttl
  const wait = int('wait-for-lease-ms', values['wait-for-lease-ms'])
  if (wait !== undefined) options.waitForLeaseMs = wait
  const waitArchive = int('wait-archive-ms', values['wait-archive-ms'])
  if (waitArchive !== undefined) options.waitArchiveMs = waitArchive
  const result = await rebuild(config, logger, options)
  process.stdout.write(`${JSON.stringify({ result: { status: result.status, run: result.run } })}\n`)
  for (const w of result.run.warnings) process.stderr.write(`warning: ${w}\n`)
  return 0
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stdout.write(`${JSON.stringify({ error: errorMessage(err) })}\n`)
    process.exit(1)
  },
)
