import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify, {
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyHttpOptions,
  type FastifyInstance,
  LogController,
} from 'fastify'
import type { Registry } from 'prom-client'
import { ERR } from './error-codes.js'
import { TallyError } from './errors.js'
import {
  answerClientError,
  answeredByClientError,
  connectionsCheckingIntervalMs,
  DEFAULT_MAX_CONNECTIONS,
  limitConnections,
  rememberRequestId,
} from './http-limits.js'
import type { Logger } from './log.js'
import { observeHttpRequests, serveMetrics } from './metrics.js'
import { traceIdOrNew } from './record/headers.js'

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

export interface HttpServerOptions {
  logger: Logger
  /** Largest request body accepted (bytes). */
  bodyLimit: number
  /**
   * Time allowed to receive a whole request, headers and body, from its first byte (ms); then the
   * client gets 408 TALLY_ERR_REQUEST_TIMEOUT and the connection is closed.
   */
  requestTimeoutMs: number
  /** Idle keep-alive connections are closed after this. */
  keepAliveTimeoutMs?: number
  /**
   * Most connections held open at once: more are closed as they are accepted, and from 90 % of it
   * idle keep-alive connections are closed first (core/http-limits.ts). Default
   * DEFAULT_MAX_CONNECTIONS.
   */
  maxConnections?: number
  /** Observes every error answer (after mapping), e.g. to count rejections by code. */
  onErrorAnswer?: (err: TallyError) => void
  /** The process registry: every request is timed into its `http_request_duration_seconds`. */
  registry?: Registry
  /**
   * Whose X-Forwarded-For `request.ip` believes (Fastify's trustProxy): a number of proxy hops or
   * a list of proxy addresses/CIDRs. Default: none, the socket's address.
   */
  trustProxy?: number | string[]
}

/** Maps Fastify's own errors to Tally codes so every error body looks the same. */
function mapFastifyError(err: FastifyError): TallyError {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new TallyError(ERR.PAYLOAD_TOO_LARGE, 'request body is larger than the limit', {
        cause: err,
      })
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new TallyError(ERR.UNSUPPORTED_MEDIA_TYPE, 'send application/json or text/plain', {
        where: 'content-type',
        cause: err,
      })
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new TallyError(ERR.MALFORMED_JSON, 'the body is empty', { cause: err })
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new TallyError(ERR.BAD_REQUEST, 'content-length does not match the body', {
        cause: err,
      })
    case 'FST_ERR_VALIDATION':
      return new TallyError(ERR.BAD_PARAMETER, err.message, { cause: err })
  }
  if (err instanceof SyntaxError || (err.statusCode === 400 && /JSON/i.test(err.message))) {
    return new TallyError(ERR.MALFORMED_JSON, `body is not valid JSON: ${err.message}`, {
      cause: err,
    })
  }
  if (err.code === 'Z_DATA_ERROR' || err.code === 'Z_BUF_ERROR') {
    return new TallyError(ERR.BAD_ENCODING, `body is not valid gzip/deflate: ${err.message}`, {
      cause: err,
    })
  }
  const status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500
  return new TallyError(
    status >= 500 ? ERR.INTERNAL : ERR.BAD_REQUEST,
    status >= 500 ? 'internal error' : err.message,
    {
      statusCode: status,
      cause: err,
    },
  )
}

/** At most one log line per this interval and code for 503 answers (a service outage). */
const UNAVAILABLE_LOG_INTERVAL_MS = 10_000

/**
 * Logs a 503 answer at warn, at most once per interval and code, with how many were not logged
 * since: while Kafka or Cassandra is down every request gets one, and the log must stay readable
 * (every answer is still counted in the metrics).
 */
class ThrottledWarning {
  private readonly last = new Map<string, { atMs: number; suppressed: number }>()

  constructor(private readonly intervalMs: number) {}

  log(logger: FastifyBaseLogger, err: TallyError): void {
    const now = Date.now()
    const seen = this.last.get(err.code)
    if (seen && now - seen.atMs < this.intervalMs) {
      seen.suppressed++
      return
    }
    this.last.set(err.code, { atMs: now, suppressed: 0 })
    logger.warn(
      { code: err.code, status: err.statusCode, notLoggedSince: seen?.suppressed ?? 0 },
      `answering 503: ${err.message}`,
    )
  }
}

/**
 * A Fastify instance with Tally's conventions: request id from `x-request-id` or the W3C trace id,
 * echoed back in `x-request-id`; explicit body and time limits; errors as
 * `{success:false, code, message, where, requestId}`.
 */
function trustHops(hops: number): (address: string, hop: number) => boolean {
  return (_address, hop) => hop < hops
}

export function createHttpServer(options: HttpServerOptions): FastifyInstance {
  const { requestTimeoutMs } = options
  const serverOptions: FastifyHttpOptions<Server> = {
    loggerInstance: options.logger,
    bodyLimit: options.bodyLimit,
    http: {
      // Node's headersTimeout defaults to 60 s and, when longer than requestTimeout, Node swaps the
      // two: the whole request got 60 s. Equal, headers and body both end at the request timeout.
      requestTimeout: requestTimeoutMs,
      headersTimeout: requestTimeoutMs,
      connectionsCheckingInterval: connectionsCheckingIntervalMs(requestTimeoutMs),
    },
    requestTimeout: requestTimeoutMs,
    // Inactivity of the socket: ends a connection that sends nothing (Node's request deadlines start
    // at a request's first byte).
    connectionTimeout: requestTimeoutMs,
    keepAliveTimeout: options.keepAliveTimeoutMs ?? 72_000,
    // A hop count as a function: Fastify's types take no number (its runtime does the same).
    trustProxy:
      typeof options.trustProxy === 'number' ? trustHops(options.trustProxy) : (options.trustProxy ?? false),
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    // Per-request access logs would dominate at ingest rates; errors are logged by the handler.
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'requestId' }),
    genReqId: (req) => {
      const given = req.headers['x-request-id']
      const id =
        typeof given === 'string' && REQUEST_ID.test(given) ? given : traceIdOrNew(req.headers.traceparent)
      rememberRequestId(req, id)
      return id
    },
    clientErrorHandler: (error, socket) =>
      answerClientError(error, socket, {
        requestTimeoutMs,
        logger: options.logger,
        onErrorAnswer: options.onErrorAnswer,
      }),
  }
  const app = Fastify(serverOptions) as unknown as FastifyInstance
  limitConnections(app.server, options.maxConnections ?? DEFAULT_MAX_CONNECTIONS, options.logger)
  if (options.registry) observeHttpRequests(app, options.registry)
  // Hooks on every request take a callback rather than returning a promise: at tens of thousands
  // of requests a second the promises show in profiles.
  app.addHook('onRequest', (req, reply, done) => {
    reply.header('x-request-id', req.id)
    done()
  })
  // close() ends the connections idle at that moment; one busy then would stay open after its
  // answer until the client's next request or the keep-alive timeout (longer than the shutdown
  // deadline). Answers sent while closing therefore end their connection.
  let closing = false
  const unavailable = new ThrottledWarning(UNAVAILABLE_LOG_INTERVAL_MS)
  app.addHook('preClose', async () => {
    closing = true
  })
  app.addHook('onSend', (_req, reply, payload, done) => {
    if (closing) void reply.header('connection', 'close')
    done(null, payload)
  })
  app.setErrorHandler((error: FastifyError, req, reply) => {
    const err = error instanceof TallyError ? error : mapFastifyError(error)
    if (answeredByClientError(req.raw)) {
      // Answered (408) and closed already; this is its body stream failing. Nothing goes out.
      req.log.debug({ err: error }, 'request ended by an answered client error')
      return reply.status(err.statusCode).send()
    }
    options.onErrorAnswer?.(err)
    // Rejected requests are counted (onErrorAnswer) and logged at debug only: a flood of bad
    // requests must not flood the log, nor let a client fill its disk.
    if (err.statusCode === 503) unavailable.log(req.log, err)
    else if (err.statusCode >= 500) req.log.error({ err: error }, 'request failed')
    else req.log.debug({ code: err.code, status: err.statusCode }, err.message)
    // A handler that knows the wait (the rate limiter) has set it already.
    if ((err.statusCode === 503 || err.statusCode === 429) && !reply.hasHeader('retry-after'))
      void reply.header('retry-after', '1')
    return reply.status(err.statusCode).send({
      success: false,
      code: err.code,
      message: err.message,
      ...(err.where ? { where: err.where } : {}),
      ...err.details,
      requestId: req.id,
    })
  })
  app.setNotFoundHandler((req, reply) =>
    reply.status(404).send({
      success: false,
      code: ERR.NOT_FOUND,
      message: `no route ${req.method} ${req.url.split('?')[0]}`,
      requestId: req.id,
    }),
  )
  return app
}

/**
 * Binds `app` and returns its URL. A port already in use fails with TALLY_ERR_PORT_IN_USE naming
 * the address and `where` (the setting that chose the port), so an operator sees one clear line.
 * Roles that join a consumer group call this before joining: a process that cannot serve its
 * metrics must fail before it becomes a group member, or its partitions stall until its session
 * times out.
 */
export async function listenOrExplain(
  app: FastifyInstance,
  host: string,
  port: number,
  what: string,
  where: string,
): Promise<string> {
  try {
    await app.listen({ host, port })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      throw new TallyError(
        ERR.PORT_IN_USE,
        `${host}:${port} (${what}) is already in use: stop the process holding it, or set ${where} to a free port (0: any free port, logged at start)`,
        { where, cause: err },
      )
    }
    throw err
  }
  const addr = app.server.address() as AddressInfo
  return `http://${addr.address}:${addr.port}`
}

export interface OpsServerOptions {
  logger: Logger
  /** The process registry, served at /metrics (core/metrics.ts). */
  registry: Registry
  host: string
  port: number
  /** What the port serves and the setting that chose it, for TALLY_ERR_PORT_IN_USE (listenOrExplain). */
  what: string
  where: string
  /**
   * The /readyz body beside `status: "ready"` once the role is ready; undefined until then (503
   * `{"status":"starting"}`).
   */
  ready: () => Record<string, unknown> | undefined
}

/**
 * The small HTTP server of a role without an API of its own (stream worker, archiver, batch):
 * GET /healthz, /readyz and /metrics, bound before it returns. Roles that join a consumer group
 * start it before joining (see listenOrExplain).
 */
export async function startOpsServer(
  options: OpsServerOptions,
): Promise<{ app: FastifyInstance; url: string }> {
  const { logger, registry } = options
  const app = createHttpServer({ logger, bodyLimit: 1024, requestTimeoutMs: 10_000, registry })
  app.get('/healthz', async () => ({ status: 'ok' }))
  app.get('/readyz', async (_req, reply) => {
    const ready = options.ready()
    return ready ? { status: 'ready', ...ready } : reply.status(503).send({ status: 'starting' })
  })
  serveMetrics(app, registry)
  const url = await listenOrExplain(app, options.host, options.port, options.what, options.where)
  return { app, url }
}
