import { ERR } from '../core/error-codes.js'
import { errorMessage, TallyError } from '../core/errors.js'
import type { Logger } from '../core/log.js'
import type { Lease, LeaseStore } from '../core/ports/batch-store.js'
import { sleep } from '../core/retry.js'

/** The job's lease was lost (expired or taken): the job stops without writing. */
export class LeaseLostError extends TallyError {
  constructor(name: string) {
    super(ERR.LEASE_LOST, `lost the lease on ${name}; stopping without writing`, { retriable: true })
    this.name = 'LeaseLostError'
  }
}

/** Another job holds the range's lease. */
export class RangeBusyError extends TallyError {
  constructor(name: string) {
    super(ERR.RANGE_BUSY, `another job is rebuilding ${name}; try again when it is done`, {
      retriable: true,
      statusCode: 409,
    })
    this.name = 'RangeBusyError'
  }
}

/** Takes a lease, waiting up to `waitMs` for its holder to finish; undefined when it stays held. */
export async function acquireLease(
  store: LeaseStore,
  name: string,
  holder: string,
  ttlMs: number,
  waitMs: number,
  signal?: AbortSignal,
): Promise<Lease | undefined> {
  const deadline = Date.now() + waitMs
  for (;;) {
    const lease = await store.tryAcquire(name, holder, ttlMs)
    if (lease) return lease
    if (Date.now() >= deadline) return undefined
    await sleep(Math.min(500, Math.max(50, deadline - Date.now())), signal)
  }
}

/**
 * Renews a lease every third of its TTL while a job runs. A renewal refused by the store, or no
 * successful renewal for a whole TTL (the store unreachable), means the lease is lost: `lost` turns
 * true and `signal` aborts, and the job must stop before its next write.
 */
export class LeaseKeeper {
  private readonly controller = new AbortController()
  private timer: NodeJS.Timeout | undefined
  private lastRenewedMs: number
  private renewing: Promise<boolean> | undefined
  private stopped = false

  constructor(
    private readonly store: LeaseStore,
    readonly lease: Lease,
    private readonly logger: Logger,
  ) {
    this.lastRenewedMs = Date.now()
    this.timer = setInterval(() => void this.renew(), Math.max(100, Math.floor(lease.ttlMs / 3)))
    this.timer.unref()
  }

  get lost(): boolean {
    return this.controller.signal.aborted
  }

  get signal(): AbortSignal {
    return this.controller.signal
  }

  /** Renews now; false when the lease is lost. */
  renew(): Promise<boolean> {
    if (this.lost || this.stopped) return Promise.resolve(!this.lost)
    this.renewing ??= (async () => {
      try {
        const ok = await this.store.renew(this.lease)
        if (ok) this.lastRenewedMs = Date.now()
        else this.markLost('the store refused the renewal')
      } catch (err) {
        this.logger.warn({ err: errorMessage(err), lease: this.lease.name }, 'lease renewal failed')
        if (Date.now() - this.lastRenewedMs >= this.lease.ttlMs) this.markLost('no renewal for a whole TTL')
      } finally {
        this.renewing = undefined
      }
      return !this.lost
    })()
    return this.renewing
  }

  /** Renews now and throws LeaseLostError when the lease is gone: call it before writing. */
  async check(): Promise<void> {
    if (!(await this.renew())) throw new LeaseLostError(this.lease.name)
  }

  private markLost(why: string): void {
    if (this.lost) return
    this.logger.warn({ lease: this.lease.name, token: this.lease.token, why }, 'lease lost')
    this.controller.abort(new LeaseLostError(this.lease.name))
  }

  /** Stops renewing and, unless it was lost, releases the lease. */
  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    clearInterval(this.timer)
    await this.renewing?.catch(() => undefined)
    if (!this.lost) {
      await this.store.release(this.lease).catch((err: unknown) => {
        this.logger.warn(
          { err: errorMessage(err), lease: this.lease.name },
          'lease release failed; it expires by itself',
        )
      })
    }
  }
}
