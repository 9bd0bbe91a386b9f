import { openCountryLookup } from '../../ingest/geo.js'
import type { ScenarioContext, ScenarioDefinition, ScenarioOutcome } from '../harness/context.js'
import { pick } from '../harness/context.js'
import type { Figure } from '../harness/report.js'
import { round } from '../harness/stats.js'
import { CLIENT_IPS } from '../workload.js'

/**
 * Lookups on ingest's per-event path, timed in the bench process (no servers): the client IP's
 * country in the shipped MMDB (ingest/geo.ts), on addresses it has not seen (each one a tree
 * walk) and on a visitor mix it has (the LRU cache). Checked against the workload's IP table, the
 * truth of `country` in every other scenario.
 */

function perLookupNs(n: number, fn: () => void): number {
  const t0 = process.hrtime.bigint()
  fn()
  return Number(process.hrtime.bigint() - t0) / n
}

async function run(ctx: ScenarioContext): Promise<ScenarioOutcome> {
  const distinct = pick(ctx, 200_000, 20_000)
  const rounds = pick(ctx, 50, 10)
  // Public-looking IPv4 addresses, each seen once in the uncached pass.
  const ips = Array.from(
    { length: distinct },
    (_, i) => `${(i % 223) + 1}.${(i >>> 8) & 255}.${i & 255}.${(i * 7) & 255}`,
  )
  const lookup = openCountryLookup({ cacheSize: distinct })
  const uncached = perLookupNs(distinct, () => {
    for (const ip of ips) lookup.country(ip)
  })
  const cached = perLookupNs(distinct * rounds, () => {
    for (let r = 0; r < rounds; r++) for (const ip of ips) lookup.country(ip)
  })
  const fresh = openCountryLookup()
  const wrong = CLIENT_IPS.filter((c) => fresh.country(c.ip) !== c.country)
  const figure: Figure = {
    scenario: 'ingest.geo',
    system: 'tally',
    status: wrong.length === 0 ? 'ok' : 'failed',
    throughput: {
      value: 1e9 / uncached,
      unit: 'lookups/s',
      what: `country of an IP not seen before (MMDB tree walk), one thread, ${distinct} distinct IPv4 addresses`,
    },
    checks: [
      {
        ok: wrong.length === 0,
        detail: `countries of the workload's ${CLIENT_IPS.length} client IPs: ${wrong.length} wrong${wrong.length ? ` (${wrong.map((w) => w.ip).join(', ')})` : ''}`,
      },
    ],
    details: {
      nanosecondsPerUncachedLookup: round(uncached),
      nanosecondsPerCachedLookup: round(cached),
      cachedRounds: rounds,
    },
  }
  ctx.say(`lookups: country ${round(uncached)} ns uncached, ${round(cached)} ns cached`)
  return { figures: [figure], ratios: [], targets: [] }
}

export const lookupsScenario: ScenarioDefinition = {
  name: 'lookups',
  description: "ingest's per-event country lookup (shipped MMDB), uncached and cached, in the bench process",
  needsServices: false,
  run,
}
