import type { RebuildProgress } from './rebuild.js'

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

/**
 * A progress reporter for `tally rebuild`: on a terminal one line redrawn in place (at most 10 times
 * a second); otherwise plain lines, one per phase change and per 10 %.
 */
export function progressPrinter(out: NodeJS.WriteStream = process.stderr): {
  update(p: RebuildProgress): void
  done(): void
} {
  const tty = out.isTTY === true
  let lastDraw = 0
  let lastPhase: string | undefined
  let lastDecile = -1
  let drawn = false
  return {
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
