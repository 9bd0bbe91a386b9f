import { createServer, type Server } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { loadConfig } from '../../core/config.js'
import { TallyError } from '../../core/errors.js'
import { createLogger } from '../../core/log.js'
import type { Ports as SharedPorts } from '../../core/ports/backend.js'
import type { ConsumerHandlers, EventLogConsumer } from '../../core/ports/event-log.js'
import { startStream } from '../../stream/role.js'

const logger = createLogger('silent')

/** A consumer-group member that records whether it joined (start) and left (close). */
class RecordingConsumer implements EventLogConsumer {
  readonly calls: string[] = []
  constructor(private readonly startError?: Error) {}
  async start(_handlers: ConsumerHandlers): Promise<void> {
    this.calls.push('start')
    if (this.startError) throw this.startError
  }
  async commit(): Promise<void> {}
  async close(): Promise<void> {
    this.calls.push('close')
  }
}

/** Ports where only the consumer matters: the worker touches nothing else before it owns a partition. */
function portsWith(consumer: EventLogConsumer): SharedPorts {
  const closable = { close: async () => {} }
  return {
    kind: 'embedded',
    consumer: () => consumer,
    writer: () => ({ ...closable, append: async () => {}, healthy: () => true }),
    offsets: { endOffsets: async () => new Map() },
    progress: { publisher: () => ({ ...closable, publish: () => {} }) },
  } as unknown as SharedPorts
}

let holder: Server | undefined
afterEach(async () => {
  await new Promise<void>((r) => (holder ? holder.close(() => r()) : r()))
  holder = undefined
})

/** Takes a free port on 127.0.0.1 and keeps it, as a running worker's /metrics would. */
async function takePort(): Promise<number> {
  holder = createServer()
  await new Promise<void>((r) => holder!.listen(0, '127.0.0.1', r))
  const addr = holder.address()
  if (addr === null || typeof addr === 'string') throw new Error('no port')
  return addr.port
}

describe('startStream start order', () => {
  it('fails on a taken metrics port with TALLY_ERR_PORT_IN_USE before joining the consumer group', async () => {
    const port = await takePort()
    const consumer = new RecordingConsumer()
    const config = loadConfig({ HOST: '127.0.0.1', PORT: String(port) })
    const err = await startStream(config, logger, { ports: portsWith(consumer) }).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(err).toBeInstanceOf(TallyError)
    expect({ code: (err as TallyError).code, where: (err as TallyError).where }).toEqual({
      code: 'TALLY_ERR_PORT_IN_USE',
      where: 'PORT',
    })
    expect((err as TallyError).message).toContain(`127.0.0.1:${port}`)
    // Never a member: nothing for the running workers to wait for.
    expect(consumer.calls).toEqual([])
  })

  it('names --stream-port when the port came from `tally all`', async () => {
    const port = await takePort()
    const consumer = new RecordingConsumer()
    const config = loadConfig({ HOST: '127.0.0.1' })
    const err = (await startStream(config, logger, { port, ports: portsWith(consumer) }).catch(
      (e: unknown) => e,
    )) as TallyError
    expect({ code: err.code, where: err.where }).toEqual({
      code: 'TALLY_ERR_PORT_IN_USE',
      where: '--stream-port',
    })
    expect(consumer.calls).toEqual([])
  })

  it('leaves the group when the start fails after joining', async () => {
    const consumer = new RecordingConsumer(new Error('subscribe failed'))
    const config = loadConfig({ HOST: '127.0.0.1', PORT: '0' })
    await expect(startStream(config, logger, { ports: portsWith(consumer) })).rejects.toThrow(
      'subscribe failed',
    )
    expect(consumer.calls).toEqual(['start', 'close'])
  })

  it('serves /readyz with the owned partitions once started, and closes in order', async () => {
    const consumer = new RecordingConsumer()
    const config = loadConfig({ HOST: '127.0.0.1', PORT: '0' })
    const running = await startStream(config, logger, { ports: portsWith(consumer) })
    const res = await fetch(`${running.url}/readyz`)
    expect({ status: res.status, body: await res.json() }).toEqual({
      status: 200,
      body: { status: 'ready', partitions: [] },
    })
    await running.close()
    expect(consumer.calls).toEqual(['start', 'close'])
  })
})
