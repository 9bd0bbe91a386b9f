import type { ScenarioDefinition } from '../harness/context.js'

/**
 * The embedded all-in-one backend (issue 7: one process, durable local log, embedded store). When a
 * role can run on it, this scenario runs the ingest, stream, query and batch scenarios against it,
 * beside the Kafka/Cassandra figures of the same run. Until then it says so, with no figure.
 */
export const embeddedScenario: ScenarioDefinition = {
  name: 'embedded',
  description: 'the same scenarios on the embedded all-in-one backend (issue 7)',
  needsServices: false,
  async run() {
    const reason =
      'not available yet: issue 7 (embedded all-in-one backend) is in progress; no Tally role runs on the embedded log and store in this build, so there is nothing to measure'
    return {
      figures: ['ingest', 'stream', 'query', 'batch'].map((s) => ({
        scenario: `embedded.${s}`,
        system: 'tally embedded',
        status: 'not-available' as const,
        reason,
        checks: [],
      })),
      ratios: [],
      targets: [],
    }
  },
}
