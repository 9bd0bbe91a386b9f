import type { FastifyInstance, FastifyReply, FastifyRequest, preHandlerAsyncHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import { ERR } from '../../core/error-codes.js'
import { TallyError } from '../../core/errors.js'
import type { Site } from '../../core/ports/site-store.js'
import { allowedOrigins, type SiteCache } from '../site-cache.js'

/** What a request says about its site, besides HTTP Basic: read from its body or its URL. */
export interface Credentials {
  /** The write key sent in the body or the URL (HTTP Basic comes first). */
  writeKey: unknown
  /** The site the sender believes it writes to (`x-tally-site` comes first). */
  siteHint: unknown
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The site of the write key, set by the `authenticate` preHandler (plugins/auth.ts). */
    site: Site | null
  }
  interface FastifyInstance {
    /** A preHandler that authenticates the request by its write key and sets `request.site`. */
    authenticate(credentials: (req: FastifyRequest) => Credentials): preHandlerAsyncHookHandler
  }
}

export interface AuthOptions {
  sites: Pick<SiteCache, 'byWriteKey'>
}

// The last Authorization header decoded and its user: a server-side source sends the same header
// on every request, so most requests skip the base64 decode.
let lastAuthorization: string | undefined
let lastUser: string | undefined

/** The write key sent as the HTTP Basic user name, as server-side sources send it. */
export function basicUser(req: FastifyRequest): string | undefined {
  const auth = req.headers.authorization
  if (!auth?.startsWith('Basic ')) return undefined
  if (auth !== lastAuthorization) {
    lastUser = Buffer.from(auth.slice(6), 'base64').toString('utf8').split(':')[0] || undefined
    lastAuthorization = auth
  }
  return lastUser
}

function writeKeyOf(req: FastifyRequest, given: unknown): string | undefined {
  const user = basicUser(req)
  if (user) return user
  return typeof given === 'string' && given !== '' ? given : undefined
}

/** The site of the request's write key: known, of the site claimed, and from an allowed origin. */
async function authenticate(
  sites: AuthOptions['sites'],
  req: FastifyRequest,
  reply: FastifyReply,
  { writeKey: given, siteHint }: Credentials,
): Promise<Site> {
  const writeKey = writeKeyOf(req, given)
  if (!writeKey) {
    throw new TallyError(
      ERR.MISSING_WRITE_KEY,
      'send the write key as the HTTP Basic user name or as writeKey in the body',
      {
        where: 'authorization',
      },
    )
  }
  const site = await sites.byWriteKey(writeKey).catch((err: unknown) => {
    throw new TallyError(ERR.SITES_UNAVAILABLE, 'cannot check the write key right now', {
      retriable: true,
      cause: err,
    })
  })
  if (!site)
    throw new TallyError(ERR.INVALID_WRITE_KEY, 'unknown write key', {
      where: 'authorization',
    })
  const claimed = req.headers['x-tally-site'] ?? siteHint
  if (typeof claimed === 'string' && claimed !== '' && claimed !== site.siteId) {
    throw new TallyError(ERR.WRONG_SITE, `this write key belongs to another site than ${claimed}`, {
      where: 'site',
    })
  }
  const origin = req.headers.origin
  if (origin) {
    if (!allowedOrigins(site).includes(origin)) {
      throw new TallyError(
        ERR.ORIGIN_NOT_ALLOWED,
        `origin ${origin} is not allowed for site ${site.siteId}`,
        {
          where: 'origin',
        },
      )
    }
    void reply.header('access-control-allow-origin', origin).header('vary', 'Origin')
  }
  return site
}

async function auth(app: FastifyInstance, options: AuthOptions): Promise<void> {
  app.decorateRequest('site', null)
  app.decorate('authenticate', (credentials: (req: FastifyRequest) => Credentials) => {
    const hook: preHandlerAsyncHookHandler = async (req, reply) => {
      req.site = await authenticate(options.sites, req, reply, credentials(req))
    }
    return hook
  })
}

export const authPlugin = fp(auth, { name: 'tally-ingest-auth' })
