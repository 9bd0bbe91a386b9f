import type { ScenarioContext, ScenarioDefinition, ScenarioOutcome } from '../harness/context.js'
import { runningChildren } from '../harness/proc.js'
import { type Figure, failedFigure, type Ratio } from '../harness/report.js'
import { embeddedRebuild } from './embedded/batch.js'
import { embeddedFreshness } from './embedded/freshness.js'
import { embeddedIngest } from './embedded/ingest.js'
import { embeddedQuery } from './embedded/query.js'
import { embeddedStreamThroughput } from './embedded/stream.js'

/**
 * The embedded all-in-one backend (issue 7): `tally all` in one process on SQLite files, no Kafka or
 * Cassandra, measured as the Kafka/Cassandra scenarios are and reported beside them (scenario names
 * `embedded.<the same name>`): ingest (against the bare Fastify route), stream throughput and
 * freshness, query latency, and the rebuild. Each part starts its own `tally all` on a fresh data
 * folder under the run folder and stops it; each part's numbers are checked against the workload's
 * truth, through the query API while it runs and in the store itself once it stopped.
 */

type Part = (ctx: ScenarioContext) => Promise<{ figures: Figure[]; ratios?: Ratio[] }>

const PARTS: Array<[string[], Part]> = [
  [['embedded.ingest.track', 'embedded.ingest.batch100'], embeddedIngest],
  [['embedded.stream.throughput'], async (ctx) => ({ figures: [await embeddedStreamThroughput(ctx)] })],
  [['embedded.stream.freshness'], async (ctx) => ({ figures: [await embeddedFreshness(ctx)] })],
  [
    ['embedded.query.timeseries', 'embedded.query.breakdown'],
    async (ctx) => ({ figures: await embeddedQuery(ctx) }),
  ],
  [['embedded.batch.rebuild'], async (ctx) => ({ figures: [await embeddedRebuild(ctx)] })],
]

async function run(ctx: ScenarioContext): Promise<ScenarioOutcome> {
  const figures: Figure[] = []
  const ratios: Ratio[] = []
  // The parts are independent: one failing does not keep the others from being measured.
  for (const [names, part] of PARTS) {
    const t0 = performance.now()
    try {
      const r = await part(ctx)
      figures.push(...r.figures)
      ratios.push(...(r.ratios ?? []))
    } catch (err) {
      ctx.say(
        `${names.join(', ')} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`,
      )
      for (const scenario of names) figures.push(failedFigure(scenario, 'tally embedded', err))
      // Whatever the part left running goes before the next one measures anything.
      await Promise.all(runningChildren().map((c) => c.stop(5_000)))
    }
    ctx.say(`${names.join(', ')}: ${Math.round((performance.now() - t0) / 1000)} s`)
  }
  return { figures, ratios, targets: [] }
}

export const embeddedScenario: ScenarioDefinition = {
  name: 'embedded',
  description:
    'ingest, stream, query and rebuild on the embedded all-in-one backend (`tally all`, SQLite, no servers)',
  needsServices: false,
  run,
}
