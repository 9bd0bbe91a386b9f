import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { projectRoot } from '../../core/paths.js'

interface Asset {
  body: Buffer
  type: string
  etag: string
}

/**
 * The dashboard's own files are plain HTML/CSS/JS read from the package root (no build step); the
 * chart library is uPlot's distribution files from node_modules.
 */
function loadAssets(): Map<string, Asset> {
  const own = join(projectRoot(), 'query', 'dashboard')
  const uplot = dirname(createRequire(import.meta.url).resolve('uplot'))
  const files: Array<[url: string, file: string, type: string]> = [
    ['/', join(own, 'index.html'), 'text/html; charset=utf-8'],
    ['/dashboard/app.js', join(own, 'app.js'), 'text/javascript; charset=utf-8'],
    ['/dashboard/style.css', join(own, 'style.css'), 'text/css; charset=utf-8'],
    [
      '/dashboard/vendor/uPlot.iife.min.js',
      join(uplot, 'uPlot.iife.min.js'),
      'text/javascript; charset=utf-8',
    ],
    ['/dashboard/vendor/uPlot.min.css', join(uplot, 'uPlot.min.css'), 'text/css; charset=utf-8'],
  ]
  const out = new Map<string, Asset>()
  for (const [url, file, type] of files) {
    const body = readFileSync(file)
    out.set(url, {
      body,
      type,
      etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`,
    })
  }
  return out
}

/**
 * Only this server's own files and API: the token typed into the page can go nowhere else. Styles
 * set through the CSSOM (uPlot sizes its elements that way) need no 'unsafe-inline'.
 */
const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ')

/** Serves the dashboard at `/` with its assets under `/dashboard/`. */
export async function dashboardPlugin(app: FastifyInstance): Promise<void> {
  const assets = loadAssets()
  for (const [url, asset] of assets) {
    // Static files, not API: left out of the OpenAPI document.
    app.get(url, { schema: { hide: true } }, async (req: FastifyRequest, reply: FastifyReply) => {
      void reply
        .header('content-type', asset.type)
        // Revalidated every time (cheap with the ETag), so an upgrade shows at once.
        .header('cache-control', 'no-cache')
        .header('etag', asset.etag)
        .header('x-content-type-options', 'nosniff')
        .header('referrer-policy', 'no-referrer')
      if (url === '/') void reply.header('content-security-policy', CSP).header('x-frame-options', 'DENY')
      if (req.headers['if-none-match'] === asset.etag) return reply.status(304).send()
      return reply.send(asset.body)
    })
  }
}
