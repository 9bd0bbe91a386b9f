import { createContext, runInContext } from 'node:vm'
import { trackerScript } from '../../ingest/tracker/plugin.js'

/**
 * The tracker (as ingest serves it) run in a node:vm context with a hand-made window: enough of
 * the DOM for its logic (storage, History API, events, timers, transports) to be tested without a
 * browser. The browser itself is tested in test/integration/browser.test.ts.
 */

export interface SentRequest {
  via: 'beacon' | 'fetch'
  url: string
  body: { batch: Array<Record<string, unknown>>; writeKey: string; sentAt: string }
}

export interface SandboxOptions {
  /** data-* attributes of the script tag, without the data- prefix. */
  attrs?: Record<string, string>
  src?: string
  url?: string
  referrer?: string
  /** Shared between runs to play a reload. */
  storage?: Map<string, string>
  /** Undefined: no sendBeacon. Otherwise its return value. */
  beacon?: () => boolean
  /** Answer status of each fetch in turn (the last repeats); 'error' rejects like a network failure. */
  fetchAnswers?: Array<number | 'error'>
  gpc?: boolean
  dnt?: string
  /** Code run before the tracker (the snippet's stub, early calls). */
  before?: string
}

type Listener = (e: Record<string, unknown>) => void

export class TrackerSandbox {
  readonly sent: SentRequest[] = []
  readonly storage: Map<string, string>
  readonly context: Record<string, unknown>
  private nowMs = Date.parse('2025-05-05T10:00:00Z')
  private timers: Array<{ id: number; at: number; fn: () => void }> = []
  private nextTimer = 1
  private readonly winListeners = new Map<string, Listener[]>()
  private readonly docListeners = new Map<string, Listener[]>()
  private fetchCalls = 0
  readonly location: { href: string; pathname: string; search: string; host: string; protocol: string }

  constructor(opts: SandboxOptions = {}) {
    this.storage = opts.storage ?? new Map()
    const attrs = { key: 'wk_test', ...opts.attrs }
    const u = new URL(opts.url ?? 'https://shop.test/')
    this.location = {
      href: u.href,
      pathname: u.pathname,
      search: u.search,
      host: u.host,
      protocol: u.protocol,
    }
    const storage = this.storage
    const localStorage = {
      getItem: (k: string) => storage.get(k) ?? null,
      setItem: (k: string, v: string) => void storage.set(k, String(v)),
      removeItem: (k: string) => void storage.delete(k),
    }
    const answers = opts.fetchAnswers ?? [200]
    const sandbox: Record<string, unknown> = {
      console,
      URLSearchParams,
      crypto: globalThis.crypto,
      localStorage,
      sessionStorage: localStorage,
      screen: { width: 1280, height: 800 },
      location: this.location,
      doNotTrack: undefined,
      navigator: {
        language: 'en-GB',
        globalPrivacyControl: opts.gpc,
        doNotTrack: opts.dnt,
        ...(opts.beacon
          ? {
              sendBeacon: (url: string, body: string) => {
                const ok = opts.beacon!()
                if (ok) this.sent.push({ via: 'beacon', url, body: JSON.parse(body) })
                return ok
              },
            }
          : {}),
      },
      document: {
        title: 'Shop',
        referrer: opts.referrer ?? '',
        visibilityState: 'visible',
        currentScript: {
          src: opts.src ?? 'https://ingest.test/t.js',
          getAttribute: (name: string) => attrs[name.replace(/^data-/, '') as keyof typeof attrs] ?? null,
        },
        addEventListener: (type: string, fn: Listener) => this.on(this.docListeners, type, fn),
      },
      history: {
        pushState: (_s: unknown, _t: string, url: string) => this.navigate(url),
        replaceState: (_s: unknown, _t: string, url: string) => this.navigate(url),
      },
      addEventListener: (type: string, fn: Listener) => this.on(this.winListeners, type, fn),
      setTimeout: (fn: () => void, ms: number) => {
        const id = this.nextTimer++
        this.timers.push({ id, at: this.nowMs + ms, fn })
        return id
      },
      clearTimeout: (id: number) => {
        this.timers = this.timers.filter((t) => t.id !== id)
      },
      fetch: async (
        url: string,
        init: { body: string; keepalive: boolean; headers: Record<string, string> },
      ) => {
        const answer = answers[Math.min(this.fetchCalls++, answers.length - 1)]!
        if (!init.keepalive) throw new Error('the tracker must fetch with keepalive')
        if (init.headers['content-type'] !== 'text/plain') throw new Error('expected text/plain')
        this.sent.push({ via: 'fetch', url, body: JSON.parse(init.body) })
        if (answer === 'error') throw new TypeError('Failed to fetch')
        return { ok: answer >= 200 && answer < 300, status: answer }
      },
    }
    sandbox.window = sandbox
    const RealDate = Date
    const clock = () => this.nowMs
    // The tracker's clock is the sandbox's, so retries and timestamps follow tick().
    sandbox.Date = class extends RealDate {
      constructor(...args: unknown[]) {
        if (args.length === 0) super(clock())
        else super(...(args as [string]))
      }
      static override now() {
        return clock()
      }
    }
    this.context = createContext(sandbox)
    if (opts.before) runInContext(opts.before, this.context)
    runInContext(trackerSource(), this.context)
  }

  private on(map: Map<string, Listener[]>, type: string, fn: Listener): void {
    map.set(type, [...(map.get(type) ?? []), fn])
  }

  private navigate(url: string): void {
    const u = new URL(url, this.location.href)
    Object.assign(this.location, { href: u.href, pathname: u.pathname, search: u.search })
  }

  /** `tally(...)` as a page would call it. */
  call(...args: unknown[]): void {
    ;(this.context.tally as (...a: unknown[]) => void)(...args)
  }

  /** The history API the way a router uses it (the tracker has wrapped these). */
  pushState(url: string): void {
    ;(this.context.history as { pushState: (s: unknown, t: string, u: string) => void }).pushState(
      null,
      '',
      url,
    )
  }
  replaceState(url: string): void {
    ;(this.context.history as { replaceState: (s: unknown, t: string, u: string) => void }).replaceState(
      null,
      '',
      url,
    )
  }
  back(url: string): void {
    this.navigate(url)
    this.fire(this.winListeners, 'popstate', {})
  }

  /** A click on a link to `href` (in the capture phase, as the tracker listens). */
  clickLink(href: string, type: 'click' | 'auxclick' = 'click', button = 0): void {
    const u = new URL(href, this.location.href)
    const a = { protocol: u.protocol, host: u.host, href: u.href }
    this.fire(this.docListeners, type, { type, button, target: { closest: () => a } })
  }

  beforeunload(): void {
    this.fire(this.winListeners, 'beforeunload', {})
  }

  pagehide(): void {
    this.fire(this.winListeners, 'pagehide', { persisted: false })
  }

  private fire(map: Map<string, Listener[]>, type: string, e: Record<string, unknown>): void {
    for (const fn of map.get(type) ?? []) fn(e)
  }

  /** Moves the clock, runs due timers, and lets answered fetches settle. */
  async tick(ms: number): Promise<void> {
    const until = this.nowMs + ms
    for (;;) {
      await new Promise((r) => setImmediate(r))
      const due = this.timers.filter((t) => t.at <= until).sort((a, b) => a.at - b.at)[0]
      if (!due) break
      this.timers = this.timers.filter((t) => t !== due)
      this.nowMs = Math.max(this.nowMs, due.at)
      due.fn()
    }
    this.nowMs = until
    await new Promise((r) => setImmediate(r))
  }

  /** Every event sent, in order (a retried event appears once per attempt). */
  events(): Array<Record<string, unknown>> {
    return this.sent.flatMap((s) => s.body.batch)
  }
}

/** The tracker exactly as ingest serves it. */
export function trackerSource(): string {
  return trackerScript().source.toString('utf8')
}

/** Debian's chromium, driven by playwright-core (no browser download). */
export const CHROMIUM_PATH = '/usr/bin/chromium'

/**
 * Flags for a closed network and a clean, quiet profile. Playwright gives every launch a fresh
 * temporary --user-data-dir of its own (and deletes it on close).
 */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
]

/** Launches headless Chromium; a missing browser fails loudly, it never skips. */
export async function launchChromium(): Promise<import('playwright-core').Browser> {
  const { existsSync } = await import('node:fs')
  if (!existsSync(CHROMIUM_PATH)) {
    throw new Error(
      `${CHROMIUM_PATH} not found: the browser tests need Debian's chromium package (apt-get install -y chromium; .ci/run installs it)`,
    )
  }
  const { chromium } = await import('playwright-core')
  return chromium.launch({
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 60_000,
  })
}

/** A desktop and a phone browser as real visitors send them (HeadlessChrome would be counted as a bot). */
export const DESKTOP_UA =
  'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36'
export const PHONE_UA =
  'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Mobile Safari/537.36'
