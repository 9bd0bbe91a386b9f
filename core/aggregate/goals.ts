import { ERR } from '../error-codes.js'
import { TallyError } from '../errors.js'
import { type PropDimension, type RowDimension, SESSION_DIMENSIONS } from './definition.js'
import { isPropDimension } from './props.js'

/**
 * Goals (issue 17 point 5): a site defines goals (`tally sites goals <site> add`), each either an
 * event name (`--event Signup`: a `track` call of that name completes it) or a page path pattern
 * (`--page /checkout/*`: a pageview whose path matches completes it). Counted events that
 * complete a goal are also counted in the rows of the dimension `goal`, under the goal's name, in
 * the stream and the rebuild: `events` are completions, the visitors' registers the converters.
 * This module is the one definition both use: the syntax, the names, the pattern rule, the match.
 *
 * Names follow Plausible's: an event goal is named by its event (`Signup`), a page goal by
 * `Visit ` and its pattern (`Visit /checkout/*`). So a name says what the goal is, and an event
 * name may not start with `Visit ` (it would read as a page goal).
 *
 * Patterns: matched against the whole of the event's `path` dimension (the page's path, no query
 * string, first 256 characters). `*` stands for any characters within one segment (not `/`),
 * `**` for any characters across segments (`/` included); every other character stands for
 * itself. `/blog/*` matches `/blog/a` but not `/blog/a/b`; `/blog/**` matches both (and
 * `/blog/`).
 */

/** Dimension of the goal rows: value = the goal's name. */
export const GOAL_DIMENSION = 'goal'
/** The most goals a site defines (issue 17). */
export const MAX_GOALS = 20
/** Prefix of a page goal's name. */
export const PAGE_GOAL_PREFIX = 'Visit '

const MAX_EVENT_LENGTH = 120
const MAX_PATTERN_LENGTH = 256

/** A goal as stored: its kind and what completes it (the event name or the path pattern). */
export interface Goal {
  /** `Signup` or `Visit /checkout/*` (goalName). */
  readonly name: string
  readonly kind: 'event' | 'page'
  /** The event name (kind event) or the path pattern (kind page). */
  readonly target: string
}

function invalid(message: string, where: string): TallyError {
  return new TallyError(ERR.GOAL_INVALID, message, { where })
}

// Control characters are no part of an event name or a path anyone means.
// biome-ignore lint/suspicious/noControlCharactersInRegex: they are what is refused
const CONTROL = /[\u0000-\u001f\u007f]/

/** The name of a goal of `kind` and `target` (Plausible's naming). */
export function goalName(kind: Goal['kind'], target: string): string {
  return kind === 'event' ? target : `${PAGE_GOAL_PREFIX}${target}`
}

/**
 * Checks an event goal's event name: 1–120 characters, no control characters, not starting with
 * `Visit ` (page goals' names). TALLY_ERR_GOAL_INVALID (where: `event`) otherwise.
 */
export function eventGoal(event: string): Goal {
  if (event.length === 0 || event.length > MAX_EVENT_LENGTH || event.trim() !== event || CONTROL.test(event))
    throw invalid(
      `goal event ${JSON.stringify(event)} is not 1–${MAX_EVENT_LENGTH} characters without control characters or surrounding spaces`,
      'event',
    )
  if (event.startsWith(PAGE_GOAL_PREFIX))
    throw invalid(
      `goal event ${JSON.stringify(event)} starts with "${PAGE_GOAL_PREFIX}", which names page goals: use --page for a page path`,
      'event',
    )
  return { name: goalName('event', event), kind: 'event', target: event }
}

/**
 * Checks a page goal's pattern: starts with `/`, at most 256 characters, no spaces or control
 * characters, stars only as `*` or `**`. TALLY_ERR_GOAL_INVALID (where: `page`) otherwise.
 */
export function pageGoal(pattern: string): Goal {
  if (
    !pattern.startsWith('/') ||
    pattern.length > MAX_PATTERN_LENGTH ||
    /\s/.test(pattern) ||
    CONTROL.test(pattern)
  )
    throw invalid(
      `goal page pattern ${JSON.stringify(pattern)} is not a path starting with "/", at most ${MAX_PATTERN_LENGTH} characters, without spaces`,
      'page',
    )
  if (pattern.includes('***'))
    throw invalid(
      `goal page pattern ${JSON.stringify(pattern)} has "***": use * (within a segment) or ** (across segments)`,
      'page',
    )
  return { name: goalName('page', pattern), kind: 'page', target: pattern }
}

/** A goal from its kind and target as stored (checked again: a store holds what was checked). */
export function goalOf(kind: string, target: string): Goal {
  if (kind === 'event') return eventGoal(target)
  if (kind === 'page') return pageGoal(target)
  throw invalid(`goal kind ${JSON.stringify(kind)} is not event or page`, 'kind')
}

/** TALLY_ERR_GOALS_FULL for a site that defines MAX_GOALS goals already. */
export function goalsFull(siteId: string): TallyError {
  return new TallyError(
    ERR.GOALS_FULL,
    `site ${siteId} defines ${MAX_GOALS} goals already (the most allowed): remove one first`,
    { where: 'goal' },
  )
}

/** The regular expression of a path pattern (the rule above), anchored at both ends. */
export function patternRegExp(pattern: string): RegExp {
  let src = ''
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i]!
    if (ch === '*') {
      if (pattern[i + 1] === '*') {
        src += '.*'
        i++
      } else src += '[^/]*'
    } else src += ch.replace(/[\\^$.|?+()[\]{}]/g, '\\$&')
  }
  return new RegExp(`^${src}$`, 's')
}

/** Whether a path matches a pattern (the rule above). */
export function pathMatches(pattern: string, path: string): boolean {
  return patternRegExp(pattern).test(path)
}

/**
 * A site's goals ready to match events: the names of the goals an event completes. Built once per
 * goal list (the stream per refresh of the site's goals, the rebuild per run).
 */
export class GoalMatcher {
  private readonly byEvent = new Map<string, string[]>()
  private readonly pages: Array<{ name: string; re: RegExp }> = []
  /** Path → names of the page goals it matches (paths repeat; bounded, emptied when full). */
  private readonly pathCache = new Map<string, readonly string[]>()

  constructor(readonly goals: readonly Goal[]) {
    for (const g of goals) {
      if (g.kind === 'event') {
        const names = this.byEvent.get(g.target) ?? []
        names.push(g.name)
        this.byEvent.set(g.target, names)
      } else this.pages.push({ name: g.name, re: patternRegExp(g.target) })
    }
  }

  get empty(): boolean {
    return this.goals.length === 0
  }

  /**
   * The names of the goals a counted event completes: a `track` call's event name (`eventName`)
   * for event goals, a pageview's path (the `path` dimension) for page goals. Other types none.
   */
  reached(type: string, eventName: string, path: string): readonly string[] {
    if (type === 'track') return this.byEvent.get(eventName) ?? NO_GOALS
    if (type !== 'page' || this.pages.length === 0) return NO_GOALS
    let hit = this.pathCache.get(path)
    if (hit === undefined) {
      hit = this.pages.filter((p) => p.re.test(path)).map((p) => p.name)
      if (hit.length === 0) hit = NO_GOALS
      if (this.pathCache.size >= 10_000) this.pathCache.clear()
      this.pathCache.set(path, hit)
    }
    return hit
  }
}

const NO_GOALS: readonly string[] = []

/**
 * Whether a window's rows of `dimension` are read from the rebuild alone once it is rebuilt (its
 * stream rows are not): custom properties, whose folded values the rebuild writes no row for, and
 * goals, which a rebuild recomputes with the goals defined when it runs (a goal removed since has
 * stream rows and no rebuilt ones), and conversions by another dimension (`goal|DIM`, the same, and
 * the stream's values of a visit changed by a late event are provisional).
 */
export function isRebuiltOnly(dimension: string): boolean {
  return dimension === GOAL_DIMENSION || isPropDimension(dimension) || goalByOf(dimension) !== undefined
}

/**
 * Conversions by another dimension (issue 17 point 5): rows of dimension `goal|DIM` valued
 * `NAME` + U+001F + the dimension's value, written only for counted, non-bot events that complete
 * goal NAME, in the event's hour and day windows (`events` = completions, the visitors' registers
 * = converters). A goal's name holds no control character (eventGoal, pageGoal), so the first
 * U+001F splits a value unambiguously, whatever the dimension's value holds.
 *
 * The value: for the session dimensions and `entry_page`, the converting visit's (its first
 * event's values; its first pageview's path among its events up to the completing one), so a
 * checkout page's own referrer (the site itself) does not hide the visit's source; for `path`,
 * `event` and the site's custom properties (`prop:KEY`, its declared keys), the completing event's
 * own (a property's value on the event that reached the goal, as `path` is that event's page).
 */
export const GOAL_BY_PREFIX = 'goal|'
/** Between a goal's name and the dimension's value in a `goal|DIM` row's value. */
export const GOAL_VALUE_SEPARATOR = '\u001f'
/** The built-in dimensions conversions are kept by (besides `goal` itself and `prop:KEY`). */
export const GOAL_BY_DIMENSIONS = [
  ...SESSION_DIMENSIONS,
  'entry_page',
  'path',
  'event',
] as const satisfies readonly RowDimension[]
/**
 * Conversions by exit page (`goal|exit_page`): not counted per completing event like the others
 * (a visit's exit page is known only once the visit has ended) but per ended visit, in its start
 * hour and day windows: the stream writes them when its VisitState evicts the visit
 * (stream/worker.ts), the rebuild from the day's visits (batch/visits.ts goalRows). Converters only
 * (registers): no completions (`events`) or pageviews, which a replayed eviction would add twice.
 */
export const GOAL_BY_EXIT_PAGE = 'exit_page' as const satisfies RowDimension
/** Every dimension conversions are kept by: the built-in ones, exit page and the site's custom properties. */
export type GoalByDimension = (typeof GOAL_BY_DIMENSIONS)[number] | typeof GOAL_BY_EXIT_PAGE | PropDimension
/** The names of those dimensions, for messages and documents: the built-in ones, then `prop:KEY`. */
export const GOAL_BY_NAMES: readonly string[] = [...GOAL_BY_DIMENSIONS, GOAL_BY_EXIT_PAGE, 'prop:KEY']
const GOAL_BY_SET = new Set<string>([...GOAL_BY_DIMENSIONS, GOAL_BY_EXIT_PAGE])
/** The metrics conversions by exit page answer (its rows hold converters' registers only). */
export const GOAL_BY_EXIT_PAGE_METRICS = ['visitors', 'conversions'] as const

/** Whether conversions are kept by `d` (a `goal|d` dimension exists): built-in or `prop:KEY`. */
export function isGoalByDimension(d: string): d is GoalByDimension {
  return GOAL_BY_SET.has(d) || isPropDimension(d)
}

/** The dimension of the rows of conversions by `d`: `goal|source`, `goal|prop:plan`. */
export function goalByDimension(d: GoalByDimension): `goal|${GoalByDimension}` {
  return `${GOAL_BY_PREFIX}${d}`
}

/** The dimension `d` of a `goal|d` dimension name; undefined for any other name. */
export function goalByOf(dimension: string): GoalByDimension | undefined {
  if (!dimension.startsWith(GOAL_BY_PREFIX)) return undefined
  const d = dimension.slice(GOAL_BY_PREFIX.length)
  return isGoalByDimension(d) ? d : undefined
}

/** The value of a `goal|DIM` row: the goal's name, U+001F, the dimension's value. */
export function goalByValue(goal: string, value: string): string {
  return `${goal}${GOAL_VALUE_SEPARATOR}${value}`
}

/** The goal's name and the dimension's value of a `goal|DIM` row's value; undefined if not one. */
export function splitGoalByValue(stored: string): { goal: string; value: string } | undefined {
  const i = stored.indexOf(GOAL_VALUE_SEPARATOR)
  if (i <= 0) return undefined
  return { goal: stored.slice(0, i), value: stored.slice(i + GOAL_VALUE_SEPARATOR.length) }
}
