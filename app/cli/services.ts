import type { Command } from 'commander'
import { UsageError } from '../../core/errors.js'
import { SERVICE_NAMES, type ServiceName, ServicesManager } from '../services/manager.js'
import type { ConfigLoader } from './config-loader.js'

function names(args: readonly string[]): ServiceName[] {
  if (args.length === 0) return [...SERVICE_NAMES]
  for (const a of args) {
    if (!(SERVICE_NAMES as readonly string[]).includes(a)) {
      throw new UsageError(`unknown service "${a}": expected ${SERVICE_NAMES.join(' or ')}`)
    }
  }
  return args as ServiceName[]
}

export function registerServicesCommands(program: Command, getConfig: ConfigLoader): void {
  const services = program
    .command('services')
    .description(
      'run a local Apache Kafka (KRaft) and Apache Cassandra 5.0 for development and tests, without Docker',
    )
    .addHelpText(
      'after',
      `
The servers are fetched once from Maven Central with Maven into TALLY_SERVICES_CACHE
(default ~/.cache/tally/services) and run on 127.0.0.1 with data, logs and PID files in
TALLY_SERVICES_RUN_DIR (default $TMPDIR/tally-services). Needs Maven and a JDK 17.`,
    )

  services
    .command('up')
    .description(
      'fetch (first time only), start and wait until each server answers; harmless when already up',
    )
    .argument('[service...]', 'kafka and/or cassandra (default both)')
    .action(async (args: string[]) => {
      const manager = new ServicesManager(getConfig().services, (line) => process.stdout.write(`${line}\n`))
      const list = await manager.up(names(args))
      for (const s of list)
        process.stdout.write(`${s.name}\tup\t${s.version}\t${s.address}\tpid ${s.pid}\tlog ${s.log}\n`)
    })

  services
    .command('down')
    .description('stop the servers that `services up` started (by PID); other processes are never touched')
    .argument('[service...]', 'kafka and/or cassandra (default both)')
    .option('--purge', 'also delete their data folders', false)
    .action(async (args: string[], opts: { purge: boolean }) => {
      const manager = new ServicesManager(getConfig().services, (line) => process.stdout.write(`${line}\n`))
      await manager.down(names(args), { purge: opts.purge })
    })

  services
    .command('status')
    .description(
      'show whether each server is up, its version, address, PID and log; exit 1 unless all are up',
    )
    .option('--json', 'print JSON', false)
    .action(async (opts: { json: boolean }) => {
      const manager = new ServicesManager(getConfig().services)
      const list = await manager.status()
      if (opts.json) process.stdout.write(`${JSON.stringify(list, null, 2)}\n`)
      else {
        for (const s of list) {
          process.stdout.write(
            `${s.name}\t${s.state}\t${s.version ?? '-'}\t${s.address}\t${s.pid ? `pid ${s.pid}` : '-'}\tlog ${s.log}\n`,
          )
        }
      }
      if (list.some((s) => s.state !== 'up')) process.exitCode = 1
    })
}
