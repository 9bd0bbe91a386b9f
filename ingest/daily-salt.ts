import type { SiteStore } from '../core/ports/site-store.js'

/** The UTC day (`YYYY-MM-DD`) of a time in ms. */
export function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10)
}

/**
 * The salt of the current UTC day for cookieless visitor ids, read from the site store (shared by
 * every ingest process) once a day and kept in memory. Concurrent first uses share one read.
 */
export class DailySalt {
  private held: { day: string; salt: Promise<Buffer> } | undefined

  constructor(
    private readonly store: Pick<SiteStore, 'dailySalt'>,
    /** The clock that decides the day; injectable so tests can play two days. */
    private readonly now: () => number = Date.now,
  ) {}

  async current(): Promise<Buffer> {
    const day = utcDay(this.now())
    if (this.held?.day !== day) {
      const salt = this.store.dailySalt(day)
      const held = { day, salt }
      this.held = held
      // A failed read is not kept: the next request asks again.
      salt.catch(() => {
        if (this.held === held) this.held = undefined
      })
    }
    return this.held!.salt
  }
}
