import { pick, type ScenarioContext } from '../../harness/context.js'
import {
  appendEvents,
  createEmbeddedSites,
  embeddedSetup,
  type RunningAll,
  siteCounts,
  spawnAll,
  stopAll,
  withBackend,
} from '../../harness/embedded.js'
import { failures, runLoad } from '../../harness/load.js'
import type { Check, Figure } from '../../harness/report.js'
import { VisitorSketches } from '../../harness/verify.js'
import { generateWorkload, truthOf } from '../../workload.js'
import {
  CONNECTIONS,
  checkBreakdown,
  checkTimeseries,
  DAY,
  getJson as getRetried,
  isoDay,
  SITE,
  withEveryPath,
} from '../query.js'

/**
 * embedded.query: a 30-day daily timeseries and a top-10 `path` breakdown, one client alone and then
 * 32 concurrent clients, against the query API of one `tally all` on the embedded backend, over the
 * query scenario's data (same seed, 10,000 paths, 500 with --quick, 6.5 days of data in the range).
 * The events are appended to the embedded log first (as `tally import` does) and aggregated by the
 * stream worker of `tally all` (grace 7 days, as on Kafka) before anything is timed. Both answers
 * are compared with the truth before and after the timed load.
 */

export async function embeddedQuery(ctx: ScenarioContext): Promise<Figure[]> {
  const seconds = pick(ctx, 15, 1)
  const pathCount = pick(ctx, 10_000, 500)
  const now = Date.now()
  const setup = embeddedSetup(ctx, 'query', { TALLY_GRACE_MS: String(7 * DAY) })
  const generated = generateWorkload({
    seed: ctx.seed + 2,
    sites: [SITE],
    events: pick(ctx, 60_000, 5_000),
    start: new Date(now - 6.5 * DAY),
    spanMs: 6.4 * DAY,
    paths: pathCount,
    lateShare: 0,
  })
  const events = withEveryPath(generated.events, pathCount, ctx.seed + 3)
  const truth = truthOf(events, [SITE])
  const sketches = new VisitorSketches(events, setup.config.stream.hllPrecision)
  ctx.say(`embedded.query: ${events.length} events of one site with ${pathCount} paths over 6.5 days`)
  const loadStarted = performance.now()
  const { keys, appended } = await withBackend(setup, async (b) => {
    const keys = await createEmbeddedSites(b, [SITE])
    return { keys, appended: await appendEvents(setup, b, events) }
  })
  const token = keys.get(SITE)!.readToken
  const fromMs = Math.floor(now / DAY) * DAY - 29 * DAY
  const range = `site=${SITE}&from=${isoDay(fromMs)}&to=${isoDay(now)}`
  const paths = {
    timeseries: `/v1/stats/timeseries?${range}&interval=day&metrics=events,pageviews,visitors`,
    breakdown: `/v1/stats/breakdown?${range}&property=path&limit=10&metrics=events,pageviews,visitors`,
  }
  let all: RunningAll | undefined
  const figures: Figure[] = []
  try {
    all = await spawnAll(ctx, setup, 'all-embedded-query')
    const base = all.query
    // The stream aggregates the log before anything is timed.
    const want = truth.sites[SITE]!
    const deadline = performance.now() + pick(ctx, 600_000, 60_000)
    for (;;) {
      const c = await siteCounts(base, SITE, token, fromMs, now)
      if (c.events === want.events && c.bots === want.bots) break
      if (performance.now() > deadline)
        throw new Error(
          `the query API counts ${c.events} events and ${c.bots} bot events, not ${want.events} and ${want.bots}, after the deadline (log ${all.child.logFile})`,
        )
      await new Promise((r) => setTimeout(r, 200))
    }
    const loadSec = (performance.now() - loadStarted) / 1000
    const details = {
      events: events.length,
      distinctPaths: Object.values(want.breakdown.path).filter((v) => v.events > 0).length,
      daysWithData: Object.keys(want.windows.day).length,
      loadSecondsAppendAndStream: Math.round(loadSec),
    }
    for (const kind of ['timeseries', 'breakdown'] as const) {
      const url = `${base}${paths[kind]}`
      const verify = async (when: string, attempts: number): Promise<Check> =>
        kind === 'timeseries'
          ? checkTimeseries(
              `30 daily points ${when}`,
              truth,
              fromMs,
              await getRetried(url, token, attempts),
              sketches,
            )
          : checkBreakdown(`top-10 paths ${when}`, truth, await getRetried(url, token, attempts), sketches)
      try {
        const checks: Check[] = [
          {
            ok: appended === events.length,
            detail: `events loaded: ${appended} appended of ${events.length}`,
          },
          await verify('before the load', 1),
        ]
        const target = {
          url: base,
          method: 'GET' as const,
          path: paths[kind],
          headers: { authorization: `Bearer ${token}` },
        }
        const single = await runLoad(target, { connections: 1, amount: pick(ctx, 20, 5), capSec: 60 })
        const rss1 = all.child.peakRssBytes()
        figures.push({
          scenario: `embedded.query.${kind}`,
          system: 'tally embedded (1 client)',
          status: 'ok',
          throughput: { value: single.okPerSec, unit: 'req/s', what: 'one client, one request at a time' },
          ...(single.latency
            ? { latencyMs: { ...single.latency, what: 'one client, one request at a time' } }
            : {}),
          ...(rss1 !== undefined ? { peakRssBytes: rss1 } : {}),
          failedRequests: failures(single),
          checks: checks.slice(),
          details: { ...details, request: paths[kind], statusesNot2xx: single.statuses },
        })
        ctx.say(`embedded.query.${kind}: ${CONNECTIONS} clients for ${seconds} s`)
        await runLoad(target, { connections: CONNECTIONS, durationSec: 1 })
        const r = await runLoad(target, { connections: CONNECTIONS, durationSec: seconds })
        checks.push(
          await verify('after the load', 12).catch(
            (err: Error): Check => ({ ok: false, detail: `answer after the load: ${err.message}` }),
          ),
        )
        const rss = all.child.peakRssBytes()
        figures.push({
          scenario: `embedded.query.${kind}`,
          system: 'tally embedded',
          status: checks.every((c) => c.ok) ? 'ok' : 'failed',
          throughput: {
            value: r.okPerSec,
            unit: 'req/s',
            what: `${CONNECTIONS} concurrent clients, keep-alive`,
          },
          ...(r.latency
            ? {
                latencyMs: {
                  ...r.latency,
                  what: `${CONNECTIONS} concurrent clients (closed loop, each sends its next request when answered)`,
                },
              }
            : {}),
          ...(rss !== undefined ? { peakRssBytes: rss } : {}),
          failedRequests: failures(r),
          checks,
          details: {
            ...details,
            request: paths[kind],
            statusesNot2xx: r.statuses,
            errors: r.errors,
            timeouts: r.timeouts,
            unansweredAtEnd: Math.max(0, r.sent - r.ok - failures(r)),
          },
        })
      } catch (err) {
        ctx.say(`embedded.query.${kind} failed: ${(err as Error).message}`)
        figures.push({
          scenario: `embedded.query.${kind}`,
          system: 'tally embedded',
          status: 'failed',
          reason: (err as Error).message,
          checks: [],
          details,
        })
      }
    }
    await stopAll(all)
    all = undefined
    return figures
  } finally {
    if (all) await all.child.stop()
  }
}
