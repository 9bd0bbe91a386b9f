import type { Server } from 'node:http'
import { connect, type Socket } from 'node:net'

/**
 * Raw TCP clients for the HTTP limits: they send bytes as slowly as asked and record what comes
 * back and when the server closed the connection.
 */

/** A client connection that records what it receives and when the server closed it. */
export interface SlowClient {
  socket: Socket
  /** Everything received so far. */
  text(): string
  /** Milliseconds from connecting until the connection closed (undefined while open). */
  closedAfterMs(): number | undefined
  closed: Promise<void>
  connected: Promise<void>
}

const open: Socket[] = []

/** Destroys every client made so far (afterEach). */
export function destroyClients(): void {
  for (const s of open.splice(0)) s.destroy()
}

/** A connection to 127.0.0.1:`port` that sends nothing by itself. */
export function client(port: number): SlowClient {
  const socket = connect({ host: '127.0.0.1', port })
  open.push(socket)
  const startedMs = performance.now()
  let received = ''
  let closedAfterMs: number | undefined
  socket.setEncoding('utf8')
  socket.on('data', (chunk: string) => {
    received += chunk
  })
  // A refused connection may end in a reset: a close like any other here.
  socket.on('error', () => {})
  const closed = new Promise<void>((resolve) =>
    socket.on('close', () => {
      closedAfterMs = performance.now() - startedMs
      resolve()
    }),
  )
  const connected = new Promise<void>((resolve) => socket.once('connect', () => resolve()))
  return { socket, text: () => received, closedAfterMs: () => closedAfterMs, closed, connected }
}

/** Sends `head` at once, then one byte of `drip` (repeated) every `everyMs` while the connection is open. */
export function trickle(port: number, head: string, drip: string, everyMs: number): SlowClient {
  const c = client(port)
  c.socket.write(head)
  let i = 0
  const timer = setInterval(() => {
    if (c.socket.writable) c.socket.write(drip[i++ % drip.length]!)
  }, everyMs)
  void c.closed.then(() => clearInterval(timer))
  return c
}

/** Waits for `c` to close, at most `ms`; true when it closed. */
export async function closesWithin(c: SlowClient, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms)
  })
  const ok = await Promise.race([c.closed.then(() => true as const), late])
  clearTimeout(timer)
  return ok
}

/** The status of the first response in `text`. */
export function statusOf(text: string): number | undefined {
  const m = /^HTTP\/1\.1 (\d{3}) /.exec(text)
  return m ? Number(m[1]) : undefined
}

/** The JSON body of the last response in `text`. */
export function lastBody(text: string): unknown {
  const parts = text.split('\r\n\r\n')
  return JSON.parse(parts[parts.length - 1]!)
}

/** Connections the server holds now. */
export function heldConnections(server: Server): Promise<number> {
  return new Promise((resolve, reject) => server.getConnections((err, n) => (err ? reject(err) : resolve(n))))
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** A request line and a first header, then no end of headers: headers that trickle in. */
export const slowHeaders = (path: string): string => `GET ${path} HTTP/1.1\r\nHost: t\r\n`
