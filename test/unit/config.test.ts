import { describe, expect, it } from 'vitest'
import { CONFIG_VARIABLES, loadConfig } from '../../core/config.js'
import { ConfigError } from '../../core/errors.js'

function errorOf(env: Record<string, string>): ConfigError {
  try {
    loadConfig(env)
  } catch (err) {
    if (err instanceof ConfigError) return err
    throw err
  }
  throw new Error('expected a ConfigError')
}

describe('loadConfig', () => {
  it('gives defaults that point at the local services', () => {
    const c = loadConfig({})
    expect(c.kafka.configured).toBe(false)
    expect(c.kafka.brokers).toEqual(['127.0.0.1:9092'])
    expect(c.cassandra.contactPoints).toEqual(['127.0.0.1:9042'])
    expect(c.cassandra.keyspace).toBe('tally')
    expect(c.cassandra.replication).toEqual({ class: 'SimpleStrategy', factors: { replication_factor: 1 } })
    expect(c.port).toBeUndefined()
  })

  it('bounds event time: 23 h ahead, 7 days back (never past the log retention), 1830 days for imports', () => {
    const H = 3_600_000
    const c = loadConfig({})
    expect(c.ingest.maxFutureMs).toBe(23 * H)
    expect(c.stream.maxFutureMs).toBe(23 * H)
    expect(c.ingest.maxPastMs).toBe(7 * 24 * H)
    expect(c.ingest.importMaxPastMs).toBe(1830 * 24 * H)
    expect(c.stream.maxOpenWindows).toBe(20_000)
    expect(c.archive.maxOpenHours).toBe(64)
    const set = loadConfig({
      TALLY_MAX_FUTURE_MS: '60000',
      TALLY_MAX_PAST_DAYS: '3',
      TALLY_IMPORT_MAX_PAST_DAYS: '30',
    })
    expect([
      set.ingest.maxFutureMs,
      set.stream.maxFutureMs,
      set.ingest.maxPastMs,
      set.ingest.importMaxPastMs,
    ]).toEqual([60_000, 60_000, 3 * 24 * H, 30 * 24 * H])
    // A log that keeps records 48 h bounds live events to 48 h whatever TALLY_MAX_PAST_DAYS says.
    expect(loadConfig({ TALLY_LOG_RETENTION_HOURS: '48', TALLY_MAX_PAST_DAYS: '7' }).ingest.maxPastMs).toBe(
      48 * H,
    )
    for (const [name, value] of [
      ['TALLY_MAX_FUTURE_MS', '604800001'],
      ['TALLY_MAX_PAST_DAYS', '0'],
      ['TALLY_IMPORT_MAX_PAST_DAYS', '36501'],
      ['TALLY_STREAM_MAX_OPEN_WINDOWS', '99'],
      ['TALLY_ARCHIVE_MAX_OPEN_HOURS', '0'],
    ] as const) {
      expect(errorOf({ [name]: value }).message).toContain(name)
    }
    const documented = CONFIG_VARIABLES.map(([n]) => n)
    for (const name of [
      'TALLY_MAX_FUTURE_MS',
      'TALLY_MAX_PAST_DAYS',
      'TALLY_IMPORT_MAX_PAST_DAYS',
      'TALLY_STREAM_MAX_OPEN_WINDOWS',
      'TALLY_ARCHIVE_MAX_OPEN_HOURS',
    ])
      expect(documented).toContain(name)
  })

  it('reuses a data version for 100 ms unless told otherwise (0 = read per request)', () => {
    expect(loadConfig({}).query.versionMaxAgeMs).toBe(100)
    expect(loadConfig({ TALLY_QUERY_VERSION_MAX_AGE_MS: '0' }).query.versionMaxAgeMs).toBe(0)
    expect(loadConfig({ TALLY_QUERY_VERSION_MAX_AGE_MS: '250' }).query.versionMaxAgeMs).toBe(250)
    expect(errorOf({ TALLY_QUERY_VERSION_MAX_AGE_MS: '60000' }).message).toContain(
      'TALLY_QUERY_VERSION_MAX_AGE_MS',
    )
  })

  it('re-reads a data version at least every second while progress notices are heard', () => {
    expect(loadConfig({}).query.notifiedVersionMaxAgeMs).toBe(1000)
    expect(loadConfig({ TALLY_QUERY_NOTIFIED_VERSION_MAX_AGE_MS: '0' }).query.notifiedVersionMaxAgeMs).toBe(0)
    expect(
      loadConfig({ TALLY_QUERY_NOTIFIED_VERSION_MAX_AGE_MS: '600000' }).query.notifiedVersionMaxAgeMs,
    ).toBe(600_000)
    expect(errorOf({ TALLY_QUERY_NOTIFIED_VERSION_MAX_AGE_MS: '600001' }).message).toContain(
      'an integer from 0 to 600000',
    )
  })

  it('names a progress topic of its own unless told otherwise', () => {
    expect(loadConfig({}).kafka.topicProgress).toBe('tally.stream.progress')
    expect(loadConfig({ TALLY_TOPIC_PROGRESS: 'test.progress' }).kafka.topicProgress).toBe('test.progress')
  })

  it('lists the progress topic and the notified version age in the help table', () => {
    const names = CONFIG_VARIABLES.map(([name]) => name)
    expect(names).toContain('TALLY_TOPIC_PROGRESS')
    expect(names).toContain('TALLY_QUERY_NOTIFIED_VERSION_MAX_AGE_MS')
    // Beside the other version setting, so the two read together in --help.
    expect(names.indexOf('TALLY_QUERY_NOTIFIED_VERSION_MAX_AGE_MS')).toBe(
      names.indexOf('TALLY_QUERY_VERSION_MAX_AGE_MS') + 1,
    )
  })

  it('caps each ingest and query server at 10000 connections unless told otherwise, within 1 to 1000000', () => {
    expect(loadConfig({}).ingest.maxConnections).toBe(10_000)
    expect(loadConfig({ TALLY_MAX_CONNECTIONS: '250' }).ingest.maxConnections).toBe(250)
    const err = errorOf({ TALLY_MAX_CONNECTIONS: '0' })
    expect(err.where).toBe('TALLY_MAX_CONNECTIONS')
    expect(err.message).toContain('an integer from 1 to 1000000')
    expect(errorOf({ TALLY_MAX_CONNECTIONS: '1000001' }).where).toBe('TALLY_MAX_CONNECTIONS')
    expect(CONFIG_VARIABLES.map(([name]) => name)).toContain('TALLY_MAX_CONNECTIONS')
  })

  it('parses host lists, adding the default port', () => {
    const c = loadConfig({ KAFKA_BROKERS: 'k1:9093, k2', CASSANDRA_CONTACT_POINTS: 'c1,c2:9999' })
    expect(c.kafka.configured).toBe(true)
    expect(c.kafka.brokers).toEqual(['k1:9093', 'k2:9092'])
    expect(c.cassandra.contactPoints).toEqual(['c1:9042', 'c2:9999'])
  })

  it('writes ingest batches uncompressed unless gzip is asked for', () => {
    expect(loadConfig({}).ingest.compression).toBe('none')
    expect(loadConfig({ TALLY_INGEST_COMPRESSION: 'gzip' }).ingest.compression).toBe('gzip')
  })

  it('counts visits in the rebuild unless TALLY_REBUILD_VISITS=off (a measuring switch)', () => {
    expect(loadConfig({}).batch.countsVisits).toBe(true)
    expect(loadConfig({ TALLY_REBUILD_VISITS: 'off' }).batch.countsVisits).toBe(false)
  })

  it('bounds the wait of a rebuild for the archive, 5 minutes unless told otherwise', () => {
    expect(loadConfig({}).batch.rebuildWaitArchiveMs).toBe(300_000)
    expect(loadConfig({ TALLY_REBUILD_WAIT_ARCHIVE_MS: '0' }).batch.rebuildWaitArchiveMs).toBe(0)
    expect(() => loadConfig({ TALLY_REBUILD_WAIT_ARCHIVE_MS: '86400001' })).toThrow(
      'TALLY_REBUILD_WAIT_ARCHIVE_MS="86400001" is not valid: expected an integer from 0 to 86400000',
    )
    expect(CONFIG_VARIABLES.map(([name]) => name)).toContain('TALLY_REBUILD_WAIT_ARCHIVE_MS')
  })

  it('refuses an unknown TALLY_* variable, naming the closest known one', () => {
    const err = errorOf({ TALLY_RATE_LIMIT_SITES: '5' })
    expect(err.code).toBe('TALLY_ERR_CONFIG')
    expect(err.where).toBe('TALLY_RATE_LIMIT_SITES')
    expect(err.message).toBe('unknown variable TALLY_RATE_LIMIT_SITES; did you mean TALLY_RATE_LIMIT_SITE?')
    expect(errorOf({ TALLY_GRACE: '1' }).message).toBe(
      'unknown variable TALLY_GRACE; did you mean TALLY_GRACE_MS?',
    )
    expect(errorOf({ TALLY_NOTHING_LIKE_THIS_AT_ALL: '1' }).message).toBe(
      'unknown variable TALLY_NOTHING_LIKE_THIS_AT_ALL (`tally --help` lists the variables)',
    )
    // Read outside the configuration (CLI, tests, bench), so not unknown; other prefixes are not Tally's.
    expect(() =>
      loadConfig({
        TALLY_DEBUG: '1',
        TALLY_TEST_KEEP_SERVICES: '1',
        TALLY_BENCH_CPU_PROF: '/tmp',
        TALLYHO: 'x',
      }),
    ).not.toThrow()
  })

  it('parses replication for multi-node clusters', () => {
    const c = loadConfig({ CASSANDRA_REPLICATION: 'NetworkTopologyStrategy:dc1=3,dc2=2' })
    expect(c.cassandra.replication).toEqual({ class: 'NetworkTopologyStrategy', factors: { dc1: 3, dc2: 2 } })
  })

  it('returns a deeply frozen object', () => {
    const c = loadConfig({})
    expect(Object.isFrozen(c)).toBe(true)
    expect(Object.isFrozen(c.kafka)).toBe(true)
    expect(Object.isFrozen(c.kafka.brokers)).toBe(true)
    expect(() => {
      ;(c.kafka as { partitions: number }).partitions = 99
    }).toThrow(TypeError)
  })

  it.each([
    ['PORT', 'eighty', 'an integer from 0 to 65535'],
    ['PORT', '70000', 'an integer from 0 to 65535'],
    ['KAFKA_BROKERS', 'bad host:xx', 'host:port'],
    ['KAFKA_PARTITIONS', '0', 'an integer from 1 to 10000'],
    ['CASSANDRA_KEYSPACE', 'Tally-Prod', 'lower-case identifier'],
    ['CASSANDRA_REPLICATION', 'EverywhereStrategy:3', 'SimpleStrategy:N'],
    ['CASSANDRA_CONSISTENCY', 'MOST', 'one of ONE'],
    ['LOG_LEVEL', 'loud', 'one of fatal'],
    ['TALLY_TOPIC_RAW', 'events raw', 'Kafka topic name'],
    ['TALLY_TOPIC_PROGRESS', 'progress/notices', 'Kafka topic name'],
    ['TALLY_QUERY_NOTIFIED_VERSION_MAX_AGE_MS', '-1', 'an integer from 0 to 600000'],
    ['TALLY_INGEST_COMPRESSION', 'zstd', 'one of none, gzip'],
    ['TALLY_INGEST_IN_FLIGHT_BATCHES', '0', 'an integer from 1 to 16'],
  ])('rejects %s=%s naming the variable, the value and the expected form', (name, value, expected) => {
    const err = errorOf({ [name]: value })
    expect(err.code).toBe('TALLY_ERR_CONFIG')
    expect(err.where).toBe(name)
    expect(err.message).toContain(name)
    expect(err.message).toContain(JSON.stringify(value))
    expect(err.message).toContain(expected)
  })
})
