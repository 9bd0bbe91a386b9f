import { hash64 } from '../core/hll.js'

const MINUTE_MS = 60_000
const ENTRY_BYTES = 12

/**
 * messageIds seen in one source partition, as 64-bit hashes in per-minute buckets of receivedAt,
 * so expiring the horizon drops whole buckets. Everything added since the last `drainNew()` is
 * kept aside to be persisted with the next checkpoint.
 */
export class DedupSet {
  private readonly buckets = new Map<number, Set<bigint>>()
  private fresh: Buffer[] = []
  private freshCount = 0
  private freshMaxReceived = 0
  private size_ = 0

  get size(): number {
    return this.size_
  }

  has(hash: bigint): boolean {
    for (const b of this.buckets.values()) if (b.has(hash)) return true
    return false
  }

  /** Adds a messageId; returns false when it was already seen (a duplicate). */
  addId(messageId: string, receivedMs: number): boolean {
    return this.add(hash64(messageId), Math.floor(receivedMs / MINUTE_MS), receivedMs)
  }

  private add(hash: bigint, minute: number, receivedMs: number, record = true): boolean {
    if (this.has(hash)) return false
    let bucket = this.buckets.get(minute)
    if (!bucket) {
      bucket = new Set()
      this.buckets.set(minute, bucket)
    }
    bucket.add(hash)
    this.size_++
    if (record) {
      const entry = Buffer.allocUnsafe(ENTRY_BYTES)
      entry.writeBigUInt64BE(hash, 0)
      entry.writeUInt32BE(minute, 8)
      this.fresh.push(entry)
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
        this.size_ -= bucket.size
        this.buckets.delete(minute)
      }
    }
  }

  /** The entries added since the last call, serialized, with their latest receivedAt. */
  drainNew(): { entries: Buffer; count: number; maxReceivedMs: number } | undefined {
    if (this.freshCount === 0) return undefined
    const out = {
      entries: Buffer.concat(this.fresh),
      count: this.freshCount,
      maxReceivedMs: this.freshMaxReceived,
    }
    this.fresh = []
    this.freshCount = 0
    this.freshMaxReceived = 0
    return out
  }
}
