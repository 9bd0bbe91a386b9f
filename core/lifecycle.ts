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

/** Closes `target` within `deadlineMs`; resolves 0 after a clean shutdown, 1 on failure or timeout. */
function closeWithin(target: Closable, logger: Logger, deadlineMs: number): Promise<number> {
  return new Promise((resolve) => {
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
  })
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
      resolve(closeWithin(target, logger, deadlineMs))
    }
    process.on('SIGTERM', onSignal)
    process.on('SIGINT', onSignal)
  })
}

/**
 * Starts something, then serves until SIGTERM or SIGINT. A signal that arrives during start-up is
 * not lost (nor does it kill the process half-started): the start completes, then everything
 * started is closed in order. A start that fails rejects as before.
 */
export async function serveUntilSignal(
  start: () => Promise<Closable>,
  logger: Logger,
  deadlineMs: number,
): Promise<number> {
  let early: NodeJS.Signals | undefined
  const onEarly = (signal: NodeJS.Signals) => {
    if (!early) logger.info({ signal }, 'signal during start-up: stopping as soon as started')
    early = signal
  }
  process.on('SIGTERM', onEarly)
  process.on('SIGINT', onEarly)
  let running: Closable
  try {
    running = await start()
  } finally {
    process.off('SIGTERM', onEarly)
    process.off('SIGINT', onEarly)
  }
  if (early) return closeWithin(running, logger, deadlineMs)
  return untilSignal(running, logger, deadlineMs)
}
