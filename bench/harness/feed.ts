import type { GeneratedEvent, SegmentPayload } from '../workload.js'

/** Sends workload events to a running ingest role over HTTP (loopback), as Segment clients do. */

export function basicAuth(writeKey: string): string {
  return `Basic ${Buffer.from(`${writeKey}:`).toString('base64')}`
}

export interface IngestAnswer {
  success: boolean
  accepted: number
  rejected: unknown[]
}

/** POSTs one JSON body; throws with the answer when it is not a 2xx. */
export async function postJson(
  url: string,
  body: unknown,
  headers: Record<string, string>,
): Promise<IngestAnswer> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  })
  const text = await res.text()
  if (res.status < 200 || res.status >= 300)
    throw new Error(`POST ${url}: ${res.status} ${text.slice(0, 300)}`)
  return JSON.parse(text) as IngestAnswer
}

/** Consecutive runs of one site's events, at most `size` long, in the workload's send order per site. */
export function batchesBySite(
  events: readonly GeneratedEvent[],
  size: number,
): Array<{ siteId: string; payloads: SegmentPayload[] }> {
  const open = new Map<string, SegmentPayload[]>()
  const out: Array<{ siteId: string; payloads: SegmentPayload[] }> = []
  for (const e of events) {
    let list = open.get(e.siteId)
    if (!list) {
      list = []
      open.set(e.siteId, list)
    }
    list.push(e.payload)
    if (list.length === size) {
      out.push({ siteId: e.siteId, payloads: list })
      open.set(e.siteId, [])
    }
  }
  for (const [siteId, payloads] of open) if (payloads.length > 0) out.push({ siteId, payloads })
  return out
}

/**
 * Posts every event through `/v1/import` (original timestamps kept, so windows match the workload's
 * truth), `concurrency` requests at a time. Returns the number accepted; any rejection throws.
 */
export async function importEvents(
  ingestUrl: string,
  events: readonly GeneratedEvent[],
  writeKeyOf: (siteId: string) => string,
  options: { batchSize?: number; concurrency?: number } = {},
): Promise<number> {
  const batches = batchesBySite(events, options.batchSize ?? 250)
  let next = 0
  let accepted = 0
  const worker = async () => {
    while (next < batches.length) {
      const b = batches[next++]!
      const answer = await postJson(
        `${ingestUrl}/v1/import`,
        { batch: b.payloads },
        {
          authorization: basicAuth(writeKeyOf(b.siteId)),
        },
      )
      if (answer.rejected.length > 0)
        throw new Error(
          `ingest rejected ${answer.rejected.length} events: ${JSON.stringify(answer.rejected[0])}`,
        )
      accepted += answer.accepted
    }
  }
  await Promise.all(Array.from({ length: options.concurrency ?? 4 }, worker))
  return accepted
}
