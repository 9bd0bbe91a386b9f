import type { SiteStore } from '../core/ports/site-store.js'

export type TokenUseOutcome = 'written' | 'failed' | 'skipped'

export interface TokenUseRecorderOptions {
  /** A token's use is written at most this often per process. Default 60000 ms. */
  intervalMs?: number
  /** Writes in flight at most; a use beyond them is skipped and written on a later request. Default 8. */
  maxInFlight?: number
  /** Tokens remembered at most; past it the memory starts over (each token then writes once more). Default 100000. */
  maxTracked?: number
  /** Each outcome (a metric); `failed` carries the store's error. */
  onOutcome?: (outcome: TokenUseOutcome, err?: unknown) => void
  /** Clock (tests). */
  now?: () => number
}

/**
 * Records when read tokens were last used (`tally sites tokens`) without a store write per request:
 * a token's use is written at most once per interval per process, in the background; the request
 * never waits for it, and a failed write only shows in `onOutcome` (the next use after the
 * interval tries again).
 */
export class TokenUseRecorder {
  private readonly writtenAt = new Map<string, number>()
  private readonly inFlight = new Set<Promise<void>>()
  private readonly intervalMs: number
  private readonly maxInFlight: number
  private readonly maxTracked: number
  private readonly now: () => number

  constructor(
    private readonly store: Pick<SiteStore, 'markReadTokenUsed'>,
    private readonly options: TokenUseRecorderOptions = {},
  ) {
    this.intervalMs = options.intervalMs ?? 60_000
    this.maxInFlight = options.maxInFlight ?? 8
    this.maxTracked = options.maxTracked ?? 100_000
    this.now = options.now ?? Date.now
  }

  /** A query role accepted `tokenHash` for `siteId` just now. */
  used(siteId: string, tokenHash: string): void {
    const key = `${siteId}\n${tokenHash}`
    const t = this.now()
    const last = this.writtenAt.get(key)
    if (last !== undefined && t - last < this.intervalMs) return
    if (this.inFlight.size >= this.maxInFlight) {
      this.options.onOutcome?.('skipped')
      return
    }
    if (this.writtenAt.size >= this.maxTracked) this.writtenAt.clear()
    // Taken before the write, so the requests meanwhile do not write the same use again.
    this.writtenAt.set(key, t)
    const write = this.store
      .markReadTokenUsed(siteId, tokenHash, new Date(t))
      .then(
        () => this.options.onOutcome?.('written'),
        (err: unknown) => this.options.onOutcome?.('failed', err),
      )
      .finally(() => this.inFlight.delete(write))
    this.inFlight.add(write)
  }

  /** Resolves once the writes started so far are done (before the store closes). */
  async settled(): Promise<void> {
    await Promise.all([...this.inFlight])
  }
}
