/**
 * The catalogue of error codes: every `TALLY_ERR_*` code is declared here once, with the HTTP
 * status it is answered with (where it is an HTTP answer) and what it means. Code throws by name
 * (`new TallyError(ERR.INVALID_WRITE_KEY, …)`); no other product file spells a code as a string
 * literal (test/unit/error-codes.test.ts checks). The README's "Errors" table is generated from
 * this list by `npm run docs:config`.
 */
export interface ErrorEntry {
  /** The stable code, `TALLY_ERR_` + the entry's name. */
  readonly code: string
  /** The HTTP status it is answered with; undefined when it is never an HTTP answer. */
  readonly status?: number
  /** What it means, for the README's table. */
  readonly meaning: string
}

export const ERRORS = {
  // Requests (ingest and query).
  BAD_REQUEST: {
    code: 'TALLY_ERR_BAD_REQUEST',
    status: 400,
    meaning: 'malformed HTTP request, or a body that does not match its content-length',
  },
  MALFORMED_JSON: {
    code: 'TALLY_ERR_MALFORMED_JSON',
    status: 400,
    meaning: 'the body (or an imported line) is empty or not valid JSON',
  },
  BAD_ENCODING: {
    code: 'TALLY_ERR_BAD_ENCODING',
    status: 400,
    meaning: 'the body is not valid gzip/deflate',
  },
  PAYLOAD_TOO_LARGE: {
    code: 'TALLY_ERR_PAYLOAD_TOO_LARGE',
    status: 413,
    meaning: 'the request body is larger than TALLY_MAX_BODY_BYTES',
  },
  UNSUPPORTED_MEDIA_TYPE: {
    code: 'TALLY_ERR_UNSUPPORTED_MEDIA_TYPE',
    status: 415,
    meaning: 'the content type is not application/json or text/plain',
  },
  UNSUPPORTED_ENCODING: {
    code: 'TALLY_ERR_UNSUPPORTED_ENCODING',
    status: 415,
    meaning: 'a content-encoding other than gzip, deflate or br',
  },
  UNSUPPORTED_CHARSET: {
    code: 'TALLY_ERR_UNSUPPORTED_CHARSET',
    status: 415,
    meaning: 'a content-type charset that cannot be decoded',
  },
  HEADERS_TOO_LARGE: {
    code: 'TALLY_ERR_HEADERS_TOO_LARGE',
    status: 431,
    meaning: 'the request headers are larger than the limit',
  },
  REQUEST_TIMEOUT: {
    code: 'TALLY_ERR_REQUEST_TIMEOUT',
    status: 408,
    meaning: 'the whole request was not received within TALLY_REQUEST_TIMEOUT_MS; the connection is closed',
  },
  NOT_FOUND: { code: 'TALLY_ERR_NOT_FOUND', status: 404, meaning: 'no such route' },
  INTERNAL: { code: 'TALLY_ERR_INTERNAL', status: 500, meaning: 'an unexpected server error' },
  // Ingest.
  MISSING_WRITE_KEY: {
    code: 'TALLY_ERR_MISSING_WRITE_KEY',
    status: 401,
    meaning: 'no write key (HTTP Basic user or writeKey in the body)',
  },
  INVALID_WRITE_KEY: {
    code: 'TALLY_ERR_INVALID_WRITE_KEY',
    status: 401,
    meaning: 'the write key is unknown',
  },
  WRONG_SITE: {
    code: 'TALLY_ERR_WRONG_SITE',
    status: 403,
    meaning: 'the write key or read token belongs to another site',
  },
  ORIGIN_NOT_ALLOWED: {
    code: 'TALLY_ERR_ORIGIN_NOT_ALLOWED',
    status: 403,
    meaning: "the browser's Origin is not one of the site's allowed origins",
  },
  RATE_LIMITED: {
    code: 'TALLY_ERR_RATE_LIMITED',
    status: 429,
    meaning: 'the site or client sends more events per second than allowed; retry after Retry-After',
  },
  SITES_UNAVAILABLE: {
    code: 'TALLY_ERR_SITES_UNAVAILABLE',
    status: 503,
    meaning: 'the write key or read token cannot be checked right now',
  },
  LOG_UNAVAILABLE: {
    code: 'TALLY_ERR_LOG_UNAVAILABLE',
    status: 503,
    meaning: 'the raw log did not acknowledge the events; nothing is accepted, retry',
  },
  NO_VALID_EVENT: {
    code: 'TALLY_ERR_NO_VALID_EVENT',
    status: 400,
    meaning: 'the batch is empty or every event in it was rejected (`rejected` lists why)',
  },
  TOO_MANY_EVENTS: {
    code: 'TALLY_ERR_TOO_MANY_EVENTS',
    status: 413,
    meaning: 'the batch has more events than TALLY_MAX_BATCH_EVENTS',
  },
  INVALID_EVENT: {
    code: 'TALLY_ERR_INVALID_EVENT',
    status: 400,
    meaning: 'the body or an event is not a valid event (not an object, bad type, bad field)',
  },
  MISSING_FIELD: {
    code: 'TALLY_ERR_MISSING_FIELD',
    status: 400,
    meaning: 'a field its event type requires is missing',
  },
  MISSING_IDENTITY: {
    code: 'TALLY_ERR_MISSING_IDENTITY',
    status: 400,
    meaning: 'an event has neither anonymousId nor userId',
  },
  NESTING_TOO_DEEP: {
    code: 'TALLY_ERR_NESTING_TOO_DEEP',
    status: 400,
    meaning: 'an event is nested deeper than allowed',
  },
  EVENT_TOO_LARGE: {
    code: 'TALLY_ERR_EVENT_TOO_LARGE',
    status: 413,
    meaning: 'one event is larger than TALLY_MAX_EVENT_BYTES',
  },
  INVALID_TIMESTAMP: {
    code: 'TALLY_ERR_INVALID_TIMESTAMP',
    status: 400,
    meaning: 'a timestamp is not a valid date',
  },
  TIMESTAMP_TOO_OLD: {
    code: 'TALLY_ERR_TIMESTAMP_TOO_OLD',
    status: 400,
    meaning:
      'an event is timed further in the past than TALLY_MAX_PAST_DAYS (TALLY_IMPORT_MAX_PAST_DAYS on import)',
  },
  // Query.
  BAD_PARAMETER: {
    code: 'TALLY_ERR_BAD_PARAMETER',
    status: 400,
    meaning: 'a query parameter is not valid (`where` names it)',
  },
  MISSING_PARAMETER: {
    code: 'TALLY_ERR_MISSING_PARAMETER',
    status: 400,
    meaning: 'a required query parameter is missing',
  },
  UNKNOWN_PARAMETER: {
    code: 'TALLY_ERR_UNKNOWN_PARAMETER',
    status: 400,
    meaning: 'a query parameter this endpoint does not know',
  },
  RANGE_TOO_LARGE: {
    code: 'TALLY_ERR_RANGE_TOO_LARGE',
    status: 400,
    meaning: 'the asked-for range or number of buckets is larger than allowed',
  },
  FILTER_UNSUPPORTED: {
    code: 'TALLY_ERR_FILTER_UNSUPPORTED',
    status: 400,
    meaning: 'a filter combination the stored aggregates cannot answer exactly',
  },
  BREAKDOWN_NOT_KEPT: {
    code: 'TALLY_ERR_BREAKDOWN_NOT_KEPT',
    status: 400,
    meaning: 'a breakdown or filter on a dimension this deployment does not aggregate (TALLY_BREAKDOWNS)',
  },
  BEYOND_RETENTION: {
    code: 'TALLY_ERR_BEYOND_RETENTION',
    status: 400,
    meaning: 'the range asks for data older than the aggregates are kept',
  },
  MISSING_READ_TOKEN: {
    code: 'TALLY_ERR_MISSING_READ_TOKEN',
    status: 401,
    meaning: 'no `Authorization: Bearer <read token>`',
  },
  INVALID_READ_TOKEN: {
    code: 'TALLY_ERR_INVALID_READ_TOKEN',
    status: 401,
    meaning: 'the read token is malformed, unknown or revoked',
  },
  CORRUPT_SEGMENT: {
    code: 'TALLY_ERR_CORRUPT_SEGMENT',
    status: 500,
    meaning: 'an archive segment cannot be read (`where` names the file)',
  },
  EXPORT_BUSY: {
    code: 'TALLY_ERR_EXPORT_BUSY',
    status: 503,
    meaning: 'too many raw exports run at once; retry',
  },
  NOT_IMPLEMENTED: {
    code: 'TALLY_ERR_NOT_IMPLEMENTED',
    status: 501,
    meaning: 'the query role has no archive to export from',
  },
  CANCELLED: {
    code: 'TALLY_ERR_CANCELLED',
    meaning: 'an archive read, export or rebuild was cancelled (client gone, shutdown)',
  },
  // Sites and tokens.
  SITE_NOT_FOUND: { code: 'TALLY_ERR_SITE_NOT_FOUND', status: 404, meaning: 'no site with this id' },
  SITE_EXISTS: { code: 'TALLY_ERR_SITE_EXISTS', status: 409, meaning: 'a site with this id already exists' },
  PROP_KEY_INVALID: {
    code: 'TALLY_ERR_PROP_KEY_INVALID',
    status: 400,
    meaning:
      'a custom property key is not 1–64 letters, digits, `_`, `-` or `.` starting with a letter or digit (tally sites props)',
  },
  PROP_KEYS_FULL: {
    code: 'TALLY_ERR_PROP_KEYS_FULL',
    status: 409,
    meaning: 'the site already declares the most custom property keys allowed (20; tally sites props)',
  },
  GOAL_INVALID: {
    code: 'TALLY_ERR_GOAL_INVALID',
    status: 400,
    meaning:
      'a goal is not an event name (1–120 characters, not starting with `Visit `) or a page path pattern (starting with `/`, at most 256 characters, `*` and `**` as wildcards) (tally sites goals)',
  },
  GOALS_FULL: {
    code: 'TALLY_ERR_GOALS_FULL',
    status: 409,
    meaning: 'the site already defines the most goals allowed (20; tally sites goals)',
  },
  DOMAIN_TAKEN: {
    code: 'TALLY_ERR_DOMAIN_TAKEN',
    status: 409,
    meaning: "the domain is another site's domain or alias (tally sites alias)",
  },
  BAD_TIMEZONE: {
    code: 'TALLY_ERR_BAD_TIMEZONE',
    status: 400,
    meaning: 'not an IANA time zone name this runtime knows (tally sites --timezone)',
  },
  READ_TOKEN_NOT_FOUND: {
    code: 'TALLY_ERR_READ_TOKEN_NOT_FOUND',
    status: 404,
    meaning: 'the site has no read token with this id',
  },
  SITE_CONFLICT: {
    code: 'TALLY_ERR_SITE_CONFLICT',
    meaning: 'moving to Kafka and Cassandra: Cassandra has sites with the same ids but other write keys',
  },
  ADMIN: {
    code: 'TALLY_ERR_ADMIN',
    meaning: 'the running embedded Tally could not be reached over its admin socket, or answered an error',
  },
  // Backing services, storage and the log.
  SERVICE_UNAVAILABLE: {
    code: 'TALLY_ERR_SERVICE_UNAVAILABLE',
    status: 503,
    meaning: 'Kafka or Cassandra could not be reached or refused the work; retry',
  },
  RETRIES_EXHAUSTED: {
    code: 'TALLY_ERR_RETRIES_EXHAUSTED',
    status: 503,
    meaning: 'an operation failed every retry (the status is the last failure’s when it had one)',
  },
  SHUTTING_DOWN: {
    code: 'TALLY_ERR_SHUTTING_DOWN',
    status: 503,
    meaning: 'the producer, log, consumer or scheduler is closing',
  },
  STORE_CONTENDED: {
    code: 'TALLY_ERR_STORE_CONTENDED',
    status: 503,
    meaning: 'too much contention on a batch-store write; retry',
  },
  EPOCH_CONTENDED: {
    code: 'TALLY_ERR_EPOCH_CONTENDED',
    meaning: 'a stream worker could not take a partition for too much contention; it retries',
  },
  UNKNOWN_TOPIC: { code: 'TALLY_ERR_UNKNOWN_TOPIC', meaning: 'the embedded log has no such topic' },
  ROLES_THREAD: {
    code: 'TALLY_ERR_ROLES_THREAD',
    meaning:
      'the thread of `tally all` (embedded) that runs the stream worker, the archiver and the rebuild scheduler failed to start, crashed or exited',
  },
  DATA_DIR_LOCKED: {
    code: 'TALLY_ERR_DATA_DIR_LOCKED',
    meaning: 'the data folder is used by another running Tally process',
  },
  DATA_DIR_UNUSABLE: {
    code: 'TALLY_ERR_DATA_DIR_UNUSABLE',
    meaning:
      'the data folder (TALLY_DATA_DIR) cannot be created or its lock file written (not a folder, read-only, no permission, disk full)',
  },
  DATA_DIR_LOCK: {
    code: 'TALLY_ERR_DATA_DIR_LOCK',
    meaning: "the data folder's lock file cannot be removed",
  },
  EMBEDDED_SCHEMA: {
    code: 'TALLY_ERR_EMBEDDED_SCHEMA',
    meaning: 'the embedded database has a schema this Tally cannot use (newer, or a migration failed)',
  },
  MIGRATION_NAME: {
    code: 'TALLY_ERR_MIGRATION_NAME',
    meaning: 'a Cassandra migration file is misnamed or its version is used twice',
  },
  NOT_MIGRATED: {
    code: 'TALLY_ERR_NOT_MIGRATED',
    meaning:
      'the Cassandra keyspace does not exist or was never migrated: run `tally migrate` (with the same environment) before the roles',
  },
  MIGRATION_CHANGED: {
    code: 'TALLY_ERR_MIGRATION_CHANGED',
    meaning: 'an applied Cassandra migration file was changed afterwards',
  },
  NOT_A_TEST_KEYSPACE: {
    code: 'TALLY_ERR_NOT_A_TEST_KEYSPACE',
    meaning: 'tests may drop only tally_test_* keyspaces',
  },
  // Raw-log records (dead-letter reasons).
  EMPTY_RECORD: { code: 'TALLY_ERR_EMPTY_RECORD', meaning: 'dead letter: a log record has no value' },
  SCHEMA_VERSION: {
    code: 'TALLY_ERR_SCHEMA_VERSION',
    meaning: 'dead letter: a log record has an unknown schema version',
  },
  UNDECODABLE: { code: 'TALLY_ERR_UNDECODABLE', meaning: 'dead letter: a log record is not JSON' },
  SCHEMA_INVALID: {
    code: 'TALLY_ERR_SCHEMA_INVALID',
    meaning: 'dead letter: a log record does not match the record schema',
  },
  FORMAT_VERSION: {
    code: 'TALLY_ERR_FORMAT_VERSION',
    meaning: 'dead letter: a log record has an unknown framing version (tally-format header)',
  },
  CORRUPT_FRAME: {
    code: 'TALLY_ERR_CORRUPT_FRAME',
    meaning: 'dead letter: a packed (format 2) log record is cut short or its framing is inconsistent',
  },
  // Batch layer.
  BAD_RANGE: {
    code: 'TALLY_ERR_BAD_RANGE',
    status: 400,
    meaning: 'a rebuild range is not two dates with from before to',
  },
  ARCHIVE_BEHIND: {
    code: 'TALLY_ERR_ARCHIVE_BEHIND',
    meaning: 'a rebuild waited for the archive to catch up and it did not',
  },
  LEASE_LOST: {
    code: 'TALLY_ERR_LEASE_LOST',
    meaning: 'a rebuild lost its lease on the range and stopped without writing',
  },
  RANGE_BUSY: { code: 'TALLY_ERR_RANGE_BUSY', status: 409, meaning: 'another job is rebuilding the range' },
  // Operation.
  CONFIG: {
    code: 'TALLY_ERR_CONFIG',
    meaning: 'a configuration value cannot be used; start-up stops (exit code 2)',
  },
  USAGE: { code: 'TALLY_ERR_USAGE', meaning: 'bad command-line usage (exit code 2)' },
  PORT_IN_USE: {
    code: 'TALLY_ERR_PORT_IN_USE',
    meaning: 'a port Tally or its local services would listen on is already in use',
  },
  JAVA: {
    code: 'TALLY_ERR_JAVA',
    meaning: '`tally services`: the configured java cannot be run or is the wrong version',
  },
  SERVICES_START: {
    code: 'TALLY_ERR_SERVICES_START',
    meaning: '`tally services`: Kafka or Cassandra did not start',
  },
  SERVICES_FETCH: {
    code: 'TALLY_ERR_SERVICES_FETCH',
    meaning: '`tally services`: Kafka or Cassandra could not be fetched',
  },
} as const satisfies Record<string, ErrorEntry>

export type ErrorName = keyof typeof ERRORS
export type ErrorCode = (typeof ERRORS)[ErrorName]['code']

/** Each code by name: `ERR.INVALID_WRITE_KEY` is `'TALLY_ERR_INVALID_WRITE_KEY'`. */
export const ERR = Object.fromEntries(Object.entries(ERRORS).map(([name, e]) => [name, e.code])) as {
  readonly [K in ErrorName]: (typeof ERRORS)[K]['code']
}

const STATUS_BY_CODE = new Map<string, number>(
  Object.values(ERRORS)
    .filter((e: ErrorEntry) => e.status !== undefined)
    .map((e: ErrorEntry) => [e.code, e.status as number]),
)

/** The HTTP status the catalogue declares for a code (undefined: never an HTTP answer, or unknown). */
export function statusOf(code: string): number | undefined {
  return STATUS_BY_CODE.get(code)
}

/** The README's "Errors" table (`npm run docs:config` writes it between its markers). */
export function errorTableMarkdown(): string {
  const rows = Object.values(ERRORS).map((e: ErrorEntry) => {
    const status = e.status === undefined ? '—' : String(e.status)
    return `| \`${e.code}\` | ${status} | ${e.meaning.replaceAll('|', '\\|')} |`
  })
  return ['| Code | HTTP status | Meaning |', '| --- | --- | --- |', ...rows].join('\n')
}
