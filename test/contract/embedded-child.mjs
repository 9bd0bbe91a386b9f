// A separate process on an embedded data folder, for the tests that need two processes or a
// SIGKILL. Runs the built code (dist/), so `npm run build` must have run.
//   node embedded-child.mjs open DIR          tries to open the folder; prints "opened" or the error
//   node embedded-child.mjs append DIR TOPIC  appends until killed; prints each acknowledged id
import { openEmbedded } from '../../dist/core/embedded/index.js'

const [mode, dataDir, topic] = process.argv.slice(2)

if (mode === 'open') {
  try {
    const backend = openEmbedded({ dataDir, hllPrecision: 14, purgeIntervalMs: 0 })
    process.stdout.write('opened\n')
    await backend.close()
  } catch (err) {
    process.stdout.write(`${JSON.stringify({ code: err.code, message: err.message })}\n`)
    process.exitCode = 3
  }
} else if (mode === 'append') {
  const backend = openEmbedded({
    dataDir,
    hllPrecision: 14,
    purgeIntervalMs: 0,
    topics: [{ topic, partitions: 3 }],
  })
  const writer = backend.log.writer()
  process.stdout.write('ready\n')
  let n = 0
  for (;;) {
    // Three appends in flight at once, like concurrent requests; an id is printed only once its
    // append resolved (stdout to a pipe is synchronous on Linux, so a printed id was acknowledged).
    await Promise.all(
      [0, 1, 2].map(async () => {
        const ids = Array.from({ length: 5 }, () => `m${n++}`)
        await writer.append(
          topic,
          ids.map((id) => ({
            key: `visitor-${id.length % 7}-${Number(id.slice(1)) % 11}`,
            value: Buffer.from(id),
            headers: { id },
          })),
        )
        process.stdout.write(`${ids.join(',')}\n`)
      }),
    )
  }
} else {
  process.stderr.write(`unknown mode ${mode}\n`)
  process.exitCode = 2
}
