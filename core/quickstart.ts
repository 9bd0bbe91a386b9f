import { existsSync } from 'node:fs'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createCassandraClient } from './cassandra/client.js'
import { CassandraSiteStore } from './cassandra/sites.js'
import type { TallyConfig } from './config.js'
import type { Logger } from './log.js'
import { migrate } from './migrate.js'
import { ServicesManager } from './services/manager.js'

export interface QuickstartSite {
  siteId: string
  writeKey: string
  readToken: string
}

/**
 * First-run convenience for `npm start`: starts the local Kafka and Cassandra when none is
 * configured, applies the schema, and creates a default site once (its keys are kept in
 * TALLY_DATA_DIR/quickstart.json so later starts print them again).
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
  const file = join(config.dataDir, 'quickstart.json')
  const client = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await client.connect()
  try {
    const store = new CassandraSiteStore(client)
    if (existsSync(file)) {
      const saved = JSON.parse(await readFile(file, 'utf8')) as QuickstartSite
      const site = await store.get(saved.siteId)
      if (site) return { ...saved, writeKey: site.writeKey }
    }
    const existing = await store.get('localhost')
    const created = existing
      ? { site: existing, readToken: await store.addReadToken('localhost') }
      : await store.create({
          siteId: 'localhost',
          domain: 'localhost',
          origins: ['http://localhost:8080', 'http://127.0.0.1:8080'],
        })
    const saved: QuickstartSite = {
      siteId: created.site.siteId,
      writeKey: created.site.writeKey,
      readToken: created.readToken,
    }
    await mkdir(config.dataDir, { recursive: true })
    await writeFile(file, `${JSON.stringify(saved, null, 2)}\n`, { mode: 0o600 })
    return saved
  } finally {
    await client.shutdown()
  }
}
