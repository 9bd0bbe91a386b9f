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

/**
 * The id of a read token, from its hash: the first 12 hex digits of its SHA-256. Derived rather than
 * drawn so tokens created before ids existed (only their hash is stored) have one too; it names a
 * token to list or revoke it and says nothing usable about the secret.
 */
export function readTokenId(tokenHash: string): string {
  return tokenHash.slice(0, 12)
}

/** What a read token id looks like (readTokenId). */
export const READ_TOKEN_ID = /^[0-9a-f]{12}$/

/** The first characters of a read token, kept to recognize it ("rt_" and 5 of its 32 random characters). */
export function readTokenPrefix(token: string): string {
  return token.slice(0, 8)
}

/** Constant-time comparison of two hex hashes of equal length. */
export function hashesEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex')
  const y = Buffer.from(b, 'hex')
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y)
}
