import autocannon from 'autocannon'
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
  /** Requests per second over all connections (default: as fast as the server answers). */
  overallRate?: number
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
    ...(plan.overallRate !== undefined ? { overallRate: plan.overallRate } : {}),
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
