import type { Command } from 'commander'
import type { ConfigLoader } from './main.js'

export function registerRoleCommands(_program: Command, _getConfig: ConfigLoader): void {}
