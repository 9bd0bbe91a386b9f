import type { TallyConfig } from '../../core/config.js'
import {
  cassandraHarness,
  embeddedHarness,
  embeddedLogHarness,
  kafkaLogHarness,
  tempDataDir,
} from '../contract/backends.js'
import type { EventLogHarness } from '../contract/event-log.js'
import { testConfig } from './context.js'

/** A store harness of either backend (stream store, reader, sites, batch stores). */
export type Harness = Awaited<ReturnType<typeof embeddedHarness>>

/**
 * The two backends a pipeline test runs on, for `describe.each`: a name, the store harness and the
 * event log harness (Kafka + Cassandra, then embedded).
 */
export const backends: Array<[string, () => Promise<Harness>, () => Promise<EventLogHarness>]> = [
  ['Kafka + Cassandra', cassandraHarness, kafkaLogHarness],
  ['embedded', embeddedHarness, embeddedLogHarness],
]

export interface Pipeline {
  store: Harness
  log: EventLogHarness
  /** A fresh raw topic of 3 partitions. */
  topic: string
  /** testConfig with TALLY_TOPIC_RAW set to `topic`, then `env`. */
  config: TallyConfig
  data: ReturnType<typeof tempDataDir>
}

/**
 * Opens a store and a log harness, a fresh 3-partition topic, its config and a temporary data
 * folder: a pipeline test's beforeAll. What it opened is closed again if a later step fails.
 */
export async function openPipeline(
  openStore: () => Promise<Harness>,
  openLog: () => Promise<EventLogHarness>,
  o: { dataPrefix: string; env?: Record<string, string> },
): Promise<Pipeline> {
  const store = await openStore()
  let log: EventLogHarness | undefined
  try {
    log = await openLog()
    const topic = await log.createTopic(3)
    const config = testConfig({ TALLY_TOPIC_RAW: topic, ...o.env })
    return { store, log, topic, config, data: tempDataDir(o.dataPrefix) }
  } catch (err) {
    await log?.close()
    await store.close()
    throw err
  }
}

/** Closes what openPipeline opened (any part may be missing when beforeAll failed). */
export async function closePipeline(p: Partial<Pick<Pipeline, 'store' | 'log' | 'data'>>): Promise<void> {
  await p.log?.close()
  await p.store?.close()
  p.data?.remove()
}
