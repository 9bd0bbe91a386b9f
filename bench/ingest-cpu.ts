/**
 * What one ingest process spends in CPU per request and per event (issue 22), read from
 * /proc/PID/stat around closed-loop runs, since the machine is shared and wall-clock rates swing:
 * a `tally ingest` on the running Kafka and Cassandra (a bench keyspace and topics, removed at the
 * end), the bench's ingest bodies (bench/harness/ingest-pair.ts: single-event /v1/track with 64
 * connections, 100-event /v1/batch with 8), `--runs` runs of `--seconds` per endpoint after a
 * warm-up, alternating. Prints CPU-µs per request and per event of each run and the median.
 *
 *   node dist/bench/ingest-cpu.js [--seconds 10] [--runs 3] [--only track|batch100]
 *
 * With TALLY_BENCH_CPU_PROF=DIR the ingest process writes its V8 CPU profile into DIR when it
 * stops (use `--only` for the profile of one endpoint). TALLY_LINGER_MS and
 * TALLY_INGEST_IN_FLIGHT_BATCHES, when set, are passed to the ingest process.
 */

import { BenchEnvironment } from './harness/environment.js'
import { basicAuth } from './harness/feed.js'
import { ingestEndpoints } from './harness/ingest-pair.js'
import { runLoad } from './harness/load.js'
import { spawnRole, urlOf } from './harness/proc.js'
import { sampleProc } from './harness/proc-sample.js'
import { metricSum, scrape } from './harness/prometheus.js'

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? process.argv[i + 1]! : fallback
}

const seconds = Number(arg('seconds', '10'))
const runs = Number(arg('runs', '3'))
const only = arg('only', '')
const SITE = 'bench-ingest-cpu'

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}

async function main(): Promise<void> {
  const say = (line: string) => process.stderr.write(`${line}\n`)
  const bench = new BenchEnvironment(say)
  await bench.init()
  try {
    await bench.ensureServices()
    // The producer's settings, when given, go to the ingest process (to compare them on one tree).
    const producerEnv: Record<string, string> = {}
    for (const key of ['TALLY_LINGER_MS', 'TALLY_INGEST_IN_FLIGHT_BATCHES'])
      if (process.env[key]) producerEnv[key] = process.env[key]!
    const { env, config } = await bench.scenario('ingestcpu', producerEnv)
    const keys = await bench.createSites(config, [SITE])
    const endpoints = ingestEndpoints({ env: bench, quick: false, seed: 42, say }, SITE).filter(
      (ep) => only === '' || ep.key === only,
    )
    const headers = {
      'content-type': 'application/json',
      authorization: basicAuth(keys.get(SITE)!.writeKey),
      'user-agent': 'tally-bench (autocannon)',
    }
    const tally = await spawnRole('ingest', env, bench.logDir, 'ingest-cpu')
    try {
      const target = (path: string, bodies: Buffer[]) => ({
        url: urlOf(tally),
        method: 'POST' as const,
        path,
        headers,
        bodies,
      })
      for (const ep of endpoints)
        await runLoad(target(ep.path, ep.bodies), {
          connections: ep.connections,
          amount: ep.warmupRequests * 2,
        })
      // Producer sends and the events they carried, read outside the runs' CPU readings.
      const sends = async () => {
        const text = await scrape(urlOf(tally))
        return {
          sends: metricSum(text, 'tally_ingest_kafka_batch_records_count'),
          events: metricSum(text, 'tally_ingest_kafka_batch_records_sum'),
        }
      }
      const perRequest = new Map<string, number[]>()
      for (let r = 0; r < runs; r++) {
        for (const ep of endpoints) {
          const sendsBefore = await sends()
          const before = sampleProc(tally.pid)
          const result = await runLoad(target(ep.path, ep.bodies), {
            connections: ep.connections,
            durationSec: seconds,
          })
          const after = sampleProc(tally.pid)
          const sendsAfter = await sends()
          const perSend =
            (sendsAfter.events - sendsBefore.events) / Math.max(1, sendsAfter.sends - sendsBefore.sends)
          // Requests in flight at the end are not counted by the client but took CPU: a small overcount.
          const us = ((after.cpuSec - before.cpuSec) * 1e6) / result.ok
          const list = perRequest.get(ep.key) ?? []
          list.push(us)
          perRequest.set(ep.key, list)
          say(
            `${ep.key} run ${r + 1}: ${result.ok} requests 2xx (${Math.round(result.okPerSec)}/s, ${Math.round(result.okPerSec * ep.eventsPerRequest)} events/s), ` +
              `${(after.cpuSec - before.cpuSec).toFixed(2)} CPU-s, ${us.toFixed(1)} CPU-µs/request, ${(us / ep.eventsPerRequest).toFixed(2)} CPU-µs/event, ${perSend.toFixed(1)} events per Kafka send, p99 ${result.latency?.p99?.toFixed(2) ?? '?'} ms`,
          )
        }
      }
      for (const ep of endpoints) {
        const m = median(perRequest.get(ep.key)!)
        console.log(
          JSON.stringify({
            endpoint: ep.key,
            cpuUsPerRequest: Math.round(m * 10) / 10,
            cpuUsPerEvent: Math.round((m / ep.eventsPerRequest) * 100) / 100,
            runs: perRequest.get(ep.key)!.map((x) => Math.round(x * 10) / 10),
          }),
        )
      }
    } finally {
      await tally.stop(15_000)
    }
  } finally {
    await bench.close({ keepServices: true, keepFiles: false })
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
