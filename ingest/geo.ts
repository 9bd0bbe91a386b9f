import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { BlockList, isIP } from 'node:net'
import { dirname, join } from 'node:path'
import { LRUCache } from 'lru-cache'
import { type CountryResponse, Reader } from 'maxmind'
import { UNKNOWN } from '../core/aggregate/definition.js'

/**
 * Country of a client IP, looked up at ingest; the IP itself goes no further (normalize.ts drops
 * it). The database is the IP-to-country MMDB of `@ip-location-db/geo-whois-asn-country-mmdb`
 * (country data from the five RIRs' WHOIS and ASN records, CC BY 4.0 by the NRO; the package
 * itself is CC0), read with `maxmind`, offline, loaded once per process (~8 MB, ~20 ms).
 *
 * No IP, a private, loopback, link-local, shared, documentation or multicast address, or no match
 * → `(unknown)`: those ranges are checked here first because the database maps some of them (it
 * places 192.168.1.1 in AU). IPv4-mapped IPv6 (`::ffff:1.2.3.4`, what a dual-stack socket gives)
 * is looked up as the IPv4 address. Answers are cached (LRU): a visitor sends many events.
 */
export interface CountryLookup {
  /** ISO 3166-1 alpha-2 code, or `(unknown)`. */
  country(ip: string | undefined): string
}

const RESERVED = new BlockList()
for (const [net, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 3],
] as const) {
  RESERVED.addSubnet(net, prefix, 'ipv4')
}
for (const [net, prefix] of [
  ['::', 127],
  ['64:ff9b:1::', 48],
  ['100::', 64],
  ['2001:db8::', 32],
  ['fc00::', 7],
  ['fe80::', 10],
  ['ff00::', 8],
] as const) {
  RESERVED.addSubnet(net, prefix, 'ipv6')
}

const MAPPED_V4 = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i

/** The address as the database takes it, or undefined when it is no public IP address. */
export function publicAddress(raw: string | undefined): { ip: string; family: 'ipv4' | 'ipv6' } | undefined {
  if (raw === undefined) return undefined
  let ip = raw.trim()
  const mapped = MAPPED_V4.exec(ip)
  if (mapped) ip = mapped[1]!
  const version = isIP(ip)
  if (version === 0) return undefined
  const family = version === 4 ? 'ipv4' : 'ipv6'
  return RESERVED.check(ip, family) ? undefined : { ip, family }
}

export interface CountryLookupOptions {
  /** Distinct IPs whose answer is kept. Default 50000. */
  cacheSize?: number
  /** An MMDB file to read instead of the shipped one (tests, a fresher download). */
  databasePath?: string
}

export function shippedDatabasePath(): string {
  const require = createRequire(import.meta.url)
  // The package has no entry point: resolve its package.json and take the combined IPv4+IPv6 file.
  const pkg = require.resolve('@ip-location-db/geo-whois-asn-country-mmdb/package.json')
  return join(dirname(pkg), 'geo-whois-asn-country.mmdb')
}

export function openCountryLookup(options: CountryLookupOptions = {}): CountryLookup {
  const reader = new Reader<CountryResponse & { country_code?: string }>(
    readFileSync(options.databasePath ?? shippedDatabasePath()),
  )
  const cache = new LRUCache<string, string>({ max: options.cacheSize ?? 50_000 })
  return {
    country(raw) {
      if (raw === undefined || raw === '') return UNKNOWN
      const hit = cache.get(raw)
      if (hit !== undefined) return hit
      const addr = publicAddress(raw)
      let country = UNKNOWN
      if (addr) {
        const rec = reader.get(addr.ip)
        const code = rec?.country_code ?? rec?.country?.iso_code
        if (typeof code === 'string' && /^[A-Z]{2}$/.test(code)) country = code
      }
      cache.set(raw, country)
      return country
    },
  }
}

let shared: CountryLookup | undefined

/** One lookup per process, opened on first use (normalizeEvent's default). */
export function sharedCountryLookup(): CountryLookup {
  shared ??= openCountryLookup()
  return shared
}
