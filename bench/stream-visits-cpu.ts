/**
 * What visits cost the stream worker's CPU, without Kafka or Cassandra: the bench's stream workload
 * (bench/workload.ts, same options as bench/scenarios/stream.ts) as raw events, split into 6
 * partitions by visitor, counted by the worker's pipeline (stream/pipeline.ts `countRecords`) in
 * fetched batches, with a flush every `--flush-events` events per partition doing the worker's
 * CPU work of one (every dirty row's values, the visit state's eviction and serialized form).
 * Prints CPU-µs per event with visits and without, rows written and visit-state bytes per flush.
 *
 *   node dist/bench/stream-visits-cpu.js [--events 300000] [--flush-events 2000] [--only on|off]
 *
 * Run with `node --cpu-prof` for the profile of either mode (`--only`).
 */
import { oldestAcceptableMs, VisitState } from '../core/aggregate/visits.js'
import { createLogger } from '../core/log.js'
import type { ConsumedRecord } from '../core/ports/event-log.js'
import type { RawEventV1 } from '../schemas/events.js'
import { DedupSet } from '../stream/dedup.js'
import { countRecords, type PipelineState } from '../stream/pipeline.js'
import { fillLoaded, RowTable } from '../stream/rows.js'
import { generateWorkload } from './workload.js'

const GAP = 30 * 60_000
const GRACE = 2 * 3_600_000
const PARTITIONS = 6
const FETCH = 500

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? process.argv[i + 1]! : fallback
}

const events = Number(arg('events', '300000'))
const flushEvents = Number(arg('flush-events', '2000'))
const only = arg('only', '')
const logger = createLogger('silent')
const settings = { graceMs: GRACE, maxFutureMs: 86_400_000, maxOpenWindows: 20_000 }

function records(): ConsumedRecord[][] {
  const now = Date.now()
  const w = generateWorkload({
    seed: 7,
    sites: ['shop', 'blog', 'docs', 'news', 'app', 'wiki'],
    events,
    start: new Date(now - 45 * 60_000),
    spanMs: 30 * 60_000,
    lateShare: 0,
  })
  const parts: ConsumedRecord[][] = Array.from({ length: PARTITIONS }, () => [])
  const hash = (s: string) => {
    let h = 0
    for (let i = 0; i < s.length; i++) h = (Math.imul(h, 31) + s.charCodeAt(i)) | 0
    return Math.abs(h) % PARTITIONS
  }
  for (const g of w.events) {
    const p = g.payload as unknown as Record<string, unknown> & {
      context: { page?: unknown; campaign?: unknown }
    }
    const raw = {
      v: 1,
      siteId: g.siteId,
      messageId: p.messageId,
      messageIdAssigned: false,
      type: p.type,
      ...(p.event !== undefined ? { event: p.event } : {}),
      ...(p.name !== undefined ? { name: p.name } : {}),
      anonymousId: p.anonymousId,
      ...(p.userId !== undefined ? { userId: p.userId } : {}),
      properties: p.properties ?? {},
      context: {
        ...(p.context.page ? { page: p.context.page } : {}),
        ...(p.context.campaign ? { campaign: p.context.campaign } : {}),
      },
      timestamp: p.timestamp,
      receivedAt: new Date(g.sendAt).toISOString(),
      ua: { browser: g.ua.browser, os: g.ua.os, device: g.ua.device },
      bot: g.isBot,
    } as unknown as RawEventV1
    const part = parts[hash(`${g.siteId}:${p.anonymousId}`)]!
    part.push({
      offset: part.length,
      key: undefined,
      value: Buffer.from(JSON.stringify(raw)),
      headers: {},
      timestampMs: g.sendAt,
    })
  }
  return parts
}

function run(parts: ConsumedRecord[][], visits: boolean) {
  const states = parts.map((_, partition): PipelineState & { processedNext: number } => ({
    ref: { partition },
    rows: new RowTable(),
    dedup: new DedupSet(),
    watermarkMs: 0,
    processedNext: 0,
    ...(visits ? { visits: { state: new VisitState(GAP), nextOffset: 0, changed: false } } : {}),
  }))
  let flushes = 0
  const byDim = process.env.BY_DIM ? new Map<string, number>() : undefined
  let rowsWritten = 0
  let stateBytes = 0
  let stateBytesMax = 0
  let counted = 0
  const empty = new Map()
  const flush = (s: (typeof states)[number]) => {
    for (const r of s.rows.dirty) {
      if (byDim) {
        const k = `${r.key.granularity}:${r.key.dimension ?? 'totals'}`
        byDim.set(k, (byDim.get(k) ?? 0) + 1)
      }
      r.acc!.values()
      r.dirty = false
    }
    rowsWritten += s.rows.dirty.length
    s.rows.dirty = []
    const v = s.visits
    if (v) {
      if (v.state.evict(oldestAcceptableMs(s.watermarkMs, GRACE)) > 0) v.changed = true
      if (v.changed) {
        const bytes = v.state.serialize()
        stateBytes += bytes.byteLength
        stateBytesMax = Math.max(stateBytesMax, bytes.byteLength)
        v.changed = false
      }
    }
    s.rows.evict(s.watermarkMs - GRACE)
    flushes++
  }
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  // Partitions in turn, a fetched batch at a time, as one worker owning all six.
  const at = parts.map(() => 0)
  const sinceFlush = parts.map(() => 0)
  for (let more = true; more; ) {
    more = false
    for (let p = 0; p < parts.length; p++) {
      const recs = parts[p]!
      if (at[p]! >= recs.length) continue
      more = true
      const s = states[p]!
      const batch = { records: recs.slice(at[p]!, at[p]! + FETCH) }
      const pass = countRecords(s, batch, 0, settings, logger)
      fillLoaded(s.rows, pass.loading, empty, 14, visits)
      counted += pass.counted
      at[p]! += pass.next
      s.processedNext = at[p]!
      sinceFlush[p]! += pass.next
      if (sinceFlush[p]! >= flushEvents) {
        flush(s)
        sinceFlush[p] = 0
      }
    }
  }
  for (const s of states) flush(s)
  const cpu = process.cpuUsage(cpu0)
  const ms = performance.now() - t0
  const openVisits = states.reduce((a, s) => a + (s.visits?.state.openVisits ?? 0), 0)
  const endBytes = states.reduce((a, s) => a + (s.visits?.state.serialize().byteLength ?? 0), 0)
  return {
    visits,
    counted,
    cpuUsPerEvent: +((cpu.user + cpu.system) / counted).toFixed(2),
    wallMs: Math.round(ms),
    flushes,
    rowsPerFlush: Math.round(rowsWritten / flushes),
    rowsPerEvent: +(rowsWritten / counted).toFixed(2),
    stateBytesPerFlush: Math.round(stateBytes / flushes),
    stateBytesMax,
    stateBytesPerEvent: +(stateBytes / counted).toFixed(1),
    openVisitsAtEnd: openVisits,
    stateBytesPerOpenVisitAtEnd: openVisits > 0 ? Math.round(endBytes / openVisits) : null,
    ...(byDim
      ? { rowsPerFlushByDim: Object.fromEntries([...byDim].map(([k, v]) => [k, Math.round(v / flushes)])) }
      : {}),
  }
}

const parts = records()
const modes = only === 'on' ? [true] : only === 'off' ? [false] : [false, true, false, true]
for (const visits of modes) console.log(JSON.stringify(run(parts, visits)))
