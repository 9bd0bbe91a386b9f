import { join, resolve } from 'node:path'
import type { TallyConfig } from '../config.js'
import { archiveTopicDir } from './segment-file.js'

/** The commit-row key of an archive: its consumer group and topic. */
export function archiveKey(group: string, topic: string): string {
  return `${group}|${topic}`
}

/** Where the batch layer keeps its files, from the configuration and the options. */
export interface BatchPathOptions {
  /** Root of the archive. Default `<TALLY_DATA_DIR>/archive`. */
  archiveDir?: string
  /** Staged rebuild results and dedup spill files. Default `<TALLY_DATA_DIR>/batch-staging`. */
  stagingDir?: string
}

export interface BatchPaths {
  archiveDir: string
  /** `<archiveDir>/<raw topic>`. */
  topicDir: string
  stagingDir: string
}

export function batchPaths(
  config: Pick<TallyConfig, 'dataDir' | 'kafka'>,
  o: BatchPathOptions = {},
): BatchPaths {
  const archiveDir = resolve(o.archiveDir ?? join(config.dataDir, 'archive'))
  return {
    archiveDir,
    topicDir: archiveTopicDir(archiveDir, config.kafka.topicRaw),
    stagingDir: resolve(o.stagingDir ?? join(config.dataDir, 'batch-staging')),
  }
}
