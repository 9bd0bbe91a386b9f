import { isPropDimension } from '../../core/aggregate/props.js'
import { ERR } from '../../core/error-codes.js'
import { TallyError } from '../../core/errors.js'
import { type Metric, PROPERTIES } from '../params.js'
import { badParameter } from '../range.js'

/**
 * Plausible's Stats API v1 properties and metrics, as Tally's. One row per property: the Tally
 * property it reads and the key its breakdown rows carry. A Tally property that does not exist (yet)
 * answers 400 naming the supported ones. `event:goal` reads the goals a site defines (`goal`:
 * `tally sites goals`), whose rows' visitors are the goal's converters, as Plausible counts them. `event:props:KEY` reads the custom property `prop:KEY` (a key the site declares with
 * `tally sites props <site> add KEY`; an undeclared one has no rows, so its breakdown is empty).
 */
interface PropertyRow {
  /** Plausible's name, or a pattern whose first group is the custom property's key. */
  match: string | RegExp
  tally: (key: string) => string
  /** The key of a breakdown row: Plausible's name without `event:`/`visit:`. */
  rowKey: (key: string) => string
}

const row = (match: string, tally: string, rowKey: string): PropertyRow => ({
  match,
  tally: () => tally,
  rowKey: () => rowKey,
})

export const PROPERTY_TABLE: readonly PropertyRow[] = [
  row('event:page', 'path', 'page'),
  row('event:name', 'event', 'name'),
  row('event:goal', 'goal', 'goal'),
  { match: /^event:props:(.+)$/, tally: (k) => `prop:${k}`, rowKey: (k) => k },
  row('visit:source', 'source', 'source'),
  row('visit:referrer', 'referrer', 'referrer'),
  row('visit:channel', 'channel', 'channel'),
  row('visit:utm_source', 'utm_source', 'utm_source'),
  row('visit:utm_medium', 'utm_medium', 'utm_medium'),
  row('visit:utm_campaign', 'utm_campaign', 'utm_campaign'),
  row('visit:utm_content', 'utm_content', 'utm_content'),
  row('visit:utm_term', 'utm_term', 'utm_term'),
  row('visit:device', 'device', 'device'),
  row('visit:browser', 'browser', 'browser'),
  row('visit:os', 'os', 'os'),
  row('visit:country', 'country', 'country'),
  row('visit:entry_page', 'entry_page', 'entry_page'),
  row('visit:exit_page', 'exit_page', 'exit_page'),
]

export interface PlausibleProperty {
  /** As asked, e.g. `visit:source`. */
  name: string
  /** Tally's property, e.g. `source`. */
  tally: string
  /** The key of a breakdown row, e.g. `source`. */
  rowKey: string
}

/** The properties this server answers, for messages. */
export function supportedProperties(): string[] {
  return PROPERTY_TABLE.filter(
    (r) =>
      typeof r.match === 'string' && (PROPERTIES.includes(r.tally('') as never) || r.tally('') === 'goal'),
  )
    .map((r) => r.match as string)
    .concat('event:props:KEY')
}

/** Where Plausible's documentation of the Stats API v1 is, as its messages link to it. */
export const PLAUSIBLE_DOCS = 'https://plausible.io/docs/stats-api'

/**
 * A 400 worded exactly as Plausible words it (plausible/analytics `external_stats_controller.ex`),
 * so a client that shows or matches Plausible's message gets the same one: sent as is, not through
 * plausibleWording.
 */
export function plausibleError(where: string, message: string, code: string = ERR.BAD_PARAMETER): TallyError {
  return new TallyError(code, message, { statusCode: 400, where, details: { wording: 'plausible' } })
}

export function isPlausibleWorded(err: TallyError): boolean {
  return (err.details as { wording?: string } | undefined)?.wording === 'plausible'
}

/** Properties Plausible's Stats API v1 knows (its `Legacy.Dimensions`), answered here or not. */
const PLAUSIBLE_KNOWN = new Set([
  ...PROPERTY_TABLE.filter((r) => typeof r.match === 'string').map((r) => r.match as string),
  'event:hostname',
  'visit:browser_version',
  'visit:os_version',
  'visit:region',
  'visit:city',
  'visit:country_name',
  'visit:region_name',
  'visit:city_name',
])

/** Plausible's property as Tally's; 400 for one this server does not count. */
export function plausibleProperty(name: string, where: string): PlausibleProperty {
  if (!PLAUSIBLE_KNOWN.has(name) && !/^event:props:./.test(name)) {
    // Plausible's answer to a property it does not know.
    throw where === 'filters'
      ? plausibleError(
          where,
          `Invalid filter property '${name}'. Please provide a valid filter property: ${PLAUSIBLE_DOCS}#properties`,
        )
      : plausibleError(
          where,
          `Invalid property '${name}'. Please provide a valid property for the breakdown endpoint: ${PLAUSIBLE_DOCS}#properties`,
        )
  }
  for (const r of PROPERTY_TABLE) {
    const key = typeof r.match === 'string' ? (r.match === name ? '' : undefined) : r.match.exec(name)?.[1]
    if (key === undefined) continue
    const tally = r.tally(key)
    if (typeof r.match !== 'string' && !isPropDimension(tally))
      throw badParameter(
        where,
        `${name}: ${JSON.stringify(key)} is not a property key (1–64 letters, digits, "_", "-" or "." starting with a letter or digit)`,
      )
    if (!(PROPERTIES as readonly string[]).includes(tally) && !isPropDimension(tally) && tally !== 'goal') {
      throw badParameter(
        where,
        `${name} is not supported by this server yet (Tally has no ${tally} dimension); supported: ${supportedProperties().join(', ')}`,
        ERR.FILTER_UNSUPPORTED,
      )
    }
    return { name, tally, rowKey: r.rowKey(key) }
  }
  throw badParameter(
    where,
    `${where} ${name} is not a property this server answers; supported: ${supportedProperties().join(', ')}`,
  )
}

/** Plausible's metrics as Tally's; those without a Tally metric name what they wait for. */
const METRIC_TABLE: Readonly<Record<string, Metric | string>> = {
  visitors: 'visitors',
  visits: 'visits',
  pageviews: 'pageviews',
  views_per_visit: 'views_per_visit',
  bounce_rate: 'bounce_rate',
  visit_duration: 'visit_duration',
  events: 'events',
  // With filters=event:goal==NAME or property=event:goal (the converters over the visitors).
  conversion_rate: 'conversion_rate',
  time_on_page: 'is not counted by this server',
}
const TALLY_METRICS = new Set<string>([
  'visitors',
  'visits',
  'pageviews',
  'views_per_visit',
  'bounce_rate',
  'visit_duration',
  'events',
  'conversion_rate',
])

export const PLAUSIBLE_METRICS = Object.keys(METRIC_TABLE)

const SESSION_METRICS = new Set(['visits', 'bounce_rate', 'visit_duration', 'views_per_visit'])

/**
 * Plausible's checks of `metrics` against the query (its `validate_metrics`), in its order and with
 * its messages: a metric asked twice, an unknown one, and the metrics that need a filter or
 * breakdown (conversion_rate a goal, time_on_page a page) or refuse one (session metrics with
 * event:name). What Plausible answers but Tally cannot is refused after, by plausibleMetrics and
 * Tally's parser, in Tally's words. `filtered`: the properties the filters name; `property`: the
 * breakdown's.
 */
export function checkPlausibleMetrics(
  raw: string | undefined,
  filtered: readonly string[],
  property: string | undefined,
): void {
  const names = raw === undefined || raw.trim() === '' ? ['visitors'] : raw.split(',').map((s) => s.trim())
  if (new Set(names).size !== names.length)
    throw plausibleError('metrics', 'Metrics cannot be queried multiple times.')
  const fail = (message: string) => {
    throw plausibleError('metrics', message)
  }
  for (const m of names) {
    if (METRIC_TABLE[m] === undefined)
      fail(
        `The metric \`${m}\` is not recognized. Find valid metrics from the documentation: ${PLAUSIBLE_DOCS}#metrics`,
      )
    if (m === 'time_on_page') {
      if (filtered.includes('event:goal'))
        fail(`Metric \`${m}\` cannot be queried when filtering by \`event:goal\``)
      if (filtered.includes('event:name'))
        fail(`Metric \`${m}\` cannot be queried when filtering by \`event:name\``)
      if (property !== undefined && property !== 'event:page')
        fail(`Metric \`${m}\` is not supported in breakdown queries (except \`event:page\` breakdown)`)
      if (property === undefined && !filtered.includes('event:page'))
        fail(`Metric \`${m}\` can only be queried in a page breakdown or with a page filter.`)
    }
    if (m === 'conversion_rate' && property !== 'event:goal' && !filtered.includes('event:goal'))
      fail(`Metric \`${m}\` can only be queried in a goal breakdown or with a goal filter`)
    if (m === 'views_per_visit' && filtered.includes('event:page'))
      fail(`Metric \`${m}\` cannot be queried with a filter on \`event:page\`.`)
    if (SESSION_METRICS.has(m)) {
      // Plausible refuses them with event:name, event:goal and event:props:* alike; Tally counts
      // visits by goal and by custom property (core/aggregate), so only event:name is refused here.
      if (property === 'event:name')
        fail(`Session metric \`${m}\` cannot be queried for breakdown by \`event:name\`.`)
      if (filtered.includes('event:name'))
        fail(`Session metric \`${m}\` cannot be queried when using a filter on \`event:name\`.`)
    }
  }
}

/** `metrics=a,b` (default visitors) as Tally's metrics, in the order asked. */
export function plausibleMetrics(raw: string | undefined): Metric[] {
  if (raw === undefined || raw.trim() === '') return ['visitors']
  const out: Metric[] = []
  for (const name of raw.split(',').map((s) => s.trim())) {
    const m = METRIC_TABLE[name]
    if (m === undefined)
      throw badParameter(
        'metrics',
        `The metric \`${name}\` is not recognized. Supported: ${[...TALLY_METRICS].join(', ')}`,
      )
    if (!TALLY_METRICS.has(m))
      throw badParameter('metrics', `Metric \`${name}\` ${m}`, ERR.FILTER_UNSUPPORTED)
    if (!out.includes(m as Metric)) out.push(m as Metric)
  }
  return out
}

/**
 * Values Tally and Plausible name differently, per Tally property: Tally's (ua-parser-js's) name →
 * Plausible's (its documentation's, from Matomo's device detector). One to one only, so a breakdown
 * row keeps its numbers (visitors cannot be merged here); `Mobile Safari` stays as it is, where
 * Plausible writes `Safari` for it and desktop Safari alike.
 */
const VALUE_LABELS: Readonly<Record<string, Readonly<Record<string, string>>>> = {
  device: { desktop: 'Desktop', mobile: 'Mobile', tablet: 'Tablet' },
  os: { 'Mac OS': 'Mac', Linux: 'GNU/Linux', 'Chromium OS': 'Chrome OS' },
  browser: { Edge: 'Microsoft Edge', 'Samsung Internet': 'Samsung Browser' },
}
const VALUES_OF_LABELS: Readonly<Record<string, Readonly<Record<string, string>>>> = Object.fromEntries(
  Object.entries(VALUE_LABELS).map(([p, m]) => [
    p,
    Object.fromEntries(Object.entries(m).map(([v, l]) => [l, v])),
  ]),
)

/** A Tally value of `property` as Plausible names it (`desktop` → `Desktop`). */
export function plausibleLabel(property: string, value: string): string {
  return VALUE_LABELS[property]?.[value] ?? value
}

/** A Plausible value of `property` as Tally stores it (`Desktop` → `desktop`); others as they are. */
export function tallyValue(property: string, label: string): string {
  return VALUES_OF_LABELS[property]?.[label] ?? label
}

const TALLY_TO_PLAUSIBLE: ReadonlyArray<[RegExp, string]> = PROPERTY_TABLE.filter(
  (r): r is PropertyRow & { match: string } => typeof r.match === 'string',
)
  .map((r): [RegExp, string] => [new RegExp(`(?<![\\w:])${r.tally('')}(?![\\w:])`, 'g'), r.match])
  .concat([[/(?<![\w:])prop:([A-Za-z0-9][A-Za-z0-9_.-]*)/g, 'event:props:$1']])

/**
 * A message of Tally's parser or stats (which name Tally's properties: `path`, `source`) in
 * Plausible's names (`event:page`, `visit:source`), for answers of Plausible's API.
 */
export function plausibleWording(message: string): string {
  return TALLY_TO_PLAUSIBLE.reduce((m, [re, name]) => m.replace(re, name), message)
}
