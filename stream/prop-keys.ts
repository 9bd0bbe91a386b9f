import { GoalMatcher } from '../core/aggregate/goals.js'
import { ERR } from '../core/error-codes.js'
import type { Logger } from '../core/log.js'
import type { SiteStore } from '../core/ports/site-store.js'

/** What the stream reads of the site store: a site's declared property keys (and goals, when it can). */
export type PropKeySource = Pick<SiteStore, 'listPropKeys'> & Partial<Pick<SiteStore, 'listGoals'>>

/**
 * The declared custom property keys of the sites a partition's events name (core/aggregate/props.ts),
 * read from the site store and kept `ttlMs` (the site cache's TTL): a key declared later counts
 * from the next refresh on; what came before it is for a rebuild. The pipeline's steps are
 * synchronous, so the worker refreshes the sites of a batch before it counts it ({@link refresh})
 * and the steps read {@link keysOf}. A store that cannot answer keeps the last keys known (a site
 * not known yet counts no property until it answers): the counts of the other dimensions never wait
 * on it. At most `maxSites` sites are kept (least recently refreshed leave first).
 *
 * A site's goals (core/aggregate/goals.ts) come the same way, read with its keys: a goal defined
 * later counts from the next refresh on.
 */
export class PropKeyCache {
  private readonly entries = new Map<
    string,
    { keys: readonly string[]; goals: GoalMatcher; readAtMs: number }
  >()

  constructor(
    private readonly source: PropKeySource,
    private readonly ttlMs: number,
    private readonly logger?: Logger,
    private readonly maxSites = 100_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Reads the keys of the sites not known or older than the TTL. */
  async refresh(siteIds: Iterable<string>): Promise<void> {
    const now = this.now()
    const stale = [...new Set(siteIds)].filter((s) => {
      const e = this.entries.get(s)
      return e === undefined || now - e.readAtMs >= this.ttlMs
    })
    await Promise.all(
      stale.map(async (siteId) => {
        let keys: readonly string[]
        let goals = NO_GOALS
        try {
          keys = await this.source.listPropKeys(siteId)
          if (this.source.listGoals) {
            const defined = await this.source.listGoals(siteId)
            // The old matcher when nothing changed: it keeps its cache of paths.
            const old = this.entries.get(siteId)?.goals
            goals =
              old && sameGoals(old, defined)
                ? old
                : defined.length === 0
                  ? NO_GOALS
                  : new GoalMatcher(defined)
          }
        } catch (err) {
          const code = (err as { code?: unknown }).code
          if (code !== ERR.SITE_NOT_FOUND) {
            this.logger?.warn({ err, siteId }, 'property keys could not be read; the last known apply')
            const old = this.entries.get(siteId)
            if (old) old.readAtMs = now
            // Counted without properties until the store answers, rather than not at all.
            else this.entries.set(siteId, { keys: NO_KEYS, goals: NO_GOALS, readAtMs: now })
            return
          }
          keys = []
        }
        this.entries.delete(siteId)
        this.entries.set(siteId, { keys, goals, readAtMs: now })
        if (this.entries.size > this.maxSites) this.entries.delete(this.entries.keys().next().value!)
      }),
    )
  }

  /** Whether the site's keys were read (or tried: a store that failed leaves it known with none). */
  known(siteId: string): boolean {
    return this.entries.has(siteId)
  }

  /** The keys of a site as last read (none when never read). */
  keysOf(siteId: string): readonly string[] {
    return this.entries.get(siteId)?.keys ?? NO_KEYS
  }

  /** The goals of a site as last read (none when never read). */
  goalsOf(siteId: string): GoalMatcher {
    return this.entries.get(siteId)?.goals ?? NO_GOALS
  }
}

const NO_KEYS: readonly string[] = []
const NO_GOALS = new GoalMatcher([])

function sameGoals(m: GoalMatcher, goals: ReadonlyArray<{ name: string; target: string }>): boolean {
  return (
    m.goals.length === goals.length &&
    m.goals.every((g, i) => g.name === goals[i]!.name && g.target === goals[i]!.target)
  )
}
