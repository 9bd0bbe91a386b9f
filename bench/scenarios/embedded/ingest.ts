import { pick, type ScenarioContext } from '../../harness/context.js'
import {
  createEmbeddedSites,
  embeddedSetup,
  logRecords,
  type RunningAll,
  spawnAll,
  stopAll,
  waitIdle,
  withBackend,
} from '../../harness/embedded.js'
import { basicAuth } from '../../harness/feed.js'
import {
  countCheck,
  ingestEndpoints,
  measurePair,
  type Phase,
  pairFigure,
} from '../../harness/ingest-pair.js'
import { type Child, spawnBareFastify, urlOf } from '../../harness/proc.js'
import type { Figure, Ratio } from '../../harness/report.js'
import { round } from '../../harness/stats.js'

/**
 * embedded.ingest: POST /v1/track and 100-event POST /v1/batch against `tally all` on the embedded
 * backend (a 2xx only once the events are committed to the SQLite log), and against the bare
 * Fastify route, measured exactly as the ingest scenario does (same workload, bodies, connections,
 * alternating peak runs, latency at half the peak). The same process also runs the stream worker and
 * the archiver, which aggregate and archive what comes in: before each of its runs the bench waits
 * (bounded) until both have caught up, so a run does not pay for the previous run's backlog.
 * Checked: the events in the embedded log equal those answered 2xx.
 */

const SITE = 'bench-ingest'

export async function embeddedIngest(ctx: ScenarioContext): Promise<{ figures: Figure[]; ratios: Ratio[] }> {
  const seconds = pick(ctx, 10, 1)
  const setup = embeddedSetup(ctx, 'ingest')
  const keys = await withBackend(setup, (b) => createEmbeddedSites(b, [SITE]))
  const writeKey = keys.get(SITE)!.writeKey
  // The ingest scenario's workload and bodies, so the figures compare.
  const endpoints = ingestEndpoints(ctx, SITE)
  const headers = {
    'content-type': 'application/json',
    authorization: basicAuth(writeKey),
    'user-agent': 'tally-bench (autocannon)',
  }
  const idleBound = pick(ctx, 30_000, 8_000)
  const waits: number[] = []
  let notIdle = 0
  const children: Child[] = []
  let all: RunningAll | undefined
  try {
    const bare = await spawnBareFastify(ctx.env.logDir)
    children.push(bare)
    all = await spawnAll(ctx, setup, 'all-embedded-ingest')
    const running = all
    const beforeRun = async (who: 'bare' | 'tally') => {
      if (who !== 'tally') return
      const w = await waitIdle(running, idleBound)
      waits.push(w.ms)
      if (!w.idle) notIdle++
    }
    const results = new Map<string, Record<'bare' | 'tally', Phase>>()
    for (const ep of endpoints) {
      ctx.say(`embedded.ingest.${ep.key}: bare Fastify and tally all (embedded), alternating peak runs`)
      results.set(
        ep.key,
        await measurePair(
          { bare: { url: urlOf(bare), headers }, tally: { url: running.ingest, headers } },
          ep,
          seconds,
          ctx.say,
          'embedded.ingest',
          beforeRun,
        ),
      )
    }
    const bareRss = bare.peakRssBytes()
    const bareCount = ((await (await fetch(`${urlOf(bare)}/count`)).json()) as { events: number }).events
    for (const c of children.reverse()) await c.stop()
    children.length = 0
    const tallyRss = await stopAll(all)
    all = undefined
    const logged = await withBackend(setup, (b) => logRecords(setup, b))

    const phasesOf = (who: 'bare' | 'tally') => endpoints.map((ep) => results.get(ep.key)![who])
    const perRequest = endpoints.map((ep) => ep.eventsPerRequest)
    const bareChecks = [
      countCheck('events counted by the bare route', phasesOf('bare'), perRequest, bareCount),
    ]
    const tallyChecks = [
      countCheck('events in the embedded log (committed)', phasesOf('tally'), perRequest, logged),
    ]
    const note =
      '; one `tally all` process on the embedded backend (ingest, stream worker, archiver, query), stream and archiver caught up before each run'
    const figures: Figure[] = []
    const ratios: Ratio[] = []
    for (const ep of endpoints) {
      const r = results.get(ep.key)!
      const f = pairFigure(
        `embedded.ingest.${ep.key}`,
        'tally embedded',
        ep,
        r.tally,
        tallyRss,
        tallyChecks,
        note,
      )
      f.details = {
        ...f.details,
        secondsWaitedForStreamAndArchiver: round(waits.reduce((a, b) => a + b, 0) / 1000),
        runsStartedWithBacklog: notIdle,
      }
      figures.push(f)
      figures.push(pairFigure(`embedded.ingest.${ep.key}`, 'bare-fastify', ep, r.bare, bareRss, bareChecks))
      ratios.push({
        scenario: `embedded.ingest.${ep.key}`,
        metric: `${ep.eventsPerRequest === 1 ? 'req/s' : 'events/s'} Tally embedded / bare Fastify`,
        value: r.tally.peak.okPerSec / r.bare.peak.okPerSec,
      })
    }
    return { figures, ratios }
  } finally {
    for (const c of children.reverse()) await c.stop()
    if (all) await all.child.stop()
  }
}
