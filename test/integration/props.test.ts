import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type GeneratedEvent, generateWorkload } from '../../bench/workload.js'
import { DIMENSION_GRANULARITIES, type Granularity, windowStart } from '../../core/aggregate/definition.js'
import { capValues, keptValues, OTHER } from '../../core/aggregate/props.js'
import { HyperLogLog } from '../../core/hll.js'
import { createLogger } from '../../core/log.js'
import type { AggregateReader, MergedValues } from '../../core/ports/aggregate-store.js'
import type { Site } from '../../core/ports/site-store.js'
import { PropKeyCache } from '../../stream/prop-keys.js'
import type { tempDataDir } from '../contract/backends.js'
import type { EventLogHarness } from '../contract/event-log.js'
import { archiveWholeLog, rebuildFromArchive } from '../helpers/archive-log.js'
import { testConfig } from '../helpers/context.js'
import { backends, closePipeline, type Harness, openPipeline } from '../helpers/pipeline-backends.js'
import { ingestAll, streamToEnd } from '../helpers/stream.js'

/**
 * Custom properties end to end, on both backends: a site declares `plan` (a few values) and `item`
 * (far more values than TALLY_PROP_VALUES_MAX); a generated workload (duplicates, bots, identify
 * calls) carrying them goes through ingest and the stream, then the archive and a rebuild. Read back
 * under the cap rule (as the query API reads), every hour and day breakdown by `prop:plan` and
 * `prop:item` equals the truth computed here from the events (counts exact, visitors register-exact),
 * first from the stream's rows, then from the rebuild's final rows. A key declared after the stream
 * counted (`color`) has no rows until a rebuild, which counts it over the whole range.
 */

const DAY = 86_400_000
const HOUR = 3_600_000
const logger = createLogger('silent')
const MAX = 25
// Within the stream's grace (below): the stream counts every event, none is left to the batch.
const START = Date.now() - 3 * HOUR
const GRACE_MS = 4 * HOUR
const RANGE_FROM = Math.floor(START / DAY) * DAY
const RANGE_TO = Math.floor(Date.now() / DAY) * DAY + DAY
const PLANS = ['free', 'pro', 'team']

/** A small deterministic number of a string (the same for an event and its duplicate). */
function numberOf(s: string): number {
  let h = 7
  for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) >>> 0
  return h
}

/** The workload's events with properties: plan (or none), item (one of 300), color. */
function withProps(events: readonly GeneratedEvent[]): GeneratedEvent[] {
  return events.map((e) => {
    const n = numberOf(e.payload.messageId ?? '')
    const props: Record<string, unknown> = { item: `item-${n % 300}`, color: n % 2 === 0 ? 'red' : 'blue' }
    if (n % 5 !== 0) props.plan = PLANS[n % 3]
    const payload = {
      ...e.payload,
      properties: { ...(e.payload as { properties?: object }).properties, ...props },
    }
    return { ...e, payload } as GeneratedEvent
  })
}

interface Cell {
  events: number
  /** Bot events: not counted, but their values are values of the window (the cap rule sees them). */
  bots: number
  visitors: Set<string>
}

/** Truth per `granularity|windowStart|key|value`, from the counted events (not bots, duplicates, identify). */
function truthOf(events: readonly GeneratedEvent[], keys: readonly string[]): Map<string, Cell> {
  const out = new Map<string, Cell>()
  for (const e of events) {
    const p = e.payload as {
      type: string
      timestamp?: string
      anonymousId?: string
      userId?: string
      messageId?: string
      properties?: Record<string, unknown>
    }
    if (e.isDuplicate || !['track', 'page', 'screen'].includes(p.type)) continue
    const ts = Date.parse(p.timestamp!)
    for (const g of DIMENSION_GRANULARITIES) {
      for (const key of keys) {
        const raw = p.properties?.[key]
        const value = typeof raw === 'string' ? raw : '(none)'
        const k = `${g}|${windowStart(ts, g)}|${key}|${value}`
        const cell = out.get(k) ?? { events: 0, bots: 0, visitors: new Set<string>() }
        if (e.isBot) cell.bots++
        else {
          cell.events++
          cell.visitors.add(p.anonymousId ?? p.userId ?? p.messageId!)
        }
        out.set(k, cell)
      }
    }
  }
  return out
}

/** Differences between what `reader` holds (read under the cap rule) and the truth, per window. */
async function compare(
  reader: AggregateReader,
  precision: number,
  siteId: string,
  truth: Map<string, Cell>,
  keys: readonly string[],
): Promise<string[]> {
  const out: string[] = []
  const windows = new Set([...truth.keys()].map((k) => k.split('|').slice(0, 2).join('|')))
  for (const w of windows) {
    const [g, ws] = w.split('|') as [Granularity, string]
    const from = Number(ws)
    const to = from + (g === 'hour' ? HOUR : DAY)
    for (const key of keys) {
      // Truth under the cap: the values the rule keeps over the window's values, the rest in (other).
      const cells = new Map<string, Cell>()
      for (const [k, c] of truth) {
        const [gg, wws, kk, value] = k.split('|')
        if (gg === g && wws === ws && kk === key) cells.set(value!, c)
      }
      const kept = keptValues(cells.keys(), MAX)
      const expected = new Map<string, Cell>()
      for (const [value, c] of cells) {
        const v = kept.has(value) ? value : OTHER
        const e = expected.get(v) ?? { events: 0, bots: 0, visitors: new Set<string>() }
        e.events += c.events
        e.bots += c.bots
        for (const id of c.visitors) e.visitors.add(id)
        expected.set(v, e)
      }
      const read = await reader.breakdownDetailed(siteId, g, `prop:${key}`, from, to, { visitors: true })
      const merge = (a: MergedValues | undefined, b: MergedValues): MergedValues => {
        if (!a) return b
        const h = HyperLogLog.fromBytes(a.visitors)
        if (b.visitors.length > 0) h.merge(HyperLogLog.fromBytes(b.visitors))
        return {
          ...a,
          events: a.events + b.events,
          pageviews: a.pageviews + b.pageviews,
          botEvents: a.botEvents + b.botEvents,
          visitors: h.toBytes(),
        }
      }
      const { values: actual } = capValues(read.values, MAX, merge)
      for (const value of new Set([...expected.keys(), ...actual.keys()])) {
        const e = expected.get(value)
        const a = actual.get(value)
        const where = `${siteId} ${g} ${new Date(from).toISOString()} prop:${key}=${value}`
        if ((a?.events ?? 0) !== (e?.events ?? 0) || (a?.botEvents ?? 0) !== (e?.bots ?? 0)) {
          out.push(
            `${where}: events ${a?.events ?? 0} ≠ ${e?.events ?? 0}, bots ${a?.botEvents ?? 0} ≠ ${e?.bots ?? 0}`,
          )
          continue
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

describe.each(backends)('custom properties, stream and rebuild (%s)', (_name, openStore, openLog) => {
  let store: Harness
  let log: EventLogHarness
  let topic: string
  let data: ReturnType<typeof tempDataDir>
  let config = testConfig()
  let site: Site
  const siteId = `props-${Date.now()}.test`

  beforeAll(async () => {
    ;({ store, log, topic, config, data } = await openPipeline(openStore, openLog, {
      dataPrefix: 'tally-props-',
      env: {
        TALLY_PROP_VALUES_MAX: String(MAX),
        TALLY_GRACE_MS: String(GRACE_MS),
        TALLY_FLUSH_INTERVAL_MS: '100',
      },
    }))
    site = (await store.sites.create({ siteId, domain: siteId, origins: [] })).site
    await store.sites.addPropKey(siteId, 'plan')
    await store.sites.addPropKey(siteId, 'item')
  }, 60_000)

  afterAll(async () => {
    await closePipeline({ log, store, data })
  })

  const events = withProps(
    generateWorkload({
      seed: 17,
      sites: ['a'],
      events: 2000,
      start: new Date(START),
      spanMs: 2 * HOUR,
      lateShare: 0,
    }).events.map((e) => ({ ...e, siteId })),
  )

  it('the stream counts the declared keys per hour and day, values past the cap under (other)', async () => {
    expect(events.some((e) => e.isDuplicate)).toBe(true)
    expect(events.some((e) => e.isBot)).toBe(true)
    await ingestAll(log, config, [site], events, logger)
    await streamToEnd(log, store, {
      topic,
      group: `props-${topic}`,
      stream: { ...config.stream, countsVisits: false },
      logger,
      propKeys: new PropKeyCache(store.sites, 60_000, logger),
    })
    const truth = truthOf(events, ['plan', 'item'])
    // The cap is passed: some day window holds far more item values than it keeps.
    const dayItems = [...truth.keys()].filter((k) => k.startsWith('day|') && k.includes('|item|'))
    expect(dayItems.length).toBeGreaterThan(4 * MAX)
    expect(await compare(store.reader, store.precision, siteId, truth, ['plan', 'item'])).toEqual([])
    // Not declared: no rows.
    const [w] = [...truth.keys()].filter((k) => k.startsWith('day|'))
    const dayStart = Number(w!.split('|')[1])
    const color = await store.reader.breakdownDetailed(siteId, 'day', 'prop:color', dayStart, dayStart + DAY)
    expect(color.values.size).toBe(0)
  }, 180_000)

  it('a rebuild gives the same numbers, final, and counts a key declared after the stream ("declare, then rebuild")', async () => {
    await store.sites.addPropKey(siteId, 'color')
    await archiveWholeLog(log, store, {
      topic,
      archiveDir: join(data.dir, 'archive'),
      owner: 'props-test',
      logger,
    })
    const result = await rebuildFromArchive(
      store,
      {
        topic,
        dataDir: data.dir,
        owner: 'props-test',
        logger,
        visitGapMs: config.stream.visitGapMs,
        propKeys: true,
        settings: { propValuesMax: MAX },
      },
      { fromMs: RANGE_FROM, toMs: RANGE_TO, siteId },
    )
    expect(result.status).toBe('succeeded')
    const keys = ['plan', 'item', 'color']
    const truth = truthOf(events, keys)
    expect(await compare(store.reader, store.precision, siteId, truth, keys)).toEqual([])
    const [w] = [...truth.keys()].filter((k) => k.startsWith('day|'))
    const dayStart = Number(w!.split('|')[1])
    const item = await store.reader.breakdownDetailed(siteId, 'day', 'prop:item', dayStart, dayStart + DAY)
    // The rebuild writes the kept values and (other) only.
    expect(item.values.size).toBeLessThanOrEqual(MAX + 2)
    expect([...item.windows.values()].every((x) => x.final)).toBe(true)
  }, 180_000)
})
