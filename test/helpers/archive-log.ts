import { Registry } from 'prom-client'
import { Archiver } from '../../batch/archiver.js'
import { archiveBehind } from '../../batch/context.js'
import { createArchiveMetrics } from '../../batch/metrics.js'
import { archiveKey } from '../../core/archive/paths.js'
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
