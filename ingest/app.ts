import { randomUUID } from 'node:crypto'
import { Transform } from 'node:stream'
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib'
import cors from '@fastify/cors'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { IngestConfig } from '../core/config.js'
import { ERR } from '../core/error-codes.js'
import { TallyError } from '../core/errors.js'
import { createHttpServer } from '../core/http.js'
import type { Logger } from '../core/log.js'
import type { EventLogWriter, LogRecord } from '../core/ports/event-log.js'
import type { Site } from '../core/ports/site-store.js'
import { toLogRecord } from '../core/record/codec.js'
import { recordHeaders, traceContext } from '../core/record/headers.js'
import type { EventType } from '../schemas/events.js'
import { decodeBody } from './charset.js'
import type { IngestMetrics } from './metrics.js'
import { type IngestLimits, normalizeEvent, type Rejection, rejectionOf } from './normalize.js'
import { PIXEL_GIF, pixelPayload } from './pixel.js'
import { EventRateLimiter } from './rate-limit.js'
import { allowedOrigins, type SiteCache } from './site-cache.js'
import { trackerPlugin } from './tracker/plugin.js'
import { UserAgentParser } from './user-agent.js'

export interface IngestDeps {
  config: IngestConfig
  /** Topic of the raw log. */
  topic: string
  log: EventLogWriter
  sites: Pick<SiteCache, 'byWriteKey' | 'isKnownOrigin'>
  metrics: IngestMetrics
  logger: Logger
}

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

/** The write key sent as the HTTP Basic user name, as server-side sources send it. */
function basicUser(req: FastifyRequest): string | undefined {
  const auth = req.headers.authorization
  if (!auth?.startsWith('Basic ')) return undefined
  const user = Buffer.from(auth.slice(6), 'base64').toString('utf8').split(':')[0]
  return user || undefined
}

function writeKeyOf(req: FastifyRequest, body: Body | undefined): string | undefined {
  const user = basicUser(req)
  if (user) return user
  const fromBody = body?.writeKey
  return typeof fromBody === 'string' && fromBody !== '' ? fromBody : undefined
}

function statusOfRejection(code: string): number {
  return code === ERR.EVENT_TOO_LARGE ? 413 : 400
}

/**
 * The ingest HTTP API (Segment HTTP Tracking API compatible). A 2xx is sent only after the raw log
 * acknowledged every accepted event.
 */
export async function buildIngestApp(deps: IngestDeps): Promise<FastifyInstance> {
  const { config, metrics } = deps
  const app = createHttpServer({
    logger: deps.logger,
    bodyLimit: config.maxBodyBytes,
    requestTimeoutMs: config.requestTimeoutMs,
    maxConnections: config.maxConnections,
    onErrorAnswer: (err) => metrics.rejections.inc({ code: err.code }),
    registry: metrics.registry,
  })
  const limits: IngestLimits = config
  const uaParser = new UserAgentParser()
  const siteLimiter = new EventRateLimiter(config.rateLimitSitePerSec, config.rateLimitSitePerSec * 2)
  const clientLimiter = new EventRateLimiter(config.rateLimitClientPerSec, config.rateLimitClientPerSec * 2)

  // Beacons send text/plain (no CORS preflight); both types carry JSON and share one parser,
  // with prototype-poisoning protection. The body is decoded from its declared charset first.
  app.removeContentTypeParser(['application/json', 'text/plain'])
  const jsonParser = app.getDefaultJsonParser('error', 'error')
  app.addContentTypeParser(['application/json', 'text/plain'], { parseAs: 'buffer' }, (req, bytes, done) => {
    let text: string
    try {
      text = decodeBody(bytes as Buffer, req.headers['content-type'])
    } catch (err) {
      done(err as Error, undefined)
      return
    }
    jsonParser(req, text, done)
  })

  // Compressed bodies are inflated while they are read; Fastify's body limit then applies to the
  // inflated bytes, so a small gzip bomb is cut off at the cap.
  app.addHook('preParsing', (req, _reply, payload, done) => {
    const header = req.headers['content-encoding']
    if (header === undefined) return done(null, payload)
    const encoding = header.toLowerCase().trim()
    if (encoding === 'identity' || encoding === '') return done(null, payload)
    const inflater =
      encoding === 'gzip' || encoding === 'x-gzip'
        ? createGunzip()
        : encoding === 'deflate'
          ? createInflate()
          : encoding === 'br'
            ? createBrotliDecompress()
            : undefined
    if (!inflater) {
      return done(
        new TallyError(
          ERR.UNSUPPORTED_ENCODING,
          `content-encoding ${encoding} is not supported: use gzip, deflate or br`,
          {
            statusCode: 415,
            where: 'content-encoding',
          },
        ),
      )
    }
    let inflatedBytes = 0
    const out = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        inflatedBytes += chunk.length
        // Fastify answers 413 on this same chunk; stop inflating the rest of a bomb, which would
        // otherwise cost about a second of CPU per 500 KB of gzip after the answer went out.
        if (inflatedBytes > config.maxBodyBytes) {
          payload.unpipe(inflater)
          inflater.destroy()
        }
        done(null, chunk)
      },
    }) as Transform & { receivedEncodedLength: number }
    out.receivedEncodedLength = 0
    payload.on('data', (chunk: Buffer) => {
      out.receivedEncodedLength += chunk.length
    })
    inflater.on('error', (err) => out.destroy(err))
    payload.pipe(inflater).pipe(out)
    done(null, out)
  })

  // Before the routes: with a prefix, the plugin aliases every /v1/ route registered after it.
  await app.register(trackerPlugin, { prefix: config.trackerPrefix ?? '' })

  await app.register(cors, {
    // Preflights carry no key, so they are answered for any origin some site allows; the real
    // request is then checked against its own site's origins.
    origin: (origin, cb) => {
      if (!origin) return cb(null, false)
      deps.sites.isKnownOrigin(origin).then(
        (ok) => cb(null, ok),
        (err: Error) => cb(err, false),
      )
    },
    methods: ['GET', 'POST', 'OPTIONS'],
    allowedHeaders: ['content-type', 'content-encoding', 'authorization', 'x-request-id', 'traceparent'],
    exposedHeaders: ['x-request-id', 'retry-after', 'x-ratelimit-reset'],
    maxAge: 86_400,
  })

  app.addHook('onRequest', (_req, _reply, done) => {
    metrics.inFlight.inc()
    done()
  })
  app.addHook('onResponse', (req, reply, done) => {
    metrics.inFlight.dec()
    metrics.requests.inc({ endpoint: req.routeOptions.url ?? 'unknown', status: String(reply.statusCode) })
    done()
  })

  async function authenticate(
    req: FastifyRequest,
    reply: FastifyReply,
    body: Body | undefined,
    siteHint: unknown,
  ): Promise<Site> {
    const writeKey = writeKeyOf(req, body)
    if (!writeKey) {
      throw new TallyError(
        ERR.MISSING_WRITE_KEY,
        'send the write key as the HTTP Basic user name or as writeKey in the body',
        {
          statusCode: 401,
          where: 'authorization',
        },
      )
    }
    const site = await deps.sites.byWriteKey(writeKey).catch((err: unknown) => {
      throw new TallyError(ERR.SITES_UNAVAILABLE, 'cannot check the write key right now', {
        statusCode: 503,
        retriable: true,
        cause: err,
      })
    })
    if (!site)
      throw new TallyError(ERR.INVALID_WRITE_KEY, 'unknown write key', {
        statusCode: 401,
        where: 'authorization',
      })
    const claimed = req.headers['x-tally-site'] ?? siteHint
    if (typeof claimed === 'string' && claimed !== '' && claimed !== site.siteId) {
      throw new TallyError(ERR.WRONG_SITE, `this write key belongs to another site than ${claimed}`, {
        statusCode: 403,
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
            statusCode: 403,
            where: 'origin',
          },
        )
      }
      void reply.header('access-control-allow-origin', origin).header('vary', 'Origin')
    }
    return site
  }

  function rateLimit(req: FastifyRequest, reply: FastifyReply, site: Site, n: number): void {
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
        { statusCode: 429, retriable: true, details: { limit, ratePerSec, retryAfterSec: wait } },
      )
    }
  }

  interface Accepted {
    accepted: number
    rejected: Array<Rejection & { index: number }>
  }

  async function ingest(
    req: FastifyRequest,
    reply: FastifyReply,
    endpoint: string,
    site: Site,
    items: unknown[],
    opts: { routeType: EventType | undefined; batchSentAt: unknown; imported: boolean; shared?: Body },
  ): Promise<Accepted> {
    if (items.length === 0)
      throw new TallyError(ERR.NO_VALID_EVENT, 'the batch is empty', {
        statusCode: 400,
        where: 'batch',
      })
    if (items.length > config.maxBatchEvents) {
      throw new TallyError(
        ERR.TOO_MANY_EVENTS,
        `${items.length} events in one request; the limit is ${config.maxBatchEvents}`,
        {
          statusCode: 413,
          where: 'batch',
        },
      )
    }
    rateLimit(req, reply, site, items.length)
    metrics.batchSize.observe(items.length)
    const receivedAtMs = Date.now()
    // A request authenticated with HTTP Basic comes from a server (a Segment server library, curl):
    // its User-Agent is the sender's, not the visitor's, so only context.userAgent describes the
    // visitor. Browsers (beacons, analytics.js, the pixel) send the key in the body or the URL.
    const userAgent = req.headers.authorization ? undefined : req.headers['user-agent']
    const trace = traceContext(req.headers.traceparent, req.id)
    const headers = recordHeaders(site.siteId, trace, req.id)
    const records: LogRecord[] = []
    const rejected: Array<Rejection & { index: number }> = []
    let clamped = 0
    for (let index = 0; index < items.length; index++) {
      const item = opts.shared ? mergeShared(items[index], opts.shared) : items[index]
      const result = normalizeEvent(
        item,
        {
          siteId: site.siteId,
          userAgent,
          receivedAtMs,
          batchSentAt: opts.batchSentAt,
          routeType: opts.routeType,
          imported: opts.imported,
        },
        limits,
        uaParser,
      )
      if (!result.ok) {
        rejected.push({ index, ...rejectionOf(result) })
        continue
      }
      if (result.event.timestampClamped) clamped++
      records.push(toLogRecord(result.event, headers, receivedAtMs))
    }
    metrics.events.inc({ endpoint, outcome: 'rejected' }, rejected.length)
    const single = items.length === 1
    // A lone event's rejection is the request's error, which the error handler counts.
    if (!(single && records.length === 0)) {
      for (const r of rejected) metrics.rejections.inc({ code: r.code })
    }
    if (records.length === 0) {
      const first = rejected[0]!
      throw new TallyError(
        single ? first.code : ERR.NO_VALID_EVENT,
        single ? first.message : `none of the ${items.length} events is valid`,
        {
          statusCode: single ? statusOfRejection(first.code) : 400,
          ...(first.where ? { where: first.where } : {}),
          details: { rejected },
        },
      )
    }
    const started = process.hrtime.bigint()
    try {
      await deps.log.append(deps.topic, records)
    } catch (err) {
      metrics.events.inc({ endpoint, outcome: 'unavailable' }, records.length)
      throw new TallyError(ERR.LOG_UNAVAILABLE, 'the event log cannot take the write right now; retry', {
        statusCode: 503,
        retriable: true,
        cause: err,
      })
    }
    metrics.produceSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9)
    metrics.events.inc({ endpoint, outcome: 'accepted' }, records.length)
    if (clamped > 0) metrics.timestampsClamped.inc({ endpoint }, clamped)
    req.log.debug(
      {
        site: site.siteId,
        accepted: records.length,
        rejected: rejected.length,
        traceparent: trace.traceparent,
      },
      'events logged',
    )
    return { accepted: records.length, rejected }
  }

  function bodyObject(body: unknown): Body {
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      throw new TallyError(ERR.INVALID_EVENT, 'the body must be a JSON object', { statusCode: 400 })
    }
    return body as Body
  }

  for (const [path, type] of Object.entries(SINGLE)) {
    app.post(`/v1/${path}`, async (req, reply) => {
      const body = bodyObject(req.body)
      const site = await authenticate(req, reply, body, body.siteId)
      const result = await ingest(req, reply, type, site, [body], {
        routeType: type,
        batchSentAt: undefined,
        imported: false,
      })
      return { success: true, ...result }
    })
  }

  for (const path of ['batch', 'b', 'import']) {
    app.post(`/v1/${path}`, async (req, reply) => {
      const body = bodyObject(req.body)
      const site = await authenticate(req, reply, body, body.siteId)
      if (!Array.isArray(body.batch)) {
        throw new TallyError(ERR.INVALID_EVENT, 'batch must be an array of events', {
          statusCode: 400,
          where: '/batch',
        })
      }
      const shared: Body = {}
      if (body.context && typeof body.context === 'object') shared.context = body.context
      if (body.integrations && typeof body.integrations === 'object') shared.integrations = body.integrations
      const result = await ingest(req, reply, path === 'import' ? 'import' : 'batch', site, body.batch, {
        routeType: undefined,
        batchSentAt: body.sentAt,
        imported: path === 'import',
        ...(Object.keys(shared).length > 0 ? { shared } : {}),
      })
      return { success: true, ...result }
    })
  }

  app.get('/v1/pixel.gif', async (req, reply) => {
    const q = req.query as Record<string, string | undefined>
    const payload = pixelPayload(q)
    // Without JavaScript there is no stored id: each hit without `a` counts as its own visitor.
    if (payload.anonymousId === undefined && payload.userId === undefined)
      payload.anonymousId = `px-${randomUUID()}`
    const site = await authenticate(req, reply, { writeKey: q.wk ?? q.writeKey }, q.site)
    await ingest(req, reply, 'pixel', site, [payload], {
      routeType: undefined,
      batchSentAt: undefined,
      imported: false,
    })
    return reply
      .header('content-type', 'image/gif')
      .header('cache-control', 'no-store, max-age=0')
      .send(PIXEL_GIF)
  })

  app.get('/healthz', async () => ({ status: 'ok' }))
  app.get('/readyz', async (_req, reply) => {
    const ready = deps.log.healthy()
    return reply.status(ready ? 200 : 503).send({ status: ready ? 'ready' : 'log unavailable' })
  })
  app.get('/metrics', async (_req, reply) => {
    return reply.header('content-type', metrics.registry.contentType).send(await metrics.registry.metrics())
  })

  return app
}

function mergeShared(item: unknown, shared: Body): unknown {
  if (item === null || typeof item !== 'object' || Array.isArray(item)) return item
  const e = item as Body
  const out: Body = { ...e }
  if (shared.context)
    out.context = { ...(shared.context as Body), ...((e.context as Body | undefined) ?? {}) }
  if (shared.integrations && e.integrations === undefined) out.integrations = shared.integrations
  return out
}
