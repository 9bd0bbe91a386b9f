import type { ParseLimits } from '../params.js'
import { PLAUSIBLE_PERIODS } from './period.js'
import { PLAUSIBLE_METRICS, supportedProperties } from './properties.js'

/** OpenAPI schemas of Plausible's Stats API v1 routes (query/plausible/api.ts): they describe only. */

type Json = Record<string, unknown>
const q = (description: string, schema: Json = { type: 'string' }): Json => ({ ...schema, description })

const ERROR = (description: string): Json => ({
  description,
  content: {
    'application/json': {
      schema: { type: 'object', required: ['error'], properties: { error: { type: 'string' } } },
    },
  },
})

const ERRORS = {
  400: ERROR(
    "Plausible's error shape: a parameter is missing or malformed, or the question is one the rollups cannot answer (filters on two properties, a breakdown filtered on another property, conversion_rate without a goal); the message names what is supported.",
  ),
  401: ERROR('No API key (read token), an unknown or revoked one, or one without access to `site_id`.'),
  503: ERROR('The read tokens or the aggregate store cannot be read right now; retry.'),
}

const SECURITY = [{ readToken: [] }]

function parameters(kind: 'aggregate' | 'timeseries' | 'breakdown', limits: ParseLimits): Json {
  const props: Record<string, Json> = {
    site_id: q("The site's id in Tally, or its domain or one of its aliases."),
    period: q(
      `One of ${PLAUSIBLE_PERIODS.join(', ')} (whole days in the site's time zone, set by tally sites set --timezone). Default 30d.`,
      {
        type: 'string',
        enum: [...PLAUSIBLE_PERIODS],
        default: '30d',
      },
    ),
    date: q(
      "Reference day (YYYY-MM-DD, a local date in the site's zone; default today there); with period=custom two days joined by a comma, inclusive.",
    ),
    metrics: q(
      `Comma-separated, from ${PLAUSIBLE_METRICS.join(', ')}; default visitors. conversion_rate with filters=event:goal==NAME or property=event:goal (also with a breakdown by visit:* but entry_page and exit_page, event:page or event:name, against that value's visitors; visit:exit_page takes visitors only: converters of ended visits); time_on_page answers 400.`,
    ),
    filters: q(
      `Plausible's v1 filters: property==a|b, property!=a, * wildcards, ; between filters. Answered: one property per aggregate or timeseries; a breakdown filtered on its own property, and event:goal with a breakdown by visit:* (exit_page: converters of ended visits), event:page or event:name (conversions by that property: visitors are the converters). At most ${limits.maxFilterValues} values; a wildcard or != is resolved over at most ${limits.maxLimit} values of the range. event:goal names goals the site defines (else 400, as Plausible answers). visit:device, visit:os and visit:browser take Plausible's names (Desktop, Mac, Microsoft Edge).`,
    ),
    with_imported: q('Accepted and ignored: Tally has no imported stats.'),
  }
  if (kind === 'aggregate')
    props.compare = q(
      "previous_period: each metric with its change, against the period's days up to today just before it (Plausible's rule); bounce_rate's change in points (null after 0), conversion_rate's in points.",
      {
        type: 'string',
        enum: ['previous_period'],
      },
    )
  if (kind === 'timeseries')
    props.interval = q(
      'day (or date) or month; default month for 6mo and 12mo, hours for period=day, else day.',
      {
        type: 'string',
        enum: ['date', 'day', 'month'],
      },
    )
  if (kind === 'breakdown') {
    props.property = q(
      `One of ${supportedProperties().join(', ')} (event:props:KEY: a custom property the site declares; its rows are keyed by KEY).`,
    )
    props.limit = q(`Rows per page, 1–${limits.maxLimit}.`, { type: 'integer', default: limits.defaultLimit })
    props.page = q('Page (from 1; at most 100000).', { type: 'integer', default: 1 })
  }
  return {
    type: 'object',
    required: ['site_id', ...(kind === 'breakdown' ? ['property'] : [])],
    properties: props,
  }
}

const RESULTS: Record<'aggregate' | 'timeseries' | 'breakdown', Json> = {
  aggregate: {
    type: 'object',
    additionalProperties: {
      type: 'object',
      required: ['value'],
      properties: { value: { type: 'number' }, change: { type: ['number', 'null'] } },
    },
    example: { visitors: { value: 1234, change: 12 } },
  },
  timeseries: {
    type: 'array',
    items: { type: 'object', required: ['date'], properties: { date: { type: 'string' } } },
    description:
      "Dates are local dates in the site's zone (YYYY-MM-DD; hours as YYYY-MM-DD HH:MM:SS local time).",
    example: [{ date: '2026-12-01', visitors: 36 }],
  },
  breakdown: { type: 'array', items: { type: 'object' }, example: [{ page: '/', visitors: 94 }] },
}

const SUMMARY = {
  aggregate: [
    "Plausible's aggregate",
    'Metrics over the period (Stats API v1), with compare=previous_period.',
  ],
  timeseries: ["Plausible's timeseries", 'One point per day, hour (period=day) or month (Stats API v1).'],
  breakdown: [
    "Plausible's breakdown",
    'Metrics per value of a property, sorted by the first metric (Stats API v1).',
  ],
} as const

export function plausibleSchema(kind: 'aggregate' | 'timeseries' | 'breakdown', limits: ParseLimits): Json {
  return {
    operationId: `plausible_${kind}`,
    summary: SUMMARY[kind][0],
    description: SUMMARY[kind][1],
    tags: ['plausible'],
    security: SECURITY,
    querystring: parameters(kind, limits),
    response: {
      200: {
        description: "Plausible's answer.",
        type: 'object',
        required: ['results'],
        properties: { results: RESULTS[kind] },
      },
      ...ERRORS,
    },
  }
}

export function realtimeSchema(): Json {
  return {
    operationId: 'plausible_realtime_visitors',
    summary: "Plausible's current visitors",
    description: 'Visitors of the last 5 minutes (the current one included), a bare number.',
    tags: ['plausible'],
    security: SECURITY,
    querystring: {
      type: 'object',
      required: ['site_id'],
      properties: { site_id: q("The site's id in Tally, or its domain or one of its aliases.") },
    },
    response: {
      200: { description: 'The number.', content: { 'application/json': { schema: { type: 'integer' } } } },
      ...ERRORS,
    },
  }
}
