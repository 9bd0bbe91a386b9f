import { execFile } from 'node:child_process'
import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { type Client, concurrent } from 'cassandra-driver'
import { assertBenchName } from '../harness/environment.js'
import { FILTER_DIMENSIONS } from './data.js'
import type { TupleRow, TupleSource } from './tuples.js'

/**
 * Design a's rows in Cassandra: a keyspace of the bench run's own (`tally_bench_<run>_filters`,
 * dropped afterwards), one table of site-day tuples. A site-day is split over BUCKETS partitions by
 * a hash of the tuple so no partition grows past what Cassandra handles well (a 1 M-events day has
 * about as many tuples), and a query reads the buckets of a day in parallel.
 */

export const BUCKETS = 8
const TABLE = 'tuples_day'

function bucketOf(values: readonly string[]): number {
  let h = 0
  for (const v of values) for (let i = 0; i < v.length; i++) h = (Math.imul(h, 31) + v.charCodeAt(i)) | 0
  return (h >>> 0) % BUCKETS
}

export async function createTupleKeyspace(client: Client, keyspace: string): Promise<void> {
  assertBenchName(keyspace)
  await client.execute(
    `CREATE KEYSPACE IF NOT EXISTS ${keyspace} WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}`,
  )
  const dims = FILTER_DIMENSIONS.map((d) => `${d} text`).join(', ')
  await client.execute(
    `CREATE TABLE IF NOT EXISTS ${keyspace}.${TABLE} (site text, day int, bucket int, ${dims},
     events int, pageviews int, visitors blob,
     PRIMARY KEY ((site, day, bucket), ${FILTER_DIMENSIONS.join(', ')}))`,
  )
}

export async function dropTupleKeyspace(client: Client, keyspace: string): Promise<void> {
  assertBenchName(keyspace)
  await client.execute(`DROP KEYSPACE IF EXISTS ${keyspace}`)
}

/** Writes the tuple rows of a site-day (the rebuild's write of a final day). */
export async function writeTuples(
  client: Client,
  keyspace: string,
  site: string,
  day: number,
  rows: readonly TupleRow[],
): Promise<void> {
  const query = `INSERT INTO ${keyspace}.${TABLE} (site, day, bucket, ${FILTER_DIMENSIONS.join(', ')}, events, pageviews, visitors)
    VALUES (?, ?, ?, ${FILTER_DIMENSIONS.map(() => '?').join(', ')}, ?, ?, ?)`
  const params = rows.map((r) => [
    site,
    day,
    bucketOf(r.values),
    ...r.values,
    r.events,
    r.pageviews,
    Buffer.from(r.visitors.buffer, r.visitors.byteOffset, r.visitors.byteLength),
  ])
  // executeConcurrent always prepares.
  await concurrent.executeConcurrent(client, query, params, { concurrencyLevel: 64 })
}

/** Reads every row of a site-day, the buckets in parallel. */
export function cassandraSource(client: Client, keyspace: string, site: string): TupleSource {
  const query = `SELECT ${FILTER_DIMENSIONS.join(', ')}, events, pageviews, visitors FROM ${keyspace}.${TABLE}
    WHERE site = ? AND day = ? AND bucket = ?`
  return async function* (day: number) {
    const pages = await Promise.all(
      Array.from({ length: BUCKETS }, async (_, bucket) => {
        const out: TupleRow[] = []
        const stream = client.stream(query, [site, day, bucket], {
          prepare: true,
          fetchSize: 5000,
          autoPage: true,
        })
        // A ResultStream is a Readable in object mode: async-iterable, though typed as an EventEmitter.
        for await (const row of stream as unknown as AsyncIterable<Record<string, unknown>>) {
          const v = row.visitors as Buffer
          out.push({
            values: FILTER_DIMENSIONS.map((d) => row[d] as string),
            events: row.events as number,
            pageviews: row.pageviews as number,
            visitors: new Uint8Array(v.buffer, v.byteOffset, v.byteLength),
          })
        }
        return out
      }),
    )
    for (const rows of pages) yield* rows
  }
}

const run = promisify(execFile)

/** The local server's layout (app/services): where its jars, data and JMX port are. */
export interface LocalCassandra {
  java: string
  /** Folder of the Cassandra jars. */
  lib: string
  jmxPort: number
  /** `<storagedir>/data`: one folder per keyspace. */
  dataDir: string
}

/** JVM options nodetool needs on Java 17 (what Cassandra's jvm17-clients.options opens). */
const NODETOOL_JVM = [
  '--add-exports',
  'java.base/sun.nio.ch=ALL-UNNAMED',
  '--add-opens',
  'java.base/sun.nio.ch=ALL-UNNAMED',
  '--add-exports',
  'java.base/jdk.internal.ref=ALL-UNNAMED',
  '--add-opens',
  'java.base/java.nio=ALL-UNNAMED',
  '--add-exports',
  'java.rmi/sun.rmi.registry=ALL-UNNAMED',
  '--add-opens',
  'java.base/java.lang=ALL-UNNAMED',
]

/**
 * Bytes the keyspace's SSTables take on disk (LZ4-compressed, as Cassandra stores them) after a
 * `nodetool flush` of that keyspace only, on the local server the bench manages.
 */
export async function keyspaceDiskBytes(keyspace: string, local: LocalCassandra): Promise<number> {
  assertBenchName(keyspace)
  await run(
    local.java,
    [
      ...NODETOOL_JVM,
      '-cp',
      `${local.lib}/*`,
      'org.apache.cassandra.tools.NodeTool',
      '-h',
      '127.0.0.1',
      '-p',
      String(local.jmxPort),
      'flush',
      keyspace,
    ],
    { timeout: 120_000 },
  )
  let total = 0
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const p = join(dir, entry.name)
      if (entry.isDirectory()) await walk(p)
      else total += (await stat(p)).size
    }
  }
  await walk(join(local.dataDir, keyspace))
  return total
}
