import {
  cassandraHarness,
  embeddedHarness,
  embeddedLogHarness,
  kafkaLogHarness,
} from '../contract/backends.js'
import type { EventLogHarness } from '../contract/event-log.js'

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
