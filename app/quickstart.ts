import { existsSync } from 'node:fs'
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createCassandraClient } from '../core/cassandra/client.js'
import { CassandraSiteStore } from '../core/cassandra/sites.js'
import type { TallyConfig } from '../core/config.js'
import { hashToken } from '../core/keys.js'
import type { Logger } from '../core/log.js'
import { migrate } from '../core/migrate.js'
import type { SiteStore } from '../core/ports/site-store.js'
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE } from '../core/private-files.js'
import { ServicesManager } from './services/manager.js'

export interface QuickstartSite {
  siteId: string
  writeKey: string
  readToken: string
}

/** The default site of a quick start. */
export const QUICKSTART_SITE = 'localhost'

/**
 * Creates the default site once, in any site store; its keys are kept in
 * TALLY_DATA_DIR/quickstart.json (mode 0600) so later starts print them again.
 */
export async function ensureQuickstartSite(config: TallyConfig, store: SiteStore): Promise<QuickstartSite> {
  const file = join(config.dataDir, 'quickstart.json')
  if (existsSync(file)) {
    const saved = JSON.parse(await readFile(file, 'utf8')) as QuickstartSite
    const site = await store.get(saved.siteId)
    // A revoked token is not printed as one to use: the site gets a new one below.
    if (site?.readTokenHashes.includes(hashToken(saved.readToken)))
      return { ...saved, writeKey: site.writeKey }
  }
  const existing = await store.get(QUICKSTART_SITE)
  const created = existing
    ? { site: existing, readToken: await store.addReadToken(QUICKSTART_SITE) }
    : await store.create({
        siteId: QUICKSTART_SITE,
        domain: 'localhost',
        origins: ['http://localhost:8080', 'http://127.0.0.1:8080'],
      })
  const saved: QuickstartSite = {
    siteId: created.site.siteId,
    writeKey: created.site.writeKey,
    readToken: created.readToken,
  }
  await mkdir(config.dataDir, { recursive: true, mode: PRIVATE_DIR_MODE })
  await writeFile(file, `${JSON.stringify(saved, null, 2)}\n`, { mode: PRIVATE_FILE_MODE })
  // The mode applies to a new file only; the keys of an older one are narrowed as well.
  await chmod(file, PRIVATE_FILE_MODE)
  return saved
}

/**
 * First-run convenience of `tally all --quickstart` on Kafka and Cassandra: starts the local Kafka
 * and Cassandra when none is configured, applies the schema, and creates the default site once.
 */
export async function prepareQuickstart(config: TallyConfig, logger: Logger): Promise<QuickstartSite> {
  const wanted = [
    ...(config.kafka.configured ? [] : ['kafka' as const]),
    ...(config.cassandra.configured ? [] : ['cassandra' as const]),
  ]
  if (wanted.length > 0) {
    const manager = new ServicesManager(config.services, (line) => logger.info(line))
    await manager.up(wanted)
  }
  await migrate(config)
  const client = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await client.connect()
  try {
    return await ensureQuickstartSite(config, new CassandraSiteStore(client))
  } finally {
    await client.shutdown()
  }
}
