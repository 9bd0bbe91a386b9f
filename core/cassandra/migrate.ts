import { createHash } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Client, types } from 'cassandra-driver'
import type { CassandraConfig, CassandraReplication } from '../config.js'
import { ERR } from '../error-codes.js'
import { TallyError } from '../errors.js'
import { projectRoot } from '../paths.js'
import { createCassandraClient } from './client.js'
import { checkpointInsert } from './stream-store.js'

export interface Migration {
  version: number
  name: string
  checksum: string
  statements: string[]
}

const FILE = /^(\d{4})_([a-z0-9_]+)\.cql$/

/** Splits a CQL file into statements: `--` comments dropped, statements end with `;`. */
export function splitStatements(cql: string): string[] {
  const text = cql
    .split('\n')
    .map((line) => line.replace(/--.*$/, ''))
    .join('\n')
  return text
    .split(/;\s*(?:\n|$)/)
    .map((s) => s.trim())
    .filter((s) => s !== '')
}

export async function loadMigrations(dir = join(projectRoot(), 'schemas', 'cql')): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.cql')).sort()
  const out: Migration[] = []
  for (const file of files) {
    const m = FILE.exec(file)
    if (!m)
      throw new TallyError(ERR.MIGRATION_NAME, `${file}: migration files are named NNNN_name.cql`, {
        where: join(dir, file),
      })
    const text = await readFile(join(dir, file), 'utf8')
    const version = Number(m[1])
    if (out.some((x) => x.version === version)) {
      throw new TallyError(ERR.MIGRATION_NAME, `${file}: version ${version} is used twice`, {
        where: join(dir, file),
      })
    }
    out.push({
      version,
      name: m[2]!,
      checksum: createHash('sha256').update(text).digest('hex').slice(0, 16),
      statements: splitStatements(text),
    })
  }
  return out
}

export function replicationCql(r: CassandraReplication): string {
  const entries = Object.entries(r.factors).map(([k, v]) => `'${k}': ${v}`)
  return `{'class': '${r.class}', ${entries.join(', ')}}`
}

export interface MigrateResult {
  keyspace: string
  keyspaceCreated: boolean
  replicationChanged: boolean
  applied: Array<{ version: number; name: string }>
  alreadyApplied: number
  /** Rows of stream_checkpoints copied (again) into stream_group_checkpoints. */
  checkpointsCopied: number
}

/** Refuses names that could be a production keyspace when a caller asks for a test-only action. */
export function assertTestKeyspace(keyspace: string): void {
  if (!/^tally_test_[a-z0-9_]+$/.test(keyspace)) {
    throw new TallyError(
      ERR.NOT_A_TEST_KEYSPACE,
      `refusing to drop keyspace ${keyspace}: only tally_test_* keyspaces may be dropped by tests`,
    )
  }
}

async function currentReplication(
  client: Client,
  keyspace: string,
): Promise<Record<string, string> | undefined> {
  const rs = await client.execute('SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?', [
    keyspace,
  ])
  const row = rs.first()
  return row ? (row.get('replication') as Record<string, string>) : undefined
}

function sameReplication(current: Record<string, string>, wanted: CassandraReplication): boolean {
  if (!current.class?.endsWith(wanted.class)) return false
  const keys = Object.keys(current).filter((k) => k !== 'class')
  const wantedKeys = Object.keys(wanted.factors)
  return (
    keys.length === wantedKeys.length && wantedKeys.every((k) => Number(current[k]) === wanted.factors[k])
  )
}

async function tablesOf(client: Client, keyspace: string): Promise<Set<string>> {
  const rs = await client.execute('SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?', [
    keyspace,
  ])
  return new Set(rs.rows.map((r) => String(r.get('table_name'))))
}

/**
 * Copies every row of the checkpoint table keyed by source partition (0002, stream_checkpoints)
 * into the one keyed by group (0006, stream_group_checkpoints), each at the write timestamp of the
 * row it copies. Checkpoints carry fencing timestamps (epoch << 40) + offset, so a row a worker
 * already wrote to the new table under a later epoch or offset wins over its copy, and copying
 * again copies nothing new: it runs on every migrate, so a migrate after the last worker of the
 * previous version stopped also brings over the checkpoints that worker wrote meanwhile.
 */
export async function copyLegacyCheckpoints(client: Client, keyspace: string): Promise<number> {
  const tables = await tablesOf(client, keyspace)
  if (!tables.has('stream_checkpoints') || !tables.has('stream_group_checkpoints')) return 0
  const rows = client.stream(
    `SELECT consumer_group, topic, partition, next_offset, watermark_ms, epoch, updated_at, WRITETIME(next_offset) AS written FROM ${keyspace}.stream_checkpoints`,
    [],
    { prepare: true, fetchSize: 500 },
  )
  let copied = 0
  for await (const row of rows as unknown as AsyncIterable<types.Row>) {
    const written = row.get('written') as types.Long | null
    if (written === null) continue
    const [query, params] = checkpointInsert(
      `${keyspace}.stream_group_checkpoints`,
      {
        group: String(row.get('consumer_group')),
        topic: String(row.get('topic')),
        partition: Number(row.get('partition')),
      },
      {
        nextOffset: Number(row.get('next_offset') ?? 0),
        watermarkMs: Number(row.get('watermark_ms') ?? 0),
        epoch: Number(row.get('epoch') ?? 0),
      },
      { timestamp: written, updatedAt: (row.get('updated_at') as Date | null) ?? null },
    )
    await client.execute(query, params, { prepare: true })
    copied++
  }
  return copied
}

/**
 * Writes each site's own domain into site_domains (0010) where no site holds it yet: sites created
 * before the table have no row there. Conditional inserts, so a domain's first holder keeps it and
 * running it again changes nothing; it runs on every migrate, as sites are few.
 */
async function indexSiteDomains(client: Client, keyspace: string): Promise<void> {
  const tables = await tablesOf(client, keyspace)
  if (!tables.has('site_domains')) return
  const rows = client.stream(`SELECT site_id, domain, created_at FROM ${keyspace}.sites`, [], {
    prepare: true,
    fetchSize: 500,
  })
  const sites: Array<{ siteId: string; domain: string; createdAt: number }> = []
  for await (const row of rows as unknown as AsyncIterable<types.Row>) {
    const domain = row.get('domain') as string | null
    if (domain)
      sites.push({
        siteId: String(row.get('site_id')),
        domain,
        createdAt: (row.get('created_at') as Date | null)?.getTime() ?? 0,
      })
  }
  // Oldest first: of two sites with one domain, the first created keeps it.
  sites.sort((a, b) => a.createdAt - b.createdAt || a.siteId.localeCompare(b.siteId))
  for (const s of sites) {
    await client.execute(
      `INSERT INTO ${keyspace}.site_domains (domain, site_id, alias) VALUES (?, ?, false) IF NOT EXISTS`,
      [s.domain, s.siteId],
      { prepare: true },
    )
  }
}

/**
 * Creates the keyspace (or aligns its replication), then applies the CQL files not applied yet, in
 * version order, recording each in `schema_migrations`. Running it twice is a no-op. A file whose
 * content changed after it was applied stops the run: migrations are append-only. Then copies the
 * checkpoints of the table they moved from (`copyLegacyCheckpoints`; idempotent).
 */
export async function migrateCassandra(
  config: CassandraConfig,
  migrations?: Migration[],
): Promise<MigrateResult> {
  const all = migrations ?? (await loadMigrations())
  const ks = config.keyspace
  const client = createCassandraClient(config)
  try {
    await client.connect()
    const current = await currentReplication(client, ks)
    let replicationChanged = false
    if (!current) {
      await client.execute(
        `CREATE KEYSPACE IF NOT EXISTS ${ks} WITH replication = ${replicationCql(config.replication)} AND durable_writes = true`,
      )
    } else if (!sameReplication(current, config.replication)) {
      await client.execute(`ALTER KEYSPACE ${ks} WITH replication = ${replicationCql(config.replication)}`)
      replicationChanged = true
    }
    // The CQL files name no keyspace: they apply to the configured one.
    await client.execute(`USE ${ks}`)
    await client.execute(
      `CREATE TABLE IF NOT EXISTS ${ks}.schema_migrations (version int PRIMARY KEY, name text, checksum text, applied_at timestamp)`,
    )
    const rs = await client.execute(`SELECT version, name, checksum FROM ${ks}.schema_migrations`)
    const done = new Map(rs.rows.map((r) => [Number(r.get('version')), String(r.get('checksum'))]))
    const applied: Array<{ version: number; name: string }> = []
    for (const m of all) {
      const recorded = done.get(m.version)
      if (recorded !== undefined) {
        if (recorded !== m.checksum) {
          throw new TallyError(
            ERR.MIGRATION_CHANGED,
            `migration ${m.version} (${m.name}) changed after it was applied to ${ks}; add a new migration instead`,
            { where: `schemas/cql/${String(m.version).padStart(4, '0')}_${m.name}.cql` },
          )
        }
        continue
      }
      for (const statement of m.statements) {
        await client.execute(statement)
      }
      await client.execute(
        `INSERT INTO ${ks}.schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)`,
        [m.version, m.name, m.checksum, new Date()],
      )
      applied.push({ version: m.version, name: m.name })
    }
    const checkpointsCopied = await copyLegacyCheckpoints(client, ks)
    await indexSiteDomains(client, ks)
    return {
      keyspace: ks,
      keyspaceCreated: !current,
      replicationChanged,
      applied,
      alreadyApplied: all.length - applied.length,
      checkpointsCopied,
    }
  } finally {
    await client.shutdown()
  }
}

/** TALLY_ERR_NOT_MIGRATED for `keyspace`: `why` it cannot be used, and what to run. */
export function notMigrated(keyspace: string, why: string): TallyError {
  return new TallyError(
    ERR.NOT_MIGRATED,
    `keyspace ${keyspace} ${why}: run \`tally migrate\` (with the same CASSANDRA_* and KAFKA_* environment) before the roles`,
    { where: 'CASSANDRA_KEYSPACE' },
  )
}

/** A migration's file name without `.cql` (`0013_site_timezone`), as operators see it. */
export function migrationName(m: Pick<Migration, 'version' | 'name'>): string {
  return `${String(m.version).padStart(4, '0')}_${m.name}`
}

/**
 * What a role checks on the session it starts with: a keyspace `tally migrate` never ran on (no
 * `schema_migrations`, or none recorded) is refused with TALLY_ERR_NOT_MIGRATED, before anything
 * reads or writes it. Otherwise the migrations of this version not applied yet, in order (empty
 * when up to date): the caller warns, since an upgrade whose migrate is still to come may run the
 * tables it has.
 */
export async function unappliedMigrations(
  client: Client,
  keyspace: string,
  migrations?: Migration[],
): Promise<Migration[]> {
  const all = migrations ?? (await loadMigrations())
  const tables = await tablesOf(client, keyspace)
  if (!tables.has('schema_migrations'))
    throw notMigrated(keyspace, 'has no Tally tables (it was never migrated)')
  const rs = await client.execute(`SELECT version FROM ${keyspace}.schema_migrations`)
  const applied = new Set(rs.rows.map((r) => Number(r.get('version'))))
  if (applied.size === 0) throw notMigrated(keyspace, 'has no migration applied')
  return all.filter((m) => !applied.has(m.version))
}

/** Drops a test keyspace (guarded: only tally_test_* names). */
export async function dropTestKeyspace(config: CassandraConfig): Promise<void> {
  assertTestKeyspace(config.keyspace)
  const client = createCassandraClient(config)
  try {
    await client.execute(`DROP KEYSPACE IF EXISTS ${config.keyspace}`)
  } finally {
    await client.shutdown()
  }
}
