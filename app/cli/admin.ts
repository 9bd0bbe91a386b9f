import type { Command } from 'commander'
import { backendOf } from '../../core/config.js'
import { migrate } from '../../core/migrate.js'
import { openEmbeddedBackend } from '../backend.js'
import type { ConfigLoader } from './config-loader.js'
import { announceBackend } from './run-role.js'

export function registerAdminCommands(program: Command, getConfig: ConfigLoader): void {
  program
    .command('migrate')
    .description(
      'apply the versioned CQL files in schemas/cql and create the Kafka topics (embedded backend: prepare TALLY_DATA_DIR); twice is a no-op',
    )
    .option('--json', 'print the result as JSON', false)
    .addHelpText(
      'after',
      `
Uses CASSANDRA_CONTACT_POINTS, CASSANDRA_KEYSPACE, CASSANDRA_REPLICATION and KAFKA_BROKERS,
KAFKA_PARTITIONS, KAFKA_REPLICATION_FACTOR, TALLY_TOPIC_RAW, TALLY_TOPIC_DEAD_LETTER.
The backend is chosen as for every command (TALLY_BACKEND, see tally --help): on the embedded
backend the data folder's schema is applied (as every command that opens it does).`,
    )
    .action(async (opts: { json: boolean }) => {
      const config = getConfig()
      announceBackend(config, 'migrate', 'on-terminal')
      if (backendOf(config) === 'embedded') {
        await openEmbeddedBackend(config).close()
        process.stdout.write(
          opts.json
            ? `${JSON.stringify({ backend: 'embedded', dataDir: config.dataDir }, null, 2)}\n`
            : `embedded data folder ${config.dataDir}: schema applied\n`,
        )
        return
      }
      const result = await migrate(config)
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
        return
      }
      const c = result.cassandra
      process.stdout.write(
        `cassandra keyspace ${c.keyspace}: ${c.keyspaceCreated ? 'created' : 'exists'}${c.replicationChanged ? ', replication changed (run nodetool repair)' : ''}\n`,
      )
      for (const m of c.applied)
        process.stdout.write(`  applied ${String(m.version).padStart(4, '0')}_${m.name}\n`)
      process.stdout.write(`  ${c.applied.length} applied, ${c.alreadyApplied} already applied\n`)
      if (c.checkpointsCopied > 0)
        process.stdout.write(
          `  ${c.checkpointsCopied} rows of stream_checkpoints copied to stream_group_checkpoints (newer rows there kept)\n`,
        )
      for (const t of result.topics) {
        const created = result.topicsCreated.includes(t.topic)
        process.stdout.write(
          `kafka topic ${t.topic}: ${created ? 'created' : 'exists'} (${t.partitions} partitions, replication ${t.replicationFactor})\n`,
        )
      }
    })
}
