import type { RawEventV1 } from '../../schemas/events.js'
import { ERR } from '../error-codes.js'
import { TallyError } from '../errors.js'
import { type HashHalves, hashHalves } from '../hll.js'
import { DIRECT, type Dimension, NONE, type PropDimension, type RowDimension } from './definition.js'
import { DIRECT_NONE } from './source.js'

/**
 * Custom properties (issue 17 point 4): a site declares event property keys
 * (`tally sites props <site> add KEY`) and each becomes a dimension `prop:KEY` of the same rows as
 * the others, in the stream and the rebuild. This module is the one definition both use: the key
 * syntax, the value of a key in an event, and the cap on distinct values per window.
 *
 * The cap rule ("bottom-N by hash"): of the values a window holds for one key, the kept ones are
 * the `max` values with the smallest {@link capRank} (XXH64 of the value, ties by the value); every
 * other value counts under `(other)`. `(none)` (the key absent) and `(other)` are always kept. It
 * depends on the set of values only, never on their order, and it composes: a value kept in a
 * window is kept in every part of it (a source partition's share, an hour of the day), because a
 * part holds fewer values with smaller ranks. So the stream's per-partition rows, the rebuild's
 * hour and day rows and any range a query merges all give the same answer once the reader applies
 * the rule again to the merged values ({@link capValues}): stream = rebuild, exactly.
 */

/** Prefix of a custom property's dimension name: `prop:plan`. */
export const PROP_PREFIX = 'prop:'
/** The most keys a site declares (issue 17). */
export const MAX_PROP_KEYS = 20
/** TALLY_PROP_VALUES_MAX's default. */
export const DEFAULT_PROP_VALUES_MAX = 1000
/** Values counted beyond the cap. */
export const OTHER = '(other)'

/**
 * The open-ended dimensions (issue 17 point 7): their values are as many as what clients send, so
 * each window keeps at most TALLY_DIMENSION_VALUES_MAX of them by the same rule and code as custom
 * properties (below). Visits counted by the session ones (referrer, source, UTM) go to the same
 * rows. `entry_page` and `exit_page` are capped by the day's `path` values instead
 * ({@link DAY_PATH_CAPPED}).
 */
export const CAPPED_DIMENSIONS = [
  'path',
  'referrer',
  'source',
  'utm_source',
  'utm_medium',
  'utm_campaign',
  'utm_content',
  'utm_term',
] as const satisfies readonly Dimension[]
/** TALLY_DIMENSION_VALUES_MAX's default. */
export const DEFAULT_DIMENSION_VALUES_MAX = 10_000

const CAPPED_SET = new Set<string>(CAPPED_DIMENSIONS)

/**
 * The visit pages, capped by the day's `path` values: an entry or exit page of a window is kept
 * when it is among the kept `path` values of the window's UTC day (the cap rule over the day's
 * paths, bots' included), else it counts under `(other)`. A visit ends at midnight UTC, so its
 * pages are paths of its day, and the day's set of paths only grows, while a window's set of entry
 * pages does not (a late event moves a visit's entry page): a refusal by the day's paths proves a
 * page is not kept, which the pages' own values could not. A page kept over several days' paths is
 * kept in each of them (the rule composes), so a reader folding a range by the union of its days'
 * paths answers as over the rebuild's rows. TALLY_DIMENSION_VALUES_MAX bounds them.
 */
export const DAY_PATH_CAPPED = ['entry_page', 'exit_page'] as const satisfies readonly RowDimension[]

/** Whether a dimension is capped by the day's `path` values (entry and exit page, above). */
export function isDayPathCapped(d: string): d is (typeof DAY_PATH_CAPPED)[number] {
  return d === 'entry_page' || d === 'exit_page'
}

/** Whether a dimension's values per window are capped: a custom property or a CAPPED_DIMENSIONS one. */
export function isCappedDimension(d: string): d is (typeof CAPPED_DIMENSIONS)[number] | PropDimension {
  return CAPPED_SET.has(d) || isPropDimension(d)
}

/** The cap of a capped dimension: TALLY_PROP_VALUES_MAX for `prop:KEY`, else TALLY_DIMENSION_VALUES_MAX. */
export function valuesMaxOf(
  d: RowDimension,
  max: { propValuesMax?: number | undefined; dimensionValuesMax?: number | undefined },
): number {
  return isPropDimension(d)
    ? (max.propValuesMax ?? DEFAULT_PROP_VALUES_MAX)
    : (max.dimensionValuesMax ?? DEFAULT_DIMENSION_VALUES_MAX)
}

const KEY_SYNTAX = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/

/** Checks a property key's syntax; TALLY_ERR_PROP_KEY_INVALID (where: `key`) when it is not one. */
export function checkPropKey(key: string): string {
  if (!KEY_SYNTAX.test(key)) {
    throw new TallyError(
      ERR.PROP_KEY_INVALID,
      `property key ${JSON.stringify(key)} is not 1–64 letters, digits, "_", "-" or "." starting with a letter or digit`,
      { where: 'key' },
    )
  }
  return key
}

/** TALLY_ERR_PROP_KEYS_FULL for a site that declares MAX_PROP_KEYS keys already. */
export function propKeysFull(siteId: string): TallyError {
  return new TallyError(
    ERR.PROP_KEYS_FULL,
    `site ${siteId} declares ${MAX_PROP_KEYS} property keys already (the most allowed): remove one first`,
    { where: 'key' },
  )
}

/** The dimension name of a key. */
export function propDimension(key: string): PropDimension {
  return `${PROP_PREFIX}${key}`
}

/** Whether a dimension name is a custom property's (`prop:KEY` with a valid key). */
export function isPropDimension(d: string): d is PropDimension {
  return d.startsWith(PROP_PREFIX) && KEY_SYNTAX.test(d.slice(PROP_PREFIX.length))
}

const MAX_VALUE_LENGTH = 256

/**
 * The value of `key` in an event's properties, as a dimension value: a string as it is (first 256
 * characters), a number or boolean as JSON writes it, `(none)` when absent, null, empty or an
 * object or array (those are not values to break down by).
 */
export function propValueOf(e: Pick<RawEventV1, 'properties'>, key: string): string {
  const v = (e.properties as Record<string, unknown>)[key]
  if (typeof v === 'string')
    return v === '' ? NONE : v.length > MAX_VALUE_LENGTH ? v.slice(0, MAX_VALUE_LENGTH) : v
  if (typeof v === 'number' || typeof v === 'boolean') return String(v)
  return NONE
}

const scratch: HashHalves = { hi: 0, lo: 0 }

/** The rank of a value under the cap rule: smaller ranks are kept first (ties broken by the value). */
export function capRank(value: string): number {
  hashHalves(value, scratch)
  // 53 bits of the hash: an exact double; equal ranks are ordered by the value itself.
  return (scratch.hi >>> 11) * 4294967296 + scratch.lo
}

/**
 * Whether a value takes part in the cap: `(none)` and `(other)` are always kept, and so are the
 * "no referrer" values `(direct)` (referrer) and `Direct / None` (source).
 */
export function capped(value: string): boolean {
  return value !== NONE && value !== OTHER && value !== DIRECT && value !== DIRECT_NONE
}

function before(ra: number, a: string, rb: number, b: string): boolean {
  return ra < rb || (ra === rb && a < b)
}

/**
 * The values kept under the cap of `max` (the rule above): every value when there are at most
 * `max` (besides `(none)` and `(other)`), else the `max` smallest by rank.
 */
export function keptValues(values: Iterable<string>, max: number): Set<string> {
  const all = [...values]
  const candidates = all.filter(capped)
  if (candidates.length <= max) return new Set(all)
  const ranked = candidates.map((v) => ({ v, r: capRank(v) }))
  ranked.sort((a, b) => (before(a.r, a.v, b.r, b.v) ? -1 : before(b.r, b.v, a.r, a.v) ? 1 : 0))
  const kept = new Set(ranked.slice(0, max).map((x) => x.v))
  for (const v of all) if (!capped(v)) kept.add(v)
  return kept
}

/**
 * Applies the cap to merged values: each value not kept is folded into `(other)` with `merge`.
 * Returns the kept entries (with `(other)` when anything was folded) and whether the cap was hit.
 */
export function capValues<T>(
  entries: ReadonlyMap<string, T>,
  max: number,
  merge: (into: T | undefined, from: T) => T,
): { values: Map<string, T>; hit: boolean } {
  const kept = keptValues(entries.keys(), max)
  if (kept.size === entries.size) return { values: new Map(entries), hit: entries.has(OTHER) }
  return { values: foldValues(entries, kept, merge), hit: true }
}

/**
 * Folds the entries whose value is not in `kept` (and is not one of the always-kept values) into
 * `(other)` with `merge`; `(other)` is in the result when anything was folded or it was there.
 */
export function foldValues<T>(
  entries: ReadonlyMap<string, T>,
  kept: ReadonlySet<string>,
  merge: (into: T | undefined, from: T) => T,
): Map<string, T> {
  const out = new Map<string, T>()
  let other = entries.get(OTHER)
  for (const [v, x] of entries) {
    if (v === OTHER) continue
    if (kept.has(v) || !capped(v)) out.set(v, x)
    else other = merge(other, x)
  }
  if (other !== undefined) out.set(OTHER, other)
  return out
}

/**
 * The stream's admission of values of one key in one window of one partition: a new value gets its
 * own row while it could still be among the `max` smallest ranks of the values seen (fewer than
 * `max` held, or a rank below the `max`-th smallest held); otherwise it can never be kept (a
 * window's set of values only grows) and counts under `(other)` at once. The rows it keeps are a
 * superset of the partition's bottom-`max`, so the reader's {@link capValues} gives the rebuild's
 * answer; it holds about max · (1 + ln(distinct / max)) values per window, not just `max`.
 */
export class ValueAdmission {
  /** The smallest ranks held, sorted, at most `max`. */
  private readonly ranks: number[] = []
  private readonly values: string[] = []
  /** Values admitted. */
  private readonly admitted = new Set<string>()

  constructor(private readonly max: number) {}

  /** The value a new event of `value` counts under: itself, or `(other)`. */
  admit(value: string): string {
    if (!capped(value) || this.admitted.has(value)) return value
    const r = capRank(value)
    const n = this.ranks.length
    if (n >= this.max && !before(r, value, this.ranks[n - 1]!, this.values[n - 1]!)) return OTHER
    let i = n
    while (i > 0 && before(r, value, this.ranks[i - 1]!, this.values[i - 1]!)) i--
    this.ranks.splice(i, 0, r)
    this.values.splice(i, 0, value)
    if (this.ranks.length > this.max) {
      this.ranks.pop()
      this.values.pop()
    }
    this.admitted.add(value)
    return value
  }
}
