import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import type { Registry } from 'prom-client'
import type { TallyConfig } from '../core/config.js'
import type { EmbeddedBackend } from '../core/embedded/index.js'
import { ERR } from '../core/error-codes.js'
import { errorMessage, TallyError } from '../core/errors.js'
import type { Closable } from '../core/lifecycle.js'
import type { Logger } from '../core/log.js'
import { projectRoot } from '../core/paths.js'
import {
  bridgeRegistry,
  type FromThread,
  type MetricsJson,
  Requests,
  type RolesThreadData,
  type ToThread,
} from './roles-thread-protocol.js'

/**
 * The main-thread side of `tally all`'s roles thread on the embedded backend (see roles-thread.ts):
 * starts it, passes ingest's appends to it (so its consumers wake at once), delivers its progress
 * notices to this process's bus, serves its metrics with the main thread's, and closes it in order.
 *
 * A crash of the thread (an uncaught error there, or an exit not asked for) is logged and raised
 * in this thread as an uncaught TALLY_ERR_ROLES_THREAD error: `tally all` then takes its crash
 * path (the roles are aborted, the files closed) and exits 1. It does not restart the thread: what
 * the stream worker held in memory is not trusted after a crash, and a supervisor (systemd, a
 * container runtime) restarting the whole process replays exactly from the last checkpoint.
 */

/** How long a closing thread may take to exit once it said it closed, before it is terminated. */
const EXIT_AFTER_CLOSED_MS = 5000

export interface RunningRolesThread extends Closable {
  streamUrl: string
  batchUrl: string
  abort(): Promise<void>
  /** Tells the thread that the log grew (the embedded log's onAppended). */
  appended(topic: string, partition: number, end: number): void
}

/**
 * The compiled thread script: beside this module when it runs from dist/ (as `tally all` does);
 * from source (tests run the TypeScript), the compiled copy in dist/ (`npm run build`).
 */
export function rolesThreadScript(): URL {
  const beside = new URL('./roles-thread.js', import.meta.url)
  if (existsSync(fileURLToPath(beside))) return beside
  const built = join(projectRoot(), 'dist', 'app', 'roles-thread.js')
  if (existsSync(built)) return new URL(`file://${built}`)
  throw new TallyError(
    ERR.ROLES_THREAD,
    `cannot find the roles thread's script (${fileURLToPath(beside)} or ${built}): run \`npm run build\``,
    { where: built },
  )
}

export async function startRolesThread(
  config: TallyConfig,
  logger: Logger,
  options: {
    embedded: EmbeddedBackend
    registry: Registry
    streamPort: number
    batchPort: number
    /** The thread's script. Default rolesThreadScript(). */
    script?: URL
    /** What a crash does once logged. Default: raise it in this thread, uncaught (see above). */
    onCrash?: (err: TallyError) => void
  },
): Promise<RunningRolesThread> {
  const { embedded, registry } = options
  const data: RolesThreadData = { config, streamPort: options.streamPort, batchPort: options.batchPort }
  const worker = new Worker(options.script ?? rolesThreadScript(), { workerData: data })
  const post = (message: ToThread) => worker.postMessage(message)
  const metricsRequests = new Requests<MetricsJson>(2000)
  bridgeRegistry(registry, () => metricsRequests.ask((id) => post({ type: 'metrics-request', id }), []))

  let closeAsked = false
  let exited = false
  const exit = new Promise<number>((resolve) =>
    worker.once('exit', (code) => {
      exited = true
      resolve(code)
    }),
  )
  let onClosed: (error: string | undefined) => void = () => {}
  const closed = new Promise<string | undefined>((resolve) => {
    onClosed = resolve
  })
  let onStart: (message: FromThread) => void = () => {}
  const startAnswer = new Promise<FromThread>((resolve) => {
    onStart = resolve
  })
  let running = false

  const crash = (what: string, cause?: unknown) => {
    if (closeAsked) return
    const err = new TallyError(ERR.ROLES_THREAD, `the roles thread (stream worker, archiver) ${what}`, {
      ...(cause === undefined ? {} : { cause }),
    })
    logger.fatal({ err }, 'the roles thread crashed: exiting')
    if (options.onCrash) return options.onCrash(err)
    // The process's crash path (core/lifecycle.ts untilSignal) aborts the roles and exits 1.
    setImmediate(() => {
      throw err
    })
  }

  worker.on('message', (message: FromThread) => {
    switch (message.type) {
      case 'started':
      case 'failed':
        onStart(message)
        break
      case 'progress':
        embedded.progress.deliver(message.notice)
        break
      case 'metrics-request':
        void (registry.getMetricsAsJSON() as Promise<MetricsJson>).then(
          (json) => post({ type: 'metrics', id: message.id, json }),
          () => post({ type: 'metrics', id: message.id, json: [] }),
        )
        break
      case 'metrics':
        metricsRequests.answer(message.id, message.json)
        break
      case 'closed':
        onClosed(message.error)
        break
    }
  })
  worker.on('error', (err) => {
    logger.error({ err }, 'uncaught error in the roles thread')
    if (running) crash(`failed: ${errorMessage(err)}`, err)
    else onStart({ type: 'failed', message: errorMessage(err) })
  })
  void exit.then((code) => {
    onClosed(undefined)
    if (running) crash(`exited (code ${code}) without being asked to`)
    else onStart({ type: 'failed', message: `exited (code ${code}) while starting` })
  })

  const answer = await startAnswer
  if (answer.type !== 'started') {
    await exit
    throw new TallyError(
      ERR.ROLES_THREAD,
      `the roles thread (stream worker, archiver) failed to start: ${answer.type === 'failed' ? answer.message : 'no answer'}`,
      { where: config.dataDir },
    )
  }
  running = true

  // Appends of one event-loop turn, one message: the thread needs each partition's last end only.
  let pending: Map<string, { topic: string; partition: number; end: number }> | undefined
  const flushAppended = () => {
    const batch = pending
    pending = undefined
    if (!batch || exited) return
    for (const a of batch.values()) post({ type: 'appended', ...a })
  }

  const stop = (abort: boolean) => async () => {
    if (closeAsked) {
      await exit
      return
    }
    closeAsked = true
    if (exited) return
    post({ type: 'close', abort })
    const error = await closed
    const timer = setTimeout(() => void worker.terminate(), EXIT_AFTER_CLOSED_MS)
    timer.unref()
    await exit
    clearTimeout(timer)
    if (error !== undefined) {
      throw new TallyError(ERR.ROLES_THREAD, `closing the roles thread failed: ${error}`)
    }
  }
  const close = stop(false)
  const abort = stop(true)
  return {
    streamUrl: answer.streamUrl,
    batchUrl: answer.batchUrl,
    close,
    abort,
    appended(topic, partition, end) {
      if (!pending) {
        pending = new Map()
        queueMicrotask(flushAppended)
      }
      pending.set(`${topic}\u0000${partition}`, { topic, partition, end })
    },
  }
}
