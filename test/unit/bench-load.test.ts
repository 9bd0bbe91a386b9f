import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { type LoadTarget, type PacedRun, pacedClient } from '../../bench/harness/load.js'

let server: Server | undefined

async function runPaced(target: LoadTarget, plan: PacedRun & { connections: number }) {
  const client = pacedClient(target, plan.connections)
  try {
    return await client.run(plan)
  } finally {
    await client.close()
  }
}

afterEach(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()))
  server = undefined
})

/** A server that answers after `delayMs` and records when each request arrived (and its body). */
async function start(
  delayMs: number,
): Promise<{ url: string; arrivals: number[]; bodies: string[]; connections: () => number }> {
  const arrivals: number[] = []
  const bodies: string[] = []
  let connections = 0
  server = createServer((req, res) => {
    arrivals.push(performance.now())
    let body = ''
    req.on('data', (c: Buffer) => {
      body += c.toString()
    })
    req.on('end', () => {
      bodies.push(body)
      setTimeout(() => res.writeHead(req.url === '/fail' ? 503 : 200).end('{}'), delayMs)
    })
  })
  server.on('connection', () => connections++)
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${(server!.address() as AddressInfo).port}`,
    arrivals,
    bodies,
    connections: () => connections,
  }
}

describe('runPaced', () => {
  it('spreads the requests evenly over the run instead of bursting at each second', async () => {
    const s = await start(0)
    const r = await runPaced(
      { url: s.url, method: 'POST', path: '/', headers: {}, bodies: [Buffer.from('a'), Buffer.from('b')] },
      { rate: 200, amount: 200, connections: 8, capSec: 10 },
    )
    expect(r).toMatchObject({ ok: 200, sent: 200, errors: 0, timeouts: 0, capped: false })
    expect(s.bodies.filter((b) => b === 'a')).toHaveLength(100)
    // 200 requests at 200/s take about a second; a burst would send them all in a few ms.
    expect(r.elapsedSec).toBeGreaterThan(0.95)
    const first = s.arrivals[0]!
    const perTenth = new Array<number>(11).fill(0)
    for (const t of s.arrivals) perTenth[Math.min(10, Math.floor((t - first) / 100))]!++
    // About 20 per 100 ms; autocannon's pacing would put all 200 in the first tenth.
    expect(Math.max(...perTenth)).toBeLessThanOrEqual(40)
  })

  it('counts the wait for a free connection in the latency (from when a request was due)', async () => {
    const s = await start(50)
    // One connection, 50 ms per answer, a request due every 10 ms: each waits behind the others.
    const r = await runPaced(
      { url: s.url, method: 'GET', path: '/', headers: {} },
      { rate: 100, amount: 20, connections: 1, capSec: 10 },
    )
    expect(r.ok).toBe(20)
    expect(r.latency!.p50).toBeGreaterThan(200)
    expect(r.latency!.max).toBeGreaterThan(700)
  })

  it('counts answers other than 2xx by status, not as latency samples', async () => {
    const s = await start(0)
    const r = await runPaced(
      { url: s.url, method: 'GET', path: '/fail', headers: {} },
      { rate: 100, amount: 10, connections: 2, capSec: 10 },
    )
    expect(r).toMatchObject({ ok: 0, statuses: { 503: 10 }, latency: undefined })
  })

  it('runs of one client share its connections, so a warm-up opens them for the measured run', async () => {
    // 400 requests/s answered in 50 ms: about 20 in flight, so the first run opens all 4.
    const s = await start(50)
    const client = pacedClient({ url: s.url, method: 'GET', path: '/', headers: {} }, 4)
    try {
      const first = await client.run({ rate: 400, amount: 80, capSec: 10 })
      // A connect the pool began near the end of the run may reach the server just after it:
      // count once the connections have settled.
      let opened = s.connections()
      for (let settled = 0; settled < 3; ) {
        await new Promise((r) => setTimeout(r, 50))
        settled = s.connections() === opened ? settled + 1 : 0
        opened = s.connections()
      }
      const second = await client.run({ rate: 400, amount: 80, capSec: 10 })
      expect(first.ok + second.ok).toBe(160)
      expect(opened).toBe(4)
      expect(s.connections()).toBe(4)
    } finally {
      await client.close()
    }
  })
})
