import { ERR } from '../error-codes.js'
import { TallyError } from '../errors.js'
import { once } from '../lifecycle.js'
import type { EventLogWriter, LogRecord } from '../ports/event-log.js'

/** What a writer needs of the embedded log (EmbeddedEventLog), named here so the two modules do not import each other. */
export interface AppendableLog {
  append(topic: string, records: readonly LogRecord[]): Promise<void>
  healthy(): boolean
}

/**
 * One role's handle on the embedded log (EventLogWriter). Several roles of one process share the
 * log; each closes its own handle (waiting for its appends) without closing the log.
 */
export class EmbeddedLogWriter implements EventLogWriter {
  private readonly inFlight = new Set<Promise<void>>()
  private closing = false
  readonly close: () => Promise<void>

  constructor(private readonly log: AppendableLog) {
    this.close = once(async () => {
      this.closing = true
      await Promise.allSettled([...this.inFlight])
    })
  }

  append(topic: string, records: readonly LogRecord[]): Promise<void> {
    if (this.closing) {
      return Promise.reject(
        new TallyError(ERR.SHUTTING_DOWN, 'the log writer is closing', {
          retriable: true,
        }),
      )
    }
    const p = this.log.append(topic, records)
    this.inFlight.add(p)
    const forget = () => {
      this.inFlight.delete(p)
    }
    p.then(forget, forget)
    return p
  }

  healthy(): boolean {
    return !this.closing && this.log.healthy()
  }
}
