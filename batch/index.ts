/**
 * The batch layer's entry points, one per command (each takes the configuration, a logger and its
 * options): `tally batch` → startBatch, `tally archive` → startArchiver, `tally rebuild` → rebuild
 * (with progressPrinter for the bar), `tally jobs` → listJobs + formatJobs, `tally import` →
 * importFile.
 */
export { type ArchiverRoleOptions, type RunningArchiver, startArchiver } from './archive-role.js'
export {
  type EventNormalizer,
  type ImportOptions,
  type ImportResult,
  importFile,
  type NormalizeOutcome,
} from './import.js'
export { formatJobs, type ListJobsOptions, listJobs } from './jobs.js'
export { progressLine, progressPrinter } from './progress.js'
export type { RebuildProgress, RebuildResult } from './rebuild.js'
export { type RebuildOptions, rebuild } from './rebuild-command.js'
export { type RunningBatch, type StartBatchOptions, startBatch } from './role.js'
