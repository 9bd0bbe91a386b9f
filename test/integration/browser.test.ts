import { mkdirSync, readFileSync } from 'node:fs'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { parse } from 'csv-parse/sync'
import type { Browser, BrowserContext, Page, Request } from 'playwright-core'
import { Compile } from 'typebox/compile'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startIngest, startQuery, startStream } from '../../app/start.js'
import {
  type Dimension,
  dimensionValues,
  type GeneratedEvent,
  generateWorkload,
  truthCounts,
  truthOf,
} from '../../bench/workload.js'
import { eventGoal, pageGoal } from '../../core/aggregate/goals.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { createLogger } from '../../core/log.js'
import { migrate } from '../../core/migrate.js'
import type { Site } from '../../core/ports/site-store.js'
import { normalizeEvent } from '../../ingest/normalize.js'
import type { RunningIngest } from '../../ingest/role.js'
import { UserAgentParser } from '../../ingest/user-agent.js'
import type { RunningQuery } from '../../query/role.js'
import { SegmentEventV1 } from '../../schemas/events.js'
import type { RunningStream } from '../../stream/role.js'
import { DESKTOP_UA, launchChromium, PHONE_UA } from '../helpers/browser.js'
import { cleanup, eventually, testConfig } from '../helpers/context.js'
import { SESSION_DIMENSIONS, visitTruthOf } from '../helpers/visit-truth.js'

/**
 * The tracker and the dashboard in real headless Chromium, against real ingest, stream worker and
 * query roles on Kafka and Cassandra. A test shop (its own origin) embeds the snippet; visitors
 * browse it (SPA navigation, a custom event, an outbound link, a page left right after an event);
 * the events are counted by the stream and read back through the query API and the dashboard.
 */

const PREFIX = '/stats'
const config = testConfig({ PORT: '0', TALLY_FLUSH_INTERVAL_MS: '200', TALLY_TRACKER_PREFIX: PREFIX })
const logger = createLogger('silent')
const cassandra = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
const ARTIFACTS = join('test-artifacts', 'browser')
const REFERRER = 'https://news.example.com/item/42'

let browser: Browser
let ingest: RunningIngest
let stream: RunningStream
let query: RunningQuery
const shops: Server[] = []
/** The shop loading the tracker from ingest's own origin (cross-origin requests, CORS). */
let shopUrl = ''
/**
 * The same shop on another origin that proxies `/stats/*` to ingest (first party, for ad blockers):
 * the snippet loads `/stats/t.js` from the shop itself, so events go to the shop's `/stats/v1/b`.
 */
let firstPartyUrl = ''
let site: Site
let readToken = ''
const startedAt = Date.now()

/**
 * Tracker requests with their bodies: seen by the browser (Playwright reports no beacon sent while
 * a page unloads, though Chromium sends it), or by the first-party proxy, which sees them all.
 */
interface Captured {
  url: string
  /** Playwright's resource type ("ping" for a beacon), or "proxy" when the proxy recorded it. */
  resourceType: string
  body: { batch: Array<Record<string, unknown>>; writeKey: string; sentAt: string }
  context: string
}
const captured: Captured[] = []
/** Requests the first-party proxy passed on (the t.js loads too), by user agent. */
const proxied: Array<{ method: string; path: string; ua: string }> = []

function shopPage(scriptSrc: string, writeKey: string): string {
  // The snippet as the README gives it.
  return `<!doctype html><html><head><meta charset="utf-8"><title>Shop</title>
<script>window.tally=window.tally||function(){(tally.q=tally.q||[]).push(arguments)}</script>
<script defer src="${scriptSrc}" data-key="${writeKey}"></script>
</head><body>
<nav><a id="home" data-spa href="/app/">Home</a> <a id="pricing" data-spa href="/app/pricing">Pricing</a></nav>
<button id="signup">Sign up</button>
<button id="leave">Leave</button>
<a id="outbound" href="http://partner.test/landing">Partner</a>
<script>
document.addEventListener('click', (e) => {
  const a = e.target.closest('a[data-spa]')
  if (a) { e.preventDefault(); history.pushState({}, '', a.getAttribute('href')); document.title = a.textContent }
  if (e.target.id === 'signup') tally('track', 'Signed Up', { plan: 'pro' })
  // The event and the navigation in one task: only the tracker's pagehide flush can deliver it.
  if (e.target.id === 'leave') { tally('track', 'Left Page'); location.href = '/bye' }
})
</script></body></html>`
}

/** Passes a request on to ingest unchanged (path, body, user agent, origin) and records it. */
async function proxy(
  req: IncomingMessage,
  res: ServerResponse,
  visitorOf: (body: Captured['body']) => string,
) {
  const chunks: Buffer[] = []
  for await (const chunk of req) chunks.push(chunk as Buffer)
  const body = Buffer.concat(chunks)
  const ua = String(req.headers['user-agent'] ?? '')
  proxied.push({ method: req.method ?? 'GET', path: req.url ?? '', ua })
  if (req.method === 'POST') {
    const parsed = JSON.parse(body.toString()) as Captured['body']
    captured.push({
      url: req.url ?? '',
      resourceType: 'proxy',
      body: parsed,
      context: visitorOf(parsed),
    })
  }
  const headers: Record<string, string> = { 'user-agent': ua, 'accept-encoding': 'identity' }
  for (const h of ['content-type', 'origin'] as const) {
    const v = req.headers[h]
    if (typeof v === 'string') headers[h] = v
  }
  const answer = await fetch(`${ingest.url}${req.url}`, {
    method: req.method ?? 'GET',
    headers,
    ...(req.method === 'POST' ? { body } : {}),
  })
  res.writeHead(answer.status, { 'content-type': answer.headers.get('content-type') ?? 'text/plain' })
  res.end(Buffer.from(await answer.arrayBuffer()))
}

async function startShop(
  firstParty: boolean,
  visitorOf: (body: Captured['body']) => string,
): Promise<string> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!
    if (path.startsWith('/app/')) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
      res.end(shopPage(firstParty ? `${PREFIX}/t.js` : `${ingest.url}/t.js`, site.writeKey))
    } else if (path === '/bye') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
      res.end('<!doctype html><title>Bye</title><p>bye</p>')
    } else if (firstParty && path.startsWith(`${PREFIX}/`)) {
      proxy(req, res, visitorOf).catch((err: Error) => res.writeHead(502).end(err.message))
    } else {
      res.writeHead(404).end()
    }
  })
  shops.push(server)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

/** A visitor: its own context (storage), user agent and screen; tracker requests are recorded. */
async function visitor(name: string, opts: { phone?: boolean; init?: string } = {}): Promise<BrowserContext> {
  const ctx = await browser.newContext({
    userAgent: opts.phone ? PHONE_UA : DESKTOP_UA,
    viewport: opts.phone ? { width: 390, height: 844 } : { width: 1280, height: 900 },
    ...(opts.phone ? { isMobile: true, hasTouch: true, deviceScaleFactor: 2 } : {}),
  })
  if (opts.init) await ctx.addInitScript(opts.init)
  // The outbound link's site is not on this network: answer it here.
  await ctx.route('http://partner.test/**', (route) =>
    route.fulfill({ status: 200, contentType: 'text/html', body: '<title>Partner</title>' }),
  )
  ctx.on('request', (req: Request) => {
    if (!req.url().startsWith(ingest.url) || req.method() !== 'POST') return
    captured.push({
      url: req.url(),
      resourceType: req.resourceType(),
      body: JSON.parse(req.postData() ?? 'null'),
      context: name,
    })
  })
  return ctx
}

/**
 * The cells of a dashboard table; a table on a tab not shown is shown first (its tab clicked, its
 * rows read for the load shown).
 */
async function tableCells(page: Page, table: string): Promise<Array<Array<string | null>>> {
  const view = await page.$(`#${table}-view[hidden]`)
  if (view) {
    await page.click(`#${table}-tab`)
    await page.waitForSelector(`#${table}[data-state="loaded"]`)
  }
  return page.$$eval(`#${table} tbody tr`, (rows) =>
    rows.map((r) => [...r.querySelectorAll('td')].map((td) => td.textContent)),
  )
}

async function trackerReady(page: Page): Promise<boolean> {
  await page.waitForFunction("typeof window.tally?.v === 'string'")
  return page.evaluate('window.tally.off') as Promise<boolean>
}

type SentEvent = Record<string, unknown> & { via: Captured }
const eventsOf = (ctx: string): SentEvent[] =>
  captured.filter((c) => c.context === ctx).flatMap((c) => c.body.batch.map((e) => ({ ...e, via: c })))
const nameOf = (e: Record<string, unknown>) =>
  e.type === 'page' ? `page ${(e.properties as { path: string }).path}` : String(e.event)

async function stats<T>(endpoint: string, params: Record<string, string>): Promise<T> {
  const res = await fetch(
    `${query.url}/v1/stats/${endpoint}?${new URLSearchParams({ site: site.siteId, ...params })}`,
    {
      headers: { authorization: `Bearer ${readToken}` },
    },
  )
  expect(res.status, await res.clone().text()).toBe(200)
  return (await res.json()) as T
}

const range = () => ({
  from: new Date(startedAt - 3_600_000).toISOString(),
  to: new Date(Date.now() + 3_600_000).toISOString(),
})

beforeAll(async () => {
  mkdirSync(ARTIFACTS, { recursive: true })
  // First, so a machine without Chromium fails here, loudly, before anything else starts.
  browser = await launchChromium()
  await migrate(config)
  await cassandra.connect()
  shopUrl = await startShop(false, () => 'direct')
  // Told apart by the user agent in the events: a beacon sent while a page unloads carries the
  // browser's own User-Agent header, not the one Playwright sets per context.
  firstPartyUrl = await startShop(true, (body) =>
    (body.batch[0]?.context as { userAgent?: string } | undefined)?.userAgent === PHONE_UA
      ? 'B'
      : 'first-party',
  )
  const created = await new CassandraSiteStore(cassandra).create({
    siteId: 'shop.test',
    domain: 'shop.test',
    origins: [shopUrl, firstPartyUrl],
  })
  site = created.site
  readToken = created.readToken
  ingest = await startIngest(config, logger)
  stream = await startStream(config, logger)
  query = await startQuery(config, logger)
})

afterAll(async () => {
  await browser?.close()
  for (const server of shops) await new Promise((r) => server.close(r))
  await query?.close()
  await stream?.close()
  await ingest?.close()
  await cassandra.shutdown()
  await cleanup(config)
})

describe('browser tracker in Chromium', () => {
  it('page views (SPA too), a custom event, an outbound click and a last event on unload are sent', async () => {
    // Visitor A: arrives from a news site, browses, signs up, goes back, leaves by an outbound link.
    const a = await visitor('A')
    const pa = await a.newPage()
    await pa.goto(`${shopUrl}/app/`, { referer: REFERRER })
    expect(await trackerReady(pa)).toBe(false)
    await pa.click('#pricing')
    // A router replacing the same URL is no new page view.
    await pa.evaluate("history.replaceState({}, '', '/app/pricing')")
    await pa.click('#signup')
    await pa.goBack()
    await pa.waitForURL(`${shopUrl}/app/`)
    await Promise.all([pa.waitForURL('http://partner.test/landing'), pa.click('#outbound')])

    // Visitor B, on a phone: opens pricing directly, then leaves right after an event.
    const b = await visitor('B', { phone: true })
    const pb = await b.newPage()
    await pb.goto(`${firstPartyUrl}/app/pricing`)
    expect(await trackerReady(pb)).toBe(false)
    await Promise.all([pb.waitForURL(`${firstPartyUrl}/bye`), pb.click('#leave')])

    // Visitor C has no sendBeacon, so the tracker uses fetch(keepalive); its first batch reaches
    // ingest but the answer is replaced by a 503, so the tracker retries the same messageIds.
    const c = await visitor('C', { init: 'delete Navigator.prototype.sendBeacon' })
    let answered503 = 0
    await c.route(`${ingest.url}/v1/b`, async (route) => {
      const real = await route.fetch()
      if (answered503++ > 0) return route.fulfill({ response: real })
      expect(real.status()).toBe(200)
      return route.fulfill({ status: 503, headers: { 'access-control-allow-origin': shopUrl }, body: '{}' })
    })
    const pc = await c.newPage()
    await pc.goto(`${shopUrl}/app/`)
    expect(await trackerReady(pc)).toBe(false)

    await eventually(
      async () =>
        eventsOf('A').length >= 5 && eventsOf('B').length >= 2 && eventsOf('C').length >= 2
          ? true
          : undefined,
      20_000,
      'the tracker requests of A, B and C',
    ).catch((err: Error) => {
      const seen = captured.map((c) => [c.context, c.resourceType, c.url, c.body.batch.map(nameOf)])
      throw new Error(
        `${err.message}; seen: ${JSON.stringify(seen)}; the proxy passed on: ${JSON.stringify(proxied)}`,
      )
    })
    expect(eventsOf('A').map(nameOf)).toEqual([
      'page /app/',
      'page /app/pricing',
      'Signed Up',
      'page /app/',
      'Outbound Link Clicked',
    ])
    expect(eventsOf('B').map(nameOf)).toEqual(['page /app/pricing', 'Left Page'])
    // A: beacons (Chromium's "ping") straight to ingest. B: through the shop's own /stats/ path,
    // the tracker included; its last beacon went out while the page unloaded.
    for (const r of captured.filter((r) => r.context === 'A')) {
      expect(r.url).toBe(`${ingest.url}/v1/b`)
      expect(r.resourceType).toBe('ping')
    }
    expect(captured.filter((r) => r.context === 'B').map((r) => r.url)).toEqual(
      captured.filter((r) => r.context === 'B').map(() => `${PREFIX}/v1/b`),
    )
    expect(proxied.filter((p) => p.ua === PHONE_UA && p.method === 'GET').map((p) => p.path)).toEqual([
      `${PREFIX}/t.js`,
    ])
    const retried = eventsOf('C')
    expect(retried.map(nameOf)).toEqual(['page /app/', 'page /app/'])
    expect(retried[1]!.messageId).toBe(retried[0]!.messageId)
    expect(retried.every((e) => e.via.resourceType === 'fetch')).toBe(true)

    const first = eventsOf('A')[0]!
    expect(first.context).toMatchObject({
      page: { path: '/app/', referrer: REFERRER, url: `${shopUrl}/app/`, title: 'Shop' },
      library: { name: 'tally.js' },
    })
    expect(eventsOf('A')[2]!.properties).toEqual({ plan: 'pro' })
    expect(eventsOf('A')[4]!.properties).toEqual({ url: 'http://partner.test/landing' })
    expect(new Set(eventsOf('A').map((e) => e.anonymousId)).size).toBe(1)
    expect(eventsOf('A')[0]!.anonymousId).not.toBe(eventsOf('B')[0]!.anonymousId)
  })

  it('every payload the tracker sent validates against the ingest schemas', () => {
    const check = Compile(SegmentEventV1)
    const parser = new UserAgentParser()
    expect(captured.length).toBeGreaterThan(0)
    for (const req of captured) {
      expect(req.body.writeKey).toBe(site.writeKey)
      expect(Number.isNaN(Date.parse(req.body.sentAt))).toBe(false)
      for (const e of req.body.batch) {
        expect(check.Check(e), JSON.stringify([...check.Errors(e)])).toBe(true)
        const r = normalizeEvent(
          e,
          {
            siteId: site.siteId,
            userAgent: DESKTOP_UA,
            receivedAtMs: Date.now(),
            batchSentAt: req.body.sentAt,
            routeType: undefined,
            imported: false,
          },
          config.ingest,
          parser,
        )
        expect(r.ok, JSON.stringify(r)).toBe(true)
      }
    }
  })

  it('with Global Privacy Control on, nothing is sent and nothing is stored', async () => {
    const g = await visitor('GPC', {
      init: "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', { get: () => true })",
    })
    const scriptLoads: string[] = []
    g.on('requestfinished', (r) => r.url().endsWith('/t.js') && scriptLoads.push(r.url()))
    const page = await g.newPage()
    const proxiedBefore = proxied.length
    await page.goto(`${firstPartyUrl}/app/`)
    expect(await trackerReady(page)).toBe(true)
    await page.click('#pricing')
    await page.click('#signup')
    await Promise.all([page.waitForURL(`${firstPartyUrl}/bye`), page.click('#leave')])
    // Long enough for the batching delay (500 ms) and the unload flush to have sent anything.
    await page.waitForTimeout(1500)
    expect(scriptLoads).toEqual([`${firstPartyUrl}${PREFIX}/t.js`])
    // Neither the browser nor the proxy (which also sees beacons sent on unload) saw an event.
    expect(captured.filter((c) => c.context === 'GPC' || c.context === 'first-party')).toEqual([])
    expect(proxied.slice(proxiedBefore).map((p) => `${p.method} ${p.path}`)).toEqual([`GET ${PREFIX}/t.js`])
    expect(await page.evaluate('localStorage.length + sessionStorage.length')).toBe(0)
  })

  it('the events are counted once each: read back through the query API', async () => {
    // A: 3 page views + 2 events; B: 1 + 1; C: 1 page view sent twice (same messageId). GPC: none.
    const want = { events: 8, pageviews: 5, visitors: 3, bot_events: 0 }
    const got = await eventually(
      async () => {
        const r = await stats<{ results: Record<string, { value: number }> }>('aggregate', {
          ...range(),
          metrics: 'events,pageviews,visitors,bot_events',
        })
        const values = Object.fromEntries(Object.entries(r.results).map(([k, v]) => [k, v.value]))
        return values.events === want.events && values.pageviews === want.pageviews ? values : undefined
      },
      60_000,
      'the stream to count the browser events',
    )
    expect(got).toEqual(want)
    const breakdown = async (property: string, metric: string) => {
      const r = await stats<{ results: Array<Record<string, string | number>> }>('breakdown', {
        ...range(),
        property,
        metrics: metric,
      })
      return Object.fromEntries(r.results.map((row) => [row[property], row[metric]]))
    }
    expect(await breakdown('path', 'pageviews')).toEqual({ '/app/': 3, '/app/pricing': 2 })
    expect(await breakdown('event', 'events')).toEqual({
      pageview: 5,
      'Signed Up': 1,
      'Outbound Link Clicked': 1,
      'Left Page': 1,
    })
    expect(await breakdown('referrer', 'visitors')).toEqual({ 'news.example.com': 1, '(direct)': 2 })
    const parser = new UserAgentParser()
    const desktop = parser.parse(DESKTOP_UA)
    const phone = parser.parse(PHONE_UA)
    expect(desktop.device).not.toBe(phone.device)
    expect(await breakdown('device', 'visitors')).toEqual({ [desktop.device]: 2, [phone.device]: 1 })
    const browsers: Record<string, number> = {}
    for (const b of [desktop.browser, desktop.browser, phone.browser]) browsers[b] = (browsers[b] ?? 0) + 1
    expect(await breakdown('browser', 'visitors')).toEqual(browsers)
  })

  it('the dashboard shows them, with realtime visitors and provisional windows marked (desktop and phone)', async () => {
    const shots: string[] = []
    // What the dashboard must show; visitor D (a new desktop visitor from no referrer, on /app/)
    // arrives while the desktop dashboard is open.
    const want = {
      pageviews: 5,
      visitors: 3,
      events: 8,
      home: 3,
      homeVisitors: 2,
      direct: 2,
      directBounces: 1,
      desktop: 2,
    }
    for (const device of ['desktop', 'phone'] as const) {
      const ctx = await browser.newContext(
        device === 'phone'
          ? { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 }
          : { viewport: { width: 1280, height: 900 } },
      )
      const page = await ctx.newPage()
      const problems: string[] = []
      page.on('console', (m) => m.type() === 'error' && problems.push(m.text()))
      page.on('pageerror', (e) => problems.push(String(e)))
      await page.goto(`${query.url}/`)
      // No site yet: the form to add one is shown.
      await expect.poll(() => page.isVisible('#add-site')).toBe(true)
      await page.fill('#new-site', site.siteId)
      await page.fill('#new-token', readToken)
      await page.click('#add-site button[type=submit]')
      await page.waitForSelector(`body[data-loaded="${site.siteId}"]`)
      expect(page.url()).not.toContain(readToken)
      expect(await page.evaluate('sessionStorage.getItem("tally.dashboard.sites")')).toContain(readToken)
      expect(await page.evaluate('Object.keys(localStorage)')).toEqual([])

      expect(await page.textContent('#total-pageviews')).toBe(String(want.pageviews))
      expect(await page.textContent('#total-visitors')).toBe(String(want.visitors))
      expect(await page.textContent('#total-events')).toBe(String(want.events))
      await expect.poll(() => page.textContent('#realtime'), { timeout: 15_000 }).toBe(String(want.visitors))
      const cells = (table: string) => tableCells(page, table)
      // Pages by pageviews (visitors of any event on the page); referrers by visitors.
      expect(await cells('pages')).toEqual([
        ['/app/', String(want.home), String(want.homeVisitors)],
        ['/app/pricing', '2', '2'],
      ])
      // Referrers: visitors, pageviews, visits, bounce rate (A's visit of 3 pages is no bounce; B's
      // page and event neither; C's and D's single pages are).
      expect(await cells('referrers')).toEqual([
        [
          '(direct)',
          String(want.direct),
          String(want.direct),
          String(want.direct),
          String(Math.round((100 * want.directBounces) / want.direct)),
        ],
        ['news.example.com', '1', '3', '1', '0'],
      ])
      expect(await cells('devices')).toEqual([
        ['desktop', String(want.desktop)],
        ['mobile', '1'],
      ])
      expect(await cells('browsers')).toEqual([
        [new UserAgentParser().parse(DESKTOP_UA).browser, String(want.visitors)],
      ])

      // The chart: one point per hour of the last 24, none rebuilt by batch yet, so all provisional,
      // shaded and said so.
      expect(await page.getAttribute('#chart', 'data-points')).toBe('24')
      expect(await page.getAttribute('#chart', 'data-provisional')).toBe('24')
      expect(await page.isVisible('#chart canvas')).toBe(true)
      expect(await page.textContent('#windows')).toMatch(/24 windows: 0 final, 24 provisional/)
      expect(await page.textContent('#freshness')).toMatch(/Complete through|Not complete/)

      // Comparing with the 24 hours before, when the site had no traffic: each top number is new.
      if (device === 'desktop') {
        const badge = (id: string) => page.textContent(`#${id} + .change`).catch(() => null)
        await page.selectOption('#compare', 'previous_period')
        expect(page.url()).toContain('compare=previous_period')
        for (const id of ['total-visitors', 'total-pageviews', 'total-events'])
          await expect.poll(() => badge(id), { timeout: 15_000 }).toBe('new')
        await page.selectOption('#compare', '')
        await expect.poll(() => page.isVisible('#total-visitors + .change'), { timeout: 15_000 }).toBe(false)
      }

      // Realtime keeps polling: a new visitor shows up without reloading the dashboard.
      if (device === 'desktop') {
        const d = await visitor('D')
        const pd = await d.newPage()
        await pd.goto(`${shopUrl}/app/`)
        expect(await trackerReady(pd)).toBe(false)
        await expect.poll(() => page.textContent('#realtime'), { timeout: 30_000 }).toBe('4')
        await d.close()
        Object.assign(want, {
          pageviews: 6,
          visitors: 4,
          events: 9,
          home: 4,
          homeVisitors: 3,
          direct: 3,
          directBounces: 2,
          desktop: 3,
        })
        // The phone's dashboard reads hour windows: wait until they hold D too.
        await eventually(
          async () => {
            const r = await stats<{ results: { pageviews: { value: number } } }>('aggregate', {
              ...range(),
              metrics: 'pageviews',
            })
            return r.results.pageviews.value === want.pageviews ? true : undefined
          },
          30_000,
          "visitor D's page view in the hour windows",
        )
      }

      // Usable on a phone: nothing wider than the screen.
      const overflow = await page.evaluate('document.documentElement.scrollWidth - window.innerWidth')
      expect(overflow).toBeLessThanOrEqual(0)
      const file = join(ARTIFACTS, `dashboard-${device}.png`)
      await page.screenshot({ path: file, fullPage: true })
      shots.push(file)
      expect(problems).toEqual([])
      await ctx.close()
    }
    expect(shots).toHaveLength(2)
  })

  it("the dashboard's Download CSV saves the chart's timeseries, equal to the API's JSON", async () => {
    const ctx = await browser.newContext({ acceptDownloads: true })
    const page = await ctx.newPage()
    await page.goto(`${query.url}/`)
    await page.fill('#new-site', site.siteId)
    await page.fill('#new-token', readToken)
    await page.click('#add-site button[type=submit]')
    await page.waitForSelector(`body[data-loaded="${site.siteId}"]`)
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download-csv')])
    expect(download.suggestedFilename()).toBe(`${site.siteId}-24h.csv`.replace(/[^A-Za-z0-9._-]/g, '_'))
    const text = readFileSync((await download.path())!, 'utf8')
    const json = await stats<{ results: Array<Record<string, unknown>> }>('timeseries', {
      period: '24h',
      metrics: 'visitors,pageviews,events',
    })
    expect(parse(text, { columns: true, cast: true, castDate: false })).toEqual(json.results)
    expect(json.results.reduce((n, p) => n + Number(p.pageviews), 0)).toBeGreaterThan(0)
    await ctx.close()
  })
})

describe('dashboard panels: countries, sources and channels, campaigns, goals, filters', () => {
  const SITE = 'dims.test'
  let token = ''
  let events: GeneratedEvent[] = []
  let truth: ReturnType<typeof truthOf>
  let visits: ReturnType<typeof visitTruthOf>
  const regions = new Intl.DisplayNames(['en-US'], { type: 'region' })
  /** A flag emoji: the two regional indicator symbols of an ISO 3166-1 alpha-2 code. */
  const flag = (code: string) =>
    String.fromCodePoint(0x1f1e6 + code.charCodeAt(0) - 65, 0x1f1e6 + code.charCodeAt(1) - 65)
  const shown = (dim: Dimension, value: string) =>
    dim === 'country' && /^[A-Z]{2}$/.test(value) ? `${flag(value)} ${regions.of(value)}` : value

  /**
   * Clicks Download CSV: the file must equal the API's JSON timeseries of the last 24 hours with
   * `params` (filters, metrics). Its rows.
   */
  async function expectCsvDownload(page: Page, params: Record<string, string>) {
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download-csv')])
    const csv = parse(readFileSync((await download.path())!, 'utf8'), {
      columns: true,
      cast: true,
      castDate: false,
    }) as Array<Record<string, unknown>>
    const series = await fetch(
      `${query.url}/v1/stats/timeseries?${new URLSearchParams({ site: SITE, period: '24h', ...params })}`,
      { headers: { authorization: `Bearer ${token}` } },
    )
    expect(series.status).toBe(200)
    expect(csv).toEqual(((await series.json()) as { results: unknown[] }).results)
    return csv
  }

  /** Visits and bounces of the site's visits (hour rows, so every visit once) matching dim==value. */
  const visitsOf = (dim?: string, value?: string) => {
    let n = 0
    let bounces = 0
    for (const [key, c] of visits) {
      const [site, g, , d, v] = key.split('|')
      if (site !== SITE || g !== 'hour' || d !== (dim ?? '') || v !== (value ?? '')) continue
      n += c.visits
      bounces += c.bounces
    }
    return { visits: n, bounceRate: n === 0 ? 0 : Math.round((100 * bounces) / n) }
  }
  const bound = 0.03
  const expectVisitors = (shownText: string, exact: number, what: string) =>
    expect(
      Math.abs(Number(shownText.replace(/,/g, '')) - exact),
      `${what}: ${shownText} shown, ${exact} exact`,
    ).toBeLessThanOrEqual(Math.max(1, Math.ceil(exact * bound)))

  /** The site's goals: an event goal and a page goal (`**`: any path below /docs/). */
  const GOALS = [eventGoal('Added to Cart'), pageGoal('/docs/**')]

  /** The declared custom property `plan` of an event: a function of its messageId, none for one in four. */
  const planOf = (e: GeneratedEvent): string | undefined => {
    let h = 7
    for (const ch of e.payload.messageId) h = (h * 31 + ch.charCodeAt(0)) >>> 0
    return h % 4 === 0 ? undefined : ['free', 'pro', 'team'][h % 3]
  }

  beforeAll(async () => {
    const store = new CassandraSiteStore(cassandra)
    const created = await store.create({
      siteId: SITE,
      domain: SITE,
      origins: [],
    })
    await store.addPropKey(SITE, 'plan')
    for (const goal of GOALS) await store.addGoal(SITE, goal)
    token = created.readToken
    // Events of the last few minutes (inside the stream's grace), on time, from the generator's
    // referrers, campaigns and visitor IPs (public IPv4/IPv6 of 7 countries, a private one, none).
    const workload = generateWorkload({
      seed: 17,
      sites: [SITE],
      events: 400,
      start: new Date(Date.now() - 150_000),
      spanMs: 120_000,
      visitors: 60,
      paths: 14,
      referrers: 3,
      campaignShare: 0.35,
      lateShare: 0,
      outOfOrderShare: 0,
    })
    // Every counted event's `plan` is planOf's (the workload's own `plan` properties replaced).
    events = workload.events.map((e) => {
      if (!['track', 'page', 'screen'].includes(e.payload.type)) return e
      const { plan: _, ...rest } = (e.payload as { properties?: Record<string, unknown> }).properties ?? {}
      const plan = planOf(e)
      const properties = plan === undefined ? rest : { ...rest, plan }
      return { ...e, payload: { ...e.payload, properties } } as GeneratedEvent
    })
    truth = truthOf(events, [SITE])
    visits = visitTruthOf(events, config.stream.visitGapMs)
    const res = await fetch(`${ingest.url}/v1/import`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        authorization: `Basic ${Buffer.from(`${created.site.writeKey}:`).toString('base64')}`,
      },
      body: JSON.stringify({ batch: events.map((e) => e.payload) }),
    })
    expect(res.status, await res.clone().text()).toBe(200)
    expect(((await res.json()) as { rejected: unknown[] }).rejected).toEqual([])
    const want = { ...truthCounts(truth, SITE), visits: visitsOf().visits }
    await eventually(
      async () => {
        const r = await fetch(
          `${query.url}/v1/stats/aggregate?${new URLSearchParams({ site: SITE, ...range(), metrics: 'events,pageviews,visits' })}`,
          { headers: { authorization: `Bearer ${token}` } },
        )
        const body = (await r.json()) as { results: Record<string, { value: number }> }
        const got = body.results
        return got.events?.value === want.events &&
          got.pageviews?.value === want.pageviews &&
          got.visits?.value === want.visits
          ? true
          : undefined
      },
      60_000,
      'the stream to count the generated events',
    )
  })

  it('shows each panel and tab with the truth, switches tabs, and filters by a clicked row', async () => {
    const ctx = await browser.newContext({
      locale: 'en-US',
      viewport: { width: 1280, height: 900 },
      acceptDownloads: true,
    })
    const page = await ctx.newPage()
    const problems: string[] = []
    page.on('console', (m) => m.type() === 'error' && problems.push(m.text()))
    page.on('pageerror', (e) => problems.push(String(e)))
    await page.goto(`${query.url}/`)
    await page.fill('#new-site', SITE)
    await page.fill('#new-token', token)
    await page.click('#add-site button[type=submit]')
    await page.waitForSelector(`body[data-loaded="${SITE}"][data-filter=""]`)

    /** Rows of a table against the truth: every value with its numbers, ordered by the first column. */
    const expectTable = async (table: string, dim: Dimension) => {
      const rows = await tableCells(page, table)
      const values = await page.$$eval(`#${table} tbody button.pick`, (bs) =>
        bs.map((b) => b.getAttribute('data-value') ?? ''),
      )
      const want = Object.entries(truth.sites[SITE]!.breakdown[dim]).filter(([, c]) => c.visitors > 0)
      // Every dimension of this workload has at most 10 values, the rows a table shows.
      expect(want.length).toBeLessThanOrEqual(10)
      expect(new Set(values), table).toEqual(new Set(want.map(([v]) => v)))
      rows.forEach((cells, i) => {
        const value = values[i]!
        const c = truth.sites[SITE]!.breakdown[dim][value]!
        const v = visitsOf(dim, value)
        expect(cells[0], `${table} ${value}`).toBe(shown(dim, value))
        expectVisitors(cells[1]!, c.visitors, `${table} ${value} visitors`)
        expect(cells.slice(2), `${table} ${value}`).toEqual([
          String(c.pageviews),
          String(v.visits),
          String(v.bounceRate),
        ])
      })
      const firsts = rows.map((r) => Number(r[1]!.replace(/,/g, '')))
      expect(firsts, `${table} is ordered by visitors`).toEqual([...firsts].sort((a, b) => b - a))
      return values
    }
    /** The top numbers against the truth of the events (and visits) that `dim == value` keeps. */
    const expectTotals = async (dim?: Dimension, value?: string) => {
      const c = truthCounts(truth, SITE, dim ? { dimension: dim, value: value! } : {})
      const v = visitsOf(dim, value)
      expectVisitors((await page.textContent('#total-visitors'))!, c.visitors, 'total visitors')
      expect(await page.textContent('#total-pageviews')).toBe(c.pageviews.toLocaleString('en-US'))
      expect(await page.textContent('#total-events')).toBe(c.events.toLocaleString('en-US'))
      expect(await page.textContent('#total-visits')).toBe(v.visits.toLocaleString('en-US'))
      expect(await page.textContent('#bounce-rate')).toBe(`${v.bounceRate} %`)
    }

    await expectTotals()
    // Pages: more values than rows shown, so the table says how many there are.
    const paths = Object.keys(truth.sites[SITE]!.breakdown.path)
    expect(paths.length).toBeGreaterThan(10)
    expect(await tableCells(page, 'pages')).toHaveLength(10)
    expect(await page.textContent('#pages caption')).toBe(`Top 10 of ${paths.length} values`)
    // Sources is the panel's first tab; Channels and Referrers are read when picked.
    expect(await page.getAttribute('#sources-tab', 'aria-selected')).toBe('true')
    expect(await page.isVisible('#channels')).toBe(false)
    await expectTable('sources', 'source')
    await expectTable('channels', 'channel')
    expect(await page.getAttribute('#channels-tab', 'aria-selected')).toBe('true')
    expect(await page.getAttribute('#sources-tab', 'aria-selected')).toBe('false')
    expect(await page.isVisible('#channels')).toBe(true)
    expect(await page.isVisible('#sources')).toBe(false)
    await expectTable('referrers', 'referrer')
    for (const k of ['source', 'medium', 'campaign', 'content', 'term'] as const)
      await expectTable(`utm-${k}`, `utm_${k}`)
    // Keyboard: the arrow keys move between tabs (from utm_term, the last, round to utm_source).
    await page.focus('#utm-term-tab')
    await page.keyboard.press('ArrowRight')
    expect(await page.getAttribute('#utm-source-tab', 'aria-selected')).toBe('true')
    const countries = await expectTable('countries', 'country')
    expect(countries).toContain('US')
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-panels.png'), fullPage: true })

    // Click a country: the top numbers are those of its visitors; panels by another property say
    // they cannot be answered with the filter; the filter shows as a chip.
    await page.click('#countries button.pick[data-value="US"]')
    await page.waitForSelector('body[data-filter="country==US"]')
    await expectTotals('country', 'US')
    expect(await page.textContent('#filter-label')).toBe(`Country is ${shown('country', 'US')}`)
    expect(await tableCells(page, 'countries')).toHaveLength(1)
    expect(await page.getAttribute('#countries button.pick', 'aria-pressed')).toBe('true')
    expect(await page.getAttribute('#utm-source', 'data-state')).toBe('unavailable')
    expect(await page.textContent('#utm-source tbody')).toMatch(/Not available while filtered by country/)
    expect(page.url()).toContain(`filter=${encodeURIComponent('country==US')}`)

    // Another filter replaces it: a channel, picked on its tab.
    await page.click('#clear-filter')
    await page.waitForSelector('body[data-filter=""]')
    await expectTotals()
    await page.click('#channels-tab')
    await page.waitForSelector('#channels[data-state="loaded"]')
    const channel = 'Organic Social'
    await page.click(`#channels button.pick[data-value="${channel}"]`)
    await page.waitForSelector(`body[data-filter="channel==${channel}"]`)
    await expectTotals('channel', channel)
    expect(await page.getAttribute('#countries', 'data-state')).toBe('unavailable')
    // The filter is in the URL: a reload keeps it and shows the Channels tab, the one that answers.
    await page.reload()
    await page.waitForSelector(`body[data-filter="channel==${channel}"]`)
    expect(await page.getAttribute('#channels-tab', 'aria-selected')).toBe('true')
    expect(await page.getAttribute('#channels button.pick', 'aria-pressed')).toBe('true')
    await expectTotals('channel', channel)

    // A page: its rows count events, not visits, so those cards say they are not counted by page.
    await page.click('#clear-filter')
    await page.waitForSelector('body[data-filter=""]')
    const path = await page.getAttribute('#pages button.pick', 'data-value')
    await page.click('#pages button.pick')
    await page.waitForSelector(`body[data-filter="path==${path}"]`)
    const c = truthCounts(truth, SITE, { dimension: 'path', value: path! })
    expect(await page.textContent('#total-pageviews')).toBe(c.pageviews.toLocaleString('en-US'))
    expect(await page.textContent('#total-events')).toBe(c.events.toLocaleString('en-US'))
    expect(await page.textContent('#total-visits')).toBe('–')
    expect(await page.textContent('#filter-note')).toMatch(
      /^Visits, bounce rate, visit duration: not counted by page\./,
    )
    // Download CSV saves the filtered timeseries the chart shows, as the API answers it.
    const csv = await expectCsvDownload(page, {
      filters: `path==${path}`,
      metrics: 'visitors,pageviews,events',
    })
    expect(csv.reduce((n, p) => n + Number(p.pageviews), 0)).toBe(c.pageviews)

    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-filtered.png'), fullPage: true })

    // On a phone, every panel's table (four numbers beside a name) fits inside its panel.
    await page.click('#clear-filter')
    await page.waitForSelector('body[data-filter=""]')
    await page.setViewportSize({ width: 390, height: 844 })
    const overflowing = await page.$$eval('.tables .panel', (els) =>
      els
        .filter((el) => {
          const inner =
            el.getBoundingClientRect().right -
            Number.parseFloat(el.ownerDocument.defaultView?.getComputedStyle(el).paddingRight ?? '0')
          return [...el.querySelectorAll('table')].some((t) => t.getBoundingClientRect().right > inner + 0.5)
        })
        .map((el) => el.getAttribute('data-panel')),
    )
    expect(overflowing).toEqual([])
    expect(problems).toEqual([])
    await ctx.close()
  })

  it('the properties panel has a tab per declared key whose rows equal the truth, and filters by a clicked value', async () => {
    // Truth per plan value: the counted events (no duplicates, no bots) and their visitors.
    const byPlan = new Map<string, { events: number; visitors: Set<string> }>()
    const seen = new Set<string>()
    for (const e of events) {
      const p = e.payload
      if (seen.has(p.messageId)) continue
      seen.add(p.messageId)
      if (e.isBot || !['track', 'page', 'screen'].includes(p.type)) continue
      const value = planOf(e) ?? '(none)'
      const c = byPlan.get(value) ?? { events: 0, visitors: new Set<string>() }
      c.events++
      c.visitors.add(p.anonymousId)
      byPlan.set(value, c)
    }
    const ctx = await browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 900 } })
    const page = await ctx.newPage()
    const problems: string[] = []
    page.on('pageerror', (e) => problems.push(String(e)))
    await page.goto(`${query.url}/`)
    await page.fill('#new-site', SITE)
    await page.fill('#new-token', token)
    await page.click('#add-site button[type=submit]')
    await page.waitForSelector(`body[data-loaded="${SITE}"][data-filter=""]`)
    await page.waitForSelector('#prop-0[data-state="loaded"]')
    expect(await page.isVisible('#props-panel')).toBe(true)
    expect(await page.$$eval('#props-tabs [role=tab]', (ts) => ts.map((t) => t.textContent))).toEqual([
      'plan',
    ])
    const rows = await tableCells(page, 'prop-0')
    const values = await page.$$eval('#prop-0 tbody button.pick', (bs) =>
      bs.map((b) => b.getAttribute('data-value')),
    )
    expect(new Set(values)).toEqual(new Set(byPlan.keys()))
    rows.forEach((cells, i) => {
      const c = byPlan.get(values[i]!)!
      expect(cells[0]).toBe(values[i])
      expectVisitors(cells[1]!, c.visitors.size, `plan ${values[i]} visitors`)
      expect(cells[2], `plan ${values[i]} events`).toBe(c.events.toLocaleString('en-US'))
    })
    // A click filters the dashboard by the value: the top numbers are that value's.
    await page.click('#prop-0 button.pick[data-value="pro"]')
    await page.waitForSelector('body[data-filter="prop:plan==pro"]')
    expect(await page.textContent('#total-events')).toBe(byPlan.get('pro')!.events.toLocaleString('en-US'))
    expectVisitors(
      (await page.textContent('#total-visitors'))!,
      byPlan.get('pro')!.visitors.size,
      'pro visitors',
    )
    expect(await page.textContent('#filter-label')).toBe('plan is pro')
    expect(problems).toEqual([])
    await ctx.close()
  })

  it('the goals panel lists each goal with its conversions, completions and conversion rate, and filters by a clicked goal', async () => {
    // Truth per goal, by the rule as the README states it: a counted event (no duplicate, no bot)
    // completes the event goal when it is a track of that name, the page goal when it is a page
    // view whose path is below /docs/. Conversions: its distinct visitors; events: completions.
    const byGoal = new Map<string, { events: number; visitors: Set<string> }>()
    const seen = new Set<string>()
    for (const e of events) {
      const p = e.payload as { type: string; event?: string; messageId: string; anonymousId: string }
      if (seen.has(p.messageId)) continue
      seen.add(p.messageId)
      if (e.isBot || !['track', 'page', 'screen'].includes(p.type)) continue
      const reached = [
        ...(p.type === 'track' && p.event === 'Added to Cart' ? [GOALS[0]!.name] : []),
        ...(p.type === 'page' && dimensionValues(e).path.startsWith('/docs/') ? [GOALS[1]!.name] : []),
      ]
      for (const name of reached) {
        const c = byGoal.get(name) ?? { events: 0, visitors: new Set<string>() }
        c.events++
        c.visitors.add(p.anonymousId)
        byGoal.set(name, c)
      }
    }
    expect([...byGoal.keys()].sort()).toEqual(GOALS.map((g) => g.name).sort())
    const siteVisitors = truthCounts(truth, SITE).visitors
    const ctx = await browser.newContext({
      locale: 'en-US',
      viewport: { width: 1280, height: 900 },
      acceptDownloads: true,
    })
    const page = await ctx.newPage()
    const problems: string[] = []
    page.on('pageerror', (e) => problems.push(String(e)))
    await page.goto(`${query.url}/`)
    await page.fill('#new-site', SITE)
    await page.fill('#new-token', token)
    await page.click('#add-site button[type=submit]')
    await page.waitForSelector(`body[data-loaded="${SITE}"][data-filter=""]`)
    await page.waitForSelector('#goals[data-state="loaded"]')
    const rows = await tableCells(page, 'goals')
    const values = await page.$$eval('#goals tbody button.pick', (bs) =>
      bs.map((b) => b.getAttribute('data-value')),
    )
    expect(new Set(values)).toEqual(new Set(byGoal.keys()))
    rows.forEach((cells, i) => {
      const c = byGoal.get(values[i]!)!
      expect(cells[0]).toBe(values[i])
      expectVisitors(cells[1]!, c.visitors.size, `${values[i]} conversions`)
      expect(cells[2], `${values[i]} completions`).toBe(c.events.toLocaleString('en-US'))
      // Percent of the range's visitors, one decimal: both numbers are estimates (bound 3 % each).
      const rate = (100 * c.visitors.size) / siteVisitors
      expect(
        Math.abs(Number(cells[3]) - rate),
        `${values[i]} conversion rate ${cells[3]}, exact ${rate}`,
      ).toBeLessThanOrEqual(Math.max(0.1, rate * 2 * bound) + 0.05)
    })
    const firsts = rows.map((r) => Number(r[1]!.replace(/,/g, '')))
    expect(firsts, 'goals are ordered by conversions').toEqual([...firsts].sort((a, b) => b - a))
    // A click filters the dashboard by the goal: the top numbers are its completions and converters,
    // the goals panel keeps its own row, panels by a property conversions are kept by show them per
    // value, the others (exit pages) say they cannot answer.
    const goal = 'Added to Cart'
    await page.click(`#goals button.pick[data-value="${goal}"]`)
    await page.waitForSelector(`body[data-filter="goal==${goal}"]`)
    expect(await page.textContent('#total-events')).toBe(byGoal.get(goal)!.events.toLocaleString('en-US'))
    expectVisitors(
      (await page.textContent('#total-visitors'))!,
      byGoal.get(goal)!.visitors.size,
      'converters',
    )
    expect(await page.textContent('#filter-label')).toBe(`Goal is ${goal}`)
    expect(await tableCells(page, 'goals')).toHaveLength(1)
    expect(await page.getAttribute('#goals button.pick', 'aria-pressed')).toBe('true')
    // Truth of conversions by a session property (docs/design.md "Goals"): each completion counts
    // under its visit's value, the visit's first event's (visits: a visitor's counted events of a UTC
    // day cut at a gap of TALLY_VISIT_GAP_MS or more; ties in time: the least session values first).
    const byVisit = new Map<string, Array<{ t: number; e: GeneratedEvent }>>()
    const once = new Set<string>()
    for (const e of events) {
      const p = e.payload
      if (once.has(p.messageId)) continue
      once.add(p.messageId)
      if (e.isBot || !['track', 'page', 'screen'].includes(p.type)) continue
      const t = Date.parse(p.timestamp)
      const key = `${p.anonymousId}|${Math.floor(t / 86_400_000)}`
      byVisit.set(key, [...(byVisit.get(key) ?? []), { t, e }])
    }
    const conversionsBy = (dim: (typeof SESSION_DIMENSIONS)[number]) => {
      const out = new Map<string, { events: number; visitors: Set<string> }>()
      const tuple = (e: GeneratedEvent) => SESSION_DIMENSIONS.map((d) => dimensionValues(e)[d]).join('\u0001')
      for (const list of byVisit.values()) {
        list.sort((a, b) => a.t - b.t)
        const cut: Array<typeof list> = []
        for (const x of list) {
          const cur = cut.at(-1)
          if (cur && x.t - cur.at(-1)!.t < config.stream.visitGapMs) cur.push(x)
          else cut.push([x])
        }
        for (const visit of cut) {
          const first = visit
            .filter((x) => x.t === visit[0]!.t)
            .sort((a, b) => (tuple(a.e) < tuple(b.e) ? -1 : 1))[0]!.e
          const value = dimensionValues(first)[dim]
          for (const { e } of visit) {
            const p = e.payload as { type: string; event?: string; anonymousId: string }
            if (p.type !== 'track' || p.event !== goal) continue
            const c = out.get(value) ?? { events: 0, visitors: new Set<string>() }
            c.events++
            c.visitors.add(p.anonymousId)
            out.set(value, c)
          }
        }
      }
      return out
    }
    // Countries answered "unavailable" under a goal filter before conversions were kept by them.
    for (const [table, dim, label] of [
      ['sources', 'source', 'Source'],
      ['countries', 'country', 'Country'],
    ] as const) {
      const want = conversionsBy(dim)
      // Each completion counted under one value: the values' converters are the goal's.
      expect(new Set([...want.values()].flatMap((c) => [...c.visitors]))).toEqual(byGoal.get(goal)!.visitors)
      expect([...want.values()].reduce((n, c) => n + c.events, 0)).toBe(byGoal.get(goal)!.events)
      await page.waitForSelector(`#${table}[data-state="loaded"]`)
      expect(await page.$$eval(`#${table} thead th`, (ths) => ths.map((th) => th.textContent))).toEqual([
        label,
        'Conversions',
        'Completions',
        'Conversion rate %',
      ])
      const picked = await page.$$eval(`#${table} tbody button.pick`, (bs) =>
        bs.map((b) => b.getAttribute('data-value') ?? ''),
      )
      // The top ten values by conversions (all of them when there are no more).
      expect(picked.length, table).toBe(Math.min(10, want.size))
      if (want.size <= 10) expect(new Set(picked), table).toEqual(new Set(want.keys()))
      const cells = await tableCells(page, table)
      cells.forEach((row, i) => {
        const value = picked[i]!
        const c = want.get(value)
        expect(c, `${table} ${value} has conversions`).toBeDefined()
        expect(row[0]).toBe(shown(dim, value))
        expectVisitors(row[1]!, c!.visitors.size, `${table} ${value} conversions`)
        expect(row[2], `${table} ${value} completions`).toBe(c!.events.toLocaleString('en-US'))
        // Converters of the value ÷ its visitors over the range, one decimal: two estimates.
        const rate = (100 * c!.visitors.size) / truth.sites[SITE]!.breakdown[dim][value]!.visitors
        expect(
          Math.abs(Number(row[3]) - rate),
          `${table} ${value} conversion rate ${row[3]}, exact ${rate}`,
        ).toBeLessThanOrEqual(Math.max(0.1, rate * 2 * bound) + 0.05)
      })
    }
    // Exit pages: conversions only (converters of ended visits, no completions or rate).
    await page.click('#exit-pages-tab')
    await page.waitForSelector('#exit-pages[data-state="loaded"]')
    expect(await page.$$eval('#exit-pages thead th', (ths) => ths.map((th) => th.textContent))).toEqual([
      'Page',
      'Conversions',
    ])
    expect(await page.textContent('#exit-pages tbody')).not.toContain('Not available')
    expect(page.url()).toContain(`filter=${encodeURIComponent(`goal==${goal}`).replace(/%20/g, '+')}`)
    // The top row is the goal's, as in Plausible: Unique conversions (converters), Total conversions
    // (completions), Conversion rate (percent of the range's visitors); the traffic cards whose
    // numbers do not apply to a goal are not shown. The chart plots total and unique conversions.
    const cardsShown = () =>
      page.$$eval('.cards .card:not(.live)', (cs) =>
        cs.filter((c) => !c.hasAttribute('hidden')).map((c) => c.querySelector('h2')!.textContent),
      )
    expect(await cardsShown()).toEqual(['Unique conversions', 'Total conversions', 'Conversion rate'])
    for (const id of ['total-pageviews', 'total-visits', 'bounce-rate', 'visit-duration'])
      expect(await page.isVisible(`#${id}`), id).toBe(false)
    const converters = byGoal.get(goal)!.visitors.size
    const rateShown = (await page.textContent('#conversion-rate'))!
    expect(rateShown).toMatch(/^\d+(\.\d)? %$/)
    const goalRate = (100 * converters) / siteVisitors
    expect(
      Math.abs(Number.parseFloat(rateShown) - goalRate),
      `conversion rate ${rateShown}, exact ${goalRate}`,
    ).toBeLessThanOrEqual(Math.max(0.1, goalRate * 2 * bound) + 0.05)
    expect(await page.textContent('#chart-title')).toBe('Unique and total conversions')
    expect(await page.getAttribute('#chart', 'data-series')).toBe('Total conversions,Unique conversions')
    expect(await page.$$eval('#chart .u-legend .u-label', (ls) => ls.map((l) => l.textContent))).toEqual(
      expect.arrayContaining(['Total conversions', 'Unique conversions']),
    )
    // Completions per window add up to the goal's; a window's converters are at most the goal's.
    const [completions, converterSum] = (await page.getAttribute('#chart', 'data-sums'))!
      .split(',')
      .map(Number)
    expect(completions).toBe(byGoal.get(goal)!.events)
    expectVisitors(String(Math.min(converterSum!, converters)), converters, 'converters plotted')
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-goals.png'), fullPage: true })
    // Download CSV saves the goal's timeseries (the cards' metrics per point), as the API answers it.
    const csv = await expectCsvDownload(page, {
      filters: `goal==${goal}`,
      metrics: 'conversions,events,conversion_rate',
    })
    expect(csv.reduce((n, p) => n + Number(p.events), 0)).toBe(byGoal.get(goal)!.events)
    // Comparing with the 24 hours before, when the site had no traffic: each goal card is new.
    await page.selectOption('#compare', 'previous_period')
    for (const id of ['total-visitors', 'total-events', 'conversion-rate'])
      await expect
        .poll(() => page.textContent(`#${id} + .change`).catch(() => null), { timeout: 15_000 })
        .toBe('new')
    await page.selectOption('#compare', '')
    await expect.poll(() => page.isVisible('#conversion-rate + .change'), { timeout: 15_000 }).toBe(false)
    // The filter removed: the traffic's cards and chart again, with the site's numbers.
    await page.click('#clear-filter')
    await page.waitForSelector('body[data-filter=""]')
    expect(await cardsShown()).toEqual([
      'Visitors',
      'Pageviews',
      'Events',
      'Visits',
      'Bounce rate',
      'Visit duration',
    ])
    expect(await page.isVisible('#conversion-rate')).toBe(false)
    const site = truthCounts(truth, SITE)
    expect(await page.textContent('#total-pageviews')).toBe(site.pageviews.toLocaleString('en-US'))
    expect(await page.textContent('#total-events')).toBe(site.events.toLocaleString('en-US'))
    expectVisitors((await page.textContent('#total-visitors'))!, site.visitors, 'site visitors')
    expect(await page.textContent('#total-visits')).toBe(visitsOf().visits.toLocaleString('en-US'))
    expect(await page.textContent('#filter-note')).toBe('')
    expect(await page.textContent('#chart-title')).toBe('Pageviews and visitors')
    expect(await page.getAttribute('#chart', 'data-series')).toBe('Pageviews,Visitors')
    expect(Number((await page.getAttribute('#chart', 'data-sums'))!.split(',')[0])).toBe(site.pageviews)
    expect(await page.$$eval('#chart .u-legend .u-label', (ls) => ls.map((l) => l.textContent))).toEqual(
      expect.arrayContaining(['Pageviews', 'Visitors']),
    )
    expect(problems).toEqual([])
    await ctx.close()
  })
  it('a deployment that keeps fewer breakdowns (TALLY_BREAKDOWNS) shows only their panels and tabs, with the truth', async () => {
    // The breakdowns before countries, sources and the UTM set: a query role reading the same store.
    const kept = [
      'event',
      'path',
      'referrer',
      'utm_source',
      'browser',
      'os',
      'device',
      'entry_page',
      'exit_page',
    ] as const
    const narrow = await startQuery({ ...config, stream: { ...config.stream, breakdowns: kept } }, logger)
    const ctx = await browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 900 } })
    try {
      const page = await ctx.newPage()
      const problems: string[] = []
      page.on('console', (m) => m.type() === 'error' && problems.push(m.text()))
      page.on('pageerror', (e) => problems.push(String(e)))
      await page.goto(`${narrow.url}/`)
      await page.fill('#new-site', SITE)
      await page.fill('#new-token', token)
      await page.click('#add-site button[type=submit]')
      await page.waitForSelector(`body[data-loaded="${SITE}"][data-filter=""]`)
      // Not aggregated: the countries panel is hidden whole; sources and channels leave their
      // panel, whose remaining tab (referrers) is the one shown; the campaigns panel keeps utm_source.
      expect(await page.isVisible('[data-panel="countries"]')).toBe(false)
      for (const id of ['sources', 'channels', 'utm-medium', 'utm-campaign', 'utm-content', 'utm-term'])
        expect(await page.$(`#${id}`), id).toBeNull()
      expect(await page.getAttribute('#referrers-tab', 'aria-selected')).toBe('true')
      expect(await page.isVisible('#referrers')).toBe(true)
      expect(await page.isVisible('#utm-source')).toBe(true)
      // What is shown still equals the truth.
      for (const [table, dim] of [
        ['referrers', 'referrer'],
        ['utm-source', 'utm_source'],
      ] as const) {
        await page.waitForSelector(`#${table} tbody button.pick`)
        const values = await page.$$eval(`#${table} tbody button.pick`, (bs) =>
          bs.map((b) => b.getAttribute('data-value') ?? ''),
        )
        const want = Object.entries(truth.sites[SITE]!.breakdown[dim]).filter(([, c]) => c.visitors > 0)
        expect(new Set(values), table).toEqual(new Set(want.map(([v]) => v)))
        const rows = await tableCells(page, table)
        rows.forEach((cells, i) => {
          const c = truth.sites[SITE]!.breakdown[dim][values[i]!]!
          expectVisitors(cells[1]!, c.visitors, `${table} ${values[i]} visitors`)
          expect(cells[2], `${table} ${values[i]} pageviews`).toBe(String(c.pageviews))
        })
      }
      // No request the page made was refused (a hidden panel asks nothing).
      expect(problems).toEqual([])
    } finally {
      await ctx.close()
      await narrow.close()
    }
  })
})
