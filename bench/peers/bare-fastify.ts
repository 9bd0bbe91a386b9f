import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'

/**
 * The ingest benchmark's peer: a bare Fastify server whose /v1/track and /v1/batch do no work
 * beyond what Fastify itself does (read and parse the JSON body) and answer what Tally answers.
 * Run as its own process by the bench; prints one ready line `{"ready":true,"url":…}`.
 * GET /count gives the events received, so the bench checks the 2xx it counted.
 */

const app = Fastify({ logger: false, bodyLimit: 500 * 1024 })
let events = 0

app.post('/v1/track', async () => {
  events++
  return { success: true, accepted: 1, rejected: [] }
})

app.post('/v1/batch', async (req) => {
  const batch = (req.body as { batch?: unknown[] } | null)?.batch
  const n = Array.isArray(batch) ? batch.length : 0
  events += n
  return { success: true, accepted: n, rejected: [] }
})

app.get('/count', async () => ({ events }))

await app.listen({ host: '127.0.0.1', port: 0 })
const { port } = app.server.address() as AddressInfo
process.stdout.write(`${JSON.stringify({ ready: true, url: `http://127.0.0.1:${port}` })}\n`)

const stop = () => {
  app.close().then(
    () => process.exit(0),
    () => process.exit(1),
  )
}
process.once('SIGTERM', stop)
process.once('SIGINT', stop)
