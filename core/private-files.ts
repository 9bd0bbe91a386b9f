import { chmodSync, mkdirSync } from 'node:fs'
import { chmod, mkdir } from 'node:fs/promises'

/**
 * Tally's own data (embedded log and store, archive segments, keys) is for the owner only. New files
 * are created with these modes (the umask can only narrow them); folders are also chmod-ed after
 * mkdir, because mkdir's mode is ignored for a folder that already exists (one created by an older
 * version, or before the umask was tightened).
 */
export const PRIVATE_FILE_MODE = 0o600
export const PRIVATE_DIR_MODE = 0o700

/** Creates `dir` (and missing parents, all owner-only) and makes `dir` itself owner-only. */
export function makePrivateDirSync(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE })
  chmodSync(dir, PRIVATE_DIR_MODE)
}

/** Async `makePrivateDirSync`. */
export async function makePrivateDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: PRIVATE_DIR_MODE })
  await chmod(dir, PRIVATE_DIR_MODE)
}

/** Makes an existing file owner-only; a missing one is fine (nothing to protect). */
export function makePrivateFileSync(path: string): void {
  try {
    chmodSync(path, PRIVATE_FILE_MODE)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
}
