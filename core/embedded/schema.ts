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
  // 2: the batch layer (schemas/cql/0003_batch.cql): the archiver's commits, the rebuilds' fencing
  // counter and leases, their runs and ranges. Final rows go to agg_totals / agg_dims (step 1) with
  // source_partition = -generation (committed in step 4's table) and the fencing token as `fence`.
  `
  -- One row per archived source partition (archive = "<consumer group>|<topic>"); a commit is an
  -- UPDATE conditional on (epoch, next_offset), like the lightweight transaction in Cassandra.
  CREATE TABLE archive_partitions (
    archive TEXT NOT NULL,
    partition INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    owner TEXT NOT NULL,
    next_offset INTEGER NOT NULL,
    watermark_ms INTEGER NOT NULL,
    -- JSON object: final path of each segment of the last committed flush → its staging path
    pending TEXT NOT NULL,
    committed_at_ms INTEGER NOT NULL,
    PRIMARY KEY (archive, partition)
  ) WITHOUT ROWID;

  -- The fencing counter of rebuilds: at least the wall clock in microseconds, and only grows.
  CREATE TABLE batch_fence (
    name TEXT PRIMARY KEY,
    fence_token INTEGER NOT NULL
  ) WITHOUT ROWID;

  -- Leases on rebuild ranges. A row whose expires_at_ms has passed is no lease (Cassandra's TTL).
  CREATE TABLE batch_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    fence_token INTEGER NOT NULL,
    acquired_at_ms INTEGER NOT NULL,
    renewed_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
  ) WITHOUT ROWID;

  -- Rebuild runs, read newest first; kept 90 days after their last write (the table TTL in Cassandra).
  CREATE TABLE batch_jobs (
    started_at_ms INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    site_id TEXT,
    range_from_ms INTEGER NOT NULL,
    range_to_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    holder TEXT NOT NULL,
    lease_name TEXT NOT NULL,
    fence_token INTEGER NOT NULL,
    segments_read INTEGER NOT NULL,
    events_read INTEGER NOT NULL,
    duplicates INTEGER NOT NULL,
    windows_written INTEGER NOT NULL,
    rows_written INTEGER NOT NULL,
    -- JSON array of paths
    corrupt_segments TEXT NOT NULL,
    error TEXT,
    finished_at_ms INTEGER,
    duration_ms INTEGER,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (started_at_ms, job_id)
  ) WITHOUT ROWID;

  -- Last successful rebuild of each range, with the fingerprint of the segments it read.
  CREATE TABLE batch_ranges (
    range_key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    job_id TEXT NOT NULL,
    finished_at_ms INTEGER NOT NULL
  ) WITHOUT ROWID;
  `,
  // 3: the final marks (schemas/cql/0004_final_marks.cql): a new random mark per site after every
  // write of final rows, read by the query role to know when its cached answers are out of date.
  `
  CREATE TABLE agg_final_marks (
    site_id TEXT PRIMARY KEY,
    mark TEXT NOT NULL,
    written_at_ms INTEGER NOT NULL
  ) WITHOUT ROWID;
  `,
  // 4: the committed generations of final rows (schemas/cql/0005_final_commits.cql, core/aggregate/
  // final.ts); `fence` is the rebuild's fencing token, an upsert applies only when it is not lower.
  `
  CREATE TABLE agg_final_commits (
    site_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    span_start INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    fence INTEGER NOT NULL,
    committed_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    PRIMARY KEY (site_id, scope, span_start)
  ) WITHOUT ROWID;
  `,
  // 5: read tokens one by one, to list and revoke them (schemas/cql/0007_site_tokens.cql). The
  // tokens that work are still those in sites.read_token_hashes; every one of them gets its row
  // here (id = first 12 hex digits of the hash, core/keys.ts readTokenId), created with its site.
  `
  CREATE TABLE site_tokens (
    site_id TEXT NOT NULL,
    token_id TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    -- first 8 characters of the token; NULL for tokens created before this table
    prefix TEXT,
    created_at_ms INTEGER NOT NULL,
    last_used_at_ms INTEGER,
    revoked_at_ms INTEGER,
    PRIMARY KEY (site_id, token_id)
  ) WITHOUT ROWID;

  INSERT OR IGNORE INTO site_tokens (site_id, token_id, token_hash, prefix, created_at_ms)
    SELECT s.site_id, substr(t.value, 1, 12), t.value, NULL, s.created_at_ms
    FROM sites AS s, json_each(s.read_token_hashes) AS t;
  `,
  // 6: rebuild completeness (schemas/cql/0008_rebuild_completeness.cql): a commit made while the
  // archive did not cover its span is provisional (read, not final); a run's warnings (JSON array).
  `
  ALTER TABLE agg_final_commits ADD COLUMN provisional INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE batch_jobs ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]';
  `,
  // 7: visits (schemas/cql/0009_visits.cql, core/aggregate/visits.ts): counts and sums of the visits
  // that started in a window; NULL in rows written without visit data (before this step).
  `
  ALTER TABLE agg_totals ADD COLUMN visits INTEGER;
  ALTER TABLE agg_totals ADD COLUMN bounces INTEGER;
  ALTER TABLE agg_totals ADD COLUMN visit_duration_ms INTEGER;
  ALTER TABLE agg_totals ADD COLUMN visit_pageviews INTEGER;
  ALTER TABLE agg_dims ADD COLUMN visits INTEGER;
  ALTER TABLE agg_dims ADD COLUMN bounces INTEGER;
  ALTER TABLE agg_dims ADD COLUMN visit_duration_ms INTEGER;
  ALTER TABLE agg_dims ADD COLUMN visit_pageviews INTEGER;
  `,
  // 8: domain → site for Plausible's event API (schemas/cql/0010_site_domains.cql): each site's own domain (the first
  // created keeps one two sites share) and its aliases; the daily salts of cookieless visitor ids.
  `
  CREATE TABLE site_domains (
    domain TEXT PRIMARY KEY,
    site_id TEXT NOT NULL,
    -- 0: the site's own domain; 1: an alias
    alias INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX site_domains_by_site ON site_domains (site_id);

  INSERT OR IGNORE INTO site_domains (domain, site_id, alias)
    SELECT domain, site_id, 0 FROM sites ORDER BY created_at_ms, site_id;

  CREATE TABLE visitor_salts (
    day TEXT PRIMARY KEY,
    salt BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
  ) WITHOUT ROWID;
  `,
  // 9: the stream's open visits per source partition (schemas/cql/0011_stream_visit_state.cql): the
  // serialized VisitState and the offset it covers, one row replaced whole, fenced like checkpoints.
  `
  CREATE TABLE stream_visit_state (
    consumer_group TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    state BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    fence INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition)
  ) WITHOUT ROWID;
  `,
  // 10: custom properties (schemas/cql/0012_site_props_goals.cql): the event property keys a site
  // declares, each a dimension `prop:KEY`.
  `
  CREATE TABLE site_props (
    site_id TEXT NOT NULL,
    key TEXT NOT NULL,
    added_at_ms INTEGER NOT NULL,
    PRIMARY KEY (site_id, key)
  ) WITHOUT ROWID;
  `,
  // 11: a site's time zone (schemas/cql/0013_site_timezone.cql),
  // the IANA name its days follow (query/zone.ts); NULL = UTC.
  `
  ALTER TABLE sites ADD COLUMN timezone TEXT;
  `,
  // 12: goals (schemas/cql/0014_site_goals.cql): a site's event and page goals, named by their
  // definition (core/aggregate/goals.ts), counted in the rows of the dimension `goal`.
  `
  CREATE TABLE site_goals (
    site_id TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    added_at_ms INTEGER NOT NULL,
    PRIMARY KEY (site_id, name)
  ) WITHOUT ROWID;
  `,
]
