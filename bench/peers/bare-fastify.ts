import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'

/**
 * The peer of the ingest and query benchmarks: a bare Fastify server whose routes do no work
 * beyond what Fastify itself does.
 * - POST /v1/track and /v1/batch read and parse the JSON body and answer what Tally answers;
 *   GET /count gives the events received, so the bench checks the 2xx it counted.
 * - GET /v1/stats/<endpoint> sends the bytes last given by PUT /answers/<endpoint> ({"body": "…"}):
 *   the query bench gives it Tally's answer, so both send the same bytes and the difference is
 *   Tally's work per request (token check, parameters, data version, cache).
 * Run as its own process by the bench; prints one ready line `{"ready":true,"url":…}`.
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

const answers = new Map<string, string>()

app.put('/answers/:endpoint', async (req) => {
  const { endpoint } = req.params as { endpoint: string }
  answers.set(endpoint, String((req.body as { body?: unknown }).body ?? ''))
  return { stored: endpoint }
})

app.get('/v1/stats/:endpoint', async (req, reply) => {
  const body = answers.get((req.params as { endpoint: string }).endpoint)
  if (body === undefined) return reply.status(404).send({ message: 'no answer stored' })
  return reply.header('content-type', 'application/json; charset=utf-8').send(body)
})

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
