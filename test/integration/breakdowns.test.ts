import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { dimensionValues, type GeneratedEvent, generateWorkload } from '../../bench/workload.js'
import { BREAKDOWN_DIMENSIONS } from '../../core/aggregate/breakdowns.js'
import { DIMENSION_GRANULARITIES, type Granularity, windowStart } from '../../core/aggregate/definition.js'
import { ERR } from '../../core/error-codes.js'
import { HyperLogLog } from '../../core/hll.js'
import { createLogger } from '../../core/log.js'
import type { AggregateReader, MergedValues } from '../../core/ports/aggregate-store.js'
import type { Site } from '../../core/ports/site-store.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import { CheckpointFreshness } from '../../query/freshness.js'
import type { tempDataDir } from '../contract/backends.js'
import type { EventLogHarness } from '../contract/event-log.js'
import { archiveWholeLog, rebuildFromArchive } from '../helpers/archive-log.js'
import { testConfig } from '../helpers/context.js'
import { backends, closePipeline, type Harness, openPipeline } from '../helpers/pipeline-backends.js'
import { ingestAll, streamToEnd } from '../helpers/stream.js'
import { type VisitCounts, visitKey, visitTruthOf } from '../helpers/visit-truth.js'

/**
 * TALLY_BREAKDOWNS end to end, on both backends: with only event, path, browser, country and
 * entry_page aggregated, a generated workload (countries, campaigns, duplicates, bots) goes through
 * ingest and the stream (visits counted), then the archive and a rebuild. The kept breakdowns equal
 * the truth computed here from the events (counts exact, visitors register-exact, the visits of
 * `country` by the visits computed here), after the stream and after the rebuild, and the two read
 * the same; the dimensions left out have no row at all (nor visit rows); the query API answers a
 * kept breakdown exactly and a breakdown or filter on one left out with 400
 * TALLY_ERR_BREAKDOWN_NOT_KEPT naming the kept ones.
 */

const DAY = 86_400_000
const HOUR = 3_600_000
const logger = createLogger('silent')
const START = Date.now() - 3 * HOUR
const GRACE_MS = 4 * HOUR
const RANGE_FROM = Math.floor(START / DAY) * DAY - DAY
const RANGE_TO = Math.floor(Date.now() / DAY) * DAY + DAY
const KEPT = ['event', 'path', 'browser', 'country', 'entry_page'] as const
/** The kept ones whose truth is checked from the events (entry_page: only that it has rows). */
const CHECKED = ['event', 'path', 'country'] as const
const SKIPPED = BREAKDOWN_DIMENSIONS.filter((d) => !(KEPT as readonly string[]).includes(d))

interface Cell {
  events: number
  bots: number
  visitors: Set<string>
}

/** Truth per `granularity|windowStart|dimension|value`, from the events (not duplicates, identify). */
function truthOf(events: readonly GeneratedEvent[]): Map<string, Cell> {
  const out = new Map<string, Cell>()
  for (const e of events) {
    const p = e.payload
    if (e.isDuplicate || !['track', 'page', 'screen'].includes(p.type)) continue
    const ts = Date.parse(p.timestamp)
    const dims = dimensionValues(e)
    for (const g of DIMENSION_GRANULARITIES) {
      for (const d of CHECKED) {
        const k = `${g}|${windowStart(ts, g)}|${d}|${dims[d]}`
        const c = out.get(k) ?? { events: 0, bots: 0, visitors: new Set<string>() }
        if (e.isBot) c.bots++
        else {
          c.events++
          c.visitors.add(p.anonymousId ?? p.userId ?? p.messageId)
        }
        out.set(k, c)
      }
    }
  }
  return out
}

/** Every stored breakdown of the site's windows, by `granularity|windowStart|dimension`: value → merged. */
async function readAll(
  reader: AggregateReader,
  siteId: string,
  windows: ReadonlySet<string>,
): Promise<Map<string, Map<string, MergedValues>>> {
  const out = new Map<string, Map<string, MergedValues>>()
  for (const w of windows) {
    const [g, ws] = w.split('|') as [Granularity, string]
    const from = Number(ws)
    const to = from + (g === 'hour' ? HOUR : DAY)
    for (const d of BREAKDOWN_DIMENSIONS) {
      const read = await reader.breakdownDetailed(siteId, g, d, from, to, { visitors: true })
      out.set(`${w}|${d}`, read.values)
    }
  }
  return out
}

/** Differences between what was read and the truth, and rows of dimensions left out. */
function compare(
  read: Map<string, Map<string, MergedValues>>,
  precision: number,
  siteId: string,
  truth: Map<string, Cell>,
  visitTruth: Map<string, VisitCounts>,
  windows: ReadonlySet<string>,
): string[] {
  const out: string[] = []
  for (const w of windows) {
    const [g, ws] = w.split('|') as [Granularity, string]
    for (const d of SKIPPED) {
      const values = read.get(`${w}|${d}`)!
      if (values.size > 0) out.push(`${w} ${d}: ${values.size} rows of a dimension left out`)
    }
    if (read.get(`${w}|entry_page`)!.size === 0) out.push(`${w} entry_page: no rows`)
    for (const d of CHECKED) {
      const expected = new Map<string, Cell>()
      for (const [k, c] of truth) {
        const [gg, wws, dd, value] = k.split('|')
        if (gg === g && wws === ws && dd === d) expected.set(value!, c)
      }
      const actual = read.get(`${w}|${d}`)!
      for (const value of new Set([...expected.keys(), ...actual.keys()])) {
        const e = expected.get(value)
        const a = actual.get(value)
        const where = `${siteId} ${g} ${new Date(Number(ws)).toISOString()} ${d}=${value}`
        if ((a?.events ?? 0) !== (e?.events ?? 0) || (a?.botEvents ?? 0) !== (e?.bots ?? 0)) {
          out.push(
            `${where}: events ${a?.events ?? 0} ≠ ${e?.events ?? 0}, bots ${a?.botEvents ?? 0} ≠ ${e?.bots ?? 0}`,
          )
          continue
        }
        if (d === 'country') {
          const v = visitTruth.get(visitKey(siteId, g, Number(ws), d, value))
          const av = [a?.visits ?? 0, a?.bounces ?? 0, a?.visitDurationMs ?? 0, a?.visitPageviews ?? 0]
          const ev = [v?.visits ?? 0, v?.bounces ?? 0, v?.visitDurationMs ?? 0, v?.visitPageviews ?? 0]
          if (av.join() !== ev.join()) out.push(`${where}: visits ${av} ≠ ${ev}`)
        }
        if (!e) continue
        const h = new HyperLogLog(precision)
        for (const id of e.visitors) h.add(id)
        const stored = a && a.visitors.length > 0 ? HyperLogLog.fromBytes(a.visitors).estimate() : 0
        if (stored !== h.estimate()) out.push(`${where}: visitors ${stored} ≠ ${h.estimate()}`)
      }
    }
  }
  return out
}

/** What was read, without the final marks or visitor bytes' identity: for stream = rebuild. */
function comparable(read: Map<string, Map<string, MergedValues>>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [k, values] of read) {
    out[k] = [...values]
      .filter(([, v]) => v.events > 0 || v.botEvents > 0 || (v.visits ?? 0) > 0)
      .map(([value, v]) => [
        value,
        v.events,
        v.pageviews,
        v.botEvents,
        v.visits ?? 0,
        v.bounces ?? 0,
        v.visitDurationMs ?? 0,
        v.visitPageviews ?? 0,
        v.visitors.length > 0 ? HyperLogLog.fromBytes(v.visitors).estimate() : 0,
      ])
      .sort()
  }
  return out
}

describe.each(backends)('TALLY_BREAKDOWNS, stream and rebuild (%s)', (_name, openStore, openLog) => {
  let store: Harness
  let log: EventLogHarness
  let topic: string
  let data: ReturnType<typeof tempDataDir>
  let config = testConfig()
  let site: Site
  let readToken: string
  let fromStream: Record<string, unknown> = {}
  const siteId = `breakdowns-${Date.now()}.test`

  beforeAll(async () => {
    ;({ store, log, topic, config, data } = await openPipeline(openStore, openLog, {
      dataPrefix: 'tally-breakdowns-',
      env: {
        TALLY_BREAKDOWNS: KEPT.join(','),
        TALLY_GRACE_MS: String(GRACE_MS),
        TALLY_FLUSH_INTERVAL_MS: '100',
      },
    }))
    const created = await store.sites.create({ siteId, domain: siteId, origins: [] })
    site = created.site
    readToken = created.readToken
  }, 60_000)

  afterAll(async () => {
    await closePipeline({ log, store, data })
  })

  const events = generateWorkload({
    seed: 17,
    sites: ['a'],
    events: 2000,
    start: new Date(START),
    spanMs: 2 * HOUR,
    campaignShare: 0.3,
    lateShare: 0,
  }).events.map((e) => ({ ...e, siteId }))
  const truth = truthOf(events)
  const windows = new Set([...truth.keys()].map((k) => k.split('|').slice(0, 2).join('|')))

  it('the workload has several countries, campaigns, duplicates and bots', () => {
    expect(events.some((e) => e.isDuplicate)).toBe(true)
    expect(events.some((e) => e.isBot)).toBe(true)
    expect(new Set(events.map((e) => dimensionValues(e).country)).size).toBeGreaterThan(2)
    expect(events.some((e) => dimensionValues(e).utm_source !== '(none)')).toBe(true)
  })

  it('the stream writes the kept breakdowns exactly and no row of the others', async () => {
    await ingestAll(log, config, [site], events, logger)
    await streamToEnd(log, store, {
      topic,
      group: `breakdowns-${topic}`,
      stream: config.stream,
      logger,
    })
    const visitTruth = visitTruthOf(events, config.stream.visitGapMs)
    const read = await readAll(store.reader, siteId, windows)
    expect(compare(read, store.precision, siteId, truth, visitTruth, windows)).toEqual([])
    fromStream = comparable(read)
  }, 180_000)

  it('a rebuild with the same list gives the same numbers, final, and no row of the others', async () => {
    await archiveWholeLog(log, store, {
      topic,
      archiveDir: join(data.dir, 'archive'),
      owner: 'breakdowns-test',
      logger,
    })
    const result = await rebuildFromArchive(
      store,
      {
        topic,
        dataDir: data.dir,
        owner: 'breakdowns-test',
        logger,
        visitGapMs: config.stream.visitGapMs,
        settings: { breakdowns: config.stream.breakdowns },
      },
      { fromMs: RANGE_FROM, toMs: RANGE_TO, siteId },
    )
    expect(result.status).toBe('succeeded')
    const visitTruth = visitTruthOf(events, config.stream.visitGapMs)
    const read = await readAll(store.reader, siteId, windows)
    expect(compare(read, store.precision, siteId, truth, visitTruth, windows)).toEqual([])
    // Stream = rebuild, every breakdown of every window.
    expect(comparable(read)).toEqual(fromStream)
    const day = Number([...windows].find((w) => w.startsWith('day|'))!.split('|')[1])
    const country = await store.reader.breakdownDetailed(siteId, 'day', 'country', day, day + DAY)
    expect([...country.windows.values()].every((x) => x.final)).toBe(true)
  }, 180_000)

  it('the query API answers a kept breakdown exactly and refuses one left out, naming the kept ones', async () => {
    const app = await buildQueryApp({
      reader: store.reader,
      auth: new ReadAccessCache(store.sites),
      freshness: new CheckpointFreshness(store.reader, {
        group: `breakdowns-${topic}`,
        topic,
        partitions: 3,
        graceMs: GRACE_MS,
        cacheMs: 0,
      }),
      logger,
      hllPrecision: store.precision,
      breakdowns: config.stream.breakdowns,
    })
    try {
      const from = Math.floor(START / HOUR) * HOUR
      const to = from + 3 * HOUR
      const get = (q: Record<string, string>, path = '/v1/stats/breakdown') =>
        app.inject({
          method: 'GET',
          url: `${path}?${new URLSearchParams({ site: siteId, from: new Date(from).toISOString(), to: new Date(to).toISOString(), ...q })}`,
          headers: { authorization: `Bearer ${readToken}` },
        })
      // Truth: events by country over the range's hours.
      const expected = new Map<string, number>()
      for (const [k, c] of truth) {
        const [g, ws, d, value] = k.split('|')
        if (g === 'hour' && d === 'country' && Number(ws) >= from && Number(ws) < to && c.events > 0)
          expected.set(value!, (expected.get(value!) ?? 0) + c.events)
      }
      const ok = await get({ property: 'country', metrics: 'events', limit: '1000' })
      expect(ok.statusCode, ok.body).toBe(200)
      const rows = (ok.json() as { results: Array<{ country: string; events: number }> }).results
      expect(new Map(rows.filter((r) => r.events > 0).map((r) => [r.country, r.events]))).toEqual(expected)
      for (const [q, where, d] of [
        [{ property: 'source' }, 'property', 'source'],
        [{ property: 'exit_page' }, 'property', 'exit_page'],
        [{ property: 'path', filters: 'utm_source==news' }, 'filters', 'utm_source'],
      ] as const) {
        const res = await get(q)
        expect(res.statusCode, res.body).toBe(400)
        const body = res.json() as { code: string; message: string; where: string }
        expect(body.code).toBe(ERR.BREAKDOWN_NOT_KEPT)
        expect(body.where).toBe(where)
        expect(body.message).toContain(`${d} is not aggregated`)
        expect(body.message).toContain(KEPT.join(', '))
      }
      const filtered = await get({ filters: 'country==XX' }, '/v1/stats/aggregate')
      expect(filtered.statusCode, filtered.body).toBe(200)
      const docs = await app.inject({ method: 'GET', url: '/docs/openapi.json' })
      expect(docs.statusCode).toBe(200)
      // The breakdown's `property` lists the kept dimensions (and goal) only.
      const spec = docs.json() as {
        paths: Record<
          string,
          { get: { parameters: Array<{ name: string; schema: { anyOf: Array<{ enum?: string[] }> } }> } }
        >
      }
      const property = spec.paths['/v1/stats/breakdown']!.get.parameters.find((p) => p.name === 'property')!
      expect(property.schema.anyOf[0]!.enum).toEqual([...KEPT, 'goal'])
      expect(docs.body).toContain('TALLY_ERR_BREAKDOWN_NOT_KEPT')
    } finally {
      await app.close()
    }
  }, 60_000)
})
