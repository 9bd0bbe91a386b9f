import { Transform } from 'node:stream'
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { ERR } from '../../core/error-codes.js'
import { TallyError } from '../../core/errors.js'

export interface InflateOptions {
  /** Largest inflated body (bytes): the app's body limit. */
  maxBodyBytes: number
}

/**
 * Compressed bodies are inflated while they are read; Fastify's body limit then applies to the
 * inflated bytes, so a small gzip bomb is cut off at the cap.
 */
async function inflate(app: FastifyInstance, options: InflateOptions): Promise<void> {
  const { maxBodyBytes } = options
  app.addHook('preParsing', (req, _reply, payload, done) => {
    const header = req.headers['content-encoding']
    if (header === undefined) return done(null, payload)
    const encoding = header.toLowerCase().trim()
    if (encoding === 'identity' || encoding === '') return done(null, payload)
    const inflater =
      encoding === 'gzip' || encoding === 'x-gzip'
        ? createGunzip()
        : encoding === 'deflate'
          ? createInflate()
          : encoding === 'br'
            ? createBrotliDecompress()
            : undefined
    if (!inflater) {
      return done(
        new TallyError(
          ERR.UNSUPPORTED_ENCODING,
          `content-encoding ${encoding} is not supported: use gzip, deflate or br`,
          {
            where: 'content-encoding',
          },
        ),
      )
    }
    let inflatedBytes = 0
    const out = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        inflatedBytes += chunk.length
        // Fastify answers 413 on this same chunk; stop inflating the rest of a bomb, which would
        // otherwise cost about a second of CPU per 500 KB of gzip after the answer went out.
        if (inflatedBytes > maxBodyBytes) {
          payload.unpipe(inflater)
          inflater.destroy()
        }
        done(null, chunk)
      },
    }) as Transform & { receivedEncodedLength: number }
    out.receivedEncodedLength = 0
    payload.on('data', (chunk: Buffer) => {
      out.receivedEncodedLength += chunk.length
    })
    inflater.on('error', (err) => out.destroy(err))
    payload.pipe(inflater).pipe(out)
    done(null, out)
  })
}

export const inflatePlugin = fp(inflate, { name: 'tally-ingest-inflate' })
