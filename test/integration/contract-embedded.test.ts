import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync, readFileSync, utimesSync, writeFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { generationOf } from '../../core/aggregate/final.js'
import { EmbeddedEventLog } from '../../core/embedded/event-log.js'
import { LOCK_FILE, openEmbedded } from '../../core/embedded/index.js'
import { LOG_MIGRATIONS } from '../../core/embedded/schema.js'
import { openDatabase } from '../../core/embedded/sqlite.js'
import { HyperLogLog } from '../../core/hll.js'
import type { ConsumedRecord, LogRecord } from '../../core/ports/event-log.js'
import { tempDataDir } from '../contract/backends.js'
import { eventually, uniqueName } from '../helpers/context.js'

/** Embedded-only behaviour: one process per data folder, durability across SIGKILL, restart, rebalance. */

const CHILD = fileURLToPath(new URL('../contract/embedded-child.mjs', import.meta.url))

interface Child {
  child: ChildProcess
  lines: string[]
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

function runChild(args: string[]): Child {
  const child = spawn(process.execPath, [CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  const lines: string[] = []
  let partial = ''
  child.stdout?.on('data', (chunk: Buffer) => {
    const parts = (partial + chunk.toString('utf8')).split('\n')
    partial = parts.pop() ?? ''
    lines.push(...parts)
  })
  let stderr = ''
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8')
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => {
      if (stderr) process.stderr.write(`[embedded-child] ${stderr}`)
      resolve({ code, signal })
    }),
  )
  return { child, lines, exited }
}

function open(dir: string, topics: Array<{ topic: string; partitions: number }> = []) {
  return openEmbedded({ dataDir: dir, hllPrecision: 14, purgeIntervalMs: 0, topics })
}

function procStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
  } catch {
    return undefined
  }
}

function recordsOf(n: number, prefix: string, keys = 5): LogRecord[] {
  return Array.from({ length: n }, (_, i) => ({
    key: `k${i % keys}`,
    value: Buffer.from(`${prefix}${i}`),
    headers: { id: `${prefix}${i}` },
  }))
}

describe('embedded data folder: one process at a time', () => {
  it('refuses a second open in the same process and in another process, naming the owner; frees the folder on close', async () => {
    const { dir, remove } = tempDataDir()
    try {
      const first = open(dir)
      try {
        expect(() => open(dir)).toThrow(
          expect.objectContaining({
            code: 'TALLY_ERR_DATA_DIR_LOCKED',
            message: expect.stringContaining(`process ${process.pid}`),
          }),
        )
        const other = runChild(['open', dir])
        expect((await other.exited).code).toBe(3)
        const answer = JSON.parse(other.lines[0] ?? '{}') as { code: string; message: string }
        expect(answer.code).toBe('TALLY_ERR_DATA_DIR_LOCKED')
        expect(answer.message).toContain(`in use by process ${process.pid}`)
        expect(answer.message).toContain('TALLY_DATA_DIR')
      } finally {
        await first.close()
      }
      expect(existsSync(join(dir, LOCK_FILE))).toBe(false)
      const later = runChild(['open', dir])
      expect((await later.exited).code).toBe(0)
      expect(later.lines).toContain('opened')
    } finally {
      remove()
    }
  })

  it('takes over a lock whose process is gone, or whose PID now belongs to another process; keeps a live one', async () => {
    const { dir, remove } = tempDataDir()
    const lockPath = join(dir, LOCK_FILE)
    try {
      const gone = spawn(process.execPath, ['-e', ''])
      const gonePid = gone.pid!
      await new Promise((r) => gone.on('exit', r))
      await open(dir).close()
      writeFileSync(lockPath, JSON.stringify({ pid: gonePid, hostname: hostname(), startedAt: 'earlier' }))
      const a = open(dir)
      expect(JSON.parse(readFileSync(lockPath, 'utf8')).pid).toBe(process.pid)
      await a.close()

      // A live process holding the PID, but started after the lock was written: the PID was reused.
      const sleeper = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'])
      try {
        const pid = sleeper.pid!
        const start = await eventually(async () => procStart(pid), 5000, 'the sleeper in /proc')
        writeFileSync(
          lockPath,
          JSON.stringify({ pid, hostname: hostname(), startedAt: 'x', procStart: `${start}1` }),
        )
        const b = open(dir)
        await b.close()
        writeFileSync(
          lockPath,
          JSON.stringify({ pid, hostname: hostname(), startedAt: 'x', procStart: start }),
        )
        expect(() => open(dir)).toThrow(expect.objectContaining({ code: 'TALLY_ERR_DATA_DIR_LOCKED' }))
      } finally {
        sleeper.kill('SIGKILL')
      }

      // Half-written lock file: refused while fresh (its writer may be about to fill it), stale after.
      writeFileSync(lockPath, '{"pi')
      expect(() => open(dir)).toThrow(expect.objectContaining({ code: 'TALLY_ERR_DATA_DIR_LOCKED' }))
      const old = new Date(Date.now() - 60_000)
      utimesSync(lockPath, old, old)
      await open(dir).close()
    } finally {
      remove()
    }
  })
})

describe('embedded log durability and restart', () => {
  it('keeps every acknowledged append across a SIGKILL of the writing process', async () => {
    const { dir, remove } = tempDataDir()
    const topic = 'tally.events.raw'
    try {
      const writer = runChild(['append', dir, topic])
      const acked = () => writer.lines.filter((l) => l !== 'ready').flatMap((l) => l.split(','))
      await eventually(
        async () => (acked().length >= 1500 ? true : undefined),
        60_000,
        '1500 acknowledged ids',
      )
      writer.child.kill('SIGKILL')
      expect((await writer.exited).signal).toBe('SIGKILL')
      const ackedIds = acked()

      const backend = open(dir)
      try {
        expect(backend.log.partitionsOf(topic)).toBe(3)
        const ends = await backend.log.endOffsets(topic)
        const stored: ConsumedRecord[] = []
        for (const [p, end] of ends) {
          const rs = backend.log.read(topic, p, 0, end + 10)
          expect(rs.map((r) => r.offset)).toEqual(Array.from({ length: end }, (_, i) => i))
          stored.push(...rs)
        }
        const ids = stored.map((r) => r.headers.id)
        expect(new Set(ids).size).toBe(ids.length)
        const have = new Set(ids)
        expect(ackedIds.filter((id) => !have.has(id))).toEqual([])
        expect(stored.every((r) => String(r.value) === r.headers.id)).toBe(true)
        // Offsets continue after the restart.
        await backend.log.writer().append(topic, recordsOf(10, 'after'))
        const after = await backend.log.endOffsets(topic)
        expect([...after.values()].reduce((a, b) => a + b, 0)).toBe(stored.length + 10)
      } finally {
        await backend.close()
      }
    } finally {
      remove()
    }
  })

  it('answers a failed commit (disk full) with a retriable 503, stores nothing of it, and recovers', async () => {
    const { dir, remove } = tempDataDir()
    const db = openDatabase(join(dir, 'log.db'), LOG_MIGRATIONS)
    try {
      const log = new EmbeddedEventLog(db)
      log.ensureTopics([{ topic: 't', partitions: 2 }])
      const writer = log.writer()
      await writer.append('t', recordsOf(5, 'ok'))
      const before = await log.endOffsets('t')
      // A size cap makes the next large commit fail as a full disk would (SQLITE_FULL).
      db.pragma(`max_page_count = ${(db.pragma('page_count', { simple: true }) as number) + 2}`)
      const big = recordsOf(50, 'big').map((r) => ({ ...r, value: Buffer.alloc(8192, 1) }))
      await expect(writer.append('t', big)).rejects.toMatchObject({
        code: 'TALLY_ERR_SERVICE_UNAVAILABLE',
        statusCode: 503,
        retriable: true,
      })
      expect(writer.healthy()).toBe(false)
      expect(await log.endOffsets('t')).toEqual(before)
      db.pragma('max_page_count = 1073741823')
      await writer.append('t', big)
      expect(writer.healthy()).toBe(true)
      const after = await log.endOffsets('t')
      expect([...after.values()].reduce((a, b) => a + b, 0)).toBe(55)
      await writer.close()
      await log.close()
    } finally {
      db.close()
      remove()
    }
  })

  it('keeps topics, records, group offsets, sites, rows and checkpoints across a restart', async () => {
    const { dir, remove } = tempDataDir()
    const topic = 'raw'
    try {
      const first = open(dir, [{ topic, partitions: 4 }])
      await first.log.writer().append(topic, recordsOf(20, 'r'))
      first.log.commitOffset('g', topic, 1, 2)
      const { site } = await first.sites.create({ siteId: 's1', domain: 's1.test', origins: [] })
      const key = {
        siteId: 's1',
        granularity: 'hour' as const,
        windowStart: 3_600_000,
        dimension: undefined,
        value: '',
        sourcePartition: 0,
      }
      const visitors = new HyperLogLog(14)
      visitors.add('v1')
      await first.streamStore.writeRows(
        [
          {
            key,
            values: { events: 5, pageviews: 1, botEvents: 0, visitors: visitors.toBytes() },
            throughOffset: 4,
          },
        ],
        1,
      )
      const ref = { group: 'g', topic, partition: 0 }
      expect(await first.streamStore.acquireEpoch(ref, 'a')).toBe(1)
      await first.streamStore.writeCheckpoint(ref, { nextOffset: 5, watermarkMs: 99, epoch: 1 })
      const ends = await first.log.endOffsets(topic)
      await first.close()

      const second = open(dir, [{ topic, partitions: 8 }])
      try {
        expect(second.log.partitionsOf(topic)).toBe(4)
        expect(await second.log.endOffsets(topic)).toEqual(ends)
        expect(second.log.committedOffsets('g', topic)).toEqual(new Map([[1, 2]]))
        expect(await second.sites.byWriteKey(site.writeKey)).toEqual(site)
        expect((await second.reader.totals('s1', 'hour', 0, 7_200_000)).map((w) => w.events)).toEqual([5])
        expect(await second.streamStore.readCheckpoint(ref)).toEqual({
          nextOffset: 5,
          watermarkMs: 99,
          epoch: 1,
        })
        expect(await second.streamStore.acquireEpoch(ref, 'b')).toBe(2)
      } finally {
        await second.close()
      }
    } finally {
      remove()
    }
  })

  it('expires rows after their TTL and purges them', async () => {
    const { dir, remove } = tempDataDir()
    try {
      const backend = openEmbedded({
        dataDir: dir,
        hllPrecision: 14,
        purgeIntervalMs: 0,
        ttlSeconds: { minute: 1, hour: 0, day: 0 },
      })
      try {
        const k = (g: 'minute' | 'hour') => ({
          siteId: 's',
          granularity: g,
          windowStart: 0,
          dimension: undefined,
          value: '',
          sourcePartition: 0,
        })
        const values = { events: 1, pageviews: 0, botEvents: 0, visitors: new Uint8Array(0) }
        await backend.streamStore.writeRows(
          [
            { key: k('minute'), values, throughOffset: 0 },
            { key: k('hour'), values, throughOffset: 0 },
          ],
          1,
        )
        expect((await backend.streamStore.loadRows([k('minute'), k('hour')])).size).toBe(2)
        await new Promise((r) => setTimeout(r, 1100))
        expect((await backend.streamStore.loadRows([k('minute'), k('hour')])).size).toBe(1)
        expect(await backend.reader.totals('s', 'minute', 0, 60_000)).toEqual([])
        expect(backend.streamStore.purgeExpired()).toBe(1)
      } finally {
        await backend.close()
      }
    } finally {
      remove()
    }
  })
})

describe('embedded log retention', () => {
  it('deletes old records only once every listed group has read them; offsets stay; applied at open', async () => {
    const { dir, remove } = tempDataDir()
    const topic = 'ret.raw'
    const day = 86_400_000
    try {
      const backend = open(dir, [{ topic, partitions: 1 }])
      const writer = backend.log.writer()
      const old = Date.now() - 10 * day
      await writer.append(
        topic,
        recordsOf(10, 'old', 1).map((r) => ({ ...r, timestampMs: old })),
      )
      await writer.append(topic, recordsOf(5, 'new', 1))
      // Nobody has read anything: nothing goes, however old.
      expect(backend.log.trim(topic, Date.now() - day, ['stream', 'archive'])).toBe(0)
      backend.log.commitOffset('stream', topic, 0, 8)
      // The archive has not read them yet: still nothing.
      expect(backend.log.trim(topic, Date.now() - day, ['stream', 'archive'])).toBe(0)
      backend.log.commitOffset('archive', topic, 0, 15)
      // Both have: the old records below the slower reader (8) go; recent ones stay whatever was read.
      expect(backend.log.trim(topic, Date.now() - day, ['stream', 'archive'])).toBe(8)
      expect(backend.log.read(topic, 0, 0, 100).map((r) => r.offset)).toEqual([8, 9, 10, 11, 12, 13, 14])
      expect(await backend.log.endOffsets(topic)).toEqual(new Map([[0, 15]]))
      backend.log.commitOffset('stream', topic, 0, 15)
      await writer.close()
      await backend.close()

      // Retention configured at open runs with the first purge.
      const reopened = openEmbedded({
        dataDir: dir,
        hllPrecision: 14,
        purgeIntervalMs: 0,
        topics: [{ topic, partitions: 1 }],
        retention: [{ topic, ms: day, groups: ['stream', 'archive'] }],
      })
      try {
        expect(reopened.log.read(topic, 0, 0, 100).map((r) => r.offset)).toEqual([10, 11, 12, 13, 14])
        // A new append continues the offsets.
        await reopened.log.writer().append(topic, recordsOf(1, 'later', 1))
        expect(reopened.log.read(topic, 0, 14, 10).map((r) => r.offset)).toEqual([14, 15])
      } finally {
        await reopened.close()
      }
    } finally {
      remove()
    }
  })
})

describe('embedded consumer groups', () => {
  it('delivers a batch again when its handler throws (at least once)', async () => {
    const { dir, remove } = tempDataDir()
    try {
      const backend = open(dir, [{ topic: 't', partitions: 2 }])
      try {
        await backend.log.writer().append('t', recordsOf(30, 'x'))
        const consumer = backend.log.consumer({
          groupId: 'g',
          topic: 't',
          retryDelayMs: 20,
          maxBatchRecords: 4,
        })
        const seen: Array<[number, number]> = []
        let failures = 0
        await consumer.start({
          onBatch: async (batch) => {
            if (batch.partition === 1 && failures < 2) {
              failures++
              throw new Error('store down')
            }
            for (const r of batch.records) seen.push([batch.partition, r.offset])
          },
        })
        await eventually(async () => (seen.length >= 30 ? true : undefined), 10_000, '30 records')
        await consumer.close()
        expect(failures).toBe(2)
        const ends = await backend.log.endOffsets('t')
        for (const [p, end] of ends) {
          expect(seen.filter(([q]) => q === p).map(([, o]) => o)).toEqual(
            Array.from({ length: end }, (_, i) => i),
          )
        }
      } finally {
        await backend.close()
      }
    } finally {
      remove()
    }
  })

  it('shares its batch slots fairly: a busy partition queues behind the waiting ones', async () => {
    const { dir, remove } = tempDataDir()
    try {
      const backend = open(dir, [{ topic: 't', partitions: 6 }])
      try {
        await backend.log.writer().append('t', recordsOf(600, 'f', 60))
        const consumer = backend.log.consumer({
          groupId: 'g',
          topic: 't',
          partitionsConsumedConcurrently: 2,
          maxBatchRecords: 1,
        })
        const order: number[] = []
        await consumer.start({
          onBatch: async (batch) => {
            order.push(batch.partition)
            await new Promise((r) => setTimeout(r, 1))
          },
        })
        await eventually(async () => (order.length >= 60 ? true : undefined), 10_000, '60 batches')
        await consumer.close()
        // First come, first served: a partition waits for at most the other five (plus the batch
        // that was running beside it) before its next turn.
        for (let partition = 0; partition < 6; partition++) {
          const turns = order.flatMap((q, i) => (q === partition ? [i] : []))
          expect(turns[0]).toBeLessThan(6)
          for (let i = 1; i < turns.length; i++) expect(turns[i]! - turns[i - 1]!).toBeLessThanOrEqual(7)
        }
      } finally {
        await backend.close()
      }
    } finally {
      remove()
    }
  })

  it('shares partitions between members of a group and moves them, from the committed offset, when one leaves', async () => {
    const { dir, remove } = tempDataDir()
    try {
      const backend = open(dir, [{ topic: 't', partitions: 4 }])
      try {
        const writer = backend.log.writer()
        await writer.append('t', recordsOf(40, 'a', 40))
        const group = uniqueName('g')
        const seen = new Map<string, string[]>()
        const member = (name: string) => {
          const consumer = backend.log.consumer({ groupId: group, topic: 't', maxBatchRecords: 3 })
          const assignments: number[][] = []
          const start = () =>
            consumer.start({
              onBatch: async (batch, control) => {
                for (const r of batch.records) {
                  const id = `${batch.partition}:${r.offset}`
                  seen.set(id, [...(seen.get(id) ?? []), name])
                }
                await new Promise((r) => setTimeout(r, 2))
                if (!control.isStale())
                  await consumer.commit(batch.partition, batch.records.at(-1)!.offset + 1)
              },
              onAssignment: (ps) => {
                assignments.push(ps)
              },
            })
          return { consumer, assignments, start }
        }
        const a = member('a')
        const b = member('b')
        await a.start()
        await eventually(async () => (seen.size >= 40 ? true : undefined), 10_000, '40 records')
        await b.start()
        await writer.append('t', recordsOf(40, 'b', 40))
        await eventually(async () => (seen.size >= 80 ? true : undefined), 10_000, '80 records')
        expect(a.assignments).toEqual([
          [0, 1, 2, 3],
          [0, 2],
        ])
        expect(b.assignments).toEqual([[1, 3]])
        await b.consumer.close()
        expect(a.assignments.at(-1)).toEqual([0, 1, 2, 3])
        await writer.append('t', recordsOf(40, 'c', 40))
        await eventually(async () => (seen.size >= 120 ? true : undefined), 10_000, '120 records')
        await a.consumer.close()
        // Every record once: each member resumed a partition at the offset committed before it moved.
        expect([...seen.values()].filter((who) => who.length > 1)).toEqual([])
        const byB = [...seen].filter(([, who]) => who[0] === 'b').map(([id]) => Number(id.split(':')[0]))
        expect(new Set(byB)).toEqual(new Set([1, 3]))
        expect(byB.length).toBeGreaterThan(0)
      } finally {
        await backend.close()
      }
    } finally {
      remove()
    }
  })
})

describe('embedded reader paging', () => {
  it('streams the same windows and rows with pages smaller than a window', async () => {
    const { dir, remove } = tempDataDir()
    try {
      const backend = openEmbedded({ dataDir: dir, hllPrecision: 14, purgeIntervalMs: 0, readerPageRows: 2 })
      try {
        // Window 2 has a committed final row (a rebuild's generation: source_partition < 0).
        const token = 5
        const final = -generationOf(token)
        const rows = []
        for (let w = 0; w < 5; w++) {
          for (const partition of [final, 0, 1, 2]) {
            if (partition === final && w !== 2) continue
            const values = {
              events: partition === final ? 21 : w * 10 + partition + 2,
              pageviews: 0,
              botEvents: 0,
              visitors: new Uint8Array(0),
            }
            const windowStart = w * 3_600_000
            rows.push({
              key: {
                siteId: 's',
                granularity: 'hour' as const,
                windowStart,
                dimension: undefined,
                value: '',
                sourcePartition: partition,
              },
              values,
              throughOffset: 1,
            })
            for (const value of ['a', 'b']) {
              rows.push({
                key: {
                  siteId: 's',
                  granularity: 'hour' as const,
                  windowStart,
                  dimension: 'path' as const,
                  value,
                  sourcePartition: partition,
                },
                values,
                throughOffset: 1,
              })
            }
          }
        }
        await backend.streamStore.writeRows(rows, 1)
        await backend.batch.rows.commitFinal('s', [{ scope: 'hour', startMs: 2 * 3_600_000 }], token)
        const totals = []
        for await (const w of backend.reader.streamTotals('s', 'hour', 0, 5 * 3_600_000)) totals.push(w)
        expect(totals).toEqual(await backend.reader.totals('s', 'hour', 0, 5 * 3_600_000))
        expect(totals.map((w) => w.events)).toEqual([2 + 3 + 4, 12 + 13 + 14, 21, 32 + 33 + 34, 42 + 43 + 44])
        const dims = []
        for await (const r of backend.reader.streamDimension('s', 'hour', 'path', 0, 5 * 3_600_000))
          dims.push(r)
        expect(dims.map((r) => [r.windowStart / 3_600_000, r.value, r.events, r.final])).toEqual(
          [0, 1, 2, 3, 4].flatMap((w) =>
            ['a', 'b'].map((v) => [w, v, w === 2 ? 21 : 3 * (w * 10) + 9, w === 2]),
          ),
        )
      } finally {
        await backend.close()
      }
    } finally {
      remove()
    }
  })
})
