import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import type {
  FastifyContextConfig,
  FastifyInstance,
  FastifyReply,
  FastifyRequest,
  RouteOptions,
} from 'fastify'
import { projectRoot } from '../../core/paths.js'

/** The tracker as served: compacted source, its gzip, and an ETag of the content. */
export interface TrackerScript {
  source: Buffer
  gzip: Buffer
  etag: string
}

let cached: TrackerScript | undefined

/**
 * Drops whole-line `//` comments, blank lines and indentation. The source (ingest/tracker/t.js)
 * keeps to comments on lines of their own and has no multi-line strings, so this is safe; lines
 * stay lines, so automatic semicolon insertion reads the code as before.
 */
export function compactScript(source: string): string {
  return source
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('//'))
    .join('\n')
}

/** The tracker read from the package root (it is plain JavaScript: no build step), compacted once. */
export function trackerScript(): TrackerScript {
  if (cached) return cached
  const text = `/*! tally.js */\n${compactScript(readFileSync(join(projectRoot(), 'ingest', 'tracker', 't.js'), 'utf8'))}\n`
  const source = Buffer.from(text)
  cached = {
    source,
    gzip: gzipSync(source, { level: 9 }),
    etag: `"${createHash('sha256').update(source).digest('base64url').slice(0, 22)}"`,
  }
  return cached
}

export interface TrackerPluginOptions {
  /**
   * First-party path prefix (TALLY_TRACKER_PREFIX), e.g. `/stats`: the tracker is served at
   * `<prefix>/t.js` too, and every `/v1/…` route registered after this plugin also answers at
   * `<prefix>/v1/…`. Empty: no aliases.
   */
  prefix?: string
}

const ALIAS = Symbol('tally-tracker-prefix-alias')

const SCRIPT_SCHEMA = {
  summary: 'The browser tracker',
  description: 'ingest/tracker/t.js, compacted; gzipped when the client accepts it. See the README.',
  tags: ['tracker'],
  response: {
    200: {
      description: 'The script (cached for an hour, with an ETag).',
      content: { 'text/javascript': { schema: { type: 'string' } } },
    },
    304: { description: 'Not modified (If-None-Match matched the ETag).' },
  },
}

function sendScript(req: FastifyRequest, reply: FastifyReply): FastifyReply {
  const script = trackerScript()
  void reply
    .header('content-type', 'text/javascript; charset=utf-8')
    .header('cache-control', 'public, max-age=3600')
    .header('etag', script.etag)
    .header('vary', 'accept-encoding')
    .header('x-content-type-options', 'nosniff')
    // Loaded by other sites' pages, also those that isolate themselves (COEP).
    .header('cross-origin-resource-policy', 'cross-origin')
  if (req.headers['if-none-match'] === script.etag) return reply.status(304).send()
  if (/\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''))) {
    return reply.header('content-encoding', 'gzip').send(script.gzip)
  }
  return reply.send(script.source)
}

/**
 * Serves the browser tracker at `/t.js` and, with a prefix, adds the first-party aliases. Register
 * it before the API routes: the aliases come from an onRoute hook, which sees only later routes.
 * It is not encapsulated (skip-override), so that hook applies to the app's own routes.
 */
export async function trackerPlugin(app: FastifyInstance, opts: TrackerPluginOptions): Promise<void> {
  const prefix = (opts.prefix ?? '').replace(/\/+$/, '')
  if (prefix !== '') {
    app.addHook('onRoute', function (this: FastifyInstance, route: RouteOptions) {
      if (route.config && (route.config as Record<symbol, unknown>)[ALIAS]) return
      if (!route.url.startsWith('/v1/') || route.method === 'HEAD') return
      // The hook's copy also carries the computed path and prefix; the alias gets its own.
      const {
        path: _path,
        routePath: _routePath,
        prefix: _prefix,
        ...own
      } = route as RouteOptions & {
        path?: string
        routePath?: string
        prefix?: string
      }
      const config = { ...(route.config as object | undefined), [ALIAS]: true } as FastifyContextConfig
      // The alias answers as its route does; the API documents (core/openapi.ts) show it once.
      this.route({
        ...own,
        url: `${prefix}${route.url}`,
        config,
        schema: { ...route.schema, hide: true },
      })
    })
  }
  for (const path of prefix === '' ? ['/t.js'] : ['/t.js', `${prefix}/t.js`]) {
    app.get(path, { schema: SCRIPT_SCHEMA }, async (req, reply) => sendScript(req, reply))
  }
}
;(trackerPlugin as unknown as Record<symbol, boolean>)[Symbol.for('skip-override')] = true
