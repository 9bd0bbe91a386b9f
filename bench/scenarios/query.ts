import { CassandraAggregateReader } from '../../core/cassandra/aggregate-reader.js'
import {
  isBuilt,
  pick,
  type ScenarioContext,
  type ScenarioDefinition,
  type ScenarioOutcome,
} from '../harness/context.js'
import { basicAuth, postJson } from '../harness/feed.js'
import { failures, runLoad } from '../harness/load.js'
import { loadThroughPipeline, waitCaughtUp } from '../harness/pipeline.js'
import { type Child, spawnBareFastify, spawnRole, urlOf } from '../harness/proc.js'
import { metricSum, scrape } from '../harness/prometheus.js'
import { type Check, type Figure, failedFigure, type Ratio, type Target } from '../harness/report.js'
import { Comparison, VisitorSketches } from '../harness/verify.js'
import {
  type GeneratedEvent,
  generateWorkload,
  pathCatalog,
  Rng,
  type SegmentPage,
  type Truth,
  truthOf,
} from '../workload.js'

/**
 * Query: latency of a 30-day daily timeseries and of a top-10 `path` breakdown under many
 * concurrent clients (issue 5), against the query role in its own process.
 *
 * The site has 10,000 distinct paths with human pageviews (500 with --quick): the workload draws
 * paths from a catalog of that size (Zipf), and every catalog path it did not draw gets one pageview
 * copied from a real one (new messageId), so the store holds all of them. The data is loaded the production way
 * (ingest → Kafka → stream worker). The stream accepts events at most 7 days late (its largest grace),
 * so the data covers the last 6.5 days of the 30-day range; the 23 older days are empty windows the
 * reader still visits. Both answers are compared with the truth before and after the timed load.
 *
 * Each cached-answer load is followed by the same load against a bare Fastify route sending the
 * same answer bytes from memory (the peer): what serving that answer costs on this machine, apart
 * from Tally's work per request.
 *
 * The loads run twice: on data that does not change (after the first request, answers come from the
 * query role's cache, as for dashboards refreshing a quiet site), then while LIVE_RATE events/s
 * arrive for the same site (every stream flush changes the data version, so answers are recomputed:
 * the cache's miss path), after which the answers must equal the truth of all events. That part runs
 * the stream and a new query role with the default grace (5 minutes), as production does: the
 * 7-day grace above only let the stream count the loaded history.
 */

export const SITE = 'bench-q'
export const DAY = 86_400_000
export const CONNECTIONS = 32

/** The workload plus one pageview for each catalog path nobody visited. */
export function withEveryPath(events: GeneratedEvent[], paths: number, seed: number): GeneratedEvent[] {
  const isHumanPage = (e: GeneratedEvent) => !e.isBot && !e.isDuplicate && e.payload.type === 'page'
  const seen = new Set(events.filter(isHumanPage).map((e) => (e.payload as SegmentPage).properties.path))
  const donors = events.filter(isHumanPage)
  const rng = new Rng(seed)
  const extra: GeneratedEvent[] = []
  for (const path of pathCatalog(paths)) {
    if (seen.has(path)) continue
    const donor = rng.pick(donors)
    // structuredClone keeps context.page and properties one object, as in the original.
    const payload = structuredClone(donor.payload) as SegmentPage
    payload.messageId = rng.uuid()
    payload.context.page!.path = path
    payload.context.page!.url = new URL(path, payload.context.page!.url).href
    extra.push({ ...donor, payload })
  }
  return [...events, ...extra]
}

export const isoDay = (ms: number) => new Date(ms).toISOString().slice(0, 10)

interface Point {
  date: string
  events: number
  pageviews: number
  visitors: number
}

export function checkTimeseries(
  label: string,
  truth: Truth,
  fromMs: number,
  body: { results: Point[] },
  sketches: VisitorSketches,
): Check {
  const c = new Comparison(label)
  const days = truth.sites[SITE]!.windows.day
  c.exact('days returned', 30, body.results.length)
  body.results.forEach((p, i) => {
    const key = new Date(fromMs + i * DAY).toISOString()
    const t = days[key] ?? { events: 0, pageviews: 0, visitors: 0 }
    c.exact(`${p.date} is ${key}`, Date.parse(key), Date.parse(p.date))
    c.exact(`${p.date} events`, t.events, p.events)
    c.exact(`${p.date} pageviews`, t.pageviews, p.pageviews)
    c.exact(
      `${p.date} visitors (sketch of the ${t.visitors} true visitors)`,
      sketches.window(SITE, 'day', Date.parse(key)),
      p.visitors,
    )
  })
  return c.check()
}

export function checkBreakdown(
  label: string,
  truth: Truth,
  body: { results: Array<Record<string, string | number>>; meta: { total_values: number } },
  sketches: VisitorSketches,
): Check {
  const c = new Comparison(label)
  const expected = Object.entries(truth.sites[SITE]!.breakdown.path)
    .filter(([, v]) => v.events > 0)
    .sort((a, b) => b[1].events - a[1].events || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
  c.exact('distinct paths (total_values)', expected.length, body.meta.total_values)
  c.exact('rows returned', 10, body.results.length)
  body.results.forEach((row, i) => {
    const [path, t] = expected[i] ?? ['(missing)', { events: 0, pageviews: 0, visitors: 0 }]
    c.exact(`rank ${i + 1} is ${path} (got ${row.path})`, 1, row.path === path ? 1 : 0)
    c.exact(`${path} events`, t.events, Number(row.events))
    c.exact(`${path} pageviews`, t.pageviews, Number(row.pageviews))
    c.exact(
      `${path} visitors (sketch of the ${t.visitors} true visitors)`,
      sketches.value(SITE, 'path', path),
      Number(row.visitors),
    )
  })
  return c.check()
}

/**
 * GET with the read token; retried on a failure (a server still working off an overload may answer
 * 5xx, or close a connection whose request outlived its timeout) up to `attempts` times.
 */
export async function getJson<T>(url: string, token: string, attempts = 1): Promise<T> {
  for (let i = 1; ; i++) {
    let problem: string
    try {
      const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } })
      const text = await res.text()
      if (res.ok) return JSON.parse(text) as T
      problem = `${res.status} ${text.slice(0, 300)}`
    } catch (err) {
      problem = (err as Error).message
    }
    if (i >= attempts) throw new Error(`GET ${url}: ${problem}`)
    await new Promise((r) => setTimeout(r, 5_000))
  }
}

/** Events per second sent to the measured site while the "live ingest" figures are timed. */
export const LIVE_RATE = 200
/** TALLY_GRACE_MS's default, used by the roles of the live part. */
const DEFAULT_GRACE_MS = 300_000

/**
 * Sends `events` (sorted by sendAt) through /v1/import, timestamps kept, at their pace: every
 * 100 ms, the events whose sendAt has come. Resolves with the number accepted once all are sent.
 */
export async function paceImports(ingestUrl: string, writeKey: string, events: readonly GeneratedEvent[]) {
  const at = (e: GeneratedEvent) => e.sendAt
  const queue = events
  let accepted = 0
  let next = 0
  while (next < queue.length) {
    const now = Date.now()
    const due: GeneratedEvent[] = []
    // At most 200 per request: well under the body limit even when sending fell behind.
    while (next < queue.length && at(queue[next]!) <= now && due.length < 200) due.push(queue[next++]!)
    if (due.length > 0) {
      const answer = await postJson(
        `${ingestUrl}/v1/import`,
        { batch: due.map((e) => e.payload) },
        { authorization: basicAuth(writeKey) },
      )
      accepted += answer.accepted
    }
    if (due.length < 200) await new Promise((r) => setTimeout(r, 100))
  }
  return accepted
}

async function run(ctx: ScenarioContext): Promise<ScenarioOutcome> {
  if (!isBuilt('query/role.js')) {
    return {
      figures: ['query.timeseries', 'query.breakdown'].map((scenario) => ({
        scenario,
        system: 'tally',
        status: 'not-available' as const,
        reason: 'query/role.ts (issue 5) is not built: dist/query/role.js is missing',
        checks: [],
      })),
      ratios: [],
      targets: [],
    }
  }
  const seconds = pick(ctx, 15, 3)
  // --quick keeps the suite working in CI: a smaller site, so loading it takes seconds.
  const pathCount = pick(ctx, 10_000, 500)
  const now = Date.now()
  const scenario = await ctx.env.scenario('query', { TALLY_GRACE_MS: String(7 * DAY) })
  const keys = await ctx.env.createSites(scenario.config, [SITE])
  const token = keys.get(SITE)!.readToken
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
  const precision = scenario.config.stream.hllPrecision
  const sketches = new VisitorSketches(events, precision)
  const reader = new CassandraAggregateReader(await ctx.env.client(scenario.config), precision)
  ctx.say(
    `query: loading ${events.length} events of one site with ${pathCount} paths over 6.5 days (ingest → stream)`,
  )
  const loadStarted = performance.now()
  const accepted = await loadThroughPipeline(ctx, scenario, events, keys, reader)
  const loadSec = (performance.now() - loadStarted) / 1000

  const fromMs = Math.floor(now / DAY) * DAY - 29 * DAY
  const range = `site=${SITE}&from=${isoDay(fromMs)}&to=${isoDay(now)}`
  const paths = {
    timeseries: `/v1/stats/timeseries?${range}&interval=day&metrics=events,pageviews,visitors`,
    breakdown: `/v1/stats/breakdown?${range}&property=path&limit=10&metrics=events,pageviews,visitors`,
  }
  const details = {
    events: events.length,
    distinctPaths: Object.values(truth.sites[SITE]!.breakdown.path).filter((v) => v.events > 0).length,
    daysWithData: Object.keys(truth.sites[SITE]!.windows.day).length,
    loadSecondsIngestAndStream: Math.round(loadSec),
  }
  const children: Child[] = []
  const kinds = ['timeseries', 'breakdown'] as const
  const verifyWith = async (
    kind: (typeof kinds)[number],
    url: string,
    t: Truth,
    sk: VisitorSketches,
    when: string,
    attempts: number,
  ): Promise<Check> =>
    kind === 'timeseries'
      ? checkTimeseries(`30 daily points ${when}`, t, fromMs, await getJson(url, token, attempts), sk)
      : checkBreakdown(`top-10 paths ${when}`, t, await getJson(url, token, attempts), sk)
  const latencyOf = (r: Awaited<ReturnType<typeof runLoad>>, what: string) =>
    r.latency ? { latencyMs: { ...r.latency, what } } : {}
  /** The figure of a run of CONNECTIONS clients against `server`. */
  const concurrentFigure = (
    kind: (typeof kinds)[number],
    system: string,
    r: Awaited<ReturnType<typeof runLoad>>,
    what: string,
    server: Child,
    checks: Check[],
    extra: Record<string, number>,
  ): Figure => ({
    scenario: `query.${kind}`,
    system,
    status: checks.every((c) => c.ok) ? 'ok' : 'failed',
    throughput: { value: r.okPerSec, unit: 'req/s', what: `${CONNECTIONS} concurrent clients, keep-alive` },
    ...latencyOf(r, what),
    ...(server.peakRssBytes() !== undefined ? { peakRssBytes: server.peakRssBytes()! } : {}),
    failedRequests: failures(r),
    checks,
    details: {
      ...details,
      ...extra,
      request: paths[kind],
      statusesNot2xx: r.statuses,
      errors: r.errors,
      timeouts: r.timeouts,
      // A timed run ends with up to one request per client unanswered: not a failure, but when
      // answers take longer than the run this is where the requests went.
      unansweredAtEnd: Math.max(0, r.sent - r.ok - failures(r)),
    },
  })
  try {
    const query = await spawnRole('query', scenario.env, ctx.env.logDir, 'query')
    children.push(query)
    const bare = await spawnBareFastify(ctx.env.logDir)
    children.push(bare)
    // With a version reuse window (TALLY_QUERY_VERSION_MAX_AGE_MS, on by default), the same loads
    // are also run against a role that reads the data version for every request, for comparison.
    const reuseMs = scenario.config.query.versionMaxAgeMs
    const strict =
      reuseMs > 0
        ? await spawnRole(
            'query',
            { ...scenario.env, TALLY_QUERY_VERSION_MAX_AGE_MS: '0' },
            ctx.env.logDir,
            'query-strict',
          )
        : undefined
    if (strict) children.push(strict)
    const base = urlOf(query)
    const figures: Figure[] = []
    const targets: Target[] = []
    const ratios: Ratio[] = []
    const targetOf = (kind: (typeof kinds)[number]) => ({
      url: base,
      method: 'GET' as const,
      path: paths[kind],
      headers: { authorization: `Bearer ${token}` },
    })
    for (const kind of kinds) {
      const url = `${base}${paths[kind]}`
      const verify = (when: string, attempts: number) =>
        verifyWith(kind, url, truth, sketches, when, attempts)
      try {
        const checks: Check[] = [
          {
            ok: accepted === events.length,
            detail: `events loaded: ${accepted} accepted of ${events.length}`,
          },
          await verify('before the load', 1),
        ]
        const target = targetOf(kind)
        // One client first: the latency of the query alone, without queueing behind the others.
        const single = await runLoad(target, { connections: 1, amount: pick(ctx, 20, 5), capSec: 60 })
        figures.push({
          scenario: `query.${kind}`,
          system: 'tally (1 client)',
          status: 'ok',
          throughput: { value: single.okPerSec, unit: 'req/s', what: 'one client, one request at a time' },
          ...latencyOf(single, 'one client, one request at a time'),
          ...(query.peakRssBytes() !== undefined ? { peakRssBytes: query.peakRssBytes()! } : {}),
          failedRequests: failures(single),
          // The answer it timed is the one just compared with the truth.
          checks: checks.slice(),
          details: { ...details, request: paths[kind], statusesNot2xx: single.statuses },
        })
        ctx.say(`query.${kind}: ${CONNECTIONS} clients for ${seconds} s`)
        await runLoad(target, { connections: CONNECTIONS, durationSec: 1 })
        const r = await runLoad(target, { connections: CONNECTIONS, durationSec: seconds })
        // Whether the role heard the stream's progress notices (versions kept until one arrives) or
        // polled for versions meanwhile.
        const roleMetrics = await scrape(base)
        const notices = {
          progressNoticesLive: metricSum(roleMetrics, 'tally_query_progress_notices_live'),
          progressNoticesHeard: metricSum(roleMetrics, 'tally_query_progress_notices_total'),
        }
        // Requests cut off by the end of the run may still be running in the server: let it finish them.
        checks.push(
          await verify('after the load', 12).catch(
            (err: Error): Check => ({ ok: false, detail: `answer after the load: ${err.message}` }),
          ),
        )
        figures.push(
          concurrentFigure(
            kind,
            'tally',
            r,
            `${CONNECTIONS} concurrent clients (closed loop, each sends its next request when answered); no new data meanwhile, so answers come from the query role's cache after the first`,
            query,
            checks,
            notices,
          ),
        )
        if (strict) {
          const strictTarget = { ...target, url: urlOf(strict) }
          await runLoad(strictTarget, { connections: CONNECTIONS, durationSec: 1 })
          const sr = await runLoad(strictTarget, { connections: CONNECTIONS, durationSec: seconds })
          const strictChecks = [
            await verifyWith(
              kind,
              `${urlOf(strict)}${paths[kind]}`,
              truth,
              sketches,
              'after the load',
              12,
            ).catch((err: Error): Check => ({ ok: false, detail: `answer after the load: ${err.message}` })),
          ]
          figures.push(
            concurrentFigure(
              kind,
              'tally (version read per request)',
              sr,
              `${CONNECTIONS} concurrent clients, cached answers; TALLY_QUERY_VERSION_MAX_AGE_MS=0: every request reads the data version (one read shared by the requests arriving while it runs) instead of reusing one (re-read after each progress notice, else every ${scenario.config.query.notifiedVersionMaxAgeMs} ms; every ${reuseMs} ms while notices are not heard)`,
              strict,
              strictChecks,
              {},
            ),
          )
        }
        // The peer: bare Fastify sending the same answer bytes from memory to the same clients, so
        // the ratio shows Tally's own work per request apart from what this machine's HTTP costs.
        const answer = await fetch(url, { headers: { authorization: `Bearer ${token}` } })
        const answerBody = await answer.text()
        if (!answer.ok) throw new Error(`GET ${url}: ${answer.status} ${answerBody.slice(0, 300)}`)
        await fetch(`${urlOf(bare)}/answers/${kind}`, {
          method: 'PUT',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ body: answerBody }),
        })
        const bareTarget = { ...target, url: urlOf(bare) }
        await runLoad(bareTarget, { connections: CONNECTIONS, durationSec: 1 })
        const p = await runLoad(bareTarget, { connections: CONNECTIONS, durationSec: seconds })
        const sameBytes = await (await fetch(`${urlOf(bare)}${paths[kind]}`)).text()
        figures.push({
          scenario: `query.${kind}`,
          system: 'bare-fastify',
          status: sameBytes === answerBody ? 'ok' : 'failed',
          throughput: {
            value: p.okPerSec,
            unit: 'req/s',
            what: `${CONNECTIONS} concurrent clients, keep-alive`,
          },
          ...latencyOf(
            p,
            `${CONNECTIONS} concurrent clients (closed loop), a route sending Tally's answer (${answerBody.length} bytes) from memory`,
          ),
          ...(bare.peakRssBytes() !== undefined ? { peakRssBytes: bare.peakRssBytes()! } : {}),
          failedRequests: failures(p),
          checks: [
            {
              ok: sameBytes === answerBody,
              detail: `the peer sends Tally's answer, byte for byte (${answerBody.length} bytes)`,
            },
          ],
          details: {
            request: paths[kind],
            statusesNot2xx: p.statuses,
            errors: p.errors,
            timeouts: p.timeouts,
          },
        })
        if (p.okPerSec > 0)
          ratios.push({
            scenario: `query.${kind}`,
            metric: 'req/s Tally (cached answer) / bare Fastify (same bytes)',
            value: r.okPerSec / p.okPerSec,
          })
        if (r.latency)
          targets.push({
            scenario: `query.${kind}`,
            metric: 'p99 latency',
            value: r.latency.p99,
            unit: 'ms',
            target: '< 20 ms',
            met: r.latency.p99 < 20 && failures(r) === 0,
          })
      } catch (err) {
        ctx.say(`query.${kind} failed: ${(err as Error).message}`)
        figures.push(failedFigure(`query.${kind}`, 'tally', err, details))
      }
    }

    // Live ingest: the same loads while LIVE_RATE events/s arrive for the measured site, so the data
    // changes at every stream flush and answers are recomputed (the cache's miss path). Afterwards
    // both answers must equal the truth of the loaded and the live events together.
    const liveSpanSec = 2 * (seconds + 2) + 2
    const live = generateWorkload({
      seed: ctx.seed + 4,
      sites: [SITE],
      events: LIVE_RATE * liveSpanSec,
      start: new Date(Date.now() + 2_000),
      spanMs: liveSpanSec * 1000,
      paths: pathCount,
      lateShare: 0,
      outOfOrderShare: 0,
    }).events
    const liveFigures: Figure[] = []
    try {
      // Production grace from here on: the 7-day one only let the stream count the loaded history.
      const liveEnv = { ...scenario.env, TALLY_GRACE_MS: String(DEFAULT_GRACE_MS) }
      const ingest = await spawnRole('ingest', liveEnv, ctx.env.logDir, 'ingest-live')
      children.push(ingest)
      const stream = await spawnRole('stream', liveEnv, ctx.env.logDir, 'stream-live')
      children.push(stream)
      const liveQuery = await spawnRole('query', liveEnv, ctx.env.logDir, 'query-live')
      children.push(liveQuery)
      const liveBase = urlOf(liveQuery)
      ctx.say(`query: ${LIVE_RATE} events/s of live ingest for the site; the same loads again`)
      const sending = paceImports(urlOf(ingest), keys.get(SITE)!.writeKey, live)
      // Awaited after the loads; until then a failure must not go unhandled.
      sending.catch(() => {})
      const runs = []
      for (const kind of kinds) {
        const r = await runLoad(
          { ...targetOf(kind), url: liveBase },
          { connections: CONNECTIONS, durationSec: seconds },
        )
        runs.push({ kind, r })
      }
      const acceptedLive = await sending
      await waitCaughtUp(ctx, scenario, reader, 120_000)
      const all = [...events, ...live]
      const truthAll = truthOf(all, [SITE])
      const sketchesAll = new VisitorSketches(all, precision)
      for (const { kind, r } of runs) {
        const checks: Check[] = [
          {
            ok: acceptedLive === live.length,
            detail: `live events: ${acceptedLive} accepted of ${live.length}`,
          },
          await verifyWith(
            kind,
            `${liveBase}${paths[kind]}`,
            truthAll,
            sketchesAll,
            'after the live ingest',
            12,
          ).catch(
            (err: Error): Check => ({ ok: false, detail: `answer after the live ingest: ${err.message}` }),
          ),
        ]
        liveFigures.push(
          concurrentFigure(
            kind,
            'tally (live ingest)',
            r,
            `${CONNECTIONS} concurrent clients while ${LIVE_RATE} events/s arrive for the site: answers recomputed after each stream flush`,
            liveQuery,
            checks,
            { liveEventsPerSec: LIVE_RATE, graceMs: DEFAULT_GRACE_MS },
          ),
        )
      }
    } catch (err) {
      ctx.say(`query (live ingest) failed: ${(err as Error).message}`)
      for (const kind of kinds)
        liveFigures.push(failedFigure(`query.${kind}`, 'tally (live ingest)', err, details))
    }
    figures.push(...liveFigures)
    return { figures, ratios, targets }
  } finally {
    for (const c of children.reverse()) await c.stop()
  }
}

export const queryScenario: ScenarioDefinition = {
  name: 'query',
  description: '30-day daily timeseries and top-10 path breakdown (10,000 paths) under 32 concurrent clients',
  needsServices: true,
  run,
}
