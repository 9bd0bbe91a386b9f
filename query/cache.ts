import { LRUCache } from 'lru-cache'

/**
 * Answers of the stats endpoints, kept per query until the data under them changes.
 *
 * An answer is stored with the data version (DataSnapshot.version) read before its rows. Every
 * write that changes a site's aggregates is followed by a change of that version (the stream writes
 * its checkpoint after the rows it covers; a rebuild writes the site's final mark after its rows),
 * so a request that reads the same version afterwards would read the same rows: it gets the stored
 * answer. Concurrent requests for the same query and version share one computation. An answer is
 * also dropped after `maxAgeMs`, so a write whose version change never came (a worker that died
 * between its rows and its checkpoint) is seen within that time anyway.
 */

export interface AnswerCacheOptions {
  /** Bytes of answers kept (estimated from their JSON size); 0 turns the cache off. Default 64 MiB. */
  maxBytes: number
  /** Longest time an answer is served from the cache, in ms; 0 turns the cache off. Default 10000. */
  maxAgeMs: number
}

export const DEFAULT_ANSWER_CACHE: AnswerCacheOptions = Object.freeze({
  maxBytes: 64 * 1024 * 1024,
  maxAgeMs: 10_000,
})

interface Entry {
  version: string
  answer: Promise<unknown>
  /** The answer once computed, for callers that take it without waiting on a promise. */
  value?: unknown
  /** Estimated bytes: a placeholder while computing, then the answer's JSON size. */
  bytes: number
}

export interface AnswerCacheHooks {
  onHit?: () => void
  onMiss?: () => void
  /** Estimated bytes of a computed value. Default: the length of its JSON. */
  sizeOf?: (value: unknown) => number
}

/** Placeholder size of an answer still being computed. */
const PENDING_BYTES = 1024

export class AnswerCache {
  private readonly lru: LRUCache<string, Entry> | undefined

  constructor(
    options: AnswerCacheOptions = DEFAULT_ANSWER_CACHE,
    private readonly hooks: AnswerCacheHooks = {},
  ) {
    this.lru =
      options.maxBytes > 0 && options.maxAgeMs > 0
        ? new LRUCache<string, Entry>({
            maxSize: options.maxBytes,
            sizeCalculation: (e) => e.bytes,
            ttl: options.maxAgeMs,
            // An entry read often must still expire: its age counts from when it was stored.
            updateAgeOnGet: false,
          })
        : undefined
  }

  get enabled(): boolean {
    return this.lru !== undefined
  }

  /**
   * The stored answer of `key` when it was computed under `version` and is complete, else undefined
   * (nothing is computed). Counts a hit only when it gives one.
   */
  peek<T>(key: string, version: string): T | undefined {
    const hit = this.lru?.get(key)
    if (!hit || hit.version !== version || hit.value === undefined) return undefined
    this.hooks.onHit?.()
    return hit.value as T
  }

  /**
   * The answer of `key` under `version`: the stored one when it was computed under the same version,
   * else a new one from `compute` (stored unless it fails).
   */
  answer<T>(key: string, version: string, compute: () => Promise<T>): Promise<T> {
    const lru = this.lru
    if (!lru) return compute()
    const hit = lru.get(key)
    if (hit && hit.version === version) {
      this.hooks.onHit?.()
      return hit.answer as Promise<T>
    }
    this.hooks.onMiss?.()
    const answer = compute()
    const entry: Entry = { version, answer, bytes: PENDING_BYTES + key.length }
    lru.set(key, entry)
    answer.then(
      (value) => {
        // Still ours (not replaced by a newer version meanwhile): store it with its real size.
        if (lru.peek(key) !== entry) return
        // A new object: the LRU recomputes sizes only when the stored value changes.
        const size = this.hooks.sizeOf ? this.hooks.sizeOf(value) : JSON.stringify(value).length
        // The key counts too: it holds the parsed query, filter values included (up to a URL's size).
        const bytes = Math.max(PENDING_BYTES, size) + key.length
        lru.set(key, { ...entry, value, bytes }, { noUpdateTTL: true })
      },
      () => {
        if (lru.peek(key) === entry) lru.delete(key)
      },
    )
    return answer
  }
}
