import type { Client } from 'cassandra-driver'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CassandraAggregateReader } from '../../core/cassandra/aggregate-reader.js'
import { createCassandraClient } from '../../core/cassandra/client.js'
import { loadMigrations, migrateCassandra } from '../../core/cassandra/migrate.js'
import { CassandraStreamStore, checkpointInsert, fencedTimestamp } from '../../core/cassandra/stream-store.js'
import type { PartitionRef, StreamCheckpoint } from '../../core/ports/aggregate-store.js'
import { cleanup, testConfig, uniqueName } from '../helpers/context.js'

// Upgrade from stream_checkpoints (one Cassandra partition per source partition, 0002) to
// stream_group_checkpoints (one per group and topic, 0006): migrate copies the old rows at their
// own write timestamps, and a worker that finds no row in the new table reads the old one.

const config = testConfig()
let client: Client
let store: CassandraStreamStore
let reader: CassandraAggregateReader

/** A checkpoint as a worker before the upgrade wrote it: old table, fenced write timestamp. */
async function writeOldCheckpoint(ref: PartitionRef, cp: StreamCheckpoint): Promise<void> {
  const [query, params] = checkpointInsert('stream_checkpoints', ref, cp)
  await client.execute(query, params, { prepare: true })
}

/** The new table's row of a partition with its write timestamp, read directly. */
async function newRow(ref: PartitionRef): Promise<{ cp: StreamCheckpoint; written: string } | undefined> {
  const rs = await client.execute(
    'SELECT next_offset, watermark_ms, epoch, WRITETIME(next_offset) AS written FROM stream_group_checkpoints WHERE consumer_group = ? AND topic = ? AND partition = ?',
    [ref.group, ref.topic, ref.partition],
    { prepare: true },
  )
  const row = rs.first()
  if (!row) return undefined
  return {
    cp: {
      nextOffset: Number(row.get('next_offset')),
      watermarkMs: Number(row.get('watermark_ms')),
      epoch: Number(row.get('epoch')),
    },
    written: String(row.get('written')),
  }
}

beforeAll(async () => {
  // The keyspace as it was before 0006: checkpoints only in stream_checkpoints.
  const before = (await loadMigrations()).filter((m) => m.name !== 'stream_group_checkpoints')
  const first = await migrateCassandra(config.cassandra, before)
  expect(first.checkpointsCopied).toBe(0)
  client = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  await client.connect()
  store = new CassandraStreamStore(client, config.stream.ttlSeconds)
  reader = new CassandraAggregateReader(client, config.stream.hllPrecision)
})

afterAll(async () => {
  await client?.shutdown()
  await cleanup(config)
})

describe('stream checkpoints: upgrade to one partition per group', () => {
  const group = uniqueName('group')
  const topic = uniqueName('topic')
  const ref = (partition: number, g = group): PartitionRef => ({ group: g, topic, partition })

  it('migrate copies every old checkpoint at its write timestamp; a newer row in the new table wins', async () => {
    const other = uniqueName('other')
    await writeOldCheckpoint(ref(0), { nextOffset: 100, watermarkMs: 1000, epoch: 2 })
    await writeOldCheckpoint(ref(1), { nextOffset: 500, watermarkMs: 5000, epoch: 2 })
    await writeOldCheckpoint(ref(2), { nextOffset: 9, watermarkMs: 900, epoch: 2 })
    await writeOldCheckpoint(ref(0, other), { nextOffset: 3, watermarkMs: 30, epoch: 1 })

    // Applies 0006 and copies the four rows.
    const upgrade = await migrateCassandra(config.cassandra)
    expect(upgrade.applied.map((m) => m.name)).toEqual(['stream_group_checkpoints'])
    expect(upgrade.checkpointsCopied).toBe(4)
    expect(await newRow(ref(0))).toEqual({
      cp: { nextOffset: 100, watermarkMs: 1000, epoch: 2 },
      written: fencedTimestamp(2, 100).toString(),
    })
    expect((await newRow(ref(0, other)))?.cp).toEqual({ nextOffset: 3, watermarkMs: 30, epoch: 1 })
    expect((await reader.streamProgress(group, topic, 3)).map((p) => [p.partition, p.nextOffset])).toEqual([
      [0, 100],
      [1, 500],
      [2, 9],
    ])

    // A new worker takes partition 1 (epoch 3) and re-fences at a lower offset than the old row:
    // its write timestamp is still the later one. Partition 2 meanwhile moved on under a worker of
    // the previous version (epoch 4), which writes the old table only.
    await store.writeCheckpoint(ref(1), { nextOffset: 50, watermarkMs: 5000, epoch: 3 })
    await store.writeCheckpoint(ref(2), { nextOffset: 2 ** 30, watermarkMs: 950, epoch: 3 })
    await writeOldCheckpoint(ref(2), { nextOffset: 12, watermarkMs: 1200, epoch: 4 })

    const again = await migrateCassandra(config.cassandra)
    expect(again.applied).toEqual([])
    expect(again.checkpointsCopied).toBe(4)
    // The newer checkpoint of partition 1 is not replaced by the copy of the older one...
    expect(await newRow(ref(1))).toEqual({
      cp: { nextOffset: 50, watermarkMs: 5000, epoch: 3 },
      written: fencedTimestamp(3, 50).toString(),
    })
    // ...while the later epoch of partition 2, written to the old table, replaces the new row.
    expect(await newRow(ref(2))).toEqual({
      cp: { nextOffset: 12, watermarkMs: 1200, epoch: 4 },
      written: fencedTimestamp(4, 12).toString(),
    })
    expect(await store.readCheckpoint(ref(0))).toEqual({ nextOffset: 100, watermarkMs: 1000, epoch: 2 })
    expect(await store.readCheckpoint(ref(1))).toEqual({ nextOffset: 50, watermarkMs: 5000, epoch: 3 })
    expect(await store.readCheckpoint(ref(2))).toEqual({ nextOffset: 12, watermarkMs: 1200, epoch: 4 })

    // Copying again changes nothing; a stale worker (epoch 3) still loses to epoch 4.
    await migrateCassandra(config.cassandra)
    await store.writeCheckpoint(ref(2), { nextOffset: 2 ** 31, watermarkMs: 9999, epoch: 3 })
    expect(await store.readCheckpoint(ref(2))).toEqual({ nextOffset: 12, watermarkMs: 1200, epoch: 4 })
    expect(await store.readCheckpoint(ref(1))).toEqual({ nextOffset: 50, watermarkMs: 5000, epoch: 3 })
  })

  it('readCheckpoint falls back to the old table while the new one has no row for the partition', async () => {
    // Written by a worker of the previous version after the last migrate: not copied yet.
    const r = ref(7, uniqueName('late'))
    expect(await store.readCheckpoint(r)).toBeUndefined()
    await writeOldCheckpoint(r, { nextOffset: 70, watermarkMs: 7000, epoch: 5 })
    expect(await newRow(r)).toBeUndefined()
    expect(await store.readCheckpoint(r)).toEqual({ nextOffset: 70, watermarkMs: 7000, epoch: 5 })

    // The new owner re-fences under its epoch: from then on the new table answers.
    await store.writeCheckpoint(r, { nextOffset: 70, watermarkMs: 7000, epoch: 6 })
    expect(await store.readCheckpoint(r)).toEqual({ nextOffset: 70, watermarkMs: 7000, epoch: 6 })
    await store.writeCheckpoint(r, { nextOffset: 75, watermarkMs: 7500, epoch: 6 })
    expect(await store.readCheckpoint(r)).toEqual({ nextOffset: 75, watermarkMs: 7500, epoch: 6 })
    // The old table is not written any more.
    const old = await client.execute(
      'SELECT epoch FROM stream_checkpoints WHERE consumer_group = ? AND topic = ? AND partition = ?',
      [r.group, r.topic, r.partition],
      { prepare: true },
    )
    expect(Number(old.first()?.get('epoch'))).toBe(5)
  })
})
