import { Client, errors, policies, types } from 'cassandra-driver'
import type { CassandraConfig, Consistency } from '../config.js'
import { errorMessage, ServiceUnavailableError } from '../errors.js'

/** The Cassandra adapter's connection. cassandra-driver is imported only below core/cassandra/. */

const CONSISTENCY: Record<Consistency, number> = {
  ONE: types.consistencies.one,
  LOCAL_ONE: types.consistencies.localOne,
  QUORUM: types.consistencies.quorum,
  LOCAL_QUORUM: types.consistencies.localQuorum,
  ALL: types.consistencies.all,
}

export interface CassandraClientOptions {
  /** Connect to this keyspace (omit to connect without one, e.g. to create it). */
  keyspace?: string | undefined
  /** Per-request read timeout. Default 12000 ms. */
  readTimeoutMs?: number
  /** Connect timeout. Default 5000 ms. */
  connectTimeoutMs?: number
}

export function createCassandraClient(
  config: Pick<
    CassandraConfig,
    'contactPoints' | 'localDataCenter' | 'consistency' | 'username' | 'password'
  >,
  options: CassandraClientOptions = {},
): Client {
  return new Client({
    contactPoints: [...config.contactPoints],
    localDataCenter: config.localDataCenter,
    ...(options.keyspace ? { keyspace: options.keyspace } : {}),
    ...(config.username && config.password
      ? { credentials: { username: config.username, password: config.password } }
      : {}),
    queryOptions: { consistency: CONSISTENCY[config.consistency], prepare: true },
    // Reconnect within seconds of a node coming back (the driver's default backs off to 10 min).
    policies: { reconnection: new policies.reconnection.ExponentialReconnectionPolicy(500, 5000, false) },
    socketOptions: {
      connectTimeout: options.connectTimeoutMs ?? 5000,
      readTimeout: options.readTimeoutMs ?? 12_000,
    },
  })
}

/** Connects once and reads the server version; throws ServiceUnavailableError when it does not answer. */
export async function describeCassandra(
  contactPoints: readonly string[],
  localDataCenter: string,
  timeoutMs = 3000,
): Promise<string> {
  const client = createCassandraClient(
    { contactPoints, localDataCenter, consistency: 'ONE', username: undefined, password: undefined },
    { connectTimeoutMs: timeoutMs, readTimeoutMs: timeoutMs },
  )
  try {
    await client.connect()
    const rs = await client.execute('SELECT release_version FROM system.local')
    return String(rs.first()?.get('release_version') ?? 'unknown')
  } catch (err) {
    throw new ServiceUnavailableError(
      'cassandra',
      `no answer from ${contactPoints.join(',')}: ${(err as Error).message}`,
      err,
    )
  } finally {
    await client.shutdown().catch(() => undefined)
  }
}

const UNAVAILABLE_CODES = new Set<number>([
  types.responseErrorCodes.unavailableException,
  types.responseErrorCodes.overloaded,
  types.responseErrorCodes.isBootstrapping,
  types.responseErrorCodes.readTimeout,
  types.responseErrorCodes.writeTimeout,
])

/**
 * A driver error that says Cassandra cannot answer now (no host reachable, a timeout, too few
 * replicas, overloaded) as a ServiceUnavailableError (503, retriable); any other error unchanged.
 * A reader answering a client wraps its calls with it: an outage is a 503, not an internal error.
 */
export function asServiceError(err: unknown): unknown {
  if (
    err instanceof errors.NoHostAvailableError ||
    err instanceof errors.OperationTimedOutError ||
    err instanceof errors.BusyConnectionError ||
    (err instanceof errors.ResponseError && UNAVAILABLE_CODES.has(err.code))
  )
    return new ServiceUnavailableError('cassandra', errorMessage(err), err)
  return err
}
