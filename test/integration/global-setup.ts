import type { TestProject } from 'vitest/node'
import { type ServiceName, ServicesManager } from '../../app/services/manager.js'
import { loadConfig } from '../../core/config.js'
import { assertServicesAnswer } from '../helpers/services.js'

declare module 'vitest' {
  export interface ProvidedContext {
    kafkaBrokers: string[]
    cassandraContactPoints: string[]
  }
}

/**
 * Uses KAFKA_BROKERS / CASSANDRA_CONTACT_POINTS when given; otherwise starts the local servers with
 * `tally services` (and stops at the end the ones it started). Never skips: a server that cannot
 * be reached fails the run.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const config = loadConfig(process.env)
  const manager = new ServicesManager(config.services, (line) => process.stdout.write(`[services] ${line}\n`))
  const wanted: ServiceName[] = []
  if (!config.kafka.configured) wanted.push('kafka')
  if (!config.cassandra.configured) wanted.push('cassandra')
  const before = await manager.status()
  const started = wanted.filter((name) => before.find((s) => s.name === name)?.state === 'down')
  if (wanted.length > 0) await manager.up(wanted)
  const endpoints = {
    kafkaBrokers: [...config.kafka.brokers],
    cassandraContactPoints: [...config.cassandra.contactPoints],
  }
  await assertServicesAnswer(endpoints)
  project.provide('kafkaBrokers', endpoints.kafkaBrokers)
  project.provide('cassandraContactPoints', endpoints.cassandraContactPoints)
  return async () => {
    if (started.length > 0 && !process.env.TALLY_TEST_KEEP_SERVICES) await manager.down(started)
  }
}
