import { describe, expect, it } from 'vitest'
import {
  assertTestKeyspace,
  loadMigrations,
  replicationCql,
  splitStatements,
} from '../../core/cassandra/migrate.js'

describe('CQL migrations', () => {
  it('splits statements and drops comments', () => {
    const s = splitStatements(
      '-- a table\nCREATE TABLE a (x int PRIMARY KEY);\n\nCREATE TABLE b (y int PRIMARY KEY); -- trailing\n',
    )
    expect(s).toEqual(['CREATE TABLE a (x int PRIMARY KEY)', 'CREATE TABLE b (y int PRIMARY KEY)'])
  })

  it('loads the versioned files in order with checksums', async () => {
    const all = await loadMigrations()
    expect(all.length).toBeGreaterThan(0)
    expect(all.map((m) => m.version)).toEqual([...all.map((m) => m.version)].sort((a, b) => a - b))
    for (const m of all) {
      expect(m.checksum).toMatch(/^[0-9a-f]{16}$/)
      expect(m.statements.length).toBeGreaterThan(0)
      // Files name no keyspace: the configured one applies.
      for (const st of m.statements) expect(st).not.toMatch(/\btally\./)
    }
  })

  it('renders replication settings', () => {
    expect(replicationCql({ class: 'NetworkTopologyStrategy', factors: { dc1: 3 } })).toBe(
      "{'class': 'NetworkTopologyStrategy', 'dc1': 3}",
    )
  })

  it('refuses to drop a keyspace that is not a test keyspace', () => {
    expect(() => assertTestKeyspace('tally')).toThrow(/refusing to drop keyspace tally/)
    expect(() => assertTestKeyspace('tally_test_abc')).not.toThrow()
  })
})
