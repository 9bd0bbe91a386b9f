import { ERR, statusOf } from './error-codes.js'

/**
 * One error tree for the whole project. Every error a user or operator can see carries a stable
 * `code` (TALLY_ERR_*), the HTTP status it maps to, and whether retrying may help.
 */
export interface TallyErrorOptions {
  /** Default: the status the catalogue (core/error-codes.ts) declares for the code, else 500. */
  statusCode?: number
  retriable?: boolean
  cause?: unknown
  /** Where the problem is: a parameter, a JSON path, a variable name, a file. */
  where?: string
  /** Extra fields for the HTTP error body (e.g. the per-event `rejected` list). */
  details?: Record<string, unknown>
}

export class TallyError extends Error {
  readonly code: string
  readonly statusCode: number
  readonly retriable: boolean
  readonly where: string | undefined
  readonly details: Record<string, unknown> | undefined

  constructor(code: string, message: string, options: TallyErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'TallyError'
    this.code = code
    this.statusCode = options.statusCode ?? statusOf(code) ?? 500
    this.retriable = options.retriable ?? false
    this.where = options.where
    this.details = options.details
  }
}

/** A configuration value that cannot be used; start-up stops with this message. */
export class ConfigError extends TallyError {
  constructor(variable: string, value: string, expected: string) {
    super(ERR.CONFIG, `${variable}=${JSON.stringify(value)} is not valid: expected ${expected}`, {
      where: variable,
    })
    this.name = 'ConfigError'
  }
}

/** Bad command-line usage; the CLI exits with code 2. */
export class UsageError extends TallyError {
  constructor(message: string) {
    super(ERR.USAGE, message)
    this.name = 'UsageError'
  }
}

/** A backing service (Kafka, Cassandra) could not be reached or refused the work. */
export class ServiceUnavailableError extends TallyError {
  constructor(service: string, message: string, cause?: unknown) {
    super(ERR.SERVICE_UNAVAILABLE, `${service}: ${message}`, {
      statusCode: 503,
      retriable: true,
      cause,
    })
    this.name = 'ServiceUnavailableError'
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message
  return String(err)
}
