import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { IngestConfig } from '../../core/config.js'
import { ERR } from '../../core/error-codes.js'
import { TallyError } from '../../core/errors.js'
import type { EventLogWriter, LogRecord } from '../../core/ports/event-log.js'
import type { Site } from '../../core/ports/site-store.js'
import { toLogRecord } from '../../core/record/codec.js'
import { recordHeaders, traceContext } from '../../core/record/headers.js'
import type { EventType } from '../../schemas/events.js'
import { sharedCountryLookup } from '../geo.js'
import type { IngestMetrics } from '../metrics.js'
import { type IngestLimits, normalizeEvent, type Rejection, rejectionOf } from '../normalize.js'
import { UserAgentParser } from '../user-agent.js'

type Body = Record<string, unknown>

export interface AppendInput {
  /** Label of the `endpoint` metrics: the event type, `batch`, `import` or `pixel`. */
  endpoint: string
  items: unknown[]
  /** The type the route implies (`/v1/track`); undefined: each event's own `type`. */
  routeType: EventType | undefined
  batchSentAt: unknown
  imported: boolean
  /** A batch's `context` and `integrations`, merged into each of its events. */
  shared?: Body
  /** The site the events are for, when the route found it itself (Plausible's by domain); else `request.site`. */
  site?: Site
}

export interface Accepted {
  accepted: number
  rejected: Array<Rejection & { index: number }>
}

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * Normalizes the events of an authenticated request (`input.site`, else `request.site`) and appends the valid
     * ones to the event log; resolves once the log acknowledged them all.
     */
    appendEvents(req: FastifyRequest, reply: FastifyReply, input: AppendInput): Promise<Accepted>
  }
}

export interface AppendOptions {
  config: IngestConfig
  /** Topic of the raw log. */
  topic: string
  log: EventLogWriter
  metrics: IngestMetrics
}

function statusOfRejection(code: string): number {
  return code === ERR.EVENT_TOO_LARGE ? 413 : 400
}

async function append(app: FastifyInstance, options: AppendOptions): Promise<void> {
  const { config, metrics } = options
  const limits: IngestLimits = config
  const uaParser = new UserAgentParser()
  // The country database is read here, at start-up, not by the first request.
  const geo = sharedCountryLookup()
  // Each endpoint's rejected-events series exists from its first request (at 0), so rates and
  // absence alerts on it work before the first rejection.
  const seenEndpoints = new Set<string>()

  app.decorate('appendEvents', async (req: FastifyRequest, reply: FastifyReply, input: AppendInput) => {
    const { endpoint, items } = input
    const site = input.site ?? req.site
    if (!site) throw new TallyError(ERR.INTERNAL, 'events appended before the request was authenticated')
    if (items.length === 0)
      throw new TallyError(ERR.NO_VALID_EVENT, 'the batch is empty', {
        where: 'batch',
      })
    if (items.length > config.maxBatchEvents) {
      throw new TallyError(
        ERR.TOO_MANY_EVENTS,
        `${items.length} events in one request; the limit is ${config.maxBatchEvents}`,
        {
          where: 'batch',
        },
      )
    }
    app.limitRate(req, reply, site, items.length)
    metrics.batchSize.observe(items.length)
    const receivedAtMs = Date.now()
    // A request authenticated with HTTP Basic comes from a server (a Segment server library, curl):
    // its User-Agent is the sender's, not the visitor's, so only context.userAgent describes the
    // visitor. Browsers (beacons, analytics.js, the pixel) send the key in the body or the URL.
    const userAgent = req.headers.authorization ? undefined : req.headers['user-agent']
    // The same for the address: a server's own is no visitor's country (Segment's context.ip is).
    // req.ip honours TALLY_TRUST_PROXY (Fastify's trustProxy).
    const clientIp = req.headers.authorization ? undefined : req.ip
    const trace = traceContext(req.headers.traceparent, req.id)
    const headers = recordHeaders(site.siteId, trace, req.id)
    const records: LogRecord[] = []
    const rejected: Array<Rejection & { index: number }> = []
    let clamped = 0
    for (let index = 0; index < items.length; index++) {
      const item = input.shared ? mergeShared(items[index], input.shared) : items[index]
      const result = normalizeEvent(
        item,
        {
          siteId: site.siteId,
          userAgent,
          receivedAtMs,
          batchSentAt: input.batchSentAt,
          routeType: input.routeType,
          imported: input.imported,
          clientIp,
        },
        limits,
        uaParser,
        geo,
      )
      if (!result.ok) {
        rejected.push({ index, ...rejectionOf(result) })
        continue
      }
      if (result.event.timestampClamped) clamped++
      records.push(toLogRecord(result.event, headers, receivedAtMs))
    }
    if (rejected.length > 0 || !seenEndpoints.has(endpoint)) {
      seenEndpoints.add(endpoint)
      metrics.events.inc({ endpoint, outcome: 'rejected' }, rejected.length)
    }
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
      await options.log.append(options.topic, records)
    } catch (err) {
      metrics.events.inc({ endpoint, outcome: 'unavailable' }, records.length)
      throw new TallyError(ERR.LOG_UNAVAILABLE, 'the event log cannot take the write right now; retry', {
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
  })
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

export const appendPlugin = fp(append, {
  name: 'tally-ingest-append',
  dependencies: ['tally-ingest-auth', 'tally-ingest-rate-limit'],
})
