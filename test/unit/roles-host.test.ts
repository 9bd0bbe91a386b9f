import { Counter, Registry } from 'prom-client'
import { afterEach, describe, expect, it } from 'vitest'
import { startRolesThread } from '../../app/roles-host.js'
import { loadConfig } from '../../core/config.js'
import type { EmbeddedBackend } from '../../core/embedded/index.js'
import { EmbeddedProgressBus } from '../../core/embedded/index.js'
import { ERR } from '../../core/error-codes.js'
import type { TallyError } from '../../core/errors.js'
import { createLogger } from '../../core/log.js'
import type { ProgressNotice } from '../../core/ports/progress-notices.js'

/**
 * The main-thread side of `tally all`'s roles thread (app/roles-host.ts), against stand-in thread
 * scripts that speak its protocol: a crash after start is reported, a failed start rejects, the
 * thread's progress notices reach this thread's bus, its metrics are served with this thread's,
 * and a close asked for waits for the thread's own.
 */

const config = loadConfig({ TALLY_BACKEND: 'embedded', TALLY_DATA_DIR: '/nonexistent-roles-host-test' })
const logger = createLogger('silent')

/** A thread script from source text (an ES module with `port` = parentPort in scope). */
function script(body: string): URL {
  const code = `import { parentPort as port } from 'node:worker_threads'\n${body}`
  return new URL(`data:text/javascript,${encodeURIComponent(code)}`)
}

const STARTS = `port.postMessage({ type: 'started', streamUrl: 'http://s', batchUrl: 'http://b' })`
const CLOSES = `port.on('message', (m) => {
  if (m.type === 'close') { port.postMessage({ type: 'closed' }); port.close() }
})`

function backend(): EmbeddedBackend {
  // The host uses the backend's progress bus only.
  return { progress: new EmbeddedProgressBus() } as unknown as EmbeddedBackend
}

const running: Array<{ close(): Promise<void> }> = []
afterEach(async () => {
  for (const r of running.splice(0)) await r.close()
})

describe('roles thread host', () => {
  it('reports a thread that throws after it started, with TALLY_ERR_ROLES_THREAD', async () => {
    const crashes: TallyError[] = []
    const crashed = new Promise<void>((resolve) => {
      void startRolesThread(config, logger, {
        embedded: backend(),
        registry: new Registry(),
        streamPort: 0,
        batchPort: 0,
        script: script(`${STARTS}\nsetTimeout(() => { throw new Error('boom in the thread') }, 50)`),
        onCrash: (err) => {
          crashes.push(err)
          resolve()
        },
      }).then((r) => running.push(r))
    })
    await crashed
    expect(crashes).toHaveLength(1)
    expect(crashes[0]!.code).toBe(ERR.ROLES_THREAD)
    expect(crashes[0]!.message).toContain('boom in the thread')
  })

  it('reports a thread that exits without being asked to', async () => {
    const crashes: TallyError[] = []
    await new Promise<void>((resolve) => {
      void startRolesThread(config, logger, {
        embedded: backend(),
        registry: new Registry(),
        streamPort: 0,
        batchPort: 0,
        script: script(`${STARTS}\nsetTimeout(() => process.exit(3), 50)`),
        onCrash: (err) => {
          crashes.push(err)
          resolve()
        },
      }).then((r) => running.push(r))
    })
    expect(crashes[0]!.message).toContain('exited (code 3)')
  })

  it('rejects the start of a thread that failed to start, with its reason', async () => {
    const start = startRolesThread(config, logger, {
      embedded: backend(),
      registry: new Registry(),
      streamPort: 0,
      batchPort: 0,
      script: script(`port.postMessage({ type: 'failed', message: 'port 9464 is taken' }); port.close()`),
    })
    await expect(start).rejects.toMatchObject({
      code: ERR.ROLES_THREAD,
      message: expect.stringContaining('port 9464 is taken'),
    })
  })

  it("delivers the thread's progress notices and serves its metrics with this thread's", async () => {
    const embedded = backend()
    const registry = new Registry()
    const mine = new Counter({ name: 'tally_test_requests_total', help: 'x', registers: [registry] })
    mine.inc(2)
    const only = new Counter({ name: 'tally_test_main_only_total', help: 'x', registers: [registry] })
    only.inc(7)
    // The thread holds the same counter (3) and one of its own (5).
    const theirs = [
      {
        name: 'tally_test_requests_total',
        help: 'x',
        type: 'counter',
        aggregator: 'sum',
        values: [{ value: 3, labels: {} }],
      },
      {
        name: 'tally_test_thread_only_total',
        help: 'x',
        type: 'counter',
        aggregator: 'sum',
        values: [{ value: 5, labels: {} }],
      },
    ]
    const notice: ProgressNotice = {
      group: config.stream.group,
      topic: config.kafka.topicRaw,
      partition: 0,
      offset: 41,
      sentAtMs: 1_700_000_000_000,
    } as unknown as ProgressNotice
    const heard: ProgressNotice[] = []
    embedded.progress
      .listener({ group: config.stream.group, topic: config.kafka.topicRaw })
      .start((n) => heard.push(n))
    const r = await startRolesThread(config, logger, {
      embedded,
      registry,
      streamPort: 0,
      batchPort: 0,
      script: script(`${STARTS}
port.on('message', (m) => {
  if (m.type === 'metrics-request') port.postMessage({ type: 'metrics', id: m.id, json: ${JSON.stringify(theirs)} })
  if (m.type === 'close') { port.postMessage({ type: 'closed' }); port.close() }
})
port.postMessage({ type: 'progress', notice: ${JSON.stringify(notice)} })`),
    })
    running.push(r)
    expect(r.streamUrl).toBe('http://s')
    await expect.poll(() => heard.length).toBe(1)
    expect(heard[0]).toEqual(notice)
    const text = await registry.metrics()
    expect(text).toMatch(/^tally_test_requests_total 5$/m)
    expect(text).toMatch(/^tally_test_main_only_total 7$/m)
    expect(text).toMatch(/^tally_test_thread_only_total 5$/m)
  })

  it('close waits for the thread to close and exit', async () => {
    const r = await startRolesThread(config, logger, {
      embedded: backend(),
      registry: new Registry(),
      streamPort: 0,
      batchPort: 0,
      script: script(`${STARTS}\n${CLOSES}`),
    })
    await r.close()
    // Repeat-safe.
    await r.close()
  })
})
