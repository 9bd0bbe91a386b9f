import type { Logger } from './log.js'

/** Something with an ordered, repeat-safe shutdown. */
export interface Closable {
  close(): Promise<void>
}

/** Wraps a close function so that calling it twice returns the same promise. */
export function once(close: () => Promise<void>): () => Promise<void> {
  let p: Promise<void> | undefined
  return () => {
    p ??= close()
    return p
  }
}

/**
 * Waits for SIGTERM or SIGINT, then closes `target` within `deadlineMs`. Resolves with the exit
 * code: 0 after a clean shutdown, 1 when closing failed or the deadline passed.
 */
export function untilSignal(target: Closable, logger: Logger, deadlineMs: number): Promise<number> {
  return new Promise((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      process.off('SIGTERM', onSignal)
      process.off('SIGINT', onSignal)
      logger.info({ signal }, 'shutting down')
      const timer = setTimeout(() => {
        logger.error({ deadlineMs }, 'shutdown deadline passed')
        resolve(1)
      }, deadlineMs)
      timer.unref()
      target.close().then(
        () => {
          clearTimeout(timer)
          logger.info('stopped')
          resolve(0)
        },
        (err: unknown) => {
          clearTimeout(timer)
          logger.error({ err }, 'shutdown failed')
          resolve(1)
        },
      )
    }
    process.on('SIGTERM', onSignal)
    process.on('SIGINT', onSignal)
  })
}
