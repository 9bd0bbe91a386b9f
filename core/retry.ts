import { ERR } from './error-codes.js'
import { TallyError } from './errors.js'

/**
 * Programming errors are never retried: another attempt runs the same code into the same bug.
 * The one definition every retry in the project uses.
 */
export function isProgrammingError(err: unknown): boolean {
  return err instanceof TypeError || err instanceof RangeError || err instanceof SyntaxError
}

export interface RetryOptions {
  /**
   * Attempts in all, the first included. Default 5. `Infinity`: until `fn` succeeds or an error is
   * not retriable (a `retriable` that says no once the caller stops ends it).
   */
  attempts?: number
  /** First delay. Default 100 ms. */
  initialDelayMs?: number
  /** Cap on a single delay. Default 5000 ms. */
  maxDelayMs?: number
  /** Growth factor between delays. Default 2. */
  factor?: number
  /** Decides whether an error may be retried. Default: TallyError.retriable, or any non-programming error. */
  retriable?: (err: unknown) => boolean
  /** Called before each wait. */
  onRetry?: (err: unknown, attempt: number, delayMs: number) => void
  /** Awaited after each wait, before the next attempt (e.g. a consumer heartbeat). */
  afterWait?: (attempt: number) => Promise<void>
  signal?: AbortSignal
}

function defaultRetriable(err: unknown): boolean {
  if (isProgrammingError(err)) return false
  if (err instanceof TallyError) return err.retriable
  return true
}

/** Full-jitter exponential backoff delay for the given attempt (1-based). */
export function backoffDelayMs(
  attempt: number,
  initialDelayMs: number,
  maxDelayMs: number,
  factor = 2,
): number {
  const ceiling = Math.min(maxDelayMs, initialDelayMs * factor ** (attempt - 1))
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2)
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason)
      return
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    const onAbort = () => {
      clearTimeout(timer)
      reject(signal?.reason)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

/**
 * Runs `fn` until it succeeds, the error is not retriable, or attempts run out. When attempts run
 * out the last error is wrapped as `cause` so the caller sees both what failed and how often.
 */
export async function retry<T>(fn: (attempt: number) => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const attempts = options.attempts ?? 5
  const initial = options.initialDelayMs ?? 100
  const max = options.maxDelayMs ?? 5000
  const isRetriable = options.retriable ?? defaultRetriable
  let last: unknown
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      return await fn(attempt)
    } catch (err) {
      last = err
      if (!isRetriable(err) || attempt === attempts) break
      const delay = backoffDelayMs(attempt, initial, max, options.factor)
      options.onRetry?.(err, attempt, delay)
      await sleep(delay, options.signal)
      await options.afterWait?.(attempt)
    }
  }
  if (isRetriable(last) && attempts > 1) {
    const message = last instanceof Error ? last.message : String(last)
    throw new TallyError(ERR.RETRIES_EXHAUSTED, `gave up after ${attempts} attempts: ${message}`, {
      retriable: true,
      cause: last,
      statusCode: last instanceof TallyError ? last.statusCode : 503,
    })
  }
  throw last
}
