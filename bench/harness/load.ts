import autocannon from 'autocannon'
import { Pool } from 'undici'
import { type Percentiles, Samples } from './stats.js'

/**
 * HTTP load with autocannon (the Fastify team's load generator), on loopback. Latency is recorded
 * from autocannon's per-response timings (float milliseconds) rather than its histogram, whose
 * resolution is 1 ms — too coarse for sub-millisecond loopback answers.
 */

export interface LoadTarget {
  /** Base URL of the server (http://127.0.0.1:port). */
  url: string
  method: 'GET' | 'POST'
  /** Path with query string. */
  path: string
  headers: Record<string, string>
  /** Bodies sent in turn (one per request, shared by all connections); none for GET. */
  bodies?: readonly Buffer[]
}

export interface LoadPlan {
  connections: number
  /** Run until this many requests completed (exact counts: nothing is in flight at the end). */
  amount?: number
  /** Run for this long instead (requests in flight when it stops are not counted by the client). */
  durationSec?: number
  /** Stop anyway after this long (a bound for `amount` runs on a server slower than expected). */
  capSec?: number
}

export interface LoadResult {
  /** Responses with a 2xx status. */
  ok: number
  /** Responses with another status, by status. */
  statuses: Record<string, number>
  errors: number
  timeouts: number
  /** Requests written to a socket (`sent − answered` were in flight when the run stopped). */
  sent: number
  elapsedSec: number
  /** 2xx responses per second. */
  okPerSec: number
  latency: Percentiles | undefined
  /** True when `capSec` stopped an `amount` run early. */
  capped: boolean
  /**
   * Paced runs: how late the client sent requests after they were due (its own event loop and GC,
   * not the server). Large values mean the latency figures include the client's stalls.
   */
  sendLateMs?: Percentiles
}

export async function runLoad(target: LoadTarget, plan: LoadPlan): Promise<LoadResult> {
  const samples = new Samples()
  const statuses: Record<string, number> = {}
  let ok = 0
  const bodies = target.bodies
  let next = 0
  const request: autocannon.Request = {
    method: target.method,
    path: target.path,
    headers: target.headers,
  }
  if (bodies && bodies.length > 0) {
    request.setupRequest = (req) => {
      const body = bodies[next]!
      next = next + 1 === bodies.length ? 0 : next + 1
      return { ...req, body }
    }
  }
  const options: autocannon.Options = {
    url: target.url,
    connections: plan.connections,
    requests: [request],
    timeout: 30,
    // autocannon ends a run at its next sample tick after the last response: tick often, so runs
    // end promptly (the elapsed time is taken from the responses anyway).
    sampleInt: 100,
    ...(plan.amount !== undefined ? { amount: plan.amount } : { duration: plan.durationSec ?? 10 }),
  }
  const started = performance.now()
  let lastResponseAt = started
  let capped = false
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    const instance = autocannon(options, (err, res) => (err ? reject(err) : resolve(res)))
    instance.on('response', (_client, statusCode, _bytes, responseTime) => {
      lastResponseAt = performance.now()
      if (statusCode >= 200 && statusCode < 300) {
        ok++
        samples.push(responseTime)
      } else {
        statuses[statusCode] = (statuses[statusCode] ?? 0) + 1
      }
    })
    if (plan.capSec !== undefined) {
      const timer = setTimeout(() => {
        capped = true
        instance.stop()
      }, plan.capSec * 1000)
      instance.on('done', () => clearTimeout(timer))
    }
  })
  // From the start to the last response, not to autocannon's end of run (up to a tick later).
  const elapsedSec =
    (lastResponseAt > started ? lastResponseAt - started : performance.now() - started) / 1000
  return {
    ok,
    statuses,
    errors: result.errors,
    timeouts: result.timeouts,
    sent: result.requests.sent,
    elapsedSec,
    okPerSec: ok / elapsedSec,
    latency: samples.percentiles(),
    capped,
  }
}

/** Requests answered with anything but a 2xx, or not answered. */
export function failures(r: LoadResult): number {
  return Object.values(r.statuses).reduce((n, c) => n + c, 0) + r.errors + r.timeouts
}

export interface PacedRun {
  /** Requests per second, evenly spaced. */
  rate: number
  /** Requests in all. */
  amount: number
  /** Stop sending after this long; requests not sent by then are not counted. */
  capSec: number
}

export interface PacedClient {
  run(plan: PacedRun): Promise<LoadResult>
  close(): Promise<void>
}

/**
 * Load at a steady rate: request i of a run is due at start + i/rate whatever the answers before
 * it did (an open loop), over at most `connections` keep-alive connections (an undici Pool, the
 * Node team's HTTP client: node:http cost the bench half a core at 2,000 requests/s). Its latency
 * runs from when it was due, so time spent waiting for a free connection behind slow answers
 * counts. Runs of one client share its connections: a warm-up run opens them, so the measured run
 * does not time connection setup.
 *
 * autocannon's rate option cannot measure this: each connection sends as fast as it can until it
 * has sent its share of the second, then waits for the next second, so a run at half the peak rate
 * is a burst at the peak rate for half of every second.
 */
export function pacedClient(target: LoadTarget, connections: number): PacedClient {
  const { method, path, headers, bodies } = target
  const pool = new Pool(target.url, {
    connections,
    pipelining: 1,
    headersTimeout: 30_000,
    bodyTimeout: 30_000,
  })
  return { run: (plan) => pacedRun(pool, method, path, headers, bodies, plan), close: () => pool.close() }
}

async function pacedRun(
  pool: Pool,
  method: LoadTarget['method'],
  path: string,
  headers: Record<string, string>,
  bodies: readonly Buffer[] | undefined,
  plan: PacedRun,
): Promise<LoadResult> {
  const samples = new Samples()
  const lateness = new Samples()
  const statuses: Record<string, number> = {}
  let ok = 0
  let errors = 0
  let timeouts = 0
  let sent = 0
  let answered = 0
  let capped = false
  const intervalMs = 1000 / plan.rate
  const started = performance.now()
  let lastResponseAt = started
  await new Promise<void>((resolve) => {
    const done = () => {
      answered++
      if (answered === sent && (sent === plan.amount || capped)) resolve()
    }
    const fire = (i: number) => {
      const dueAt = started + i * intervalMs
      const body = bodies && bodies.length > 0 ? bodies[i % bodies.length] : undefined
      sent++
      lateness.push(performance.now() - dueAt)
      pool
        .request({ method, path, headers, ...(body ? { body } : {}) })
        .then(async (res) => {
          await res.body.dump()
          lastResponseAt = performance.now()
          if (res.statusCode >= 200 && res.statusCode < 300) {
            ok++
            samples.push(lastResponseAt - dueAt)
          } else statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1
        })
        .catch((err: { code?: string }) => {
          if (err.code === 'UND_ERR_HEADERS_TIMEOUT' || err.code === 'UND_ERR_BODY_TIMEOUT') timeouts++
          else errors++
        })
        .finally(done)
    }
    let next = 0
    const tick = () => {
      const now = performance.now()
      if (now - started > plan.capSec * 1000) {
        capped = true
        if (answered === sent) resolve()
        return
      }
      while (next < plan.amount && started + next * intervalMs <= now) fire(next++)
      if (next < plan.amount) setTimeout(tick, Math.max(0, started + next * intervalMs - performance.now()))
    }
    tick()
  })
  const elapsedSec = (lastResponseAt - started) / 1000
  return {
    ok,
    statuses,
    errors,
    timeouts,
    sent,
    elapsedSec,
    okPerSec: ok / elapsedSec,
    latency: samples.percentiles(),
    capped,
    ...(lateness.count > 0 ? { sendLateMs: lateness.percentiles()! } : {}),
  }
}
