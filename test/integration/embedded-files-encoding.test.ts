import { lstatSync, readdirSync } from 'node:fs'
import { join, relative } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { embeddedPorts, openEmbeddedBackend } from '../../app/backend.js'
import { ensureQuickstartSite, type QuickstartSite } from '../../app/quickstart.js'
import { startBatch, startIngest, startQuery, startStream } from '../../app/start.js'
import { loadConfig, type TallyConfig } from '../../core/config.js'
import type { EmbeddedBackend } from '../../core/embedded/index.js'
import { createLogger } from '../../core/log.js'
import { tempDataDir } from '../contract/backends.js'
import { eventually } from '../helpers/context.js'

/**
 * The roles of `tally all` on the embedded backend, in this process, under the usual umask 0o022:
 * a lone surrogate sent to ingest reads back as the same U+FFFD from the aggregates and from the raw
 * export (as valid UTF-8 JSON), and every file and folder Tally made in the data folder is
 * owner-only.
 */

const logger = createLogger('silent')
const FFFD = '\uFFFD'
const data = tempDataDir('tally-files-encoding-')
let savedUmask = 0
let config: TallyConfig
let embedded: EmbeddedBackend | undefined
const closers: Array<() => Promise<void>> = []
let ingestUrl = ''
let queryUrl = ''
let site: QuickstartSite

beforeAll(async () => {
  // What a login shell usually has: group and others may read new files unless a mode says not.
  savedUmask = process.umask(0o022)
  config = loadConfig({ TALLY_DATA_DIR: data.dir, TALLY_BACKEND: 'embedded', LOG_LEVEL: 'silent' })
  embedded = openEmbeddedBackend(config, logger)
  const ports = embeddedPorts(embedded)
  site = await ensureQuickstartSite(config, ports.sites)
  const ingest = await startIngest(config, logger, { ports, port: 0 })
  closers.push(() => ingest.close())
  const stream = await startStream(config, logger, { ports, port: 0 })
  closers.push(() => stream.close())
  const batch = await startBatch(config, logger, { ports, port: 0, archiver: { flushIntervalMs: 200 } })
  closers.push(() => batch.close())
  const query = await startQuery(config, logger, { ports, port: 0 })
  closers.push(() => query.close())
  ingestUrl = ingest.url
  queryUrl = query.url
})

afterAll(async () => {
  for (const close of closers) await close()
  await embedded?.close()
  process.umask(savedUmask)
  data.remove()
})

/** Every entry under `dir` with its permission bits, by path relative to `root`. */
function modes(dir: string, root = dir, out = new Map<string, { dir: boolean; mode: number }>()) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name)
    const st = lstatSync(path)
    out.set(relative(root, path), { dir: st.isDirectory(), mode: st.mode & 0o777 })
    if (st.isDirectory()) modes(path, root, out)
  }
  return out
}

function isStrictUtf8(bytes: Uint8Array): boolean {
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(bytes)
    return true
  } catch {
    return false
  }
}

describe('embedded backend: text and files', () => {
  it('a lone surrogate is one U+FFFD in the aggregates and in the raw export, whose lines are valid UTF-8 JSON', async () => {
    const startedMs = Date.now()
    // A JSON escape of a lone high surrogate, as JSON.stringify of a string cut mid-pair sends it.
    const body = (i: number) =>
      `{"event":"Sign\\ud800up","anonymousId":"v-${i}","messageId":"sur-${i}","properties":{"note":"x\\udc00"}}`
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${ingestUrl}/v1/track`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          authorization: `Basic ${Buffer.from(`${site.writeKey}:`).toString('base64')}`,
        },
        body: body(i),
      })
      expect(res.status, await res.text()).toBe(200)
    }
    const auth = { authorization: `Bearer ${site.readToken}` }

    // Aggregates: one row, under the name with one U+FFFD, counting the three events.
    const rows = await eventually(
      async () => {
        const res = await fetch(
          `${queryUrl}/v1/stats/breakdown?site=${site.siteId}&period=day&property=event&metrics=events`,
          { headers: auth },
        )
        expect(res.status).toBe(200)
        const answer = (await res.json()) as { results: Array<{ event: string; events: number }> }
        const total = answer.results.reduce((n, r) => n + r.events, 0)
        return total === 3 ? answer.results : undefined
      },
      30_000,
      'the three events to be counted',
    )
    expect(rows).toEqual([{ event: `Sign${FFFD}up`, events: 3 }])

    // Raw export: the same form, and every line parses as strict UTF-8 JSON.
    const from = new Date(startedMs - 60_000).toISOString()
    const to = new Date(Date.now() + 60_000).toISOString()
    const bytes = await eventually(
      async () => {
        const res = await fetch(
          `${queryUrl}/v1/export/events?${new URLSearchParams({ site: site.siteId, from, to })}`,
          { headers: auth },
        )
        expect(res.status).toBe(200)
        const b = new Uint8Array(await res.arrayBuffer())
        return Buffer.from(b).toString('utf8').includes('"type":"end","events":3') ? b : undefined
      },
      30_000,
      'the three events to be archived',
    )
    expect(isStrictUtf8(bytes)).toBe(true)
    const text = Buffer.from(bytes).toString('utf8')
    // No surrogate escape left for a strict reader (jq) to refuse.
    expect(text).not.toMatch(/\\u[dD][89a-fA-F][0-9a-fA-F]{2}/)
    const lines = text
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; event?: Record<string, unknown> })
    const events = lines.filter((l) => l.type === 'event').map((l) => l.event!)
    expect(events.map((e) => e.messageId).sort()).toEqual(['sur-0', 'sur-1', 'sur-2'])
    for (const e of events) {
      expect(e.event).toBe(`Sign${FFFD}up`)
      expect(e.properties).toEqual({ note: `x${FFFD}` })
    }
  })

  it('every file Tally made in the data folder is 0600 and every folder 0700, whatever the umask', async () => {
    // The archive has segments (the test above waited for them); the databases are open (WAL).
    const found = modes(data.dir)
    const names = [...found.keys()]
    expect(names).toEqual(
      expect.arrayContaining([
        'embedded',
        join('embedded', 'log.db'),
        join('embedded', 'log.db-wal'),
        join('embedded', 'store.db'),
        join('embedded', 'store.db-wal'),
        'quickstart.json',
        'archive',
        join('archive', config.kafka.topicRaw),
      ]),
    )
    expect(names.some((n) => n.startsWith(join('archive', config.kafka.topicRaw, '_staging')))).toBe(true)
    expect(names.some((n) => n.endsWith('.raw.arrow'))).toBe(true)
    expect(names.some((n) => /\.lock$|lock/.test(n))).toBe(true)
    const wrong = [...found]
      .filter(([, m]) => m.mode !== (m.dir ? 0o700 : 0o600))
      .map(([name, m]) => `${name} ${m.mode.toString(8)}`)
    expect(wrong).toEqual([])
  })
})
