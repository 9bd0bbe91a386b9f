import type { Command } from 'commander'
import { InvalidArgumentError } from 'commander'
import { createLogger } from '../../core/log.js'
import { openEmbeddedBackend } from '../backend.js'
import { MOVE_GROUP, type MoveProgress, moveToKafka } from '../move-to-kafka.js'
import type { ConfigLoader } from './config-loader.js'

function positive(value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > 100_000)
    throw new InvalidArgumentError('expected an integer from 1 to 100000')
  return Number(value)
}

export function registerEmbeddedCommands(program: Command, getConfig: ConfigLoader): void {
  const embedded = program
    .command('embedded')
    .description('the embedded backend’s data folder (TALLY_DATA_DIR)')
  embedded
    .command('move-to-kafka')
    .description(
      'copy this data folder’s sites (with their keys) and raw log into Kafka and Cassandra, so a growing site can switch backends',
    )
    .option('--batch <records>', 'records per acknowledged Kafka write', positive, 500)
    .addHelpText(
      'after',
      `
Reads TALLY_DATA_DIR (stop \`tally all\` first: the folder is taken for the move) and writes to
KAFKA_BROKERS and CASSANDRA_CONTACT_POINTS (unset: the local servers of \`tally services up\`),
after applying the schema there (\`tally migrate\`). Sites keep their ids, write keys and read
tokens. The raw and dead-letter topics are copied partition by partition, keys and order kept.
Resumable: the position is remembered in the data folder (group ${MOVE_GROUP}); a rerun goes on
from there, and records copied twice by an interrupted run are counted once (same messageIds).
Aggregates are recomputed by the stream workers from the moved log; then a \`tally rebuild\` over
the moved range makes every window final. Afterwards run the roles with KAFKA_BROKERS and
CASSANDRA_CONTACT_POINTS set (or TALLY_BACKEND=kafka-cassandra); the data folder stays as it was.`,
    )
    .action(async (opts: { batch: number }) => {
      const config = getConfig()
      const logger = createLogger(config.logLevel === 'info' ? 'warn' : config.logLevel, { role: 'move' })
      const backend = openEmbeddedBackend(config, logger)
      const say = (line: string) => process.stderr.write(`${line}\n`)
      say(
        `moving ${config.dataDir} into Kafka ${config.kafka.brokers.join(',')} and Cassandra ${config.cassandra.contactPoints.join(',')} (keyspace ${config.cassandra.keyspace})`,
      )
      let last = 0
      const onProgress = (p: MoveProgress) => {
        const now = Date.now()
        if (p.copied < p.total && now - last < 1000) return
        last = now
        say(`  ${p.topic} partition ${p.partition}: ${p.copied}/${p.total} records`)
      }
      try {
        const report = await moveToKafka(config, backend, { batchRecords: opts.batch, onProgress, logger })
        const records = Object.entries(report.records)
          .map(([topic, n]) => `${n} records of ${topic}`)
          .join(', ')
        process.stdout.write(
          [
            `moved: sites created ${report.sites.created.length} (${report.sites.created.join(', ') || '-'}), already there ${report.sites.unchanged.length}; ${records || 'no records'} copied by this run.`,
            report.rawTimeRange
              ? `The moved raw events were received from ${new Date(report.rawTimeRange.fromMs).toISOString()} to ${new Date(report.rawTimeRange.toMs).toISOString()}.`
              : '',
            'Next: start the roles on Kafka and Cassandra (KAFKA_BROKERS, CASSANDRA_CONTACT_POINTS, or TALLY_BACKEND=kafka-cassandra);',
            'once `tally archive` has caught up, `tally rebuild --from <first day> --to <now>` makes every moved window final.',
            '',
          ]
            .filter((l) => l !== '')
            .join('\n'),
        )
      } finally {
        await backend.close()
      }
    })
}
