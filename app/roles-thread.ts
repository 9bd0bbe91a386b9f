import { parentPort, workerData } from 'node:worker_threads'
import { Registry } from 'prom-client'
import { startBatch } from '../batch/role.js'
import { attachEmbedded, type EmbeddedBackend } from '../core/embedded/index.js'
import { errorMessage, TallyError } from '../core/errors.js'
import { type Closable, once } from '../core/lifecycle.js'
import { createLogger } from '../core/log.js'
import type { Ports } from '../core/ports/backend.js'
import type { ProgressPublisher } from '../core/ports/progress-notices.js'
import { startStream } from '../stream/role.js'
import { embeddedPorts } from './backend.js'
import {
  bridgeRegistry,
  type FromThread,
  type MetricsJson,
  Requests,
  type RolesThreadData,
  type ToThread,
} from './roles-thread-protocol.js'

/**
 * The roles thread of `tally all` on the embedded backend (started by roles-host.ts): the stream
 * worker, the archiver and the rebuild scheduler, on connections of their own to the data folder's
 * files, so that their work (aggregating, archiving, durable commits) never holds ingest's event
 * loop. The main thread holds the folder's lock and tells this one when ingest appended; this one
 * sends its progress notices (for the query role's cache) and its metrics back.
 */

if (!parentPort) throw new Error('app/roles-thread.js runs as a worker thread of `tally all`')
const port = parentPort
const { config, streamPort, batchPort } = workerData as RolesThreadData
const send = (message: FromThread) => port.postMessage(message)
const logger = createLogger(config.logLevel, { role: 'all', thread: 'roles' })

const metricsRequests = new Requests<MetricsJson>(2000)
// No default metrics here: process_* and nodejs_* come once, from the main thread's registry.
const registry = new Registry()
bridgeRegistry(registry, () => metricsRequests.ask((id) => send({ type: 'metrics-request', id }), []))

let embedded: EmbeddedBackend | undefined
const started: Closable[] = []

/** Progress notices go to the main thread, whose query role listens on the process's bus. */
function bridgedPublisher(options: { onSend?: (ok: boolean) => void } = {}): ProgressPublisher {
  let closed = false
  return {
    publish(notice) {
      if (!closed) send({ type: 'progress', notice })
      options.onSend?.(!closed)
    },
    close: once(async () => {
      closed = true
    }),
  }
}

async function start(): Promise<void> {
  embedded = attachEmbedded({
    dataDir: config.dataDir,
    hllPrecision: config.stream.hllPrecision,
    ttlSeconds: config.stream.ttlSeconds,
    logger,
  })
  const local = embeddedPorts(embedded)
  const ports: Ports = {
    ...local,
    progress: { publisher: bridgedPublisher, listener: local.progress.listener },
  }
  const stream = await startStream(config, logger, { port: streamPort, ports, registry })
  started.push(stream)
  const batch = await startBatch(config, logger, { port: batchPort, ports, registry })
  started.push(batch)
  send({ type: 'started', streamUrl: stream.url, batchUrl: batch.url })
}

let closing: Promise<void> | undefined
/** Stream worker first (its last batch flushed and checkpointed), then the batch role, then the files. Repeat-safe. */
function close(abort: boolean): Promise<void> {
  closing ??= closeOnce(abort)
  return closing
}

async function closeOnce(abort: boolean): Promise<void> {
  let error: string | undefined
  for (const part of started) {
    try {
      await (abort ? (part.abort ?? part.close) : part.close).call(part)
    } catch (err) {
      error ??= errorMessage(err)
      logger.error({ err }, 'closing a role of the roles thread failed')
    }
  }
  try {
    await embedded?.close()
  } catch (err) {
    error ??= errorMessage(err)
    logger.error({ err }, 'closing the embedded files of the roles thread failed')
  }
  send(error === undefined ? { type: 'closed' } : { type: 'closed', error })
  port.close()
}

port.on('message', (message: ToThread) => {
  switch (message.type) {
    case 'appended':
      embedded?.log.noteAppended(message.topic, message.partition, message.end)
      break
    case 'metrics-request':
      void (registry.getMetricsAsJSON() as Promise<MetricsJson>).then(
        (json) => send({ type: 'metrics', id: message.id, json }),
        () => send({ type: 'metrics', id: message.id, json: [] }),
      )
      break
    case 'metrics':
      metricsRequests.answer(message.id, message.json)
      break
    case 'close':
      void close(message.abort)
      break
  }
})

start().catch(async (err: unknown) => {
  logger.error({ err }, 'the roles thread failed to start')
  send({
    type: 'failed',
    message: errorMessage(err),
    ...(err instanceof TallyError ? { code: err.code } : {}),
  })
  await close(false)
})
