import { badParameter } from '../range.js'
import { type PlausibleProperty, plausibleProperty } from './properties.js'

/**
 * Plausible's v1 `filters`: `property==value`, `property!=value`, `a|b` for any of them (`\|` is a
 * literal bar), `;` between filters (all must hold), `*` a wildcard for any characters (`**` too).
 * Tally's filters are equality on one property's values; a negation or wildcard is resolved to the
 * values it matches among those the range holds (query/plausible/api.ts).
 */
export interface PlausibleFilter {
  property: PlausibleProperty
  negated: boolean
  values: string[]
  /** Some value has a wildcard: the values are patterns. */
  wildcard: boolean
}

export function parsePlausibleFilters(raw: string | undefined, maxValues: number): PlausibleFilter[] {
  if (raw === undefined || raw.trim() === '') return []
  const out: PlausibleFilter[] = []
  for (const part of raw.split(';')) {
    const m = /^\s*([A-Za-z_:]+(?::[^=!]+)?)\s*(==|!=)(.*)$/.exec(part)
    if (!m) {
      throw badParameter(
        'filters',
        `Unable to parse filter \`${part}\`: use property==value or property!=value, several joined with ;`,
      )
    }
    const property = plausibleProperty(m[1]!, 'filters')
    // Plausible trims the value (its LegacyStatsAPIFilterParser.to_kv): `event:page == /blog ` is /blog.
    const values = splitBars(m[3]!.trim())
    if (values.some((v) => v === '')) throw badParameter('filters', `filter on ${m[1]} has an empty value`)
    if (values.length > maxValues)
      throw badParameter('filters', `filter on ${m[1]} has ${values.length} values; at most ${maxValues}`)
    if (out.some((f) => f.property.tally === property.tally))
      throw badParameter('filters', `${m[1]} is filtered twice; give its values once as ${m[1]}==a|b`)
    out.push({ property, negated: m[2] === '!=', values, wildcard: values.some((v) => v.includes('*')) })
  }
  return out
}

/** Splits on `|` not preceded by a backslash; `\|` becomes `|`. */
function splitBars(raw: string): string[] {
  const out: string[] = []
  let cur = ''
  for (let i = 0; i < raw.length; i++) {
    const ch = raw[i]!
    if (ch === '\\' && raw[i + 1] === '|') {
      cur += '|'
      i++
    } else if (ch === '|') {
      out.push(cur)
      cur = ''
    } else cur += ch
  }
  out.push(cur)
  return out
}

/** Whether a stored value matches the filter (before negation): equal, or matching a pattern. */
export function matcherOf(f: PlausibleFilter): (value: string) => boolean {
  const patterns = f.values.map((v) =>
    v.includes('*') ? new RegExp(`^${v.split(/\*+/).map(escapeRegExp).join('.*')}$`, 's') : undefined,
  )
  return (value) => f.values.some((v, i) => (patterns[i] ? patterns[i].test(value) : v === value))
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}
