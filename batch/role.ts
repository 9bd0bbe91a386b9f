import type { Registry } from 'prom-client'
import { archiveKey } from '../core/archive/paths.js'
import type { TallyConfig } from '../core/config.js'
import { errorMessage } from '../core/errors.js'
import { startOpsServer } from '../core/http.js'
import { once } from '../core/lifecycle.js'
import type { Logger } from '../core/log.js'
import { createProcessRegistry } from '../core/metrics.js'
import type { Ports } from '../core/ports/backend.js'
import { type ArchiverComponent, type ArchiverRoleOptions, createArchiverComponent } from './archive-role.js'
import { archiveBehind } from './context.js'
import { createBatchMetrics } from './metrics.js'
import { runRebuild } from './rebuild.js'
import { type RebuildOptions, rebuildSettings } from './rebuild-command.js'
import { BatchScheduler, defaultJobs, type SchedulerOptions, validateJobs } from './scheduler.js'

export const BATCH_DEFAULT_PORT = 9465

/** Options of `tally batch`. */
export interface StartBatchOptions
  extends SchedulerOptions,
    Pick<
      RebuildOptions,
      'archiveDir' | 'stagingDir' | 'leaseTtlMs' | 'throttleMs' | 'maxDedupRowsInMemory' | 'skipCorrupt'
    > {
  /** Also run an archiver (consumer group tally-archive) in this process. Default true. */
  archive?: boolean
  /** Options of that archiver. */
  archiver?: Omit<ArchiverRoleOptions, 'archiveDir'>
  /** Port of /metrics, /healthz, /readyz. Default PORT, else 9465. */
  port?: number
  /** The backend (built by app/); closed by its owner after the role. */
  ports: Pick<Ports, 'batch' | 'offsets' | 'consumer'> & Partial<Pick<Ports, 'sites'>>
  /** The process registry (core/metrics.ts), when the process runs several roles; default: its own. */
  registry?: Registry
}

export interface RunningBatch {
  url: string
  scheduler: BatchScheduler
  archiver: ArchiverComponent | undefined
  registryText(): Promise<string>
  close(): Promise<void>
  /** After a crash: leave the archiver's consumer group without the final flush (see Closable.abort). */
  abort(): Promise<void>
}

/**
 * `tally batch`: the rebuild scheduler (hourly and nightly node-cron jobs guarded by Cassandra
 * leases) and, unless `archive` is false, an archiver; /metrics on port 9465.
 */
export async function startBatch(
  config: TallyConfig,
  logger: Logger,
  options: StartBatchOptions,
): Promise<RunningBatch> {
  // Bad settings fail before anything is opened.
  const jobs = defaultJobs(options)
  validateJobs(jobs)
  const registry = options.registry ?? createProcessRegistry()
  const metrics = createBatchMetrics(registry)
  const { ports } = options
  let scheduler: BatchScheduler | undefined
  let archiver: ArchiverComponent | undefined
  // Bound before the archiver joins its group: a process that cannot serve its metrics fails
  // without leaving a dead member behind (which would stall the other archivers for a session).
  const { app, url } = await startOpsServer({
    logger,
    registry,
    host: config.host,
    port: options.port ?? config.port ?? BATCH_DEFAULT_PORT,
    what: "the batch role's /metrics",
    where: options.port === undefined ? 'PORT' : '--batch-port',
    ready: () =>
      scheduler
        ? {
            jobs: scheduler.jobs.map((j) => ({ kind: j.kind, cron: j.cron })),
            archivePartitions: archiver?.archiver.ownedPartitions() ?? [],
          }
        : undefined,
  })
  const stores = ports.batch
  const offsets = ports.offsets
  try {
    archiver =
      options.archive === false
        ? undefined
        : await createArchiverComponent(config, logger, { store: stores.archive, ports }, registry, {
            ...options.archiver,
            ...(options.archiveDir === undefined ? {} : { archiveDir: options.archiveDir }),
          })
  } catch (err) {
    await app.close().catch((closeErr: unknown) => logger.error({ err: closeErr }, 'closing HTTP failed'))
    throw err
  }
  const settings = rebuildSettings(config, options)
  const key = archiveKey(options.archiver?.group ?? config.archive.group, config.kafka.topicRaw)
  const started = new BatchScheduler(
    {
      rebuild: (request) =>
        runRebuild(
          {
            leases: stores.leases,
            jobs: stores.jobs,
            rows: stores.rows,
            logger,
            metrics,
            ...(ports.sites ? { propKeys: ports.sites } : {}),
          },
          settings,
          { ...request, skipCorrupt: options.skipCorrupt ?? false },
        ),
      archiveNotReady: async (toMs) => {
        try {
          const behind = await archiveBehind(stores.archive, offsets, key, config.kafka.topicRaw, toMs)
          return behind.length === 0
            ? undefined
            : `archive behind on partitions ${behind.map((b) => `${b.partition} (${b.archived}/${b.end})`).join(', ')}`
        } catch (err) {
          return `cannot check the archive: ${errorMessage(err)}`
        }
      },
      logger: logger.child({ component: 'scheduler' }),
      metrics,
    },
    jobs,
    options,
  )
  // Order: stop HTTP and cron (a running rebuild stops before its next write), close the
  // archiver's buffers into segments and leave its group (the ports' owner closes the
  // connections after).
  const runningArchiver = archiver
  const close = once(async () => {
    await app.close()
    await started.close()
    await runningArchiver?.close()
  })
  try {
    started.start()
  } catch (err) {
    await close().catch(() => undefined)
    throw err
  }
  scheduler = started
  logger.info({ url }, 'batch role running')
  return {
    url,
    scheduler: started,
    archiver: runningArchiver,
    registryText: () => registry.metrics(),
    close,
    // After a crash only the archiver's group membership matters: leave it, write nothing more.
    abort: async () => {
      await runningArchiver?.abort()
    },
  }
}
