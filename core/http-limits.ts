import { type IncomingMessage, type Server, type ServerResponse, STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import type { ConnectionError } from 'fastify'
import { ERR } from './error-codes.js'
import { TallyError } from './errors.js'
import type { Logger } from './log.js'

/**
 * Limits of every HTTP server Tally starts (core/http.ts applies them): the request timeout held
 * for headers and body, answered in Tally's error shape, and a cap on open connections that makes
 * room by closing idle keep-alive connections first.
 */

/** Connections held by a server that sets no cap of its own: the /metrics and admin servers. */
export const DEFAULT_MAX_CONNECTIONS = 1000

/** From this share of the connection cap on, idle keep-alive connections are closed… */
const SHED_FROM_SHARE = 0.9
/** …until this share is left open. */
const SHED_TO_SHARE = 0.8
/**
 * A scan for idle connections runs at most this often: a flood of new connections near the cap
 * would otherwise walk every open connection once per new one.
 */
const SHED_SCAN_INTERVAL_MS = 100
/** Connections refused over the cap are logged at most this often, with their count. */
const DROP_LOG_INTERVAL_MS = 10_000

/**
 * How often Node looks for requests past their deadline (`connectionsCheckingInterval`; its
 * default of 30 s lets a request run up to 30 s over the timeout): a tenth of the timeout, from
 * 50 ms to 1 s. Only connections with a request being received are looked at.
 */
export function connectionsCheckingIntervalMs(requestTimeoutMs: number): number {
  return Math.min(1000, Math.max(50, Math.floor(requestTimeoutMs / 10)))
}

const REQUEST_ID = Symbol('tally.requestId')
const SERVED = Symbol('tally.served')
const ANSWERED = Symbol('tally.answeredByClientError')

type RawRequest = IncomingMessage & { [REQUEST_ID]?: string; [ANSWERED]?: true }
type TrackedSocket = Socket & {
  [SERVED]?: true
  /** Node's response in progress on this socket, null between requests (Node's own closeIdleConnections reads it). */
  _httpMessage?: (ServerResponse & { req?: RawRequest }) | null
}

/** Keeps a request's id on the raw request, so an answer from `answerClientError` can name it. */
export function rememberRequestId(req: IncomingMessage, id: string): void {
  ;(req as RawRequest)[REQUEST_ID] = id
}

/**
 * True when `answerClientError` answered this request (and closed its connection): its body stream
 * then fails with "aborted", which is not a second error to answer or count.
 */
export function answeredByClientError(req: IncomingMessage): boolean {
  return (req as RawRequest)[ANSWERED] === true
}

/**
 * Caps the connections of `server` at `maxConnections` (Node closes those over it as it accepts
 * them) and, from 90 % of the cap, closes idle keep-alive connections (a request answered, none in
 * progress), oldest first, down to 80 %, so new clients are served rather than refused while
 * connections that only wait take room. Requests being received or answered are never closed here;
 * the request timeout ends slow ones. A connection that has served a request and is receiving the
 * first bytes of its next one counts as idle: its client sees a closed keep-alive connection, which
 * HTTP clients retry.
 */
export function limitConnections(server: Server, maxConnections: number, logger: Logger): void {
  server.maxConnections = maxConnections
  const shedFrom = Math.ceil(maxConnections * SHED_FROM_SHARE)
  const shedTo = Math.floor(maxConnections * SHED_TO_SHARE)
  // Insertion order is connection order: a scan closes the oldest idle ones first.
  const open = new Set<TrackedSocket>()
  let lastScanMs = Number.NEGATIVE_INFINITY
  server.on('request', (req: IncomingMessage) => {
    ;(req.socket as TrackedSocket)[SERVED] = true
  })
  server.on('connection', (socket: TrackedSocket) => {
    open.add(socket)
    socket.once('close', () => open.delete(socket))
    if (open.size < shedFrom) return
    const nowMs = performance.now()
    if (nowMs - lastScanMs < SHED_SCAN_INTERVAL_MS) return
    lastScanMs = nowMs
    let excess = open.size - shedTo
    let closed = 0
    for (const s of open) {
      if (excess <= 0) break
      if (s[SERVED] && !s._httpMessage && !s.destroyed) {
        s.destroy()
        excess--
        closed++
      }
    }
    if (closed > 0)
      logger.debug({ closed, open: open.size, maxConnections }, 'closed idle keep-alive connections')
  })
  let dropped = 0
  let lastDropLogMs = Number.NEGATIVE_INFINITY
  server.on('drop', () => {
    dropped++
    const nowMs = performance.now()
    if (nowMs - lastDropLogMs < DROP_LOG_INTERVAL_MS) return
    lastDropLogMs = nowMs
    logger.warn(
      { dropped, maxConnections },
      'connections refused: the server holds its maximum (TALLY_MAX_CONNECTIONS)',
    )
    dropped = 0
  })
}

/** An error Node met before the request reached Fastify: a timeout, a malformed or oversized request. */
function clientErrorOf(err: ConnectionError, requestTimeoutMs: number): TallyError {
  switch (err.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new TallyError(
        ERR.REQUEST_TIMEOUT,
        `the request (headers and body) was not received within ${requestTimeoutMs} ms`,
        { cause: err },
      )
    case 'HPE_HEADER_OVERFLOW':
      return new TallyError(ERR.HEADERS_TOO_LARGE, 'the request headers are larger than the limit', {
        cause: err,
      })
    default:
      return new TallyError(ERR.BAD_REQUEST, `malformed HTTP request (${err.code})`, {
        cause: err,
      })
  }
}

export interface ClientErrorOptions {
  requestTimeoutMs: number
  logger: Logger
  /** Observes every error answer, as HttpServerOptions.onErrorAnswer. */
  onErrorAnswer?: ((err: TallyError) => void) | undefined
}

/**
 * Fastify's `clientErrorHandler`: answers errors Node meets on a connection (the request timeout
 * included) with Tally's error body, `{success:false, code, message, requestId?}`, when no answer
 * to the request has started, then closes the connection (Fastify's own handler answers in its
 * shape).
 */
export function answerClientError(
  error: ConnectionError,
  rawSocket: Socket,
  options: ClientErrorOptions,
): void {
  const socket = rawSocket as TrackedSocket
  // The client is gone: nothing to answer.
  if (error.code === 'ECONNRESET' || socket.destroyed) {
    socket.destroy()
    return
  }
  const err = clientErrorOf(error, options.requestTimeoutMs)
  options.onErrorAnswer?.(err)
  const res = socket._httpMessage
  const requestId = res?.req?.[REQUEST_ID]
  options.logger.info({ code: err.code, status: err.statusCode, requestId }, err.message)
  if (res?.req) res.req[ANSWERED] = true
  // As Node does: only when no answer to this request has started.
  if (socket.writable && !res?.headersSent) {
    const body = JSON.stringify({
      success: false,
      code: err.code,
      message: err.message,
      ...(requestId !== undefined ? { requestId } : {}),
    })
    const idHeader = requestId !== undefined ? `x-request-id: ${requestId}\r\n` : ''
    socket.write(
      `HTTP/1.1 ${err.statusCode} ${STATUS_CODES[err.statusCode]}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${idHeader}connection: close\r\n\r\n${body}`,
    )
  }
  socket.destroy()
}
