import { randomUUID } from 'node:crypto'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { PIXEL_GIF, pixelPayload } from '../pixel.js'
import type { Credentials } from '../plugins/auth.js'
import { PIXEL_ERRORS, PIXEL_SECURITY } from './schemas.js'

type Query = Record<string, string | undefined>

function urlCredentials(req: FastifyRequest): Credentials {
  const q = req.query as Query
  return { writeKey: q.wk ?? q.writeKey, siteHint: q.site }
}

const text = (description: string) => ({ type: 'string', description })

/** GET /v1/pixel.gif: one page view or event from an <img>, for pages without JavaScript. */
export async function pixelRoute(app: FastifyInstance): Promise<void> {
  app.get(
    '/v1/pixel.gif',
    {
      schema: {
        summary: 'Tracking pixel',
        description:
          'One event from an <img> tag; answers a transparent 1×1 GIF. Without `a` or `u` each hit counts as its own visitor.',
        tags: ['events'],
        security: PIXEL_SECURITY,
        querystring: {
          type: 'object',
          properties: {
            wk: text('The write key (or writeKey); see the writeKeyInUrl security scheme.'),
            writeKey: text('The write key.'),
            site: text('The site the key is for.'),
            t: { type: 'string', enum: ['page', 'track'], default: 'page', description: 'Type (or type).' },
            type: { type: 'string', enum: ['page', 'track'] },
            e: text('Event name of a track (or event).'),
            event: text('Event name of a track.'),
            a: text('anonymousId (or anonymousId).'),
            anonymousId: text('anonymousId.'),
            u: text('userId (or userId).'),
            userId: text('userId.'),
            m: text('messageId (or messageId).'),
            messageId: text('messageId.'),
            url: text('Page URL; its path is the path unless `path` is given.'),
            path: text('Page path.'),
            r: text('Referrer (or referrer).'),
            referrer: text('Referrer.'),
            title: text('Page title.'),
            ts: text('Timestamp, ISO 8601 (or timestamp).'),
            timestamp: text('Timestamp, ISO 8601.'),
          },
        },
        response: {
          200: {
            description: 'A transparent 1×1 GIF, not cached.',
            content: { 'image/gif': { schema: { type: 'string', format: 'binary' } } },
          },
          ...PIXEL_ERRORS,
        },
      },
      preHandler: app.authenticate(urlCredentials),
    },
    async (req, reply) => {
      const payload = pixelPayload(req.query as Query)
      // Without JavaScript there is no stored id: each hit without `a` counts as its own visitor.
      if (payload.anonymousId === undefined && payload.userId === undefined)
        payload.anonymousId = `px-${randomUUID()}`
      await app.appendEvents(req, reply, {
        endpoint: 'pixel',
        items: [payload],
        routeType: undefined,
        batchSentAt: undefined,
        imported: false,
      })
      return reply
        .header('content-type', 'image/gif')
        .header('cache-control', 'no-store, max-age=0')
        .send(PIXEL_GIF)
    },
  )
}
