import { writeFile } from 'node:fs/promises'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { loadConfig } from '../../core/config.js'
import { ArrowDesign } from './arrow-files.js'
import type { Answer, FilterQuery } from './data.js'
import { DuckDesign } from './duck-files.js'
import { TupleDesign } from './tuples.js'
import { cassandraSource } from './tuples-cassandra.js'

/**
 * One design of the filters study answering the query set in a process of its own (so its peak RSS is
 * its own). Cold: each query once with nothing of the data kept in the process (Arrow files read
 * again, a new DuckDB instance; the tuple design keeps nothing anyway, so its cold run is the first);
 * the OS page cache and Cassandra's caches stay as they are. Warm: after one untimed pass that loads
 * every day, each query `warmRuns` times. Usage: node query-proc.js '<json spec>'; writes the answers
 * to `answersOut` and prints one line `{"done":true,…}`.
 */

export interface QuerySpec {
  design: 'a' | 'b' | 'c'
  /** Folder of the day files (b, c). */
  dir: string
  /** Keyspace and site of the tuple rows (a). */
  keyspace: string
  site: string
  queries: FilterQuery[]
  warmRuns: number
  answersOut: string
  /** DuckDB threads (c). */
  threads: number
}

export interface QueryResult {
  done: true
  /** Per query id: cold latency, then the warm ones (ms). */
  coldMs: Record<string, number>
  warmMs: Record<string, number[]>
  /** Bytes of columns held by the warm Arrow design. */
  cachedBytes?: number
  mismatches: string[]
}

interface Design {
  answer(q: FilterQuery): Promise<Answer>
  dropCache?(): void
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '{}') as QuerySpec
  let close = async () => {}
  let design: Design & { cachedBytes?(): number }
  if (spec.design === 'a') {
    const client = createCassandraClient(loadConfig(process.env).cassandra, { readTimeoutMs: 120_000 })
    await client.connect()
    close = () => client.shutdown()
    design = new TupleDesign(cassandraSource(client, spec.keyspace, spec.site))
  } else if (spec.design === 'b') design = new ArrowDesign({ dir: spec.dir })
  else design = new DuckDesign(spec.dir, spec.threads)

  const coldMs: Record<string, number> = {}
  const warmMs: Record<string, number[]> = {}
  const cold = new Map<string, string>()
  const answers: Answer[] = []
  const mismatches: string[] = []
  const timed = async (q: FilterQuery): Promise<[Answer, number]> => {
    const t0 = performance.now()
    const a = await design.answer(q)
    return [a, performance.now() - t0]
  }
  for (const q of spec.queries) {
    design.dropCache?.()
    const [a, ms] = await timed(q)
    coldMs[q.id] = ms
    cold.set(q.id, JSON.stringify(a))
  }
  if (spec.warmRuns > 0) {
    // Loads every day of the widest range (the files of b, DuckDB's metadata of c), untimed.
    const widest = spec.queries.reduce((w, q) => (q.toDay - q.fromDay > w.toDay - w.fromDay ? q : w))
    await design.answer(widest)
  }
  for (const q of spec.queries) {
    warmMs[q.id] = []
    for (let r = 0; r < spec.warmRuns; r++) {
      const [a, ms] = await timed(q)
      warmMs[q.id]!.push(ms)
      if (r === 0) {
        answers.push(a)
        if (JSON.stringify(a) !== cold.get(q.id))
          mismatches.push(`${q.id}: the warm answer differs from the cold one`)
      }
    }
    if (spec.warmRuns === 0) answers.push(JSON.parse(cold.get(q.id)!) as Answer)
  }
  await writeFile(spec.answersOut, JSON.stringify(answers))
  const result: QueryResult = {
    done: true,
    coldMs,
    warmMs,
    ...(design.cachedBytes ? { cachedBytes: design.cachedBytes() } : {}),
    mismatches,
  }
  await close()
  design.dropCache?.()
  process.stdout.write(`${JSON.stringify(result)}\n`)
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
  process.exitCode = 1
})
