import type { TallyConfig } from '../../core/config.js'

/**
 * Loads the configuration lazily, so `--help` works even when the environment is wrong. Its own
 * module so that the commands and main.ts, which registers them, do not import each other.
 */
export type ConfigLoader = () => TallyConfig
