#!/usr/bin/env node
// Entry point of the `tally` command: runs the compiled CLI (built by `npm ci` / `npm run build`).
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const main = new URL('../dist/app/cli/main.js', import.meta.url)
if (!existsSync(fileURLToPath(main))) {
  process.stderr.write('tally: not built yet; run `npm run build` (npm ci does it for you)\n')
  process.exit(1)
}
await import(main.href)
