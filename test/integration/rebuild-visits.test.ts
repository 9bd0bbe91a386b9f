import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type GeneratedEvent, generateWorkload } from '../../bench/workload.js'
import { GRANULARITIES, windowMs } from '../../core/aggregate/definition.js'
import { createLogger } from '../../core/log.js'
import type { AggregateReader } from '../../core/ports/aggregate-store.js'
import type { Site } from '../../core/ports/site-store.js'
import type { tempDataDir } from '../contract/backends.js'
import type { EventLogHarness } from '../contract/event-log.js'
import { archiveWholeLog, rebuildFromArchive } from '../helpers/archive-log.js'
import { testConfig } from '../helpers/context.js'
import { backends, closePipeline, type Harness, openPipeline } from '../helpers/pipeline-backends.js'
import { ingestAll } from '../helpers/stream.js'
import { type VisitCounts, visitKey, visitTruthOf } from '../helpers/visit-truth.js'
import { visitScenarios } from '../helpers/visit-workload.js'

/**
 * Visits after a rebuild, on both backends: events around a UTC midnight (a generated workload with
 * duplicates and bots, plus hand-made visits: returns after 29 and 31 minutes, an hour boundary and
 * midnight crossed, one-event and track-only visits, a tie in time) are ingested, archived and
 * rebuilt; every visit count read back (totals of every window, breakdowns by the session
 * dimensions and entry/exit page) equals the truth of test/helpers/visit-truth.ts. Then a late event
 * that joins two visits: a rebuild of part of its day (computed from the whole day) and one of the
 * whole days correct visits, bounces and duration, and the windows read final.
 */

const DAY = 86_400_000
const HOUR = 3_600_000
const logger = createLogger('silent')
const MIDNIGHT = Math.floor(Date.now() / DAY) * DAY - DAY
const RANGE_FROM = MIDNIGHT - DAY
const RANGE_TO = MIDNIGHT + DAY
const BREAKDOWNS = ['referrer', 'utm_source', 'browser', 'os', 'device', 'entry_page', 'exit_page'] as const

function zero(): VisitCounts {
  return { visits: 0, bounces: 0, visitDurationMs: 0, visitPageviews: 0 }
}

function countsOf(v: Partial<VisitCounts> | undefined): VisitCounts | undefined {
  if (v?.visits === undefined) return undefined
  return {
    visits: v.visits,
    bounces: v.bounces ?? 0,
    visitDurationMs: v.visitDurationMs ?? 0,
    visitPageviews: v.visitPageviews ?? 0,
  }
}

/** Every visit number of the range read through `reader` against the truth; returns the differences. */
async function compareVisits(
  reader: AggregateReader,
  sites: readonly string[],
  truth: Map<string, VisitCounts>,
): Promise<string[]> {
  const out: string[] = []
  for (const site of sites) {
    for (const g of GRANULARITIES) {
      const windows = await reader.totals(site, g, RANGE_FROM, RANGE_TO)
      const seen = new Set<number>()
      for (const w of windows) {
        seen.add(w.windowStart)
        const key = visitKey(site, g, w.windowStart)
        const expected = truth.get(key) ?? zero()
        const actual = countsOf(w)
        if (!w.final) out.push(`${key} not final`)
        if (JSON.stringify(actual) !== JSON.stringify(expected))
          out.push(`${key}: ${JSON.stringify(actual)} ≠ ${JSON.stringify(expected)}`)
      }
      for (const k of truth.keys()) {
        const [s, gg, ws, d] = k.split('|')
        if (s === site && gg === g && d === '' && !seen.has(Date.parse(ws!))) out.push(`${k} missing`)
      }
      if (g === 'minute') continue
      for (const d of BREAKDOWNS) {
        const expected = new Map<string, VisitCounts>()
        for (const [k, c] of truth) {
          const [s, gg, , dd, value] = k.split('|')
          if (s !== site || gg !== g || dd !== d) continue
          const e = expected.get(value!) ?? zero()
          e.visits += c.visits
          e.bounces += c.bounces
          e.visitDurationMs += c.visitDurationMs
          e.visitPageviews += c.visitPageviews
          expected.set(value!, e)
        }
        const detailed = await reader.breakdownDetailed(site, g, d, RANGE_FROM, RANGE_TO)
        if (detailed.windowsWithoutVisits.size > 0) out.push(`${site} ${g} ${d}: windows without visit data`)
        for (const value of new Set([...expected.keys(), ...detailed.values.keys()])) {
          const e = expected.get(value) ?? zero()
          const a = countsOf(detailed.values.get(value)) ?? zero()
          if (JSON.stringify(a) !== JSON.stringify(e))
            out.push(`${site} ${g} ${d}=${value}: ${JSON.stringify(a)} ≠ ${JSON.stringify(e)}`)
        }
      }
    }
  }
  return out
}

describe.each(backends)('visits after a rebuild (%s)', (_name, openStore, openLog) => {
  let store: Harness
  let log: EventLogHarness
  let topic: string
  let data: ReturnType<typeof tempDataDir>
  let config = testConfig()
  const sites: Site[] = []
  const SITE_IDS = [`visits-a-${Date.now()}.test`, `visits-b-${Date.now()}.test`]

  beforeAll(async () => {
    ;({ store, log, topic, config, data } = await openPipeline(openStore, openLog, {
      dataPrefix: 'tally-rebuild-visits-',
    }))
    for (const id of SITE_IDS)
      sites.push((await store.sites.create({ siteId: id, domain: id, origins: [] })).site)
  }, 60_000)

  afterAll(async () => {
    await closePipeline({ log, store, data })
  })

  async function ingest(events: readonly GeneratedEvent[]): Promise<void> {
    await ingestAll(log, config, sites, events, logger)
  }

  async function archive(): Promise<void> {
    await archiveWholeLog(log, store, {
      topic,
      archiveDir: join(data.dir, 'archive'),
      owner: 'visits-test',
      logger,
    })
  }

  function rebuild(fromMs: number, toMs: number) {
    return rebuildFromArchive(
      store,
      {
        topic,
        dataDir: data.dir,
        owner: 'visits-test',
        logger,
        visitGapMs: config.stream.visitGapMs,
      },
      { fromMs, toMs },
    )
  }

  const background = generateWorkload({
    seed: 31,
    sites: ['a', 'b'],
    events: 1500,
    start: new Date(MIDNIGHT - 3 * HOUR),
    spanMs: 6 * HOUR,
    lateShare: 0,
  }).events
  const human = background.find((e) => !e.isBot && e.payload.type === 'page')!
  const bot = background.find((e) => e.isBot && e.payload.type === 'page')!
  const scenarios = SITE_IDS.map((s) => visitScenarios(s, MIDNIGHT, human, bot))
  const onTime = [
    ...background.map((e) => ({ ...e, siteId: e.siteId === 'a' ? SITE_IDS[0]! : SITE_IDS[1]! })),
    ...scenarios.flatMap((s) => s.events),
  ]
  const late = scenarios.map((s) => s.late)

  it('counts every visit, bounce, duration and entry/exit page of the archive exactly', async () => {
    expect(onTime.some((e) => e.isDuplicate)).toBe(true)
    expect(onTime.some((e) => e.isBot)).toBe(true)
    await ingest(onTime)
    await archive()
    const result = await rebuild(RANGE_FROM, RANGE_TO)
    expect(result.status).toBe('succeeded')
    const truth = visitTruthOf(onTime, config.stream.visitGapMs)
    expect(truth.get(visitKey(SITE_IDS[0]!, 'day', MIDNIGHT - DAY))?.visits).toBeGreaterThan(10)
    expect(await compareVisits(store.reader, SITE_IDS, truth)).toEqual([])
    // The late visitor's two visits, before the late event.
    const lateHour = MIDNIGHT + 4 * HOUR
    const [w] = await store.reader.totals(SITE_IDS[0]!, 'minute', lateHour, lateHour + 60_000)
    expect(countsOf(w)).toEqual({ visits: 1, bounces: 1, visitDurationMs: 0, visitPageviews: 1 })
  }, 180_000)

  it('a late event that joins two visits: a rebuild of part of the day, then of the whole days, corrects them', async () => {
    await ingest(late)
    await archive()
    const all = [...onTime, ...late]
    const truth = visitTruthOf(all, config.stream.visitGapMs)
    const lateHour = MIDNIGHT + 4 * HOUR
    // Only the late event's hour: its visits come from the whole day's events.
    const part = await rebuild(lateHour, lateHour + HOUR)
    expect(part.status).toBe('succeeded')
    for (const site of SITE_IDS) {
      const [minute] = await store.reader.totals(site, 'minute', lateHour, lateHour + windowMs('minute'))
      expect(minute?.final).toBe(true)
      expect(countsOf(minute)).toEqual({
        visits: 1,
        bounces: 0,
        visitDurationMs: 40 * 60_000,
        visitPageviews: 2,
      })
      const [hour] = await store.reader.totals(site, 'hour', lateHour, lateHour + HOUR)
      expect(hour?.final).toBe(true)
      expect(countsOf(hour)).toEqual(truth.get(visitKey(site, 'hour', lateHour)))
    }
    // An hour whose events include a visit begun the hour before (21:50 → 22:20): it is not one of
    // the hour's visits, which only the whole day's events can tell.
    const h22 = MIDNIGHT - 2 * HOUR
    expect((await rebuild(h22, h22 + HOUR)).status).toBe('succeeded')
    for (const site of SITE_IDS) {
      const [hour] = await store.reader.totals(site, 'hour', h22, h22 + HOUR)
      expect(countsOf(hour)).toEqual(truth.get(visitKey(site, 'hour', h22)) ?? zero())
    }
    expect(await rebuild(RANGE_FROM, RANGE_TO).then((r) => r.status)).toBe('succeeded')
    expect(await compareVisits(store.reader, SITE_IDS, truth)).toEqual([])
  }, 180_000)
})
