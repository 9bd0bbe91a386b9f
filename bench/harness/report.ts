import { readFileSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'
import { join } from 'node:path'
import { projectRoot } from '../../core/paths.js'
import { type Percentiles, round } from './stats.js'

/** What every scenario reports, and how the run prints it (a table) and saves it (JSON). */

export type Status = 'ok' | 'not-available' | 'failed'

export interface Check {
  ok: boolean
  /** What was compared with what (e.g. "events in the log = 2xx × events per request: 123 = 123"). */
  detail: string
}

export interface Figure {
  /** e.g. ingest.track, stream.freshness. */
  scenario: string
  /** tally, bare-fastify, duckdb (exact distinct), … */
  system: string
  status: Status
  /** Why it is not available or why it failed. */
  reason?: string
  throughput?: { value: number; unit: string; what: string }
  latencyMs?: Percentiles & { what: string }
  /** Peak resident set of the process under test (bytes). */
  peakRssBytes?: number
  /**
   * Requests of the timed runs that got no 2xx (errors, timeouts, 5xx under overload). A measured
   * outcome like latency, not a failed check: the checks are about the numbers being right.
   */
  failedRequests?: number
  checks: Check[]
  /** Anything else worth keeping (settings, counts, secondary figures). */
  details?: Record<string, unknown>
  /** A figure measured over time (e.g. per interval): a table of its own in the Markdown report. */
  series?: { title: string; columns: readonly string[]; rows: readonly (readonly string[])[] }
}

/** The figure of a measurement that threw: its reason, no numbers. */
export function failedFigure(
  scenario: string,
  system: string,
  err: unknown,
  details?: Record<string, unknown>,
): Figure {
  return {
    scenario,
    system,
    status: 'failed',
    reason: err instanceof Error ? err.message : String(err),
    checks: [],
    ...(details ? { details } : {}),
  }
}

export interface Ratio {
  scenario: string
  /** What is compared, e.g. "req/s Tally / bare Fastify". */
  metric: string
  value: number
  /** The issue's target for it, when there is one. */
  target?: string
}

/** A figure against the target its issue sets (absolute, e.g. "p99 under 10 ms"). */
export interface Target {
  scenario: string
  metric: string
  value: number
  unit: string
  target: string
  met: boolean
}

export interface RunReport {
  tool: 'tally-bench'
  date: string
  command: string
  quick: boolean
  machine: { cpus: number; cpuModel: string; memoryBytes: number; platform: string; node: string }
  versions: Record<string, string>
  figures: Figure[]
  ratios: Ratio[]
  targets: Target[]
  durationSec: number
}

export function machineInfo(): RunReport['machine'] {
  const list = cpus()
  return {
    cpus: list.length,
    cpuModel: list[0]?.model.trim() ?? 'unknown',
    memoryBytes: totalmem(),
    platform: `${process.platform} ${process.arch}`,
    node: process.version,
  }
}

/** Installed versions of the packages whose speed the figures depend on. */
export function packageVersions(names: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (const name of names) {
    try {
      const pkg = JSON.parse(
        readFileSync(join(projectRoot(), 'node_modules', name, 'package.json'), 'utf8'),
      ) as {
        version?: string
      }
      if (pkg.version) out[name] = pkg.version
    } catch {
      out[name] = 'not installed'
    }
  }
  const own = JSON.parse(readFileSync(join(projectRoot(), 'package.json'), 'utf8')) as { version?: string }
  out.tally = own.version ?? 'unknown'
  return out
}

export function formatBytes(bytes: number | undefined): string {
  if (bytes === undefined) return '—'
  if (bytes >= 1024 ** 3) return `${round(bytes / 1024 ** 3)} GiB`
  return `${round(bytes / 1024 ** 2)} MiB`
}

export function formatNumber(value: number): string {
  const r = round(value)
  return Math.abs(r) >= 1000 ? Math.round(r).toLocaleString('en-US') : String(r)
}

function ms(value: number | undefined): string {
  return value === undefined ? '—' : String(round(value))
}

function checkCell(f: Figure): string {
  if (f.status === 'not-available') return 'n/a'
  if (f.checks.length === 0) return f.status === 'failed' ? 'FAILED' : '—'
  const failed = f.checks.filter((c) => !c.ok).length
  return failed === 0 ? `ok (${f.checks.length})` : `FAILED ${failed}/${f.checks.length}`
}

/** A plain-text table: one row per figure, reasons and failed checks listed under it. */
export function formatTable(report: RunReport): string {
  const header = [
    'scenario',
    'system',
    'throughput',
    'p50 ms',
    'p90 ms',
    'p99 ms',
    'peak RSS',
    'non-2xx',
    'checks',
  ]
  const rows: string[][] = []
  const notes: string[] = []
  for (const f of report.figures) {
    const t = f.throughput
    rows.push([
      f.scenario,
      f.system,
      f.status === 'not-available'
        ? 'not available'
        : f.status === 'failed' && !t
          ? 'failed'
          : t
            ? `${formatNumber(t.value)} ${t.unit}`
            : '—',
      ms(f.latencyMs?.p50),
      ms(f.latencyMs?.p90),
      ms(f.latencyMs?.p99),
      formatBytes(f.peakRssBytes),
      f.failedRequests === undefined ? '—' : String(f.failedRequests),
      checkCell(f),
    ])
    const tag = `${f.scenario} ${f.system}`
    if (f.reason) notes.push(`${tag}: ${f.reason}`)
    if (f.status === 'ok' && t)
      notes.push(
        `${tag}: throughput = ${t.what}${f.latencyMs ? `; latency = ${f.latencyMs.what} (${f.latencyMs.samples} samples)` : ''}`,
      )
    for (const c of f.checks) if (!c.ok) notes.push(`${tag}: CHECK FAILED: ${c.detail}`)
  }
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (cells: string[]) =>
    cells.map((c, i) => (i >= 2 && i <= 7 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ')
  const out = [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)]
  if (report.ratios.length > 0) {
    out.push('', 'ratios:')
    for (const r of report.ratios)
      out.push(`  ${r.scenario}: ${r.metric} = ${round(r.value)}${r.target ? ` (target ${r.target})` : ''}`)
  }
  if (report.targets.length > 0) {
    out.push('', 'targets (issues 3–6):')
    for (const t of report.targets)
      out.push(
        `  ${t.scenario}: ${t.metric} = ${formatNumber(t.value)} ${t.unit} (target ${t.target}: ${t.met ? 'met' : 'not met'})`,
      )
  }
  if (notes.length > 0) out.push('', 'notes:', ...notes.map((n) => `  ${n}`))
  return out.join('\n')
}

/** The prefix of the figures of the embedded backend: `embedded.<scenario of the Kafka/Cassandra figure>`. */
const EMBEDDED = 'embedded.'

/**
 * Figures in report order with each `embedded.X` figure right after the last figure of `X`, so the
 * two backends' figures of one scenario sit together; embedded figures without a counterpart stay
 * at the end. Stable otherwise.
 */
export function besideTheirCounterparts(figures: readonly Figure[]): Figure[] {
  const others = figures.filter((f) => !f.scenario.startsWith(EMBEDDED))
  const out: Figure[] = []
  const placed = new Set<Figure>()
  others.forEach((f, i) => {
    out.push(f)
    if (others[i + 1]?.scenario === f.scenario) return
    for (const e of figures)
      if (e.scenario === `${EMBEDDED}${f.scenario}` && !placed.has(e)) {
        out.push(e)
        placed.add(e)
      }
  })
  for (const e of figures) if (!others.includes(e) && !placed.has(e)) out.push(e)
  return out
}

/**
 * Throughput of each embedded Tally figure over the same figure of Tally on Kafka and Cassandra in
 * the same run (`tally embedded (1 client)` against `tally (1 client)`), when both were measured.
 */
export function embeddedRatios(figures: readonly Figure[]): Ratio[] {
  const out: Ratio[] = []
  for (const e of figures) {
    if (!e.scenario.startsWith(EMBEDDED) || !e.system.startsWith('tally embedded')) continue
    const system = e.system.replace('tally embedded', 'tally')
    const k = figures.find((f) => f.scenario === e.scenario.slice(EMBEDDED.length) && f.system === system)
    if (e.status !== 'ok' || k?.status !== 'ok' || !e.throughput || !k.throughput) continue
    if (e.throughput.unit !== k.throughput.unit || k.throughput.value === 0) continue
    out.push({
      scenario: e.scenario,
      metric: `${e.throughput.unit} Tally embedded / Tally on Kafka+Cassandra${system === 'tally' ? '' : ` ${system.slice('tally '.length)}`}`,
      value: e.throughput.value / k.throughput.value,
    })
  }
  return out
}
