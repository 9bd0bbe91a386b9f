import { randomFillSync } from 'node:crypto'
import Fastify, {
  type FastifyError,
  type FastifyInstance,
  type FastifyServerOptions,
  LogController,
} from 'fastify'
import { traceIdOf, ZERO_TRACE_ID } from '../schemas/events.js'
import { TallyError } from './errors.js'
import type { Logger } from './log.js'

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

const TRACE_ID = /^[0-9a-f]{32}$/

// Ids come from a pool filled 4 KiB at a time: one randomBytes call per id costs a system call
// and a buffer each, several per request.
const pool = Buffer.alloc(4096)
let poolOffset = pool.length

function randomHex(bytes: number): string {
  if (poolOffset + bytes > pool.length) {
    randomFillSync(pool)
    poolOffset = 0
  }
  poolOffset += bytes
  return pool.toString('hex', poolOffset - bytes, poolOffset)
}

/** A new random W3C trace id (32 hex digits, never all zeros). */
function newTraceId(): string {
  const id = randomHex(16)
  return id === ZERO_TRACE_ID ? newTraceId() : id
}

/**
 * A W3C trace context: the incoming one when valid, else a new one whose trace id is
 * `fallbackTraceId` when that is a valid trace id (the request id, so logs and Kafka headers share
 * one id), else a random one.
 */
export function traceContext(
  header: string | string[] | undefined,
  fallbackTraceId?: string,
): {
  traceparent: string
  traceId: string
} {
  const value = Array.isArray(header) ? header[0] : header
  const given = traceIdOf(value)
  if (given !== undefined) return { traceparent: value!, traceId: given }
  const traceId =
    fallbackTraceId !== undefined && TRACE_ID.test(fallbackTraceId) && fallbackTraceId !== ZERO_TRACE_ID
      ? fallbackTraceId
      : newTraceId()
  return { traceparent: `00-${traceId}-${randomHex(8)}-01`, traceId }
}

/** The trace id of a valid incoming traceparent, else a new one (no span id is made for it). */
function traceIdOrNew(header: string | string[] | undefined): string {
  return traceIdOf(Array.isArray(header) ? header[0] : header) ?? newTraceId()
}

export interface HttpServerOptions {
  logger: Logger
  /** Largest request body accepted (bytes). */
  bodyLimit: number
  /** Time allowed to receive a whole request. */
  requestTimeoutMs: number
  /** Idle keep-alive connections are closed after this. */
  keepAliveTimeoutMs?: number
  /** Observes every error answer (after mapping), e.g. to count rejections by code. */
  onErrorAnswer?: (err: TallyError) => void
}

/** Maps Fastify's own errors to Tally codes so every error body looks the same. */
function mapFastifyError(err: FastifyError): TallyError {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new TallyError('TALLY_ERR_PAYLOAD_TOO_LARGE', 'request body is larger than the limit', {
        statusCode: 413,
        cause: err,
      })
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new TallyError('TALLY_ERR_UNSUPPORTED_MEDIA_TYPE', 'send application/json or text/plain', {
        statusCode: 415,
        where: 'content-type',
        cause: err,
      })
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new TallyError('TALLY_ERR_MALFORMED_JSON', 'the body is empty', { statusCode: 400, cause: err })
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new TallyError('TALLY_ERR_BAD_REQUEST', 'content-length does not match the body', {
        statusCode: 400,
        cause: err,
      })
    case 'FST_ERR_VALIDATION':
      return new TallyError('TALLY_ERR_BAD_PARAMETER', err.message, { statusCode: 400, cause: err })
  }
  if (err instanceof SyntaxError || (err.statusCode === 400 && /JSON/i.test(err.message))) {
    return new TallyError('TALLY_ERR_MALFORMED_JSON', `body is not valid JSON: ${err.message}`, {
      statusCode: 400,
      cause: err,
    })
  }
  if (err.code === 'Z_DATA_ERROR' || err.code === 'Z_BUF_ERROR') {
    return new TallyError('TALLY_ERR_BAD_ENCODING', `body is not valid gzip/deflate: ${err.message}`, {
      statusCode: 400,
      cause: err,
    })
  }
  const status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500
  return new TallyError(
    status >= 500 ? 'TALLY_ERR_INTERNAL' : 'TALLY_ERR_BAD_REQUEST',
    status >= 500 ? 'internal error' : err.message,
    {
      statusCode: status,
      cause: err,
    },
  )
}

/**
 * A Fastify instance with Tally's conventions: request id from `x-request-id` or the W3C trace id,
 * echoed back in `x-request-id`; explicit body and time limits; errors as
 * `{success:false, code, message, where, requestId}`.
 */
export function createHttpServer(options: HttpServerOptions): FastifyInstance {
  const serverOptions: FastifyServerOptions = {
    loggerInstance: options.logger,
    bodyLimit: options.bodyLimit,
    requestTimeout: options.requestTimeoutMs,
    connectionTimeout: options.requestTimeoutMs,
    keepAliveTimeout: options.keepAliveTimeoutMs ?? 72_000,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    // Per-request access logs would dominate at ingest rates; errors are logged by the handler.
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'requestId' }),
    genReqId: (req) => {
      const given = req.headers['x-request-id']
      if (typeof given === 'string' && REQUEST_ID.test(given)) return given
      return traceIdOrNew(req.headers.traceparent)
    },
  }
  const app = Fastify(serverOptions) as unknown as FastifyInstance
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
  app.addHook('preClose', async () => {
    closing = true
  })
  app.addHook('onSend', (_req, reply, payload, done) => {
    if (closing) void reply.header('connection', 'close')
    done(null, payload)
  })
  app.setErrorHandler((error: FastifyError, req, reply) => {
    const err = error instanceof TallyError ? error : mapFastifyError(error)
    options.onErrorAnswer?.(err)
    // Rejected requests are counted (onErrorAnswer) and logged at debug only: a flood of bad
    // requests must not flood the log, nor let a client fill its disk.
    if (err.statusCode >= 500) req.log.error({ err: error }, 'request failed')
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
      code: 'TALLY_ERR_NOT_FOUND',
      message: `no route ${req.method} ${req.url.split('?')[0]}`,
      requestId: req.id,
    }),
  )
  return app
}
