import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { IngestConfig } from '../../core/config.js'
import { ERR } from '../../core/error-codes.js'
import { TallyError } from '../../core/errors.js'
import type { Site } from '../../core/ports/site-store.js'
import { EventRateLimiter } from '../rate-limit.js'
import { basicUser } from './auth.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Takes `n` events from the request's buckets, or throws 429 TALLY_ERR_RATE_LIMITED. */
    limitRate(req: FastifyRequest, reply: FastifyReply, site: Site, n: number): void
  }
}

export type RateLimitOptions = Pick<IngestConfig, 'rateLimitSitePerSec' | 'rateLimitClientPerSec'>

async function rateLimit(app: FastifyInstance, config: RateLimitOptions): Promise<void> {
  const siteLimiter = new EventRateLimiter(config.rateLimitSitePerSec, config.rateLimitSitePerSec * 2)
  const clientLimiter = new EventRateLimiter(config.rateLimitClientPerSec, config.rateLimitClientPerSec * 2)

  app.decorate('limitRate', (req: FastifyRequest, reply: FastifyReply, site: Site, n: number): void => {
    // Browsers (key in the body or the URL) are limited per IP as well, so one visitor cannot use
    // up the site's budget; a server-side source (HTTP Basic: a backend replaying history, a busy
    // server SDK) sends for many visitors from one IP and is limited per site only, as Segment does.
    // The client is checked first and the site only when the client may send, so a refused client
    // does not use up its site's budget; a client refused by the site gets its tokens back.
    const clientKey = basicUser(req) === undefined ? `${site.siteId}|${req.ip}` : undefined
    const clientWait = clientKey === undefined ? 0 : clientLimiter.take(clientKey, n)
    const siteWait = clientWait > 0 ? 0 : siteLimiter.take(site.siteId, n)
    if (clientKey !== undefined && clientWait === 0 && siteWait > 0) clientLimiter.refund(clientKey, n)
    const wait = clientWait > 0 ? clientWait : siteWait
    if (wait > 0) {
      const limit = clientWait > 0 ? 'client' : 'site'
      const ratePerSec = limit === 'client' ? config.rateLimitClientPerSec : config.rateLimitSitePerSec
      void reply.header('retry-after', String(wait)).header('x-ratelimit-reset', String(wait))
      throw new TallyError(
        ERR.RATE_LIMITED,
        limit === 'client'
          ? `rate limit of ${ratePerSec} events/s per client IP of site ${site.siteId} reached; retry in ${wait} s`
          : `rate limit of ${ratePerSec} events/s of site ${site.siteId} reached; retry in ${wait} s`,
        { retriable: true, details: { limit, ratePerSec, retryAfterSec: wait } },
      )
    }
  })
}

export const rateLimitPlugin = fp(rateLimit, { name: 'tally-ingest-rate-limit' })
