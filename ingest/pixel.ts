/** A transparent 1x1 GIF, the answer to GET /v1/pixel.gif. */
export const PIXEL_GIF = Buffer.from('R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7', 'base64')

/**
 * Query parameters of the pixel, short names first (URLs in <img> tags should stay short):
 * wk/writeKey, t/type (page|track, default page), e/event, a/anonymousId, u/userId,
 * m/messageId, url, path, r/referrer, title, ts/timestamp.
 */
export function pixelPayload(q: Record<string, string | undefined>): Record<string, unknown> {
  const type = q.t ?? q.type ?? 'page'
  const page: Record<string, string> = {}
  const url = q.url
  if (url) page.url = url
  const path = q.path ?? (url ? safePath(url) : undefined)
  if (path) page.path = path
  const referrer = q.r ?? q.referrer
  if (referrer) page.referrer = referrer
  if (q.title) page.title = q.title
  const payload: Record<string, unknown> = {
    type,
    properties: { ...page },
    context: { page, library: { name: 'tally-pixel', version: '1' } },
  }
  const pick: Array<[string, string | undefined]> = [
    ['event', q.e ?? q.event],
    ['anonymousId', q.a ?? q.anonymousId],
    ['userId', q.u ?? q.userId],
    ['messageId', q.m ?? q.messageId],
    ['timestamp', q.ts ?? q.timestamp],
    ['name', q.title],
  ]
  for (const [k, v] of pick) if (v !== undefined && v !== '') payload[k] = v
  return payload
}

function safePath(url: string): string | undefined {
  try {
    return new URL(url).pathname
  } catch {
    return undefined
  }
}
