import { Client, errors, policies, types } from 'cassandra-driver'
import type { CassandraConfig, Consistency } from '../config.js'
import { errorMessage, ServiceUnavailableError } from '../errors.js'
import { backoffDelayMs, sleep } from '../retry.js'

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

/** Whether `err` is Cassandra's answer to a session opened on a keyspace that does not exist. */
export function isUnknownKeyspace(err: unknown): boolean {
  return (
    err instanceof errors.ResponseError &&
    err.code === types.responseErrorCodes.invalid &&
    /^Keyspace '.*' does not exist$/.test(err.message)
  )
}

/** Whether a failed connect may succeed later: no host answered yet (not refused credentials). */
function mayConnectLater(err: unknown): boolean {
  if (!(err instanceof errors.NoHostAvailableError)) return asServiceError(err) !== err
  const inner = Object.values(err.innerErrors ?? {})
  return !inner.some((e) => e instanceof errors.AuthenticationError)
}

/**
 * Connects, retrying with backoff while Cassandra does not answer, for at most `waitMs` (a role
 * started before its database, or while it restarts, waits instead of exiting). A refusal that
 * will not change (credentials, a missing keyspace) fails at once. `connect` makes a new client
 * per attempt: a client whose connect failed is shut down.
 */
export async function connectCassandra(
  make: () => Client,
  options: { waitMs: number; onWait?: (err: unknown, waitedMs: number, delayMs: number) => void },
): Promise<Client> {
  const started = Date.now()
  for (let attempt = 1; ; attempt++) {
    const client = make()
    try {
      await client.connect()
      return client
    } catch (err) {
      await client.shutdown().catch(() => undefined)
      const waited = Date.now() - started
      if (!mayConnectLater(err)) throw err
      if (waited >= options.waitMs) {
        if (options.waitMs === 0) throw asServiceError(err)
        throw new ServiceUnavailableError(
          'cassandra',
          `no answer after waiting ${Math.round(waited / 1000)} s (TALLY_CONNECT_WAIT_MS=${options.waitMs}): ${errorMessage(err)}`,
          err,
        )
      }
      const delay = Math.min(backoffDelayMs(attempt, 250, 5000), options.waitMs - waited)
      options.onWait?.(err, waited, delay)
      await sleep(delay)
    }
  }
}
