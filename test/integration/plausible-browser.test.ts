import { readFileSync } from 'node:fs'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createRequire } from 'node:module'
import type { AddressInfo } from 'node:net'
import type { Browser, BrowserContext, Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startIngest, startQuery, startStream } from '../../app/start.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { createLogger } from '../../core/log.js'
import { migrate } from '../../core/migrate.js'
import type { RunningIngest } from '../../ingest/role.js'
import type { RunningQuery } from '../../query/role.js'
import type { RunningStream } from '../../stream/role.js'
import { DESKTOP_UA, launchChromium, PHONE_UA } from '../helpers/browser.js'
import { cleanup, eventually, testConfig, uniqueName } from '../helpers/context.js'

/**
 * Plausible's own tracker, unmodified, in headless Chromium against real ingest, stream and query
 * roles on Kafka and Cassandra: `@plausible-analytics/tracker` imported by a page, and Plausible's
 * script-tag snippet (its queue stub, then the script, here the same npm bundle served as a classic
 * script with the site's domain, as Plausible serves its per-site script). Both point at Tally's
 * `/api/event` (through the shop's first-party proxy, as Plausible's proxy guides set it up); the
 * npm page names the site by an alias. Visitors view pages, navigate in the SPA,
 * send a custom event with props and click an outbound link; the stream counts them exactly.
 */

const config = testConfig({ PORT: '0', TALLY_FLUSH_INTERVAL_MS: '200' })
const logger = createLogger('silent')
const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
const require = createRequire(import.meta.url)
const TRACKER = readFileSync(require.resolve('@plausible-analytics/tracker'), 'utf8')

const base = uniqueName('pl').replace(/_/g, '-')
const DOMAIN = `${base}.test`
const ALIAS = `app.${base}.test`
/** Four visitors: each its own browser, so its own cookieless id (one IP here). */
const UAS = [
  DESKTOP_UA,
  PHONE_UA,
  DESKTOP_UA.replace('Chrome/130', 'Chrome/129'),
  PHONE_UA.replace('Pixel 8', 'Pixel 7'),
]

let browser: Browser
let ingest: RunningIngest
let stream: RunningStream
let query: RunningQuery
let shop: Server
let shopUrl = ''
let readToken = ''
const startedAt = Date.now()
/** Bodies the pages posted to /api/event, with the answer's status. */
const posted: Array<{ body: Record<string, unknown>; status: number; ua: string }> = []

const BODY = `<nav><a id="pricing" href="/app/pricing">Pricing</a></nav>
<button id="signup">Sign up</button>
<a id="outbound" href="http://partner.test/landing">Partner</a>
<script>
document.getElementById('pricing').addEventListener('click', (e) => {
  e.preventDefault(); history.pushState({}, '', '/app/pricing')
})
document.getElementById('signup').addEventListener('click', () => plausible('Signup', { props: { plan: 'pro' } }))
</script>`

/** Plausible's snippet: the queue stub and init options, then its script (async). */
function snippetPage(endpoint: string): string {
  return `<!doctype html><html><head><meta charset="utf-8"><title>Shop</title>
<script async src="/js/pa-site.js"></script>
<script>
  window.plausible=window.plausible||function(){(plausible.q=plausible.q||[]).push(arguments)},plausible.init=plausible.init||function(i){plausible.o=i||{}};
  plausible.init({ endpoint: '${endpoint}', outboundLinks: true, captureOnLocalhost: true })
</script></head><body>${BODY}</body></html>`
}

/** The npm package as an application bundles it: imported, initialised, `track` called. */
function npmPage(endpoint: string): string {
  return `<!doctype html><html><head><meta charset="utf-8"><title>Shop</title>
<script type="module">
  import { init, track } from '/npm/plausible.js'
  init({ domain: '${ALIAS}', endpoint: '${endpoint}', outboundLinks: true, captureOnLocalhost: true, bindToWindow: false })
  window.plausible = (name, options) => track(name, options || {})
</script></head><body>${BODY}</body></html>`
}

/**
 * The per-site script as Plausible serves it: the tracker with the site's domain built in, reading
 * the snippet's options (plausible.o) and replaying its queue (plausible.q).
 */
function siteScript(): string {
  const body = TRACKER.replace(/export\s*\{[^}]*\}\s*;?\s*$/, '')
  return `(function(){${body}
var stub = window.plausible || {}; var queue = stub.q || []
init(Object.assign({}, stub.o || {}, { domain: '${DOMAIN}' }))
for (var i = 0; i < queue.length; i++) track(queue[i][0], queue[i][1] || {})
})()`
}

/** Passes an event on to ingest with the visitor's user agent and address, and records it. */
async function proxy(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const chunks: Buffer[] = []
  for await (const chunk of req) chunks.push(chunk as Buffer)
  const body = Buffer.concat(chunks)
  const ua = String(req.headers['user-agent'] ?? '')
  const answer = await fetch(`${ingest.url}/api/event`, {
    method: 'POST',
    headers: {
      'content-type': String(req.headers['content-type'] ?? 'text/plain'),
      'user-agent': ua,
      'x-forwarded-for': req.socket.remoteAddress ?? '',
    },
    body,
  })
  posted.push({ body: JSON.parse(body.toString()), status: answer.status, ua })
  res.writeHead(answer.status, { 'content-type': answer.headers.get('content-type') ?? 'text/plain' })
  res.end(Buffer.from(await answer.arrayBuffer()))
}

async function startShop(): Promise<string> {
  shop = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!
    // Proxied to ingest as Plausible's proxy guides do (first party): the proxy sees every request,
    // those sent as a page unloads too, which Playwright does not report.
    const endpoint = '/api/event'
    if (path === endpoint && req.method === 'POST') {
      proxy(req, res).catch((err: Error) => res.writeHead(502).end(err.message))
    } else if (path.startsWith('/app/')) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
      res.end(path.includes('npm') ? npmPage(endpoint) : snippetPage(endpoint))
    } else if (path === '/js/pa-site.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' })
      res.end(siteScript())
    } else if (path === '/npm/plausible.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' })
      res.end(TRACKER)
    } else {
      res.writeHead(404).end()
    }
  })
  await new Promise<void>((r) => shop.listen(0, '127.0.0.1', r))
  return `http://127.0.0.1:${(shop.address() as AddressInfo).port}`
}

async function visitor(ua: string): Promise<BrowserContext> {
  const ctx = await browser.newContext({ userAgent: ua })
  // Playwright sets navigator.webdriver, which the tracker ignores unless told it is tested.
  await ctx.addInitScript('window.__plausible = true')
  await ctx.route('http://partner.test/**', (route) =>
    route.fulfill({ status: 200, contentType: 'text/html', body: '<title>Partner</title>' }),
  )
  return ctx
}

/** One visit: a page view, an SPA navigation, a custom event with props, an outbound click. */
async function visit(ua: string, path: string): Promise<void> {
  const ctx = await visitor(ua)
  const page: Page = await ctx.newPage()
  await page.goto(`${shopUrl}${path}`)
  await page.waitForFunction("typeof window.plausible === 'function' && !window.plausible.q")
  await page.click('#pricing')
  await page.click('#signup')
  await Promise.all([page.waitForURL('http://partner.test/landing'), page.click('#outbound')])
  // The outbound click's request is sent with keepalive as the page leaves: seen before closing.
  await eventually(
    async () => (posted.some((p) => p.body.n === 'Outbound Link: Click' && p.ua === ua) ? true : undefined),
    10_000,
    'the outbound click',
  )
  await ctx.close()
}

async function stats<T>(endpoint: string, params: Record<string, string>): Promise<T> {
  const q = new URLSearchParams({
    site: DOMAIN,
    from: new Date(startedAt - 3_600_000).toISOString(),
    to: new Date(Date.now() + 3_600_000).toISOString(),
    ...params,
  })
  const res = await fetch(`${query.url}/v1/stats/${endpoint}?${q}`, {
    headers: { authorization: `Bearer ${readToken}` },
  })
  expect(res.status, await res.clone().text()).toBe(200)
  return (await res.json()) as T
}

beforeAll(async () => {
  browser = await launchChromium()
  await migrate(config)
  await cassandra.connect()
  const sites = new CassandraSiteStore(cassandra)
  const created = await sites.create({ siteId: DOMAIN, domain: DOMAIN, origins: [] })
  await sites.addAlias(DOMAIN, ALIAS)
  readToken = created.readToken
  ingest = await startIngest(config, logger)
  stream = await startStream(config, logger)
  query = await startQuery(config, logger)
  shopUrl = await startShop()
})

afterAll(async () => {
  await browser?.close()
  if (shop) await new Promise((r) => shop.close(r))
  await query?.close()
  await stream?.close()
  await ingest?.close()
  await cassandra.shutdown()
  await cleanup(config)
})

describe("Plausible's tracker in Chromium", () => {
  it('page views, SPA navigations, custom events with props and outbound links are counted exactly', async () => {
    await visit(UAS[0]!, '/app/')
    await visit(UAS[1]!, '/app/')
    await visit(UAS[2]!, '/app/npm')
    await visit(UAS[3]!, '/app/npm')
    const counted = (b: Record<string, unknown>) => b.n !== 'engagement'
    await eventually(
      async () => (posted.filter((p) => counted(p.body)).length >= 16 ? true : undefined),
      20_000,
      'the tracker requests',
    )
    const sent = posted.filter((p) => counted(p.body))
    expect(sent.every((p) => p.status === 202)).toBe(true)
    expect(sent.map((p) => p.body.d)).toEqual([...Array(8).fill(DOMAIN), ...Array(8).fill(ALIAS)])
    expect(sent.slice(0, 4).map((p) => [p.body.n, new URL(String(p.body.u)).pathname, p.body.p])).toEqual([
      ['pageview', '/app/', undefined],
      ['pageview', '/app/pricing', undefined],
      ['Signup', '/app/pricing', { plan: 'pro' }],
      ['Outbound Link: Click', '/app/pricing', { url: 'http://partner.test/landing' }],
    ])
    const want = { pageviews: 8, events: 16, visitors: 4 }
    const got = await eventually(
      async () => {
        const r = await stats<{ results: Record<string, { value: number }> }>('aggregate', {
          metrics: 'events,pageviews,visitors',
        })
        const values = Object.fromEntries(Object.entries(r.results).map(([k, v]) => [k, v.value]))
        return values.events === want.events && values.pageviews === want.pageviews ? values : undefined
      },
      60_000,
      'the stream to count the Plausible events',
    )
    expect(got).toEqual(want)
    const breakdown = async (property: string, metric: string) => {
      const r = await stats<{ results: Array<Record<string, string | number>> }>('breakdown', {
        property,
        metrics: metric,
      })
      return Object.fromEntries(r.results.map((row) => [row[property], row[metric]]))
    }
    expect(await breakdown('event', 'events')).toEqual({
      pageview: 8,
      Signup: 4,
      'Outbound Link: Click': 4,
    })
    expect(await breakdown('path', 'pageviews')).toEqual({ '/app/': 2, '/app/npm': 2, '/app/pricing': 4 })
  })
})
