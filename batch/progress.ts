import type { RebuildProgress } from './rebuild.js'
import type { ArchiveWait } from './rebuild-command.js'

const PHASES: Record<RebuildProgress['phase'], string> = {
  dedup: 'dedup',
  aggregate: 'aggregate',
  write: 'write',
}
const UNITS: Record<RebuildProgress['phase'], string> = {
  dedup: 'segments',
  aggregate: 'segments',
  write: 'days',
}

function clock(ms: number | undefined): string {
  if (ms === undefined) return '--:--'
  const s = Math.max(0, Math.round(ms / 1000))
  const h = Math.floor(s / 3600)
  const m = Math.floor((s % 3600) / 60)
  const sec = String(s % 60).padStart(2, '0')
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`
}

function count(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}G`
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`
  if (n >= 1e4) return `${(n / 1e3).toFixed(0)}k`
  return String(n)
}

/** One status line: `[#####-----]  47% aggregate 120/300 segments · 1.2M events · ETA 0:42`. */
export function progressLine(p: RebuildProgress, width = 24): string {
  const filled = Math.round(Math.min(1, p.fraction) * width)
  const bar = `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}]`
  const pct = `${String(Math.floor(p.fraction * 100)).padStart(3)}%`
  return `${bar} ${pct} ${PHASES[p.phase]} ${p.done}/${p.total} ${UNITS[p.phase]} · ${count(p.eventsRead)} events · ${count(p.rowsWritten)} rows · ETA ${clock(p.etaMs)}`
}

/** While the rebuild waits for the archive: `waiting for the archive: 1200/1500 records on 2 partitions · 0:12 of 5:00`. */
export function archiveWaitLine(w: ArchiveWait): string {
  return `waiting for the archive: ${count(w.archived)}/${count(w.end)} records on ${w.behind.length} partition${w.behind.length === 1 ? '' : 's'} (${w.behind
    .slice(0, 4)
    .map((b) => `p${b.partition} ${b.archived}/${b.end}`)
    .join(', ')}${w.behind.length > 4 ? ', …' : ''}) · ${clock(w.elapsedMs)} of ${clock(w.waitMs)}`
}

/**
 * A progress reporter for `tally rebuild`: on a terminal one line redrawn in place (at most 10 times
 * a second); otherwise plain lines, one per phase change and per 10 %.
 */
export function progressPrinter(out: NodeJS.WriteStream = process.stderr): {
  update(p: RebuildProgress): void
  /** The archive wait: redrawn on a terminal; otherwise a line at the first look and every 10 s. */
  archive(w: ArchiveWait): void
  done(): void
} {
  const tty = out.isTTY === true
  let lastDraw = 0
  let lastPhase: string | undefined
  let lastDecile = -1
  let drawn = false
  let lastWaitLine = -1
  return {
    archive(w) {
      if (tty) {
        out.write(`\r${archiveWaitLine(w).slice(0, Math.max(20, (out.columns ?? 100) - 1))}\x1b[K`)
        drawn = true
        return
      }
      const step = Math.floor(w.elapsedMs / 10_000)
      if (step === lastWaitLine) return
      lastWaitLine = step
      out.write(`${archiveWaitLine(w)}\n`)
    },
    update(p) {
      if (tty) {
        const now = Date.now()
        if (now - lastDraw < 100 && p.done !== p.total) return
        lastDraw = now
        out.write(`\r${progressLine(p).slice(0, Math.max(20, (out.columns ?? 100) - 1))}\x1b[K`)
        drawn = true
        return
      }
      const decile = Math.floor(p.fraction * 10)
      if (p.phase === lastPhase && decile === lastDecile) return
      lastPhase = p.phase
      lastDecile = decile
      out.write(`${progressLine(p)}\n`)
    },
    done() {
      if (tty && drawn) out.write('\n')
    },
  }
}
