import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify'
import { ERR } from '../../core/error-codes.js'
import { TallyError } from '../../core/errors.js'
import type { Site } from '../../core/ports/site-store.js'
import type { DailySalt } from '../daily-salt.js'
import type { IngestMetrics } from '../metrics.js'
import {
  cookielessVisitorId,
  type PlausibleErrors,
  parsePlausibleBody,
  segmentPayloadOf,
} from '../plausible.js'
import type { SiteCache } from '../site-cache.js'

export interface PlausibleRouteOptions {
  /** Domain → site; undefined: no domain is known (every event is dropped as Plausible drops them). */
  sites: Pick<SiteCache, 'byDomain'> | undefined
  salt: Pick<DailySalt, 'current'> | undefined
  metrics: IngestMetrics
}

const text = (description: string) => ({ type: 'string', description })

const BODY = {
  type: 'object',
  description:
    "Plausible's event: the long form (`name`, `url`, `domain`, …) or the short form its script and `@plausible-analytics/tracker` send (`n`, `u`, `d`, …).",
  properties: {
    name: text('Event name (or `n`): `pageview` is a page view, anything else a custom event.'),
    url: text('URL of the page (or `u`); its path is the page path.'),
    domain: text(
      "The site's domain or one of its aliases (or `d`); several comma-separated send to each. Default: the URL's host.",
    ),
    referrer: text('Referrer (or `r`).'),
    props: {
      type: ['object', 'string'],
      additionalProperties: true,
      description:
        'Custom properties (or `p`; `m`/`meta` as JSON text): scalar values; empty or blank values and blank keys dropped, as Plausible drops them.',
    },
    revenue: {
      type: 'object',
      description: 'Revenue (or `$`): `{amount, currency}`, kept as properties `revenue` and `currency`.',
      properties: { amount: { type: ['number', 'string'] }, currency: { type: 'string' } },
    },
    interactive: { type: 'boolean', description: 'false (or `i: false`): a non-interactive event.' },
    hashMode: { type: 'integer', description: '1 (or `h: 1`): the URL fragment is part of the path.' },
  },
  additionalProperties: true,
}

const PLAUSIBLE_ERROR = {
  description:
    "Plausible's answer to a body it cannot take: `errors` maps each field (`request`, `event_name`, `url`, `domain`, `pathname`, `referrer`) to its messages. Nothing is logged.",
  content: {
    'application/json': {
      schema: {
        type: 'object',
        required: ['errors'],
        properties: {
          errors: { type: 'object', additionalProperties: { type: 'array', items: { type: 'string' } } },
        },
      },
    },
  },
}

function answerErrors(reply: FastifyReply, errors: PlausibleErrors): FastifyReply {
  return reply.status(400).header('access-control-allow-origin', '*').send({ errors })
}

/**
 * POST /api/event: Plausible's event API, so its script and npm tracker work unmodified with
 * Tally's ingest as their endpoint. The site is the one whose domain or alias the event names; the
 * visitor id is cookieless (a hash of the day's salt, the site, the IP and the user agent; the IP
 * goes no further). Answered as Plausible answers: 202 `ok` once the log has the event, 202 too
 * for a domain no site has (nothing logged, counted in a metric), 400 `{"errors": …}` for a body
 * it cannot take.
 */
export async function plausibleRoute(app: FastifyInstance, options: PlausibleRouteOptions): Promise<void> {
  const { metrics } = options
  app.post(
    '/api/event',
    {
      schema: {
        summary: "Plausible's event API",
        description:
          "Plausible's `POST /api/event`, for its script and `@plausible-analytics/tracker` pointed at this ingest. The site is found by the domain (its own or an alias, `tally sites alias`); the visitor id is a hash of a daily salt, the site, the IP and the user agent (no cookie, the IP not kept). `pageview` becomes a page event, other names a track event.",
        tags: ['events'],
        consumes: ['application/json', 'text/plain'],
        body: BODY,
        response: {
          202: {
            description:
              'Taken (`ok`): in the raw log, or dropped as Plausible drops it (a domain no site has; `x-plausible-dropped` says how many).',
            content: { 'text/plain': { schema: { type: 'string', enum: ['ok'] } } },
          },
          400: PLAUSIBLE_ERROR,
        },
      },
      // Plausible's clients read Plausible's error shape: a body that is no JSON object is answered
      // so. Other errors (too large, rate limited, log unavailable) keep Tally's answer.
      errorHandler: (error: FastifyError, _req, reply) => {
        if (error instanceof TallyError ? error.code === ERR.MALFORMED_JSON : error.statusCode === 400) {
          metrics.rejections.inc({ code: ERR.MALFORMED_JSON })
          return answerErrors(reply, { request: ['Unable to parse request body as json'] })
        }
        throw error
      },
    },
    async (req, reply) => {
      const parsed = parsePlausibleBody(req.body)
      if (!parsed.ok) {
        metrics.rejections.inc({ code: ERR.INVALID_EVENT })
        return answerErrors(reply, parsed.errors)
      }
      const event = parsed.event
      void reply.header('access-control-allow-origin', '*')
      // The tracker's engagement pings (time on page, scroll depth) are no event: not kept yet.
      if (event.name === 'engagement') {
        metrics.plausibleDropped.inc({ reason: 'engagement' })
        return reply.status(202).type('text/plain').send('ok')
      }
      const sites: Site[] = []
      for (const domain of event.domains) {
        const site = await options.sites?.byDomain(domain).catch((err: unknown) => {
          throw new TallyError(ERR.SITES_UNAVAILABLE, 'cannot look the domain up right now', {
            retriable: true,
            cause: err,
          })
        })
        if (site && !sites.some((s) => s.siteId === site.siteId)) sites.push(site)
      }
      const dropped = event.domains.length - sites.length
      if (dropped > 0) {
        metrics.plausibleDropped.inc({ reason: 'unknown_domain' }, dropped)
        void reply.header('x-plausible-dropped', String(dropped))
      }
      if (sites.length > 0) {
        const salt = await options.salt!.current().catch((err: unknown) => {
          throw new TallyError(ERR.SITES_UNAVAILABLE, 'cannot read the daily salt right now', {
            retriable: true,
            cause: err,
          })
        })
        // The peer, or the X-Forwarded-For hop TALLY_TRUST_PROXY believes (a client-sent one is
        // not believed without it: one client could count as any number of visitors).
        const ip = req.ip
        const userAgent = req.headers['user-agent'] ?? ''
        for (const site of sites) {
          await app.appendEvents(req, reply, {
            site,
            endpoint: 'plausible',
            items: [segmentPayloadOf(event, cookielessVisitorId(salt, site.siteId, ip, userAgent))],
            routeType: undefined,
            batchSentAt: undefined,
            imported: false,
          })
        }
      }
      return reply.status(202).type('text/plain').send('ok')
    },
  )
}
