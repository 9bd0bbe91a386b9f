import type { ErrorName } from '../../core/error-codes.js'
import { errorResponses, SERVER_ERRORS } from '../../core/openapi.js'

/**
 * JSON schemas of the ingest routes, for the OpenAPI document (core/openapi.ts): they describe,
 * the handlers check (ingest/normalize.ts), so every refusal keeps its own code and `where`.
 */

type Json = Record<string, unknown>

/** One Segment event (the Segment HTTP Tracking API spec); other fields are kept. */
export const EVENT: Json = {
  type: 'object',
  description:
    'A Segment event. Needs anonymousId or userId; track needs event. Other fields are kept as sent (context.ip is dropped).',
  properties: {
    type: { type: 'string', enum: ['track', 'page', 'screen', 'identify', 'group', 'alias'] },
    event: { type: 'string', description: 'Event name (track).' },
    name: { type: 'string', description: 'Page or screen name.' },
    anonymousId: { type: 'string' },
    userId: { type: 'string' },
    messageId: { type: 'string', description: 'Copies of one messageId of one visitor count once.' },
    timestamp: { type: 'string', format: 'date-time' },
    sentAt: { type: 'string', format: 'date-time' },
    properties: { type: 'object', additionalProperties: true },
    traits: { type: 'object', additionalProperties: true },
    context: { type: 'object', additionalProperties: true },
    integrations: { type: 'object', additionalProperties: true },
    groupId: { type: 'string' },
    previousId: { type: 'string' },
  },
  additionalProperties: true,
}

const KEY_IN_BODY: Json = {
  writeKey: { type: 'string', description: 'The write key, when not sent as the HTTP Basic user name.' },
  siteId: { type: 'string', description: 'The site the key is for; 403 if the key is of another site.' },
}

export const SINGLE_BODY: Json = {
  ...EVENT,
  properties: { ...(EVENT.properties as Json), ...KEY_IN_BODY },
}

export const BATCH_BODY: Json = {
  type: 'object',
  required: ['batch'],
  properties: {
    batch: { type: 'array', items: EVENT, description: 'The events (at most TALLY_MAX_BATCH_EVENTS).' },
    context: { type: 'object', additionalProperties: true, description: 'Merged into each event’s context.' },
    integrations: { type: 'object', additionalProperties: true },
    sentAt: { type: 'string', format: 'date-time', description: 'Corrects the events’ clock skew.' },
    ...KEY_IN_BODY,
  },
  additionalProperties: true,
}

/** The answer once every accepted event is in the raw log. */
export const ACCEPTED: Json = {
  description: 'Every accepted event is in the raw log; `rejected` lists the events refused, by index.',
  type: 'object',
  required: ['success', 'accepted', 'rejected'],
  properties: {
    success: { type: 'boolean', enum: [true] },
    accepted: { type: 'integer' },
    rejected: {
      type: 'array',
      items: {
        type: 'object',
        required: ['index', 'code', 'message'],
        properties: {
          index: { type: 'integer' },
          code: { type: 'string' },
          message: { type: 'string' },
          where: { type: 'string' },
        },
      },
    },
  },
}

/** What one event can be refused for (ingest/normalize.ts); a lone event's refusal is the answer. */
const EVENT_ERRORS: readonly ErrorName[] = [
  'INVALID_EVENT',
  'MISSING_FIELD',
  'MISSING_IDENTITY',
  'NESTING_TOO_DEEP',
  'INVALID_TIMESTAMP',
  'TIMESTAMP_TOO_OLD',
  'EVENT_TOO_LARGE',
]

const WRITE_ERRORS: readonly ErrorName[] = [
  'MISSING_WRITE_KEY',
  'INVALID_WRITE_KEY',
  'WRONG_SITE',
  'ORIGIN_NOT_ALLOWED',
  'NO_VALID_EVENT',
  'TOO_MANY_EVENTS',
  'RATE_LIMITED',
  'SITES_UNAVAILABLE',
  'LOG_UNAVAILABLE',
  ...EVENT_ERRORS,
]

const BODY_ERRORS: readonly ErrorName[] = [
  'BAD_REQUEST',
  'MALFORMED_JSON',
  'BAD_ENCODING',
  'PAYLOAD_TOO_LARGE',
  'UNSUPPORTED_MEDIA_TYPE',
  'UNSUPPORTED_ENCODING',
  'UNSUPPORTED_CHARSET',
]

const RETRY =
  '`Retry-After` says when to retry (429: the seconds until the bucket holds the events; `limit`, `ratePerSec` name it).'

/** Error answers of the routes that take a JSON body. */
export const POST_ERRORS = errorResponses([...BODY_ERRORS, ...WRITE_ERRORS, ...SERVER_ERRORS], {
  400: 'A refused request or event; `where` names the field, `rejected` (several events) lists each.',
  429: RETRY,
  503: RETRY,
})

/** Error answers of GET /v1/pixel.gif. */
export const PIXEL_ERRORS = errorResponses(['BAD_REQUEST', ...WRITE_ERRORS, ...SERVER_ERRORS], {
  429: RETRY,
  503: RETRY,
})

/** Server-side sources send the key as the HTTP Basic user; browsers put it in the body (`writeKey`). */
export const WRITE_KEY_SECURITY: Array<Record<string, string[]>> = [{ writeKey: [] }]

/** The pixel takes the key in its URL (`wk`, or `writeKey`). */
export const PIXEL_SECURITY: Array<Record<string, string[]>> = [{ writeKey: [] }, { writeKeyInUrl: [] }]

export const INGEST_SECURITY_SCHEMES: Record<string, Json> = {
  writeKey: {
    type: 'http',
    scheme: 'basic',
    description:
      'HTTP Basic with the write key as the user name (server-side sources); browsers send `writeKey` in the JSON body instead (beacons cannot set headers).',
  },
  writeKeyInUrl: {
    type: 'apiKey',
    in: 'query',
    name: 'wk',
    description: 'The write key in the URL of the pixel (`wk` or `writeKey`).',
  },
}
