import cors from '@fastify/cors'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { SiteCache } from '../site-cache.js'

export interface CorsOptions {
  sites: Pick<SiteCache, 'isKnownOrigin'>
}

/**
 * Preflights carry no key, so they are answered for any origin some site allows; the real request
 * is then checked against its own site's origins (plugins/auth.ts).
 */
async function ingestCors(app: FastifyInstance, options: CorsOptions): Promise<void> {
  await app.register(cors, {
    origin: (origin, cb) => {
      if (!origin) return cb(null, false)
      options.sites.isKnownOrigin(origin).then(
        (ok) => cb(null, ok),
        (err: Error) => cb(err, false),
      )
    },
    methods: ['GET', 'POST', 'OPTIONS'],
    allowedHeaders: ['content-type', 'content-encoding', 'authorization', 'x-request-id', 'traceparent'],
    exposedHeaders: ['x-request-id', 'retry-after', 'x-ratelimit-reset'],
    maxAge: 86_400,
  })
}

export const corsPlugin = fp(ingestCors, { name: 'tally-ingest-cors' })
