import type { FastifyInstance } from 'fastify'
import { afterEach, describe, expect, it } from 'vitest'
import { loadConfig } from '../../core/config.js'
import { ERRORS } from '../../core/error-codes.js'
import { createLogger } from '../../core/log.js'
import type { AggregateReader } from '../../core/ports/aggregate-store.js'
import { buildIngestApp } from '../../ingest/app.js'
import { createIngestMetrics } from '../../ingest/metrics.js'
import { buildQueryApp } from '../../query/app.js'
import { ReadAccessCache } from '../../query/auth.js'
import type { FreshnessSource } from '../../query/freshness.js'
import { ENDPOINT_PARAMS } from '../../query/params.js'

/**
 * The OpenAPI documents of the ingest and query APIs are generated from the routes' schemas
 * (core/openapi.ts): every route registered is in its document with its answers, its error answers
 * name the catalogue's codes under their own status, and every reference resolves.
 */

type Json = Record<string, unknown>
interface Operation {
  operationId?: string
  summary?: string
  parameters?: Array<{ name: string; in: string; required?: boolean; description?: string }>
  requestBody?: { content: Record<string, unknown> }
  responses: Record<string, { description?: string; content?: Record<string, { schema?: Json }> }>
}
interface Document {
  openapi: string
  info: { title: string }
  paths: Record<string, Record<string, Operation>>
  components?: { securitySchemes?: Record<string, unknown> }
}

const logger = createLogger('silent')
let app: FastifyInstance | undefined

afterEach(async () => {
  await app?.close()
  app = undefined
})

function ingestApp(env: Record<string, string> = {}): Promise<FastifyInstance> {
  return buildIngestApp({
    config: loadConfig({ LOG_LEVEL: 'silent', ...env }).ingest,
    topic: 'raw',
    log: { append: async () => {}, healthy: () => true, close: async () => {} },
    sites: { byWriteKey: async () => undefined, isKnownOrigin: async () => false },
    metrics: createIngestMetrics(),
    logger,
  })
}

function queryApp(): Promise<FastifyInstance> {
  return buildQueryApp({
    reader: {} as AggregateReader,
    auth: new ReadAccessCache({ get: async () => undefined, list: async () => [] }),
    freshness: { current: async () => ({}) } as unknown as FreshnessSource,
    logger,
  })
}

async function documentOf(a: FastifyInstance): Promise<Document> {
  const res = await a.inject({ method: 'GET', url: '/docs/openapi.json' })
  expect(res.statusCode).toBe(200)
  return res.json() as Document
}

/** Fastify's `/:id` and `*` as OpenAPI path templates. */
function openApiPath(url: string): string {
  return url.replace(/:([A-Za-z0-9_]+)/g, '{$1}')
}

function refsIn(value: unknown, out: string[] = []): string[] {
  if (Array.isArray(value)) for (const v of value) refsIn(v, out)
  else if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      if (k === '$ref' && typeof v === 'string') out.push(v)
      else refsIn(v, out)
    }
  }
  return out
}

function resolves(doc: Document, ref: string): boolean {
  if (!ref.startsWith('#/')) return false
  let at: unknown = doc
  for (const part of ref.slice(2).split('/')) {
    if (!at || typeof at !== 'object') return false
    at = (at as Json)[part.replaceAll('~1', '/').replaceAll('~0', '~')]
  }
  return at !== undefined
}

/** Routes of Plausible's APIs: answered in Plausible's shapes (their error body's keys), not Tally's. */
const PLAUSIBLE_ROUTES: Record<string, { ok: string; errorKeys: string[] }> = {
  '/api/event': { ok: '202', errorKeys: ['errors'] },
  '/api/v1/stats/aggregate': { ok: '200', errorKeys: ['error'] },
  '/api/v1/stats/timeseries': { ok: '200', errorKeys: ['error'] },
  '/api/v1/stats/breakdown': { ok: '200', errorKeys: ['error'] },
  '/api/v1/stats/realtime/visitors': { ok: '200', errorKeys: ['error'] },
}

/** Checks shared by both documents; returns the documented (method, path) pairs. */
function checkDocument(a: FastifyInstance, doc: Document): void {
  expect(doc.openapi).toBe('3.1.0')
  expect(doc.info.title).toMatch(/^Tally /)
  const shown = a.apiRoutes().filter((r) => !r.hidden)
  expect(shown.length).toBeGreaterThan(3)
  for (const route of shown) {
    const op = doc.paths[openApiPath(route.url)]?.[route.method.toLowerCase()]
    expect(op, `${route.method} ${route.url} is in the document`).toBeDefined()
    expect(op!.summary, `${route.method} ${route.url} has a summary`).toBeTruthy()
    // Plausible's APIs answer as Plausible does: the event API 202, and their own error shapes.
    const plausible = PLAUSIBLE_ROUTES[route.url]
    const ok = plausible?.ok ?? '200'
    expect(op!.responses[ok], `${route.method} ${route.url} documents its ${ok}`).toBeDefined()
    for (const [status, response] of Object.entries(op!.responses)) {
      expect(response.description, `${route.url} ${status} has a description`).toBeTruthy()
      if (Number(status) < 400) continue
      if (plausible) {
        const schema = response.content?.['application/json']?.schema as { required?: string[] } | undefined
        expect(schema?.required, `${route.url} ${status}`).toEqual(plausible.errorKeys)
        continue
      }
      // An error answer: the body of core/http.ts, with the catalogue's codes of that status.
      const schema = response.content?.['application/json']?.schema as
        | { required?: string[]; properties?: { code?: { enum?: string[] } } }
        | undefined
      if (route.url === '/readyz') continue
      expect(schema?.required, `${route.url} ${status}`).toEqual(['success', 'code', 'message', 'requestId'])
      const codes = schema?.properties?.code?.enum ?? []
      expect(codes.length, `${route.url} ${status} names its codes`).toBeGreaterThan(0)
      for (const code of codes) {
        const entry = Object.values(ERRORS).find((e) => e.code === code) as { status?: number } | undefined
        expect(entry?.status, `${code} is answered with ${status}`).toBe(Number(status))
      }
    }
  }
  // Nothing in the document that is not a route.
  const documented = Object.entries(doc.paths).flatMap(([path, ops]) =>
    Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`),
  )
  expect(documented.sort()).toEqual(shown.map((r) => `${r.method} ${openApiPath(r.url)}`).sort())
  const ids = Object.values(doc.paths).flatMap((ops) =>
    Object.values(ops).flatMap((op) => (op.operationId ? [op.operationId] : [])),
  )
  expect(new Set(ids).size).toBe(ids.length)
  for (const ref of refsIn(doc)) expect(resolves(doc, ref), `${ref} resolves`).toBe(true)
}

describe('OpenAPI documents generated from the route schemas', () => {
  it('ingest: every route with its body, answers and error codes; served at /docs and /docs/ui', async () => {
    app = await ingestApp()
    const doc = await documentOf(app)
    checkDocument(app, doc)
    expect(doc.info.title).toBe('Tally ingest API')
    for (const p of [
      'track',
      'page',
      'screen',
      'identify',
      'group',
      'alias',
      't',
      'p',
      'batch',
      'b',
      'import',
    ]) {
      const op = doc.paths[`/v1/${p}`]?.post
      expect(Object.keys(op?.requestBody?.content ?? {}).sort()).toEqual(['application/json', 'text/plain'])
      for (const status of ['400', '401', '403', '413', '415', '429', '503'])
        expect(op?.responses).toHaveProperty(status)
    }
    const codes = (status: string) =>
      (doc.paths['/v1/batch']!.post!.responses[status]!.content!['application/json']!.schema as Json)
        .properties as { code: { enum: string[] } }
    expect(codes('401').code.enum).toEqual(['TALLY_ERR_MISSING_WRITE_KEY', 'TALLY_ERR_INVALID_WRITE_KEY'])
    expect(codes('429').code.enum).toEqual(['TALLY_ERR_RATE_LIMITED'])
    expect(codes('503').code.enum).toEqual(['TALLY_ERR_SITES_UNAVAILABLE', 'TALLY_ERR_LOG_UNAVAILABLE'])
    const pixel = doc.paths['/v1/pixel.gif']?.get
    expect(pixel?.parameters?.map((p) => p.name)).toEqual(
      expect.arrayContaining(['writeKey', 'url', 'e', 'a']),
    )
    expect(pixel?.responses['200']?.content).toHaveProperty('image/gif')
    expect(doc.paths).toHaveProperty('/t.js')
    expect(doc.components?.securitySchemes).toHaveProperty('writeKey')
    expect(doc.components?.securitySchemes).toHaveProperty('writeKeyInUrl.name', 'wk')

    const html = await app.inject({ method: 'GET', url: '/docs' })
    expect(html.headers['content-type']).toMatch(/text\/html/)
    expect(html.body).toContain('/v1/batch')
    const ui = await app.inject({ method: 'GET', url: '/docs/ui' })
    expect(ui.statusCode).toBe(200)
    expect(ui.body).toMatch(/swagger-ui/i)
  })

  it('ingest: the first-party aliases answer but are documented once', async () => {
    app = await ingestApp({ TALLY_TRACKER_PREFIX: '/stats' })
    const doc = await documentOf(app)
    checkDocument(app, doc)
    expect(Object.keys(doc.paths).filter((p) => p.startsWith('/stats/'))).toEqual(['/stats/t.js'])
    const alias = await app.inject({ method: 'POST', url: '/stats/v1/track', payload: {} })
    expect(alias.json()).toMatchObject({ code: 'TALLY_ERR_MISSING_WRITE_KEY' })
  })

  it('query: every route with the parameters the parser takes, answers and error codes', async () => {
    app = await queryApp()
    const doc = await documentOf(app)
    checkDocument(app, doc)
    expect(doc.info.title).toBe('Tally query API')
    const routes: Array<[string, keyof typeof ENDPOINT_PARAMS]> = [
      ['/v1/stats/aggregate', 'aggregate'],
      ['/v1/stats/timeseries', 'timeseries'],
      ['/v1/stats/breakdown', 'breakdown'],
      ['/v1/stats/realtime', 'realtime'],
      ['/v1/export/aggregates', 'export'],
      ['/v1/export/events', 'events'],
    ]
    for (const [path, endpoint] of routes) {
      const op = doc.paths[path]?.get
      // The document's parameters are the ones query/params.ts accepts, no more, no less.
      expect(op?.parameters?.map((p) => p.name).sort()).toEqual([...ENDPOINT_PARAMS[endpoint]].sort())
      expect(op?.parameters?.find((p) => p.name === 'site')?.required).toBe(true)
      for (const p of op?.parameters ?? []) {
        expect(p.in).toBe('query')
        expect(p.description).toBeTruthy()
      }
      for (const status of ['400', '401', '403']) expect(op?.responses).toHaveProperty(status)
    }
    const stats = doc.paths['/v1/stats/aggregate']!.get!.responses['200']!.content!['application/json']!
      .schema as {
      required: string[]
      properties: { meta: { properties: Json } }
    }
    expect(stats.required).toEqual(['results', 'meta'])
    expect(stats.properties.meta.properties).toHaveProperty('complete_through')
    const events = doc.paths['/v1/export/events']!.get!.responses
    for (const status of ['500', '501', '503']) expect(events).toHaveProperty(status)
    expect(doc.components?.securitySchemes).toHaveProperty('readToken')
    const ui = await app.inject({ method: 'GET', url: '/docs/ui' })
    expect(ui.statusCode).toBe(200)
  })
})
