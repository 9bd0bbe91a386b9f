import { describeCassandra } from '../../core/cassandra/client.js'
import { describeKafka } from '../../core/kafka/client.js'

export interface ServiceEndpoints {
  kafkaBrokers: string[]
  cassandraContactPoints: string[]
}

/**
 * Checks that both servers answer; throws one message that names every server that does not, so
 * integration tests fail loudly instead of skipping.
 */
export async function assertServicesAnswer(endpoints: ServiceEndpoints, timeoutMs = 5000): Promise<void> {
  const problems: string[] = []
  await Promise.all([
    describeKafka(endpoints.kafkaBrokers, timeoutMs).catch((err: Error) => problems.push(err.message)),
    describeCassandra(endpoints.cassandraContactPoints, 'datacenter1', timeoutMs).catch((err: Error) =>
      problems.push(err.message),
    ),
  ])
  if (problems.length > 0) {
    throw new Error(
      `integration tests need real Kafka and Cassandra, and these do not answer:\n  ${problems.join('\n  ')}\n` +
        'Unset KAFKA_BROKERS / CASSANDRA_CONTACT_POINTS to let the tests start local servers, or start them with `npx tally services up`.',
    )
  }
}
