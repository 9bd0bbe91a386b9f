import { Command, CommanderError } from 'commander'
import { CONFIG_VARIABLES, loadConfig, type TallyConfig } from '../../core/config.js'
import { ERR } from '../../core/error-codes.js'
import { errorMessage, TallyError } from '../../core/errors.js'
import { registerAdminCommands } from './admin.js'
import { registerBatchCommands } from './batch.js'
import type { ConfigLoader } from './config-loader.js'
import { registerEmbeddedCommands } from './embedded.js'
import { registerRoleCommands } from './roles.js'
import { registerServicesCommands } from './services.js'
import { registerSitesCommands } from './sites.js'

function buildProgram(): Command {
  const program = new Command('tally')
  program
    .description('Tally: analytics event ingestion with exact stream and batch aggregates')
    .version(process.env.npm_package_version ?? '0.1.0')
    .addHelpText(
      'after',
      `\nConfiguration (environment variables):\n${CONFIG_VARIABLES.map(([n, m]) => `  ${n.padEnd(26)} ${m}`).join('\n')}`,
    )
  let config: TallyConfig | undefined
  const getConfig: ConfigLoader = () => {
    config ??= loadConfig()
    return config
  }
  registerRoleCommands(program, getConfig)
  registerServicesCommands(program, getConfig)
  registerAdminCommands(program, getConfig)
  registerSitesCommands(program, getConfig)
  registerBatchCommands(program, getConfig)
  registerEmbeddedCommands(program, getConfig)
  // Every subcommand reports bad usage with exit code 2 and one line.
  const exitOverride = (cmd: Command) => {
    cmd.exitOverride()
    for (const sub of cmd.commands) exitOverride(sub)
  }
  exitOverride(program)
  return program
}

export async function main(argv: readonly string[]): Promise<number> {
  const program = buildProgram()
  try {
    await program.parseAsync([...argv], { from: 'user' })
    return process.exitCode === undefined ? 0 : Number(process.exitCode)
  } catch (err) {
    if (err instanceof CommanderError) {
      if (
        err.code === 'commander.helpDisplayed' ||
        err.code === 'commander.version' ||
        err.code === 'commander.help'
      )
        return 0
      return 2
    }
    if (err instanceof TallyError) {
      process.stderr.write(`tally: ${err.message} [${err.code}]\n`)
      return err.code === ERR.USAGE || err.code === ERR.CONFIG ? 2 : 1
    }
    process.stderr.write(`tally: ${errorMessage(err)}\n`)
    if (err instanceof Error && err.stack && process.env.TALLY_DEBUG) process.stderr.write(`${err.stack}\n`)
    return 1
  }
}

// Roles resolve only after their ordered shutdown, so exiting here cuts nothing short; it ends
// timers that client libraries leave behind.
process.exit(await main(process.argv.slice(2)))
