import { errorMessage } from '../errors.js'
import { once } from '../lifecycle.js'
import type { Logger } from '../log.js'
import type { ProgressListener, ProgressNotice, ProgressPublisher } from '../ports/progress-notices.js'

export interface EmbeddedProgressPublisherOptions {
  /** Observes each notice: ok once handed to the bus (delivery cannot fail in one process), not ok after close. */
  onSend?: (ok: boolean) => void
}

export interface EmbeddedProgressListenerOptions {
  /** Consumer group of the stream workers followed. */
  group: string
  /** The raw topic they read. */
  topic: string
  logger?: Logger
}

/**
 * Progress notices inside one process: every role of `tally all` on the embedded backend shares
 * one bus, so nothing is stored and nothing can be missed while a listener is started.
 */
export class EmbeddedProgressBus {
  private readonly listeners = new Set<EmbeddedProgressListener>()

  publisher(options: EmbeddedProgressPublisherOptions = {}): ProgressPublisher {
    return new EmbeddedProgressPublisher(this, options)
  }

  listener(options: EmbeddedProgressListenerOptions): ProgressListener {
    return new EmbeddedProgressListener(this.listeners, options)
  }

  /** @internal Hands a notice to every started listener. */
  deliver(notice: ProgressNotice): void {
    // A copy per delivery: a listener must not see what the publisher changes afterwards.
    for (const l of this.listeners) l.receive({ ...notice })
  }
}

class EmbeddedProgressPublisher implements ProgressPublisher {
  private closed = false
  readonly close: () => Promise<void>

  constructor(
    private readonly bus: EmbeddedProgressBus,
    private readonly options: EmbeddedProgressPublisherOptions,
  ) {
    this.close = once(async () => {
      this.closed = true
    })
  }

  publish(notice: ProgressNotice): void {
    if (this.closed) {
      this.options.onSend?.(false)
      return
    }
    this.bus.deliver(notice)
    this.options.onSend?.(true)
  }
}

class EmbeddedProgressListener implements ProgressListener {
  private onNotice: ((notice: ProgressNotice) => void) | undefined
  private closed = false
  readonly close: () => Promise<void>

  constructor(
    private readonly listeners: Set<EmbeddedProgressListener>,
    private readonly options: EmbeddedProgressListenerOptions,
  ) {
    this.close = once(async () => {
      this.closed = true
      this.listeners.delete(this)
    })
  }

  start(onNotice: (notice: ProgressNotice) => void): void {
    if (this.closed || this.onNotice) return
    this.onNotice = onNotice
    this.listeners.add(this)
  }

  live(): boolean {
    return this.onNotice !== undefined && !this.closed
  }

  receive(notice: ProgressNotice): void {
    if (notice.group !== this.options.group || notice.topic !== this.options.topic) return
    // Later, not inside the publisher's flush: a listener's work or failure is not the worker's.
    // Microtasks run in the order they were queued, so notices arrive in publish order.
    queueMicrotask(() => {
      if (this.closed) return
      try {
        this.onNotice?.(notice)
      } catch (err) {
        this.options.logger?.warn({ err: errorMessage(err) }, 'progress notice handler failed')
      }
    })
  }
}
