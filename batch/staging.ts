import { createReadStream, createWriteStream, type WriteStream } from 'node:fs'
import { readdir, rm } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import type { Granularity, RowDimension } from '../core/aggregate/definition.js'
import type { FinalRow } from '../core/ports/batch-store.js'
import { makePrivateDir, PRIVATE_FILE_MODE } from '../core/private-files.js'

/**
 * Where a rebuild keeps its results until the whole range is computed: one NDJSON file per UTC day
 * (rows whose window starts that day), so nothing reaches the store before every segment of the range
 * was read, and the write phase loads one day at a time (bounded memory whatever the range).
 */

interface StagedLine {
  s: string
  g: Granularity
  w: number
  d: RowDimension | null
  v: string
  e: number
  p: number
  b: number
  /** Serialized HyperLogLog, base64. */
  h: string
  /** Visit counts [visits, bounces, visitDurationMs, visitPageviews]; absent when the row has none. */
  n?: [number, number, number, number]
}

const DAY_FILE = /^day-(\d+)\.ndjson$/

export class StagingArea {
  private current: { day: number; out: WriteStream } | undefined

  private constructor(readonly dir: string) {}

  /** A fresh (emptied) staging folder, owner-only like the batch staging folder holding it. */
  static async create(dir: string): Promise<StagingArea> {
    await rm(dir, { recursive: true, force: true })
    await makePrivateDir(dirname(dir))
    await makePrivateDir(dir)
    return new StagingArea(dir)
  }

  private path(dayStartMs: number): string {
    return join(this.dir, `day-${dayStartMs}.ndjson`)
  }

  /** Appends a row to its day's file. Rows arrive day by day (a day's file is closed on the next). */
  async write(dayStartMs: number, row: FinalRow): Promise<void> {
    if (this.current?.day !== dayStartMs) {
      await this.closeCurrent()
      this.current = {
        day: dayStartMs,
        out: createWriteStream(this.path(dayStartMs), { flags: 'a', mode: PRIVATE_FILE_MODE }),
      }
    }
    const line: StagedLine = {
      s: row.siteId,
      g: row.granularity,
      w: row.windowStart,
      d: row.dimension ?? null,
      v: row.value,
      e: row.values.events,
      p: row.values.pageviews,
      b: row.values.botEvents,
      h: Buffer.from(row.values.visitors).toString('base64'),
    }
    const v = row.values
    if (v.visits !== undefined)
      line.n = [v.visits, v.bounces ?? 0, v.visitDurationMs ?? 0, v.visitPageviews ?? 0]
    const out = this.current.out
    if (!out.write(`${JSON.stringify(line)}\n`)) await new Promise<void>((r) => out.once('drain', r))
  }

  private async closeCurrent(): Promise<void> {
    const c = this.current
    this.current = undefined
    if (!c) return
    await new Promise<void>((resolve, reject) => {
      c.out.once('error', reject)
      c.out.end(resolve)
    })
  }

  /** Closes the open file; returns the days that have rows, in order. */
  async finish(): Promise<number[]> {
    await this.closeCurrent()
    return (await readdir(this.dir))
      .map((name) => DAY_FILE.exec(name))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b)
  }

  async *read(dayStartMs: number): AsyncIterable<FinalRow> {
    const lines = createInterface({ input: createReadStream(this.path(dayStartMs)), crlfDelay: Infinity })
    for await (const text of lines) {
      if (text === '') continue
      const l = JSON.parse(text) as StagedLine
      yield {
        siteId: l.s,
        granularity: l.g,
        windowStart: l.w,
        dimension: l.d ?? undefined,
        value: l.v,
        values: {
          events: l.e,
          pageviews: l.p,
          botEvents: l.b,
          visitors: Buffer.from(l.h, 'base64'),
          ...(l.n
            ? { visits: l.n[0], bounces: l.n[1], visitDurationMs: l.n[2], visitPageviews: l.n[3] }
            : {}),
        },
      }
    }
  }

  async remove(): Promise<void> {
    await this.closeCurrent().catch(() => undefined)
    await rm(this.dir, { recursive: true, force: true })
  }
}
