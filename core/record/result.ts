/**
 * The one result of a step on a raw record (PostHog's ingestion results): ok with the event as the
 * step made it, dead-letter (poison: the stream's dead-letter topic keeps it with its code and
 * reason; ingest answers it as a rejection) or drop (not an error: counted and skipped). Ingest's
 * normalization, the stream's pipeline and the archive's decoding all return it.
 */
export type StepResult<T, Failure extends DeadLetter | Drop = DeadLetter | Drop> = Ok<T> | Failure

export interface Ok<T> {
  ok: true
  event: T
}

export interface DeadLetter {
  ok: false
  kind: 'dlq'
  /** A `TALLY_ERR_*` code. */
  code: string
  reason: string
  /** JSON path inside the event, when the problem is one field. */
  where?: string
}

/** Why an event that is not poison is not counted. */
export type DropReason = 'duplicate' | 'late' | 'future' | 'not_counted'

export interface Drop {
  ok: false
  kind: 'drop'
  reason: DropReason
}

export function ok<T>(event: T): Ok<T> {
  return { ok: true, event }
}

export function deadLetter(code: string, reason: string, where?: string): DeadLetter {
  return where === undefined
    ? { ok: false, kind: 'dlq', code, reason }
    : { ok: false, kind: 'dlq', code, reason, where }
}

export function drop(reason: DropReason): Drop {
  return { ok: false, kind: 'drop', reason }
}
