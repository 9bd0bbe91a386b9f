import { GRANULARITIES } from '../core/aggregate/definition.js'
import { GOAL_BY_NAMES } from '../core/aggregate/goals.js'
import type { ErrorName } from '../core/error-codes.js'
import { errorResponses, SERVER_ERRORS } from '../core/openapi.js'
import {
  AGGREGATE_EXPORT_FORMATS,
  COMPARE_MODES,
  DEFAULT_METRICS,
  ENDPOINT_PARAMS,
  ENTRY_EXIT_DEFAULT_METRICS,
  ENTRY_EXIT_METRICS,
  type Endpoint,
  EXPORT_FORMATS,
  METRICS,
  PROPERTIES,
  STATS_FORMATS,
  VISIT_PROPERTIES,
} from './params.js'
import type { QueryLimits } from './stats.js'

/**
 * JSON schemas of the query API's routes, from the same constants the routes validate with
 * (metrics, properties, intervals, limits); the OpenAPI document served at /docs/openapi.json is
 * generated from them (core/openapi.ts). They describe: query/params.ts checks, so every refusal
 * keeps its own code and names the parameter in `where`.
 */

type Json = Record<string, unknown>

function parameters(limits: QueryLimits): Record<string, Json> {
  const q = (description: string, schema: Json): Json => ({ ...schema, description })
  return {
    site: q('Site id. The bearer token must be a read token of this site.', { type: 'string' }),
    period: q(
      "Named range in the site's time zone (`tally sites set --timezone`; UTC without one), relative to `date` (default today there): `day`, `Nd` (the N days ending with that day, e.g. 7d, 30d), `Nh` (the N hours ending with the current hour), `month`, `Nmo` (e.g. 6mo, 12mo, calendar months ending with the current one), `year`. Default 30d. Not with from/to.",
      { type: 'string', pattern: '^(day|today|month|year|[1-9][0-9]{0,3}(d|h|mo))$', default: '30d' },
    ),
    date: q(
      "Reference day of `period` (YYYY-MM-DD, a local date in the site's time zone); default today there.",
      {
        type: 'string',
        format: 'date',
      },
    ),
    from: q(
      "Start (inclusive): ISO 8601 date (a local day in the site's time zone; UTC without one) or date-time with a zone (taken as given). With `to`; not with `period`. The range is widened to whole windows; `meta.from`/`meta.to` give the range answered.",
      { type: 'string' },
    ),
    to: q(
      'End (exclusive): ISO 8601 date-time with a zone, or a date, meaning the end of that day (inclusive day).',
      { type: 'string' },
    ),
    interval: q(
      `Window size of a timeseries or export. Default: hour for ranges up to 2 days (minute for period=Nh with N ≤ 3), else day; export: hour. At most ${limits.maxPoints.minute} minute, ${limits.maxPoints.hour} hour, ${limits.maxPoints.day} day windows per timeseries.`,
      { type: 'string', enum: [...GRANULARITIES] },
    ),
    metrics: q(
      `Comma-separated, from ${METRICS.join(', ')}. Default ${DEFAULT_METRICS.join(',')}. \`visitors\` is approximate (HyperLogLog; see meta.metrics), the others exact. A breakdown sorts by the first metric, descending. Visits (counted in the window where they started): \`visits\`, \`bounce_rate\` (percent of visits with one pageview and no other event), \`visit_duration\` (mean seconds), \`views_per_visit\`; by property only with ${VISIT_PROPERTIES.join(', ')} and \`prop:KEY\` (the value of the visit's first event). entry_page and exit_page take ${ENTRY_EXIT_METRICS.join(', ')} (pageviews of the visits), default ${ENTRY_EXIT_DEFAULT_METRICS.join(',')}. Windows written before visits were counted show none (meta.visits names them). Goals: \`conversions\` (unique visitors who completed the goal, HyperLogLog like visitors) and \`conversion_rate\` (conversions over the visitors of the same range and windows, percent with one decimal) with \`filters=goal==NAME\` (aggregate, timeseries; with a filter on one of ${GOAL_BY_NAMES.join(', ')} besides, the conversions of those values, the rate against their own rows' visitors, per point in a timeseries) or \`property=goal\` (breakdown, the rate against the range's visitors); a breakdown by ${GOAL_BY_NAMES.join(', ')} with \`filters=goal==NAME\` gives per value the converters (visitors, conversions), completions (events) and the rate against the visitors of that value's own row (session properties and entry_page: the converting visit's value; path, event and prop:KEY: the completing event's; conversion_rate not by entry_page). By exit_page: only visitors and conversions (the default there), the converters of visits that have ended (a gap after their last event, plus the grace, on the stream's watermark; or midnight UTC), by their last pageview's path, counted in the visit's start windows (meta.visits: not final while visits go on). Under a goal filter, entry_page defaults to ${DEFAULT_METRICS.join(',')}.`,
      { type: 'string', example: 'visitors,pageviews,events,bot_events' },
    ),
    property: q(
      'Dimension to break down by (required for breakdown): one of the listed (the breakdowns this deployment aggregates, TALLY_BREAKDOWNS; another answers 400 TALLY_ERR_BREAKDOWN_NOT_KEPT, as does a filter on one), `goal` (the goals the site defines, tally sites goals: per goal its completions as events and its converters as visitors and conversions), or `prop:KEY` for a custom property the site declares (tally sites props). A custom property keeps at most TALLY_PROP_VALUES_MAX values per window, path, referrer, source and the utm_* properties at most TALLY_DIMENSION_VALUES_MAX, entry_page and exit_page the pages among the kept paths of their UTC day; the others are under `(other)` (meta.values_capped).',
      {
        type: 'string',
        anyOf: [
          { enum: [...PROPERTIES.filter((p) => limits.breakdowns?.includes(p as never) ?? true), 'goal'] },
          { pattern: '^prop:[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$' },
        ],
      },
    ),
    filters: q(
      `Equality filters \`property==value\`; \`property==a|b\` matches either; separate filters with \`;\`; a backslash escapes \`;\`, \`|\` or a backslash in a value. Aggregates are stored per single property, so what is answered exactly is: one filter for aggregate and timeseries (timeseries with interval hour or day), and for breakdown a filter on the breakdown's own property, plus \`goal==NAME\` when the breakdown is by ${GOAL_BY_NAMES.join(', ')} (conversions by that property), and for aggregate and timeseries \`goal==NAME\` with a filter on one of those. Other combinations get 400 TALLY_ERR_FILTER_UNSUPPORTED. At most ${limits.maxFilterValues} values.`,
      { type: 'string', example: 'path==/pricing|/signup' },
    ),
    limit: q(`Rows per page of a breakdown, 1–${limits.maxLimit}.`, {
      type: 'integer',
      minimum: 1,
      maximum: limits.maxLimit,
      default: limits.defaultLimit,
    }),
    page: q('Page of a breakdown (1-based).', { type: 'integer', minimum: 1, default: 1 }),
    minutes: q('Minutes of realtime, the current one included.', {
      type: 'integer',
      minimum: 1,
      maximum: limits.maxRealtimeMinutes,
      default: 5,
    }),
    format: q(
      'Answer format. Timeseries and breakdown: json (default) or csv (the results as CSV, a header line then one line per point or row; no meta). Aggregates export: ndjson (default), arrow or csv (the rows, same columns as NDJSON). Raw-event export: ndjson or arrow.',
      {
        type: 'string',
        enum: [...new Set([...STATS_FORMATS, ...AGGREGATE_EXPORT_FORMATS, ...EXPORT_FORMATS])],
      },
    ),
    compare: q(
      'Compare with another range: `previous_period`, the range of the same length just before it (the same number of local days; calendar months for month, Nmo and year; the same duration for instants), or `year_over_year`, the same local dates a year before (29 February → 28 February). Each metric of aggregate becomes {value, comparison_value, change}; each timeseries point gets `comparison` (the point at the same position of the other range, same interval; null past its end) and `change` per metric. `change` is the change in percent, rounded to an integer, null when the comparison value is 0. meta.comparison gives the other range and its windows.',
      { type: 'string', enum: [...COMPARE_MODES] },
    ),
    sketches: q('Include the HyperLogLog registers of each row (visitors_sketch).', {
      type: 'boolean',
      default: false,
    }),
    visits: q(
      'Include the visits that started in each window: sums visits, bounces, visit_duration_ms, visit_pageviews (add them up to merge rows) and rates bounce_rate, visit_duration, views_per_visit; null for windows written before visits were counted.',
      { type: 'boolean', default: false },
    ),
  }
}

const META = {
  type: 'object',
  description: 'Present in every answer.',
  properties: {
    site: { type: 'string' },
    from: {
      type: 'string',
      format: 'date-time',
      description: 'Start of the range answered (whole windows).',
    },
    to: { type: 'string', format: 'date-time', description: 'End (exclusive) of the range answered.' },
    requested: { type: 'object', description: 'The range asked for, when it was widened to whole windows.' },
    interval: { type: 'string' },
    property: { type: 'string' },
    filters: { type: 'array', items: { type: 'object' } },
    segments: {
      type: 'array',
      description: 'The windows read: whole days inside the range, hours and minutes at its edges.',
      items: { type: 'object' },
    },
    complete_through: {
      type: ['string', 'null'],
      format: 'date-time',
      description:
        'Windows ending at or before this are complete in the stream: every on-time event is counted and no on-time event can change them; only a batch rebuild (late data) can still revise them. min over the stream partitions of (checkpoint watermark − grace), floored to the minute; null before the stream has checkpointed.',
    },
    freshness: {
      type: 'object',
      properties: {
        received_through: { type: ['string', 'null'], format: 'date-time' },
        grace_ms: { type: 'integer' },
        partitions_reporting: { type: 'integer' },
        partitions_expected: { type: 'integer' },
      },
    },
    windows: {
      type: 'object',
      description:
        'What the windows of the range were made of. status final = rebuilt by batch; closed = stream, ended before complete_through; open = stream, still counting. closed and open are provisional.',
      properties: {
        count: { type: 'integer' },
        final: { type: 'integer' },
        provisional: { type: 'integer' },
        open: { type: 'integer' },
        ranges: {
          type: 'array',
          items: {
            type: 'object',
            properties: {
              from: { type: 'string' },
              to: { type: 'string' },
              status: { enum: ['final', 'closed', 'open'] },
            },
          },
        },
      },
    },
    time_zone: {
      type: 'object',
      description:
        "Present for a site whose time zone is not UTC. zone (IANA name), offset (at the range's start), day_edges: `exact` (the range's days are local days, assembled from hour windows, and minute windows where the zone's midnight is not a whole hour), `rounded_to_hour` (midnight is not a whole hour here and minute windows cannot answer: breakdowns, filtered queries, or beyond the minute retention — day edges floored to the hour), `rounded_to_day` (beyond the hour retention: floored to the UTC day); note says which.",
      properties: {
        zone: { type: 'string' },
        offset: { type: 'string', example: '+05:30' },
        day_edges: { enum: ['exact', 'rounded_to_hour', 'rounded_to_day'] },
        note: { type: 'string' },
      },
    },
    comparison: {
      type: 'object',
      description:
        'With `compare`: mode, the range compared with (from, to, requested), its windows and time_zone.',
      properties: {
        mode: { enum: ['previous_period', 'year_over_year'] },
        from: { type: 'string', format: 'date-time' },
        to: { type: 'string', format: 'date-time' },
        requested: { type: 'object' },
        windows: { type: 'object' },
        time_zone: { type: 'object' },
      },
    },
    metrics: {
      type: 'object',
      description:
        'Per metric: approximate false, or for visitors the HyperLogLog precision, relative standard error 1.04/sqrt(2^p) and error bound (3 standard errors).',
    },
  },
}

/** The querystring of an endpoint: the parameters it takes (ENDPOINT_PARAMS), `site` required. */
function querystring(endpoint: Endpoint, limits: QueryLimits): Json {
  const all = parameters(limits)
  return {
    type: 'object',
    required: ['site'],
    properties: Object.fromEntries(ENDPOINT_PARAMS[endpoint].map((p) => [p, all[p]])),
  }
}

const PARAMETER_ERRORS: readonly ErrorName[] = [
  'BAD_PARAMETER',
  'MISSING_PARAMETER',
  'UNKNOWN_PARAMETER',
  'RANGE_TOO_LARGE',
  'FILTER_UNSUPPORTED',
  'BREAKDOWN_NOT_KEPT',
  'BEYOND_RETENTION',
]
const READ_ERRORS: readonly ErrorName[] = [
  ...PARAMETER_ERRORS,
  'MISSING_READ_TOKEN',
  'INVALID_READ_TOKEN',
  'WRONG_SITE',
  'SITES_UNAVAILABLE',
  ...SERVER_ERRORS,
]
const READ_ERROR_TEXT: Record<number, string> = {
  400: 'A parameter is missing, malformed or not answerable; `where` names it.',
  401: 'No read token, or an unknown or revoked one.',
  403: 'The read token belongs to another site.',
  503: 'The read tokens cannot be checked right now; retry.',
}

export const READ_TOKEN_SCHEMES: Record<string, Json> = {
  readToken: { type: 'http', scheme: 'bearer', description: 'A read token of the site (rt_…).' },
}
const SECURITY = [{ readToken: [] }]

const METRIC_VALUES = {
  type: 'object',
  additionalProperties: { type: 'object', properties: { value: { type: 'integer' } } },
  example: { visitors: { value: 1234 }, pageviews: { value: 5678 } },
}

/** Aggregate results: with `compare`, each metric carries the comparison and the change. */
const AGGREGATE_VALUES = {
  type: 'object',
  description:
    'Per metric {value}; with `compare` {value, comparison_value, change}: change in percent from comparison_value, rounded, null when comparison_value is 0.',
  additionalProperties: {
    type: 'object',
    required: ['value'],
    properties: {
      value: { type: 'number' },
      comparison_value: { type: 'number' },
      change: { type: ['integer', 'null'] },
    },
  },
  example: {
    visitors: { value: 1234, comparison_value: 1000, change: 23 },
    pageviews: { value: 5678, comparison_value: 0, change: null },
  },
}

const STATS: Record<'aggregate' | 'timeseries' | 'breakdown' | 'realtime', [string, string, Json]> = {
  aggregate: [
    'Totals over a range',
    "Events, pageviews and bot events summed over the windows of the range; visitors from the merged HyperLogLog registers of all of them (never a sum). Periods and dates follow the site's time zone. With `compare`, the same for the range compared with.",
    AGGREGATE_VALUES,
  ],
  timeseries: [
    'One point per window',
    "Every window of the interval in the range, empty ones included, each with its status (final, closed, open). `date` is the window's start in the site's time zone with its offset (`2026-03-08T00:00:00.000-05:00`; UTC: `…Z`). With interval=day in a zone other than UTC a point is a local day (23 or 25 hours across a daylight-saving change) assembled from hour windows (and minute windows where midnight is not a whole hour), visitors merged per day. With `compare`: `comparison` and `change` per point.",
    {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          date: { type: 'string', format: 'date-time' },
          status: { type: 'string' },
          comparison: {
            type: ['object', 'null'],
            description:
              'With `compare`: {date, status, metrics…} of the point at the same position of the other range.',
          },
          change: {
            type: 'object',
            description: 'With `compare`: per metric, the change in percent (null when the comparison is 0).',
            additionalProperties: { type: ['integer', 'null'] },
          },
        },
        additionalProperties: { type: 'number' },
      },
    },
  ],
  breakdown: [
    'Top values of a property',
    'Per value of `property` over the range (hour and day windows), sorted by the first metric descending, then by value. meta.total_values counts the rows before paging. For a capped property (a custom property `prop:KEY`, path, referrer, source, utm_*), meta.values_capped says whether values beyond meta.values_max per window were counted under `(other)` (the values kept are those with the smallest hash, the same in the stream and a rebuild); entry_page and exit_page keep the pages among the kept paths of the UTC days of the range (meta.values_capped: the page of a visit was folded); events without the key of a custom property are under `(none)`.',
    {
      type: 'array',
      items: { type: 'object', example: { path: '/pricing', visitors: 120, pageviews: 300 } },
    },
  ],
  realtime: [
    'The last minutes',
    'Totals over the last `minutes` minute windows (default 5), the current one included.',
    METRIC_VALUES,
  ],
}

/** The schema of GET /v1/stats/<endpoint>. */
export function statsSchema(endpoint: keyof typeof STATS, limits: QueryLimits): Json {
  const [summary, description, results] = STATS[endpoint]
  return {
    operationId: endpoint,
    summary,
    description,
    tags: ['stats'],
    security: SECURITY,
    querystring: querystring(endpoint, limits),
    response: {
      200: {
        description: 'The numbers and meta.',
        type: 'object',
        required: ['results', 'meta'],
        properties: { results, meta: META },
      },
      ...errorResponses(READ_ERRORS, READ_ERROR_TEXT),
    },
  }
}

const STREAMED = {
  'application/x-ndjson': { schema: { type: 'string' } },
  'application/vnd.apache.arrow.stream': { schema: { type: 'string', format: 'binary' } },
}
const CSV = { 'text/csv': { schema: { type: 'string' } } }

/** The schema of GET /v1/export/aggregates. */
export function exportAggregatesSchema(limits: QueryLimits): Json {
  return {
    operationId: 'exportAggregates',
    summary: 'Bulk export of aggregates',
    description:
      'Streams the windows of `interval` in the range that hold data, totals or (with `property`) one row per window and value. With visits=true rows carry the visits that started in the window. NDJSON: a meta line, row lines, an end line {"type":"end","rows":N}. Arrow IPC stream: the meta as JSON in the schema metadata key tally.meta, then record batches.',
    tags: ['exports'],
    security: SECURITY,
    querystring: querystring('export', limits),
    response: {
      200: { description: 'The rows.', content: { ...STREAMED, ...CSV } },
      ...errorResponses(READ_ERRORS, READ_ERROR_TEXT),
    },
  }
}

/** The schema of GET /v1/export/events. */
export function exportEventsSchema(limits: QueryLimits): Json {
  return {
    operationId: 'exportEvents',
    summary: 'Bulk export of raw events',
    description:
      'Streams the events of the site whose event time (`timestamp`) is in [from, to), exactly (no widening), read from the archive of the raw log (Arrow segments by event hour and partition). A range is required (from/to or period); at most 744 hours by default (TALLY_ERR_RANGE_TOO_LARGE beyond). Duplicates (same messageId) are removed: of the copies among the event hours read, the first the log received (lowest partition, offset) is the event. Order: event hour, then partition and offset. meta: complete_through is the receive time through which the archive holds every event (events received later may be missing; null while a partition has archived nothing), archive (per-partition progress), segments, duplicates. NDJSON: a meta line {"type":"meta",…}, one line per event {"type":"event","partition","offset","traceparent","request_id","event":<the raw event as ingest wrote it>}, an end line {"type":"end","events":N}; an error after the answer started ends the body with {"type":"error","code","message","events"} instead of the end line, so a body without its end line is incomplete. Arrow IPC stream: the meta as JSON in the schema metadata key tally.meta; columns site, message_id, message_id_assigned, type, timestamp, received_at, visitor_id, bot, imported, event, path, referrer, utm_source, browser, os, device, partition, offset, traceparent, request_id, json (the raw event); an error after the answer started aborts the connection before the end of the chunked body (no end-of-stream marker). A corrupt archive segment found before the answer starts is 500 TALLY_ERR_CORRUPT_SEGMENT naming the segment; too many exports at once is 503 TALLY_ERR_EXPORT_BUSY. Answers 501 TALLY_ERR_NOT_IMPLEMENTED when the query role has no archive.',
    tags: ['exports'],
    security: SECURITY,
    querystring: querystring('events', limits),
    response: {
      200: { description: 'The events.', content: STREAMED },
      ...errorResponses(
        [...READ_ERRORS, 'CORRUPT_SEGMENT', 'NOT_IMPLEMENTED', 'EXPORT_BUSY', 'SERVICE_UNAVAILABLE'],
        {
          ...READ_ERROR_TEXT,
          500: 'A corrupt archive segment (TALLY_ERR_CORRUPT_SEGMENT; `where` names it), or an unexpected error.',
          501: 'This query role has no archive of raw events.',
          503: 'Too many raw-event exports at once, the archive state cannot be read, or the read tokens cannot be checked; retry.',
        },
      ),
    },
  }
}

/** The schema of GET /v1/sites/:site/props (the dashboard's properties panel reads it). */
export const SITE_PROPS_SCHEMA: Json = {
  operationId: 'siteProps',
  summary: "A site's custom properties",
  description:
    'The custom property keys the site declares (`tally sites props <site> add KEY`), sorted: each is a property `prop:KEY` of breakdowns and filters. Answers 501 TALLY_ERR_NOT_IMPLEMENTED when the query role was given no site store.',
  tags: ['stats'],
  security: SECURITY,
  params: {
    type: 'object',
    required: ['site'],
    properties: {
      site: { type: 'string', description: 'Site id; the bearer token must be a read token of it.' },
    },
  },
  response: {
    200: {
      description: "The site's declared keys.",
      type: 'object',
      required: ['site', 'keys'],
      properties: {
        site: { type: 'string' },
        keys: { type: 'array', items: { type: 'string' }, example: ['plan', 'author'] },
      },
    },
    ...errorResponses(
      [
        'MISSING_READ_TOKEN',
        'INVALID_READ_TOKEN',
        'WRONG_SITE',
        'SITES_UNAVAILABLE',
        'NOT_IMPLEMENTED',
        ...SERVER_ERRORS,
      ],
      { ...READ_ERROR_TEXT, 501: 'This query role has no site store.' },
    ),
  },
}

const STATUS = { type: 'object', required: ['status'], properties: { status: { type: 'string' } } }

export const HEALTHZ_SCHEMA: Json = {
  summary: 'Liveness',
  tags: ['operation'],
  response: { 200: { description: 'ok', ...STATUS } },
}

export const READYZ_SCHEMA: Json = {
  summary: 'Readiness',
  tags: ['operation'],
  response: {
    200: { description: 'The aggregate store answers.', ...STATUS },
    503: { description: 'The aggregate store does not answer now.', ...STATUS },
  },
}

export const QUERY_API = {
  title: 'Tally query API',
  description:
    "Reads analytics aggregates (written by the stream workers and the batch rebuild). Every answer carries meta: the range answered, complete_through, which windows are final or provisional, and the accuracy of each metric. Instants in meta are UTC; periods, dates and daily timeseries follow the site's time zone (UTC without one).",
  securitySchemes: READ_TOKEN_SCHEMES,
  auth: 'Authorization: Bearer <read token>.',
}
