import { randomBytes } from 'node:crypto'
import { hostname } from 'node:os'
import type { Consumer, Kafka, Producer } from 'kafkajs'
import { Partitioners } from 'kafkajs'
import Type from 'typebox'
import { Compile } from 'typebox/compile'
import { errorMessage } from '../errors.js'
import { once } from '../lifecycle.js'
import type { Logger } from '../log.js'
import type { ProgressListener, ProgressNotice, ProgressPublisher } from '../ports/progress-notices.js'
import { backoffDelayMs, sleep } from '../retry.js'

/**
 * Progress notices on a Kafka topic (config.kafka.topicProgress): JSON values keyed by
 * `group/partition`, one partition, a few minutes of retention. Every query role reads it from the
 * end in a consumer group of its own, so each one hears every notice.
 */

const Offset = Type.Integer({ minimum: 0 })
const NoticeSchema = Type.Object({
  group: Type.String({ minLength: 1 }),
  topic: Type.String({ minLength: 1 }),
  partition: Offset,
  nextOffset: Offset,
  epoch: Offset,
  writtenAtMs: Offset,
})
const noticeCheck = Compile(NoticeSchema)

/** The notice in a record value, or undefined when the value is not one. */
function decodeNotice(value: Buffer | null): ProgressNotice | undefined {
  if (!value) return undefined
  let parsed: unknown
  try {
    parsed = JSON.parse(value.toString('utf8'))
  } catch {
    return undefined
  }
  if (!noticeCheck.Check(parsed)) return undefined
  const { group, topic, partition, nextOffset, epoch, writtenAtMs } = parsed
  return { group, topic, partition, nextOffset, epoch, writtenAtMs }
}

/** Waits for `work` (which never rejects) to end, but at most `ms`. */
async function settledWithin(work: Promise<void>, ms: number): Promise<void> {
  const stop = new AbortController()
  await Promise.race([work, sleep(ms, stop.signal).catch(() => undefined)])
  stop.abort()
}

function encodeNotice(n: ProgressNotice): string {
  return JSON.stringify({
    group: n.group,
    topic: n.topic,
    partition: n.partition,
    nextOffset: n.nextOffset,
    epoch: n.epoch,
    writtenAtMs: n.writtenAtMs,
  })
}

export interface KafkaProgressPublisherOptions {
  /** The progress topic (config.kafka.topicProgress). */
  topic: string
  logger: Logger
  /** Observes each notice once its fate is known: sent (the leader has it) or failed (dropped). */
  onSend?: (ok: boolean) => void
  /** Notices waiting behind the send in flight; beyond this the oldest are dropped. Default 1000. */
  maxPending?: number
  /** Least time between two warnings about notices not sent. Default 10000 ms. */
  warnEveryMs?: number
  /** How long `close()` waits for notices still being sent before it disconnects. Default 2000 ms. */
  closeTimeoutMs?: number
}

/**
 * A plain producer (acks=1, not idempotent, no linger) that sends notices in the background: a
 * lost notice only delays a query role until its next own read of the version, so a notice is
 * worth neither the wait of acks=all nor a retry of more than a second or two. One request is in
 * flight at a time, carrying every notice published while the previous one was out: notices keep
 * their order and a busy worker does not open a request per flush.
 */
export class KafkaProgressPublisher implements ProgressPublisher {
  private readonly producer: Producer
  private connecting: Promise<void> | undefined
  private pending: ProgressNotice[] = []
  private sending: Promise<void> | undefined
  private closed = false
  private lastWarnMs = Number.NEGATIVE_INFINITY
  private failedSinceWarn = 0
  readonly close: () => Promise<void>

  constructor(
    kafka: Kafka,
    private readonly options: KafkaProgressPublisherOptions,
  ) {
    this.producer = kafka.producer({
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
      retry: { retries: 2, initialRetryTime: 100, maxRetryTime: 1000 },
    })
    this.close = once(() => this.shutdown())
  }

  publish(notice: ProgressNotice): void {
    if (this.closed) {
      this.failed(1, new Error('the progress publisher is closed'))
      return
    }
    this.pending.push(notice)
    const excess = this.pending.length - (this.options.maxPending ?? 1000)
    if (excess > 0) {
      // Kafka is slow or away: the newest notices say the most, the oldest go.
      this.pending.splice(0, excess)
      this.failed(excess, new Error('too many notices waiting for Kafka'))
    }
    this.sending ??= this.drain()
  }

  /** Sends until nothing is pending. Never rejects: every failure is counted and logged here. */
  private async drain(): Promise<void> {
    while (this.pending.length > 0) {
      const batch = this.pending
      this.pending = []
      try {
        await this.connect()
        await this.producer.send({
          topic: this.options.topic,
          acks: 1,
          messages: batch.map((n) => ({ key: `${n.group}/${n.partition}`, value: encodeNotice(n) })),
        })
        this.report(true, batch.length)
      } catch (err) {
        this.failed(batch.length, err)
      }
    }
    this.sending = undefined
  }

  private connect(): Promise<void> {
    this.connecting ??= this.producer.connect().catch((err: unknown) => {
      // The next send tries again.
      this.connecting = undefined
      throw err
    })
    return this.connecting
  }

  private report(ok: boolean, count: number): void {
    const onSend = this.options.onSend
    if (onSend) for (let i = 0; i < count; i++) onSend(ok)
  }

  /** Counts dropped notices; warns at most once per `warnEveryMs`, so an outage does not flood the log. */
  private failed(count: number, err: unknown): void {
    this.report(false, count)
    this.failedSinceWarn += count
    const now = Date.now()
    if (now - this.lastWarnMs < (this.options.warnEveryMs ?? 10_000)) return
    this.options.logger.warn(
      { err: errorMessage(err), notices: this.failedSinceWarn, topic: this.options.topic },
      'progress notices not sent (does the topic exist? `tally migrate` creates it); query roles read data versions on their own meanwhile',
    )
    this.lastWarnMs = now
    this.failedSinceWarn = 0
  }

  private async shutdown(): Promise<void> {
    this.closed = true
    const sending = this.sending
    if (sending) await settledWithin(sending, this.options.closeTimeoutMs ?? 2000)
    if (this.pending.length > 0) {
      const left = this.pending.length
      this.pending = []
      this.failed(left, new Error('closed before Kafka took them'))
    }
    // Logged, not thrown: the shutdown of the worker that owns this must go on.
    await this.producer.disconnect().catch((err: unknown) => {
      this.options.logger.warn({ err: errorMessage(err) }, 'progress publisher did not disconnect cleanly')
    })
  }
}

export interface KafkaProgressListenerOptions {
  /** The progress topic (config.kafka.topicProgress). */
  topic: string
  /** Consumer group of the stream workers whose notices are wanted; others are ignored. */
  group: string
  /** The raw topic those workers read; notices of other topics are ignored. */
  streamTopic: string
  logger: Logger
  /** Longest a fetch waits on the broker when no notice comes, so `live()` stays fresh. Default 250 ms. */
  maxWaitMs?: number
  /** `live()` holds while the last fetch ended less than this long ago. Default 1000 ms. */
  liveWindowMs?: number
  /** A member silent this long leaves its group (a killed process's goes soon). Default 10000 ms. */
  sessionTimeoutMs?: number
  /** How long `close()` waits for a connect in progress to give up. Default 5000 ms. */
  closeTimeoutMs?: number
}

/**
 * Reads the progress topic from its end in a consumer group of its own (nothing is committed; the
 * group is gone soon after the process), retrying connect, subscribe and run with backoff until
 * closed. A consumer that has to be rebuilt resumes after the last notice it delivered, so a
 * restart within the topic's retention loses none.
 */
export class KafkaProgressListener implements ProgressListener {
  /** This listener's consumer group (unique per instance). */
  readonly groupId: string
  private onNotice: ((notice: ProgressNotice) => void) | undefined
  private consumer: Consumer | undefined
  /** When the last fetch ended (ms since epoch); 0 before the first. */
  private lastFetchEndMs = 0
  /** Next offset per partition of the progress topic, after the notices delivered. */
  private readonly positions = new Map<number, string>()
  private readonly stopping = new AbortController()
  /** Resolves once `close()` is called. */
  private readonly stopped: Promise<void>
  private running: Promise<void> | undefined
  readonly close: () => Promise<void>

  constructor(
    private readonly kafka: Kafka,
    private readonly options: KafkaProgressListenerOptions,
  ) {
    this.groupId = `${options.group}.notices.${hostname()}.${process.pid}.${randomBytes(4).toString('hex')}`
    this.stopped = new Promise((resolve) => {
      this.stopping.signal.addEventListener('abort', () => resolve(), { once: true })
    })
    this.close = once(() => this.shutdown())
  }

  start(onNotice: (notice: ProgressNotice) => void): void {
    if (this.onNotice || this.stopping.signal.aborted) return
    this.onNotice = onNotice
    this.running = this.run()
  }

  live(): boolean {
    return (
      !this.stopping.signal.aborted &&
      this.lastFetchEndMs > 0 &&
      Date.now() - this.lastFetchEndMs < (this.options.liveWindowMs ?? 1000)
    )
  }

  private newConsumer(): Consumer {
    const sessionTimeout = this.options.sessionTimeoutMs ?? 10_000
    return this.kafka.consumer({
      groupId: this.groupId,
      sessionTimeout,
      rebalanceTimeout: sessionTimeout,
      heartbeatInterval: Math.min(3000, Math.floor(sessionTimeout / 3)),
      maxWaitTimeInMs: this.options.maxWaitMs ?? 250,
      allowAutoTopicCreation: false,
      retry: { retries: 5, initialRetryTime: 200, maxRetryTime: 5000 },
    })
  }

  /** Builds, runs and, after a failure it does not recover from itself, rebuilds the consumer. */
  private async run(): Promise<void> {
    const { logger, topic } = this.options
    const signal = this.stopping.signal
    let failures = 0
    while (!signal.aborted) {
      const consumer = this.newConsumer()
      this.consumer = consumer
      // kafkajs restarts a consumer on its own after retriable failures; any other ends it here.
      const crashed = new Promise<unknown>((resolve) => {
        consumer.on(consumer.events.CRASH, (e) => {
          if (!e.payload.restart) resolve(e.payload.error)
        })
      })
      consumer.on(consumer.events.FETCH, () => {
        this.lastFetchEndMs = Date.now()
      })
      consumer.on(consumer.events.GROUP_JOIN, (e) => {
        failures = 0
        for (const partition of e.payload.memberAssignment[topic] ?? []) {
          const offset = this.positions.get(partition)
          if (offset === undefined) continue
          try {
            consumer.seek({ topic, partition, offset })
          } catch (err) {
            logger.debug(
              { err: errorMessage(err), partition },
              'progress listener cannot resume; reads from the end',
            )
          }
        }
      })
      try {
        // close() may come during any of these steps: none after it starts (the disconnect below ends it).
        await consumer.connect()
        if (signal.aborted) throw new Error('closed')
        await consumer.subscribe({ topic, fromBeginning: false })
        if (signal.aborted) throw new Error('closed')
        await consumer.run({
          autoCommit: false,
          eachMessage: async ({ partition, message }) => {
            this.positions.set(partition, String(Number(message.offset) + 1))
            this.deliver(message.value, partition, message.offset)
          },
        })
        const err = await Promise.race([crashed, this.stopped])
        if (!signal.aborted)
          logger.warn({ err: errorMessage(err), topic }, 'progress listener stopped; starting it again')
      } catch (err) {
        if (!signal.aborted)
          logger.warn(
            { err: errorMessage(err), topic, attempt: failures + 1 },
            'progress listener cannot start (does the topic exist? `tally migrate` creates it); polling for data versions meanwhile, retrying',
          )
      }
      await consumer.disconnect().catch((err: unknown) => {
        logger.debug({ err: errorMessage(err) }, 'progress listener did not disconnect cleanly')
      })
      if (signal.aborted) break
      failures++
      // Cut short by close().
      await sleep(backoffDelayMs(failures, 500, 10_000), signal).catch(() => undefined)
    }
  }

  private deliver(value: Buffer | null, partition: number, offset: string): void {
    const notice = decodeNotice(value)
    if (!notice) {
      this.options.logger.debug({ partition, offset }, 'not a progress notice; ignored')
      return
    }
    if (notice.group !== this.options.group || notice.topic !== this.options.streamTopic) return
    try {
      this.onNotice?.(notice)
    } catch (err) {
      // The handler's failure is not the bus's: the notice is not fetched again.
      this.options.logger.warn({ err: errorMessage(err) }, 'progress notice handler failed')
    }
  }

  private async shutdown(): Promise<void> {
    this.stopping.abort()
    const running = this.running
    if (!running) return
    // Leaves the group now; the loop sees the abort and ends after its own disconnect.
    await this.consumer?.disconnect().catch((err: unknown) => {
      this.options.logger.debug({ err: errorMessage(err) }, 'progress listener did not disconnect cleanly')
    })
    await settledWithin(running, this.options.closeTimeoutMs ?? 5000)
  }
}
