/**
 * Token buckets counting events (not requests: one batch may carry thousands). Kept per process;
 * with N ingest copies behind a balancer the cluster-wide rate is N times the configured one.
 */
export class EventRateLimiter {
  private readonly buckets = new Map<string, { tokens: number; updated: number }>()

  /**
   * @param ratePerSec sustained events per second per key (0 disables the limit)
   * @param burst bucket size: how many events may arrive at once
   */
  constructor(
    private readonly ratePerSec: number,
    private readonly burst: number,
    private readonly maxKeys = 100_000,
  ) {}

  /** Keys holding a bucket now (at most `maxKeys`, whatever the process has seen). */
  get size(): number {
    return this.buckets.size
  }

  /** Takes `n` tokens for `key`; returns 0 when allowed, else the seconds to wait before retrying. */
  take(key: string, n: number): number {
    if (this.ratePerSec <= 0) return 0
    const now = Date.now()
    let b = this.buckets.get(key)
    if (!b) {
      if (this.buckets.size >= this.maxKeys) this.evictFull(now)
      b = { tokens: this.burst, updated: now }
      this.buckets.set(key, b)
    } else {
      b.tokens = Math.min(this.burst, b.tokens + ((now - b.updated) / 1000) * this.ratePerSec)
      b.updated = now
    }
    // A request larger than the burst goes through once the bucket is full and leaves a debt;
    // otherwise it could never pass and its Retry-After would be a lie.
    const needed = Math.min(n, this.burst)
    if (b.tokens >= needed) {
      b.tokens -= n
      return 0
    }
    return Math.max(1, Math.ceil((needed - b.tokens) / this.ratePerSec))
  }

  /** Gives back `n` tokens taken by `take` for a request that was refused for another reason. */
  refund(key: string, n: number): void {
    const b = this.buckets.get(key)
    if (b) b.tokens = Math.min(this.burst, b.tokens + n)
  }

  /** Forgets buckets that have refilled: they hold no information. */
  private evictFull(now: number): void {
    for (const [k, b] of this.buckets) {
      if (b.tokens + ((now - b.updated) / 1000) * this.ratePerSec >= this.burst) this.buckets.delete(k)
    }
    if (this.buckets.size >= this.maxKeys) this.buckets.clear()
  }
}
