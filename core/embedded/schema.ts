/**
 * Schemas of the embedded files, as ordered migration steps (append-only: a released step is never
 * edited; a change is a new step). Version n of a file = the first n steps applied.
 */

/** `log.db`: the raw log. One row per record, addressed like Kafka by (topic, partition, offset). */
export const LOG_MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE topics (
    topic_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL CHECK (partitions > 0),
    created_at_ms INTEGER NOT NULL
  );
  -- Next offset of each partition, written in the same transaction as the records: offsets never
  -- go back, even once old records are deleted.
  CREATE TABLE partition_ends (
    topic_id INTEGER NOT NULL REFERENCES topics (topic_id),
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition)
  ) WITHOUT ROWID;
  CREATE TABLE records (
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    key TEXT,
    value BLOB,
    -- JSON object of string headers
    headers TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition, offset)
  ) WITHOUT ROWID;
  -- The log's own record of consumer progress (lag tools); consumers resume from it.
  CREATE TABLE group_offsets (
    group_id TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    committed_at_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic_id, partition)
  ) WITHOUT ROWID;
  `,
]

/**
 * `store.db`: sites, aggregates and stream state, the same tables as the Cassandra keyspace
 * (schemas/cql). Where Cassandra fences a write with its write timestamp (`(epoch << 40) + offset`
 * for the stream, a token for batch rebuilds), the same 64-bit value is stored in `fence`, and an
 * upsert replaces a row only when its fence is not lower: a write with a lower fence never
 * overwrites one with a higher fence. TTLs become `expires_at_ms` (NULL: forever); reads skip
 * expired rows, a purge deletes them.
 */
export const STORE_MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE sites (
    site_id TEXT PRIMARY KEY,
    domain TEXT NOT NULL,
    -- JSON array, sorted
    origins TEXT NOT NULL,
    write_key TEXT NOT NULL UNIQUE,
    -- JSON array of SHA-256 hex, sorted
    read_token_hashes TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
  ) WITHOUT ROWID;

  CREATE TABLE agg_totals (
    site_id TEXT NOT NULL,
    granularity TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    source_partition INTEGER NOT NULL,
    events INTEGER NOT NULL,
    pageviews INTEGER NOT NULL,
    bot_events INTEGER NOT NULL,
    visitors BLOB NOT NULL,
    through_offset INTEGER NOT NULL,
    fence INTEGER NOT NULL,
    expires_at_ms INTEGER,
    PRIMARY KEY (site_id, granularity, window_start, source_partition)
  ) WITHOUT ROWID;

  CREATE TABLE agg_dims (
    site_id TEXT NOT NULL,
    granularity TEXT NOT NULL,
    dimension TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    value TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    events INTEGER NOT NULL,
    pageviews INTEGER NOT NULL,
    bot_events INTEGER NOT NULL,
    visitors BLOB NOT NULL,
    through_offset INTEGER NOT NULL,
    fence INTEGER NOT NULL,
    expires_at_ms INTEGER,
    PRIMARY KEY (site_id, granularity, dimension, window_start, value, source_partition)
  ) WITHOUT ROWID;

  CREATE TABLE stream_epochs (
    consumer_group TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    owner TEXT NOT NULL,
    acquired_at_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition)
  ) WITHOUT ROWID;

  CREATE TABLE stream_checkpoints (
    consumer_group TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    watermark_ms INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    fence INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition)
  ) WITHOUT ROWID;

  CREATE TABLE stream_dedup (
    consumer_group TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    first_offset INTEGER NOT NULL,
    max_received_ms INTEGER NOT NULL,
    hashes BLOB NOT NULL,
    fence INTEGER NOT NULL,
    written_at_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition, last_offset)
  ) WITHOUT ROWID;
  `,
]
