import type { FastifyInstance, FastifyRequest } from 'fastify'
import { ERR } from '../../core/error-codes.js'
import { TallyError } from '../../core/errors.js'
import type { EventType } from '../../schemas/events.js'
import type { Credentials } from '../plugins/auth.js'
import { ACCEPTED, BATCH_BODY, POST_ERRORS, SINGLE_BODY, WRITE_KEY_SECURITY } from './schemas.js'

type Body = Record<string, unknown>

const SINGLE: Record<string, EventType> = {
  track: 'track',
  page: 'page',
  screen: 'screen',
  identify: 'identify',
  group: 'group',
  alias: 'alias',
  // analytics.js (analytics-next) posts to the first letter of the type.
  t: 'track',
  p: 'page',
  s: 'screen',
  i: 'identify',
  g: 'group',
  a: 'alias',
}

function bodyObject(body: unknown): Body {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new TallyError(ERR.INVALID_EVENT, 'the body must be a JSON object')
  }
  return body as Body
}

/** The body must be a JSON object (checked before the key); it may carry the key and the site. */
function bodyCredentials(req: FastifyRequest): Credentials {
  const body = bodyObject(req.body)
  return { writeKey: body.writeKey, siteHint: body.siteId }
}

const CONSUMES = ['application/json', 'text/plain']

/**
 * The Segment HTTP Tracking API: one event per request at `/v1/<type>` (and analytics.js'
 * `/v1/<first letter>`), many at `/v1/batch` (`/v1/b`) and `/v1/import` (history: original
 * timestamps kept). A 2xx is sent only after the raw log acknowledged every accepted event.
 */
export async function eventRoutes(app: FastifyInstance): Promise<void> {
  const authenticate = app.authenticate(bodyCredentials)

  for (const [path, type] of Object.entries(SINGLE)) {
    app.post(
      `/v1/${path}`,
      {
        schema: {
          summary: `One ${type} event`,
          description:
            path === type
              ? `Segment's /v1/${type}: the body is one event, of type ${type}.`
              : `analytics.js' short path of /v1/${type}.`,
          tags: ['events'],
          consumes: CONSUMES,
          security: WRITE_KEY_SECURITY,
          body: SINGLE_BODY,
          response: { 200: ACCEPTED, ...POST_ERRORS },
        },
        preHandler: authenticate,
      },
      async (req, reply) => {
        const result = await app.appendEvents(req, reply, {
          endpoint: type,
          items: [req.body],
          routeType: type,
          batchSentAt: undefined,
          imported: false,
        })
        return { success: true, ...result }
      },
    )
  }

  for (const path of ['batch', 'b', 'import']) {
    app.post(
      `/v1/${path}`,
      {
        schema: {
          summary: path === 'import' ? 'Historical events' : 'A batch of events',
          description:
            path === 'import'
              ? 'Events of the past, appended with their original timestamps (at most TALLY_IMPORT_MAX_PAST_DAYS old); the next rebuild counts them.'
              : path === 'b'
                ? "analytics.js' short path of /v1/batch."
                : 'Many events in one request; each is accepted or rejected on its own.',
          tags: ['events'],
          consumes: CONSUMES,
          security: WRITE_KEY_SECURITY,
          body: BATCH_BODY,
          response: { 200: ACCEPTED, ...POST_ERRORS },
        },
        preHandler: authenticate,
      },
      async (req, reply) => {
        const body = req.body as Body
        if (!Array.isArray(body.batch)) {
          throw new TallyError(ERR.INVALID_EVENT, 'batch must be an array of events', {
            where: '/batch',
          })
        }
        const shared: Body = {}
        if (body.context && typeof body.context === 'object') shared.context = body.context
        if (body.integrations && typeof body.integrations === 'object')
          shared.integrations = body.integrations
        const result = await app.appendEvents(req, reply, {
          endpoint: path === 'import' ? 'import' : 'batch',
          items: body.batch,
          routeType: undefined,
          batchSentAt: body.sentAt,
          imported: path === 'import',
          ...(Object.keys(shared).length > 0 ? { shared } : {}),
        })
        return { success: true, ...result }
      },
    )
  }
}
