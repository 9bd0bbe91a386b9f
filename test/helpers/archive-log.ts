import { join } from 'node:path'
import { Registry } from 'prom-client'
import { Archiver } from '../../batch/archiver.js'
import { archiveBehind } from '../../batch/context.js'
import { createArchiveMetrics } from '../../batch/metrics.js'
import {
  type RebuildRequest,
  type RebuildResult,
  type RebuildSettings,
  runRebuild,
} from '../../batch/rebuild.js'
import { archiveKey } from '../../core/archive/paths.js'
import { archiveTopicDir } from '../../core/archive/segment-file.js'
import type { Logger } from '../../core/log.js'
import type { embeddedHarness } from '../contract/backends.js'
import type { EventLogHarness } from '../contract/event-log.js'
import { eventually } from './context.js'

type Store = Pick<Awaited<ReturnType<typeof embeddedHarness>>, 'batch'>

/**
 * Archives the whole of `topic` into `archiveDir` with a real Archiver (group `archive-<topic>`),
 * waits until the archive holds the log, and closes the archiver: what a rebuild test needs first.
 */
export async function archiveWholeLog(
  log: EventLogHarness,
  store: Store,
  o: { topic: string; archiveDir: string; owner: string; logger: Logger },
): Promise<void> {
  const group = `archive-${o.topic}`
  const archiver = new Archiver(
    {
      consumer: log.consumer(group, o.topic),
      store: store.batch.archive,
      offsets: log.offsets,
      metrics: createArchiveMetrics(new Registry()),
      logger: o.logger,
    },
    { archiveDir: o.archiveDir, topic: o.topic, group, flushIntervalMs: 200, owner: o.owner },
  )
  await archiver.start()
  try {
    const key = archiveKey(group, o.topic)
    await eventually(
      async () => {
        const behind = await archiveBehind(
          store.batch.archive,
          log.offsets,
          key,
          o.topic,
          Number.MAX_SAFE_INTEGER,
        )
        return behind.length === 0 ? true : undefined
      },
      60_000,
      'the archive to hold the whole log',
    )
  } finally {
    await archiver.close()
  }
}

/**
 * Rebuilds `request` with a real runRebuild from the archive archiveWholeLog wrote to
 * `<dataDir>/archive` (staging in `<dataDir>/staging`, lease 5 s), with `settings` beyond those;
 * `propKeys` reads the declared keys and goals from the harness's site store.
 */
export function rebuildFromArchive(
  store: Pick<Awaited<ReturnType<typeof embeddedHarness>>, 'batch' | 'precision' | 'sites'>,
  o: {
    topic: string
    dataDir: string
    owner: string
    logger: Logger
    visitGapMs: number
    propKeys?: boolean
    settings?: Partial<RebuildSettings>
  },
  request: RebuildRequest,
): Promise<RebuildResult> {
  return runRebuild(
    {
      leases: store.batch.leases,
      jobs: store.batch.jobs,
      rows: store.batch.rows,
      logger: o.logger,
      ...(o.propKeys ? { propKeys: store.sites } : {}),
    },
    {
      topicDir: archiveTopicDir(join(o.dataDir, 'archive'), o.topic),
      stagingDir: join(o.dataDir, 'staging'),
      precision: store.precision,
      visitGapMs: o.visitGapMs,
      ...o.settings,
      owner: o.owner,
      leaseTtlMs: 5000,
    },
    request,
  )
}
