import { afterAll, describe, expect, it } from 'vitest'
import { openEmbeddedBackend } from '../../app/backend.js'
import { rebuild } from '../../app/start.js'
import { generateWorkload } from '../../bench/workload.js'
import { createLogger } from '../../core/log.js'
import { tempDataDir } from '../contract/backends.js'
import { testConfig } from '../helpers/context.js'
import { feed, ingestApp } from '../helpers/stream.js'

/**
 * `tally rebuild` on the embedded backend holds the data folder, so no archiver can run beside it:
 * with the archive behind the log it fails at once instead of waiting (the Kafka and Cassandra
 * side is in rebuild-archive.test.ts).
 */

const HOUR = 3_600_000
const logger = createLogger('silent')
const HIST_FROM = Math.floor(Date.now() / HOUR) * HOUR - 3 * HOUR
const HIST_TO = HIST_FROM + 2 * HOUR
const data = tempDataDir('tally-rebuild-embedded-')

afterAll(() => data.remove())

function history(seed: number, site: string, events: number) {
  return generateWorkload({
    seed,
    sites: [site],
    events,
    start: new Date(HIST_FROM),
    spanMs: HIST_TO - HIST_FROM,
    lateShare: 0,
  }).events
}

describe('tally rebuild on the embedded backend', () => {
  it('does not wait for an archive nothing can advance: it fails at once, naming `tally all`, writing nothing', async () => {
    const cfg = testConfig({ TALLY_BACKEND: 'embedded', TALLY_DATA_DIR: data.dir })
    const events = history(14, 'emb.test', 200)
    // Events in the embedded log, never archived (no `tally all` ran on this folder).
    const backend = openEmbeddedBackend(cfg)
    try {
      const { site } = await backend.sites.create({ siteId: 'emb.test', domain: 'emb.test', origins: [] })
      const writer = backend.log.writer()
      const app = await ingestApp(cfg, writer, [site], logger)
      try {
        expect(await feed(app, events, () => site.writeKey)).toBe(events.length)
      } finally {
        await app.close()
        await writer.close()
      }
    } finally {
      await backend.close()
    }
    const started = Date.now()
    await expect(
      rebuild(cfg, logger, { from: HIST_FROM, to: HIST_TO, waitArchiveMs: 60_000 }),
    ).rejects.toMatchObject({
      code: 'TALLY_ERR_ARCHIVE_BEHIND',
      message: expect.stringMatching(
        new RegExp(
          `^the archive is not complete: of the records the log held when the rebuild started, it holds 0 of ${events.length} records \\(partition .*\\); the embedded archiver runs in \`tally all\`.* Or pass --allow-incomplete`,
        ),
      ),
    })
    expect(Date.now() - started).toBeLessThan(10_000)
    const after = openEmbeddedBackend(cfg)
    try {
      expect(await after.batch.jobs.list(0, 10)).toEqual([])
    } finally {
      await after.close()
    }
  })
})
