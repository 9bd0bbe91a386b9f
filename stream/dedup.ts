import { hash64 } from '../core/hll.js'

const MINUTE_MS = 60_000
const ENTRY_BYTES = 12

/**
 * messageIds seen in one source partition, as 64-bit hashes grouped in per-minute buckets of
 * receivedAt, so expiring the horizon drops whole buckets. One set answers "seen?" in a single
 * lookup whatever the number of buckets; the buckets only list what to remove on expiry.
 * Everything added since the last `drainNew()` is kept aside to be persisted with the next checkpoint.
 */
export class DedupSet {
  private readonly seen = new Set<bigint>()
  private readonly buckets = new Map<number, bigint[]>()
  /** New entries since the last drain, ENTRY_BYTES each, in `[0, freshCount * ENTRY_BYTES)`. */
  private fresh: Buffer = Buffer.alloc(0)
  private freshCount = 0
  private freshMaxReceived = 0

  get size(): number {
    return this.seen.size
  }

  has(hash: bigint): boolean {
    return this.seen.has(hash)
  }

  /** Adds a messageId; returns false when it was already seen (a duplicate). */
  addId(messageId: string, receivedMs: number): boolean {
    return this.add(hash64(messageId), Math.floor(receivedMs / MINUTE_MS), receivedMs)
  }

  private add(hash: bigint, minute: number, receivedMs: number, record = true): boolean {
    const seen = this.seen
    if (seen.has(hash)) return false
    seen.add(hash)
    let bucket = this.buckets.get(minute)
    if (!bucket) {
      bucket = []
      this.buckets.set(minute, bucket)
    }
    bucket.push(hash)
    if (record) {
      const at = this.freshCount * ENTRY_BYTES
      if (at + ENTRY_BYTES > this.fresh.length) {
        const grown = Buffer.allocUnsafe(Math.max(64 * ENTRY_BYTES, this.fresh.length * 2))
        this.fresh.copy(grown, 0, 0, at)
        this.fresh = grown
      }
      this.fresh.writeBigUInt64BE(hash, at)
      this.fresh.writeUInt32BE(minute, at + 8)
      this.freshCount++
      if (receivedMs > this.freshMaxReceived) this.freshMaxReceived = receivedMs
    }
    return true
  }

  /** Loads persisted entries (not recorded as new). Entries older than `sinceMs` are skipped. */
  load(entries: Buffer, sinceMs: number): void {
    const sinceMinute = Math.floor(sinceMs / MINUTE_MS)
    for (let i = 0; i + ENTRY_BYTES <= entries.length; i += ENTRY_BYTES) {
      const minute = entries.readUInt32BE(i + 8)
      if (minute < sinceMinute) continue
      this.add(entries.readBigUInt64BE(i), minute, minute * MINUTE_MS, false)
    }
  }

  /** Drops buckets received before `beforeMs`. */
  expire(beforeMs: number): void {
    const before = Math.floor(beforeMs / MINUTE_MS)
    for (const [minute, bucket] of this.buckets) {
      if (minute < before) {
        for (const hash of bucket) this.seen.delete(hash)
        this.buckets.delete(minute)
      }
    }
  }

  /** The entries added since the last call, serialized, with their latest receivedAt. */
  drainNew(): { entries: Buffer; count: number; maxReceivedMs: number } | undefined {
    if (this.freshCount === 0) return undefined
    const out = {
      entries: Buffer.from(this.fresh.subarray(0, this.freshCount * ENTRY_BYTES)),
      count: this.freshCount,
      maxReceivedMs: this.freshMaxReceived,
    }
    this.freshCount = 0
    this.freshMaxReceived = 0
    return out
  }
}
