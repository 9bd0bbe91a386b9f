import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { decodeBody } from '../charset.js'

/**
 * Beacons send text/plain (no CORS preflight); both types carry JSON and share one parser, with
 * prototype-poisoning protection. The body is decoded from its declared charset first.
 */
async function jsonBody(app: FastifyInstance): Promise<void> {
  app.removeContentTypeParser(['application/json', 'text/plain'])
  const jsonParser = app.getDefaultJsonParser('error', 'error')
  app.addContentTypeParser(['application/json', 'text/plain'], { parseAs: 'buffer' }, (req, bytes, done) => {
    let text: string
    try {
      text = decodeBody(bytes as Buffer, req.headers['content-type'])
    } catch (err) {
      done(err as Error, undefined)
      return
    }
    jsonParser(req, text, done)
  })
}

export const jsonBodyPlugin = fp(jsonBody, { name: 'tally-ingest-json-body' })
