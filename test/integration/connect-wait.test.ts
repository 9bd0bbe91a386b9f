import { createServer, type Server, connect as tcpConnect } from 'node:net'
import { Writable } from 'node:stream'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startQuery } from '../../app/start.js'
import { ServiceUnavailableError } from '../../core/errors.js'
import type { Logger } from '../../core/log.js'
import { migrate } from '../../core/migrate.js'
import { cleanup, testConfig } from '../helpers/context.js'

/**
 * A long-running role started while Cassandra does not answer (started before it, or while it
 * restarts) waits for it, retrying and saying so, up to TALLY_CONNECT_WAIT_MS; then it exits with a
 * clear error. Cassandra is reached through a local TCP forwarder that opens when the test says.
 */

const base = testConfig({ PORT: '0' })

/** A port nothing listens on (yet). */
async function freePort(): Promise<number> {
  const s = createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const port = (s.address() as { port: number }).port
  await new Promise((r) => s.close(r))
  return port
}

/** Forwards `port` to the test's Cassandra. */
async function forward(port: number): Promise<Server> {
  const [host, target] = base.cassandra.contactPoints[0]!.split(':') as [string, string]
  const server = createServer((client) => {
    const upstream = tcpConnect(Number(target), host)
    client.pipe(upstream).pipe(client)
    client.on('error', () => upstream.destroy())
    upstream.on('error', () => client.destroy())
  })
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r))
  return server
}

function capture(): { logger: Logger; lines: Array<{ level: number; msg: string }> } {
  const lines: Array<{ level: number; msg: string }> = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line))
      done()
    },
  })
  return { logger: pino({ level: 'info' }, sink) as unknown as Logger, lines }
}

beforeAll(async () => {
  await migrate(base)
})

afterAll(async () => {
  await cleanup(base)
})

describe('a role started before Cassandra answers', () => {
  it('waits, saying so, and starts once Cassandra answers', async () => {
    const port = await freePort()
    const config = testConfig({
      PORT: '0',
      CASSANDRA_KEYSPACE: base.cassandra.keyspace,
      CASSANDRA_CONTACT_POINTS: `127.0.0.1:${port}`,
      TALLY_CONNECT_WAIT_MS: '60000',
    })
    const { logger, lines } = capture()
    const started = Date.now()
    const starting = startQuery(config, logger)
    await new Promise((r) => setTimeout(r, 2000))
    const forwarder = await forward(port)
    try {
      const query = await starting
      try {
        expect(Date.now() - started).toBeGreaterThanOrEqual(2000)
        const res = await fetch(`${query.url}/readyz`)
        expect(res.status).toBe(200)
        const waits = lines.filter((l) => l.msg.startsWith('cassandra does not answer yet'))
        expect(waits.length).toBeGreaterThan(0)
        expect(waits.every((l) => l.level === 40)).toBe(true)
      } finally {
        await query.close()
      }
    } finally {
      forwarder.close()
    }
  })

  it('gives up after TALLY_CONNECT_WAIT_MS with an error naming the wait', async () => {
    const port = await freePort()
    const config = testConfig({
      PORT: '0',
      CASSANDRA_KEYSPACE: base.cassandra.keyspace,
      CASSANDRA_CONTACT_POINTS: `127.0.0.1:${port}`,
      TALLY_CONNECT_WAIT_MS: '1500',
    })
    const started = Date.now()
    const err = await startQuery(config, capture().logger).then(
      () => undefined,
      (e: unknown) => e,
    )
    const waited = Date.now() - started
    expect(err).toBeInstanceOf(ServiceUnavailableError)
    expect((err as Error).message).toMatch(
      /^cassandra: no answer after waiting \d+ s \(TALLY_CONNECT_WAIT_MS=1500\): /,
    )
    expect(waited).toBeGreaterThanOrEqual(1500)
    expect(waited).toBeLessThan(15_000)
  })

  it('with TALLY_CONNECT_WAIT_MS=0 it fails at once, as one-shot commands do', async () => {
    const port = await freePort()
    const config = testConfig({
      PORT: '0',
      CASSANDRA_KEYSPACE: base.cassandra.keyspace,
      CASSANDRA_CONTACT_POINTS: `127.0.0.1:${port}`,
      TALLY_CONNECT_WAIT_MS: '0',
    })
    const started = Date.now()
    await expect(startQuery(config, capture().logger)).rejects.toThrow(/^cassandra: /)
    expect(Date.now() - started).toBeLessThan(10_000)
  })
})
