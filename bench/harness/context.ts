import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { projectRoot } from '../../core/paths.js'
import type { BenchEnvironment } from './environment.js'
import type { Figure, Ratio, Target } from './report.js'

/** What a scenario gets, and what it gives back. */

export interface ScenarioContext {
  /** Keyspace, topics, sites, files of this run; undefined for scenarios that need no servers. */
  env: BenchEnvironment
  /** Short settings (CI): every scenario runs a few seconds. */
  quick: boolean
  seed: number
  say(line: string): void
  /** Site sizes of the filters study (--filters-size); its default when undefined. */
  filterSizes?: readonly ('small' | 'medium' | 'large')[]
}

export interface ScenarioOutcome {
  figures: Figure[]
  ratios: Ratio[]
  targets: Target[]
}

export interface ScenarioDefinition {
  name: string
  description: string
  /** Needs Kafka and Cassandra. */
  needsServices: boolean
  /** Runs only when named in --only (a study, not part of the whole suite). */
  optIn?: boolean
  run(ctx: ScenarioContext): Promise<ScenarioOutcome>
}

/** A compiled bench script (peers run as their own processes from dist/). */
export function benchScript(relative: string): string {
  return join(projectRoot(), 'dist', 'bench', relative)
}

/** Whether a compiled product file exists (`query/role.js`, `app/run-rebuild.js`): colleagues' work lands piece by piece. */
export function isBuilt(relative: string): boolean {
  return existsSync(join(projectRoot(), 'dist', relative))
}

/** Seconds → a scenario phase's length: full runs use `full`, --quick uses `quick`. */
export function pick<T>(ctx: Pick<ScenarioContext, 'quick'>, full: T, quick: T): T {
  return ctx.quick ? quick : full
}
