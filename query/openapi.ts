import { GRANULARITIES } from '../core/aggregate/definition.js'
import {
  DEFAULT_METRICS,
  ENDPOINT_PARAMS,
  ENTRY_EXIT_DEFAULT_METRICS,
  ENTRY_EXIT_METRICS,
  type Endpoint,
  EXPORT_FORMATS,
  METRICS,
  PROPERTIES,
  VISIT_PROPERTIES,
} from './params.js'
import type { QueryLimits } from './stats.js'

/**
 * The OpenAPI 3.1 document of the query API, written by hand from the same constants the routes
 * validate with (metrics, properties, intervals, limits), served at /docs/openapi.json with a
 * plain HTML rendering at /docs.
 */

type Json = Record<string, unknown>

function parameters(limits: QueryLimits): Record<string, Json> {
  const q = (name: string, description: string, schema: Json, required = false): Json => ({
    name,
    in: 'query',
    required,
    description,
    schema,
  })
  return {
    site: q('site', 'Site id. The bearer token must be a read token of this site.', { type: 'string' }, true),
    period: q(
      'period',
      'Named range, in UTC, relative to `date` (default today): `day`, `Nd` (the N days ending with that day, e.g. 7d, 30d), `Nh` (the N hours ending with the current hour), `month`, `Nmo` (e.g. 6mo, 12mo, calendar months ending with the current one), `year`. Default 30d. Not with from/to.',
      { type: 'string', pattern: '^(day|today|month|year|[1-9][0-9]{0,3}(d|h|mo))$', default: '30d' },
    ),
    date: q('date', 'Reference day of `period` (YYYY-MM-DD); default today (UTC).', {
      type: 'string',
      format: 'date',
    }),
    from: q(
      'from',
      'Start (inclusive): ISO 8601 date (UTC day) or date-time with a zone. With `to`; not with `period`. The range is widened to whole windows; `meta.from`/`meta.to` give the range answered.',
      { type: 'string' },
    ),
    to: q(
      'to',
      'End (exclusive): ISO 8601 date-time with a zone, or a date, meaning the end of that day (inclusive day).',
      { type: 'string' },
    ),
    interval: q(
      'interval',
      `Window size of a timeseries or export. Default: hour for ranges up to 2 days (minute for period=Nh with N ≤ 3), else day; export: hour. At most ${limits.maxPoints.minute} minute, ${limits.maxPoints.hour} hour, ${limits.maxPoints.day} day windows per timeseries.`,
      { type: 'string', enum: [...GRANULARITIES] },
    ),
    metrics: q(
      'metrics',
      `Comma-separated, from ${METRICS.join(', ')}. Default ${DEFAULT_METRICS.join(',')}. \`visitors\` is approximate (HyperLogLog; see meta.metrics), the others exact. A breakdown sorts by the first metric, descending. Visits (counted in the window where they started): \`visits\`, \`bounce_rate\` (percent of visits with one pageview and no other event), \`visit_duration\` (mean seconds), \`views_per_visit\`; by property only with ${VISIT_PROPERTIES.join(', ')}. entry_page and exit_page take ${ENTRY_EXIT_METRICS.join(', ')} (pageviews of the visits), default ${ENTRY_EXIT_DEFAULT_METRICS.join(',')}. Windows written before visits were counted show none (meta.visits names them).`,
      { type: 'string', example: 'visitors,pageviews,events,bot_events' },
    ),
    property: q('property', 'Dimension to break down by (required for breakdown).', {
      type: 'string',
      enum: [...PROPERTIES],
    }),
    filters: q(
      'filters',
      `Equality filters \`property==value\`; \`property==a|b\` matches either; separate filters with \`;\`; a backslash escapes \`;\`, \`|\` or a backslash in a value. Aggregates are stored per single property, so what is answered exactly is: one filter for aggregate and timeseries (timeseries with interval hour or day), and for breakdown a filter on the breakdown's own property. Other combinations get 400 TALLY_ERR_FILTER_UNSUPPORTED. At most ${limits.maxFilterValues} values.`,
      { type: 'string', example: 'path==/pricing|/signup' },
    ),
    limit: q('limit', `Rows per page of a breakdown, 1–${limits.maxLimit}.`, {
      type: 'integer',
      minimum: 1,
      maximum: limits.maxLimit,
      default: limits.defaultLimit,
    }),
    page: q('page', 'Page of a breakdown (1-based).', { type: 'integer', minimum: 1, default: 1 }),
    minutes: q('minutes', 'Minutes of realtime, the current one included.', {
      type: 'integer',
      minimum: 1,
      maximum: limits.maxRealtimeMinutes,
      default: 5,
    }),
    format: q('format', 'Export format.', { type: 'string', enum: [...EXPORT_FORMATS], default: 'ndjson' }),
    sketches: q('sketches', 'Include the HyperLogLog registers of each row (visitors_sketch).', {
      type: 'boolean',
      default: false,
    }),
    visits: q(
      'visits',
      'Include the visits that started in each window: sums visits, bounces, visit_duration_ms, visit_pageviews (add them up to merge rows) and rates bounce_rate, visit_duration, views_per_visit; null for windows written before visits were counted.',
      { type: 'boolean', default: false },
    ),
  }
}

const ERROR = {
  type: 'object',
  required: ['success', 'code', 'message', 'requestId'],
  properties: {
    success: { const: false },
    code: {
      type: 'string',
      description:
        'TALLY_ERR_BAD_PARAMETER, TALLY_ERR_MISSING_PARAMETER, TALLY_ERR_UNKNOWN_PARAMETER, TALLY_ERR_RANGE_TOO_LARGE, TALLY_ERR_FILTER_UNSUPPORTED, TALLY_ERR_BEYOND_RETENTION, TALLY_ERR_MISSING_READ_TOKEN, TALLY_ERR_INVALID_READ_TOKEN, TALLY_ERR_WRONG_SITE, TALLY_ERR_CORRUPT_SEGMENT, TALLY_ERR_EXPORT_BUSY, TALLY_ERR_NOT_IMPLEMENTED, …',
    },
    message: { type: 'string' },
    where: { type: 'string', description: 'The parameter (or header) at fault.' },
    requestId: { type: 'string' },
  },
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
    metrics: {
      type: 'object',
      description:
        'Per metric: approximate false, or for visitors the HyperLogLog precision, relative standard error 1.04/sqrt(2^p) and error bound (3 standard errors).',
    },
  },
}

function stats(endpoint: Endpoint, summary: string, description: string, results: Json): Json {
  return {
    get: {
      operationId: endpoint,
      summary,
      description,
      security: [{ readToken: [] }],
      parameters: ENDPOINT_PARAMS[endpoint].map((p) => ({ $ref: `#/components/parameters/${p}` })),
      responses: {
        200: {
          description: 'The numbers and meta.',
          content: {
            'application/json': {
              schema: {
                type: 'object',
                required: ['results', 'meta'],
                properties: { results, meta: { $ref: '#/components/schemas/Meta' } },
              },
            },
          },
        },
        400: { $ref: '#/components/responses/BadParameter' },
        401: { $ref: '#/components/responses/Unauthorized' },
        403: { $ref: '#/components/responses/Forbidden' },
      },
    },
  }
}

const METRIC_VALUES = {
  type: 'object',
  additionalProperties: { type: 'object', properties: { value: { type: 'integer' } } },
  example: { visitors: { value: 1234 }, pageviews: { value: 5678 } },
}

export function openApiDocument(limits: QueryLimits): Json {
  const errorResponse = (description: string) => ({
    description,
    content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
  })
  return {
    openapi: '3.1.0',
    info: {
      title: 'Tally query API',
      version: '1',
      description:
        'Reads analytics aggregates (written by the stream workers and the batch rebuild). Every answer carries meta: the range answered, complete_through, which windows are final or provisional, and the accuracy of each metric. All times are UTC.',
    },
    servers: [{ url: '/' }],
    components: {
      securitySchemes: {
        readToken: { type: 'http', scheme: 'bearer', description: 'A read token of the site (rt_…).' },
      },
      parameters: parameters(limits),
      schemas: { Error: ERROR, Meta: META },
      responses: {
        BadParameter: errorResponse('A parameter is missing, malformed or not answerable; `where` names it.'),
        Unauthorized: errorResponse('No read token, or an unknown or revoked one.'),
        Forbidden: errorResponse('The read token belongs to another site.'),
      },
    },
    paths: {
      '/v1/stats/aggregate': stats(
        'aggregate',
        'Totals over a range',
        'Events, pageviews and bot events summed over the windows of the range; visitors from the merged HyperLogLog registers of all of them (never a sum).',
        METRIC_VALUES,
      ),
      '/v1/stats/timeseries': stats(
        'timeseries',
        'One point per window',
        'Every window of the interval in the range, empty ones included, each with its status (final, closed, open).',
        {
          type: 'array',
          items: {
            type: 'object',
            properties: { date: { type: 'string', format: 'date-time' }, status: { type: 'string' } },
            additionalProperties: { type: 'integer' },
          },
        },
      ),
      '/v1/stats/breakdown': stats(
        'breakdown',
        'Top values of a property',
        'Per value of `property` over the range (hour and day windows), sorted by the first metric descending, then by value. meta.total_values counts the rows before paging.',
        {
          type: 'array',
          items: { type: 'object', example: { path: '/pricing', visitors: 120, pageviews: 300 } },
        },
      ),
      '/v1/stats/realtime': stats(
        'realtime',
        'The last minutes',
        'Totals over the last `minutes` minute windows (default 5), the current one included.',
        METRIC_VALUES,
      ),
      '/v1/export/aggregates': {
        get: {
          operationId: 'exportAggregates',
          summary: 'Bulk export of aggregates',
          description:
            'Streams the windows of `interval` in the range that hold data, totals or (with `property`) one row per window and value. With visits=true rows carry the visits that started in the window. NDJSON: a meta line, row lines, an end line {"type":"end","rows":N}. Arrow IPC stream: the meta as JSON in the schema metadata key tally.meta, then record batches.',
          security: [{ readToken: [] }],
          parameters: ENDPOINT_PARAMS.export.map((p) => ({ $ref: `#/components/parameters/${p}` })),
          responses: {
            200: {
              description: 'The rows.',
              content: {
                'application/x-ndjson': { schema: { type: 'string' } },
                'application/vnd.apache.arrow.stream': { schema: { type: 'string', format: 'binary' } },
              },
            },
            400: { $ref: '#/components/responses/BadParameter' },
            401: { $ref: '#/components/responses/Unauthorized' },
            403: { $ref: '#/components/responses/Forbidden' },
          },
        },
      },
      '/v1/export/events': {
        get: {
          operationId: 'exportEvents',
          summary: 'Bulk export of raw events',
          description:
            'Streams the events of the site whose event time (`timestamp`) is in [from, to), exactly (no widening), read from the archive of the raw log (Arrow segments by event hour and partition). A range is required (from/to or period); at most 744 hours by default (TALLY_ERR_RANGE_TOO_LARGE beyond). Duplicates (same messageId) are removed: of the copies among the event hours read, the first the log received (lowest partition, offset) is the event. Order: event hour, then partition and offset. meta: complete_through is the receive time through which the archive holds every event (events received later may be missing; null while a partition has archived nothing), archive (per-partition progress), segments, duplicates. NDJSON: a meta line {"type":"meta",…}, one line per event {"type":"event","partition","offset","traceparent","request_id","event":<the raw event as ingest wrote it>}, an end line {"type":"end","events":N}; an error after the answer started ends the body with {"type":"error","code","message","events"} instead of the end line, so a body without its end line is incomplete. Arrow IPC stream: the meta as JSON in the schema metadata key tally.meta; columns site, message_id, message_id_assigned, type, timestamp, received_at, visitor_id, bot, imported, event, path, referrer, utm_source, browser, os, device, partition, offset, traceparent, request_id, json (the raw event); an error after the answer started aborts the connection before the end of the chunked body (no end-of-stream marker). A corrupt archive segment found before the answer starts is 500 TALLY_ERR_CORRUPT_SEGMENT naming the segment; too many exports at once is 503 TALLY_ERR_EXPORT_BUSY. Answers 501 TALLY_ERR_NOT_IMPLEMENTED when the query role has no archive.',
          security: [{ readToken: [] }],
          parameters: ENDPOINT_PARAMS.events.map((p) => ({ $ref: `#/components/parameters/${p}` })),
          responses: {
            200: {
              description: 'The events.',
              content: {
                'application/x-ndjson': { schema: { type: 'string' } },
                'application/vnd.apache.arrow.stream': { schema: { type: 'string', format: 'binary' } },
              },
            },
            400: { $ref: '#/components/responses/BadParameter' },
            401: { $ref: '#/components/responses/Unauthorized' },
            403: { $ref: '#/components/responses/Forbidden' },
            500: errorResponse('A corrupt archive segment (TALLY_ERR_CORRUPT_SEGMENT; `where` names it).'),
            501: errorResponse('This query role has no archive of raw events.'),
            503: errorResponse(
              'Too many raw-event exports at once, or the archive state cannot be read; retry.',
            ),
          },
        },
      },
      '/healthz': { get: { summary: 'Liveness', responses: { 200: { description: 'ok' } } } },
      '/metrics': { get: { summary: 'Prometheus metrics', responses: { 200: { description: 'text' } } } },
    },
  }
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

/** A plain, script-free HTML rendering of the document. */
export function openApiHtml(doc: Json): string {
  const paths = doc.paths as Record<string, Record<string, Json>>
  const params = (doc.components as { parameters: Record<string, Json> }).parameters
  const sections = Object.entries(paths).map(([path, ops]) =>
    Object.entries(ops)
      .map(([method, op]) => {
        const list = ((op.parameters as Array<{ $ref: string }> | undefined) ?? [])
          .map((p) => params[p.$ref.split('/').pop()!]!)
          .map(
            (p) =>
              `<li><code>${escapeHtml(String(p.name))}</code>${p.required ? ' (required)' : ''}: ${escapeHtml(String(p.description))}</li>`,
          )
          .join('')
        return `<section><h2><code>${method.toUpperCase()} ${escapeHtml(path)}</code></h2><p><b>${escapeHtml(
          String(op.summary ?? ''),
        )}</b>. ${escapeHtml(String(op.description ?? ''))}</p>${list ? `<ul>${list}</ul>` : ''}</section>`
      })
      .join(''),
  )
  const info = doc.info as { title: string; description: string }
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(info.title)}</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}code{background:#f3f3f3;padding:0 .2em}</style>
</head><body><h1>${escapeHtml(info.title)}</h1><p>${escapeHtml(info.description)}</p>
<p>Machine-readable: <a href="/docs/openapi.json">/docs/openapi.json</a> (OpenAPI 3.1). Auth: <code>Authorization: Bearer &lt;read token&gt;</code>.</p>
${sections.join('\n')}</body></html>`
}
