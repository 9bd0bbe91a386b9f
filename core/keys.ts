import { hash, randomBytes, timingSafeEqual } from 'node:crypto'

const ALPHABET = 'abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789'

function randomString(length: number): string {
  const bytes = randomBytes(length)
  let out = ''
  // 256 % 57 bias is negligible for keys this long; rejection sampling would add little.
  for (const b of bytes) out += ALPHABET[b % ALPHABET.length]
  return out
}

/** Public, per-site key that browsers and servers send events with. */
export function newWriteKey(): string {
  return `wk_${randomString(24)}`
}

/** Secret bearer token for the query API; only its hash is stored. */
export function newReadToken(): string {
  return `rt_${randomString(32)}`
}

export function hashToken(token: string): string {
  // One-shot: no Hash object per call (the query role hashes the bearer token of every request).
  return hash('sha256', token, 'hex')
}

/** Constant-time comparison of two hex hashes of equal length. */
export function hashesEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex')
  const y = Buffer.from(b, 'hex')
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y)
}
