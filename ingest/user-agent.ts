import { isbot } from 'isbot'
import { UAParser } from 'ua-parser-js'
import type { UserAgentInfo } from '../schemas/events.js'

export interface ParsedUserAgent extends UserAgentInfo {
  bot: boolean
  /** The same browser, os and device as an object of their own, shared by every event of this user agent. */
  info: Readonly<UserAgentInfo>
}

const UNKNOWN: ParsedUserAgent = Object.freeze({
  browser: '(unknown)',
  os: '(unknown)',
  device: '(unknown)',
  bot: false,
  info: Object.freeze({ browser: '(unknown)', os: '(unknown)', device: '(unknown)' }),
})

/**
 * ua-parser-js for browser/OS/device and isbot for crawlers, behind a bounded cache: user agents
 * repeat heavily, and parsing costs far more than a Map lookup.
 */
export class UserAgentParser {
  private readonly cache = new Map<string, ParsedUserAgent>()

  constructor(private readonly maxEntries = 10_000) {}

  /** User agents held now (at most `maxEntries`, whatever the process has seen). */
  get size(): number {
    return this.cache.size
  }

  parse(ua: string | undefined): ParsedUserAgent {
    if (!ua) return UNKNOWN
    const hit = this.cache.get(ua)
    if (hit) return hit
    const r = new UAParser(ua).getResult()
    const info = Object.freeze({
      browser: r.browser.name ?? '(unknown)',
      os: r.os.name ?? '(unknown)',
      device: r.device.type ?? 'desktop',
    })
    const parsed: ParsedUserAgent = Object.freeze({ ...info, bot: isbot(ua), info })
    if (this.cache.size >= this.maxEntries) {
      // Drop the oldest entry (Map keeps insertion order): a cheap, bounded FIFO.
      const first = this.cache.keys().next().value
      if (first !== undefined) this.cache.delete(first)
    }
    this.cache.set(ua, parsed)
    return parsed
  }
}
