/**
 * The roles on the configured backend: each entry point opens the ports of the backend (see
 * openPorts: Kafka and Cassandra, or the embedded backend), hands them to the role, and closes them
 * after the role. Given `ports` (the shared ports of `tally all`), it uses them and leaves closing
 * them to their owner. The CLI, `tally all`, the stand-alone entries and the tests start roles here.
 */
import {
  type ArchiverRoleOptions,
  type RunningArchiver,
  startArchiver as startArchiverRole,
} from '../batch/archive-role.js'
import type { BatchStores } from '../batch/context.js'
import { type ImportOptions, type ImportResult, importFile as importFileWith } from '../batch/import.js'
import { type ListJobsOptions, listJobs as listJobsWith } from '../batch/jobs.js'
import type { RebuildResult } from '../batch/rebuild.js'
import { type RebuildOptions, rebuild as rebuildWith } from '../batch/rebuild-command.js'
import { type RunningBatch, type StartBatchOptions, startBatch as startBatchRole } from '../batch/role.js'
import type { TallyConfig } from '../core/config.js'
import { type Closable, once } from '../core/lifecycle.js'
import type { Logger } from '../core/log.js'
import type { Ports } from '../core/ports/backend.js'
import type { JobRun } from '../core/ports/batch-store.js'
import { type IngestRoleOptions, type RunningIngest, startIngest as startIngestRole } from '../ingest/role.js'
import { type QueryRoleOptions, type RunningQuery, startQuery as startQueryRole } from '../query/role.js'
import { type RunningStream, startStream as startStreamRole } from '../stream/role.js'
import { type OwnedPorts, openPorts } from './backend.js'

/** A role's options with the ports made optional: without them, the role gets its own. */
type WithPorts<O> = Omit<O, 'ports'> & { ports?: Ports | undefined }

/** Starts `start` on `given` ports, or on ports of its own that it closes after the role. */
async function onPorts<R extends Closable>(
  config: TallyConfig,
  logger: Logger,
  given: Ports | undefined,
  start: (ports: Ports) => Promise<R>,
): Promise<R> {
  if (given) return start(given)
  const ports = await openPorts(config, logger, { waitForServices: true })
  let running: R
  try {
    running = await start(ports)
  } catch (err) {
    await ports
      .close()
      .catch((closeErr: unknown) =>
        logger.error({ err: closeErr }, 'closing the backend after a failed start failed'),
      )
    throw err
  }
  return {
    ...running,
    close: once(async () => {
      await running.close()
      await ports.close()
    }),
  }
}

/** Runs `fn` on ports of its own, closed after it. */
async function withPorts<T>(config: TallyConfig, logger: Logger, fn: (ports: OwnedPorts) => Promise<T>) {
  const ports = await openPorts(config, logger)
  try {
    return await fn(ports)
  } finally {
    await ports.close()
  }
}

export function startIngest(
  config: TallyConfig,
  logger: Logger,
  options: WithPorts<IngestRoleOptions> = {},
): Promise<RunningIngest> {
  const { ports, ...rest } = options
  return onPorts(config, logger, ports, (p) => startIngestRole(config, logger, { ...rest, ports: p }))
}

export function startStream(
  config: TallyConfig,
  logger: Logger,
  options: { port?: number; ports?: Ports | undefined } = {},
): Promise<RunningStream> {
  const { ports, ...rest } = options
  return onPorts(config, logger, ports, (p) => startStreamRole(config, logger, { ...rest, ports: p }))
}

export function startQuery(
  config: TallyConfig,
  logger: Logger,
  options: WithPorts<QueryRoleOptions> = {},
): Promise<RunningQuery> {
  const { ports, ...rest } = options
  return onPorts(config, logger, ports, (p) => startQueryRole(config, logger, { ...rest, ports: p }))
}

export function startBatch(
  config: TallyConfig,
  logger: Logger,
  options: WithPorts<StartBatchOptions> = {},
): Promise<RunningBatch> {
  const { ports, ...rest } = options
  return onPorts(config, logger, ports, (p) => startBatchRole(config, logger, { ...rest, ports: p }))
}

export function startArchiver(
  config: TallyConfig,
  logger: Logger,
  options: ArchiverRoleOptions & { port?: number; ports?: Ports | undefined } = {},
): Promise<RunningArchiver> {
  const { ports, ...rest } = options
  return onPorts(config, logger, ports, (p) => startArchiverRole(config, logger, { ...rest, ports: p }))
}

/** `tally rebuild` on the configured backend. */
export function rebuild(
  config: TallyConfig,
  logger: Logger,
  options: RebuildOptions,
): Promise<RebuildResult> {
  return withPorts(config, logger, (ports) =>
    rebuildWith(config, logger, { ...options, stores: batchStoresOf(ports) }),
  )
}

/** `tally jobs` on the configured backend. */
export function listJobs(
  config: TallyConfig,
  logger: Logger,
  options: ListJobsOptions = {},
): Promise<JobRun[]> {
  return withPorts(config, logger, (ports) =>
    listJobsWith(config, logger, { ...options, stores: ports.batch }),
  )
}

/** `tally import` on the configured backend. */
export function importFile(
  config: TallyConfig,
  logger: Logger,
  options: WithPorts<ImportOptions>,
): Promise<ImportResult> {
  const { ports, ...rest } = options
  if (ports) return importFileWith(config, logger, { ...rest, ports })
  return withPorts(config, logger, (p) => importFileWith(config, logger, { ...rest, ports: p }))
}

function batchStoresOf(ports: Pick<Ports, 'batch' | 'offsets' | 'sites'>): BatchStores {
  return { ...ports.batch, offsets: ports.offsets, sites: ports.sites }
}

/**
 * The batch stores of the configured backend, for a caller that keeps them open (tests): one
 * Cassandra connection (and a lazy Kafka admin), or the embedded backend, which takes the data
 * folder (refused, naming the holder, while `tally all` runs on it).
 */
export async function openBatchStores(
  config: TallyConfig,
  logger?: Logger,
): Promise<BatchStores & { close(): Promise<void> }> {
  const ports = await openPorts(config, logger)
  return { ...batchStoresOf(ports), close: () => ports.close() }
}
