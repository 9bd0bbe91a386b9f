import type { Logger } from './log.js'

/** Something with an ordered, repeat-safe shutdown. */
export interface Closable {
  close(): Promise<void>
  /**
   * After a crash (an uncaught exception or unhandled rejection): leave consumer groups without
   * the final flush, so partitions move at once instead of after the session timeout. What is in
   * memory is not trusted then; replays from the last checkpoint are exact. Without it, a crash
   * runs `close()`.
   */
  abort?(): Promise<void>
}

/** The process events the lifecycle listens to (`process`; a plain emitter in tests). */
export interface ProcessEvents {
  on(event: 'SIGTERM' | 'SIGINT', listener: (signal: NodeJS.Signals) => void): unknown
  on(event: 'uncaughtException' | 'unhandledRejection', listener: (err: unknown) => void): unknown
  off(event: 'SIGTERM' | 'SIGINT', listener: (signal: NodeJS.Signals) => void): unknown
  off(event: 'uncaughtException' | 'unhandledRejection', listener: (err: unknown) => void): unknown
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
 * code: 0 after a clean shutdown, 1 when closing failed or the deadline passed. An uncaught
 * exception or unhandled rejection aborts `target` (leaves its consumer groups) within
 * `deadlineMs` and resolves 1: a crashed process that just died would stall the partitions it held
 * until its session timed out.
 */
export function untilSignal(
  target: Closable,
  logger: Logger,
  deadlineMs: number,
  events: ProcessEvents = process,
): Promise<number> {
  return new Promise((resolve) => {
    const stopListening = () => {
      events.off('SIGTERM', onSignal)
      events.off('SIGINT', onSignal)
      events.off('uncaughtException', onCrash)
      events.off('unhandledRejection', onCrash)
    }
    const onSignal = (signal: NodeJS.Signals) => {
      stopListening()
      logger.info({ signal }, 'shutting down')
      resolve(closeWithin(target, logger, deadlineMs))
    }
    // A second crash while aborting finds no listener and ends the process at once (Node's default).
    const onCrash = (err: unknown) => {
      stopListening()
      logger.fatal({ err }, 'crashed: leaving the consumer groups, then exiting')
      resolve(
        closeWithin({ close: () => (target.abort ?? target.close).call(target) }, logger, deadlineMs).then(
          () => 1,
        ),
      )
    }
    events.on('SIGTERM', onSignal)
    events.on('SIGINT', onSignal)
    events.on('uncaughtException', onCrash)
    events.on('unhandledRejection', onCrash)
  })
}

/**
 * Starts something, then serves until SIGTERM or SIGINT. A signal that arrives during start-up is
 * not lost (nor does it kill the process half-started): the start completes, then everything
 * started is closed in order. A crash during start-up (uncaught exception, unhandled rejection)
 * likewise waits for the start, at most `deadlineMs`, then aborts what started and resolves 1. A
 * start that fails rejects as before.
 */
export async function serveUntilSignal(
  start: () => Promise<Closable>,
  logger: Logger,
  deadlineMs: number,
  events: ProcessEvents = process,
): Promise<number> {
  let early: NodeJS.Signals | undefined
  let crashed = false
  let giveUp: (() => void) | undefined
  const onEarly = (signal: NodeJS.Signals) => {
    if (!early) logger.info({ signal }, 'signal during start-up: stopping as soon as started')
    early = signal
  }
  const onEarlyCrash = (err: unknown) => {
    logger.fatal({ err }, 'crashed during start-up: leaving the consumer groups as soon as started')
    if (crashed) return
    crashed = true
    giveUp?.()
  }
  events.on('SIGTERM', onEarly)
  events.on('SIGINT', onEarly)
  events.on('uncaughtException', onEarlyCrash)
  events.on('unhandledRejection', onEarlyCrash)
  let timer: NodeJS.Timeout | undefined
  const startGivenUp = new Promise<undefined>((resolve) => {
    giveUp = () => {
      timer = setTimeout(() => {
        logger.error({ deadlineMs }, 'start-up did not finish after the crash: exiting')
        resolve(undefined)
      }, deadlineMs)
    }
  })
  let running: Closable | undefined
  try {
    running = await Promise.race([start(), startGivenUp])
  } finally {
    clearTimeout(timer)
    events.off('SIGTERM', onEarly)
    events.off('SIGINT', onEarly)
    events.off('uncaughtException', onEarlyCrash)
    events.off('unhandledRejection', onEarlyCrash)
  }
  if (running === undefined) return 1
  if (crashed) {
    const started = running
    await closeWithin({ close: () => (started.abort ?? started.close).call(started) }, logger, deadlineMs)
    return 1
  }
  if (early) return closeWithin(running, logger, deadlineMs)
  return untilSignal(running, logger, deadlineMs, events)
}
