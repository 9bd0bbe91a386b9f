import type { PropDimension } from '../core/aggregate/definition.js'
import { GoalMatcher } from '../core/aggregate/goals.js'
import { propDimension, propValueOf } from '../core/aggregate/props.js'
import { forEachSiteRun } from '../core/archive/dedup.js'
import { readRawSegment, type SegmentColumns } from '../core/archive/segment-reader.js'
import { ERR } from '../core/error-codes.js'
import type { SiteStore } from '../core/ports/site-store.js'
import { COLUMNS } from '../schemas/arrow.js'
import type { SitePropValues } from './aggregate.js'

/** What the rebuild reads of the site store: a site's declared property keys (and goals, when it can). */
export type RebuildPropKeys = Pick<SiteStore, 'listPropKeys'> & Partial<Pick<SiteStore, 'listGoals'>>

/**
 * The declared keys of the sites a rebuild meets, read once per run: a rebuild counts the keys
 * declared when it runs ("declare, then rebuild the days you want"). A site removed since counts none.
 */
export class RunPropKeys {
  private readonly keys = new Map<string, Promise<readonly string[]>>()

  constructor(private readonly source: RebuildPropKeys) {}

  of(siteId: string): Promise<readonly string[]> {
    let k = this.keys.get(siteId)
    if (!k) {
      k = this.source.listPropKeys(siteId).catch((err: unknown) => {
        if ((err as { code?: unknown }).code === ERR.SITE_NOT_FOUND) return []
        throw err
      })
      this.keys.set(siteId, k)
    }
    return k
  }

  private readonly goals = new Map<string, Promise<GoalMatcher>>()

  /**
   * The site's goals (core/aggregate/goals.ts), read once per run like its keys: a rebuild counts
   * the goals defined when it runs ("define, then rebuild the days you want").
   */
  goalsOf(siteId: string): Promise<GoalMatcher> {
    let g = this.goals.get(siteId)
    if (!g) {
      const list = this.source.listGoals
      g = list
        ? list
            .call(this.source, siteId)
            .then((goals) => new GoalMatcher(goals))
            .catch((err: unknown) => {
              if ((err as { code?: unknown }).code === ERR.SITE_NOT_FOUND) return new GoalMatcher([])
              throw err
            })
        : Promise.resolve(new GoalMatcher([]))
      this.goals.set(siteId, g)
    }
    return g
  }
}

/** The goals of the sites of a segment's rows that define any (all its sites, or `siteId` alone). */
export async function goalsOfSegment(
  cols: SegmentColumns,
  siteId: string | undefined,
  keys: RunPropKeys,
): Promise<Map<string, GoalMatcher> | undefined> {
  const sites = new Set<string>()
  forEachSiteRun(cols, siteId, (_from, _to, site) => {
    sites.add(site)
  })
  const out = new Map<string, GoalMatcher>()
  for (const site of sites) {
    const g = await keys.goalsOf(site)
    if (!g.empty) out.set(site, g)
  }
  return out.size === 0 ? undefined : out
}

/**
 * The custom property values of a segment's rows for the sites that declare keys (all of the
 * segment's sites, or `siteId` alone). Event properties are not among the segment's columns (a
 * site's keys change; the columns are fixed when the event is archived): they come from the raw
 * sidecar, the Kafka value as logged, read only when a site of the segment declares keys. Undefined
 * when none does.
 */
export async function propValuesOf(
  cols: SegmentColumns,
  siteId: string | undefined,
  keys: RunPropKeys,
): Promise<Map<string, SitePropValues> | undefined> {
  const runs: Array<{ from: number; to: number; site: string }> = []
  forEachSiteRun(cols, siteId, (from, to, site) => {
    runs.push({ from, to, site })
  })
  const declared = new Map<string, readonly string[]>()
  for (const { site } of runs) {
    if (declared.has(site)) continue
    const k = await keys.of(site)
    if (k.length > 0) declared.set(site, k)
  }
  if (declared.size === 0) return undefined
  const raw = (await readRawSegment(cols)).getChild(COLUMNS.raw)!
  const decoder = new TextDecoder()
  const out = new Map<string, SitePropValues>()
  for (const { from, to, site } of runs) {
    const siteKeys = declared.get(site)
    if (!siteKeys) continue
    const values = siteKeys.map(() => new Array<string>(to - from))
    for (let i = from; i < to; i++) {
      // The archiver kept only records that decoded as raw events: the value is JSON with properties.
      const event = JSON.parse(decoder.decode(raw.get(i) as Uint8Array)) as {
        properties?: Record<string, unknown>
      }
      const e = { properties: event.properties ?? {} }
      siteKeys.forEach((key, k) => {
        values[k]![i - from] = propValueOf(e, key)
      })
    }
    const dimensions: PropDimension[] = siteKeys.map(propDimension)
    out.set(site, { dimensions, values })
  }
  return out
}
