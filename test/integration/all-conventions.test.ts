import { type ChildProcess, spawn } from 'node:child_process'
import { afterAll, describe, expect, it } from 'vitest'
import { tempDataDir } from '../contract/backends.js'
import { eventually } from '../helpers/context.js'

/**
 * `tally all` as users run it: logs on stderr (JSON when not a terminal), only the banner on
 * stdout, and one metrics registry for the process behind each of its /metrics endpoints.
 */

const data = tempDataDir('tally-all-conv-')
let child: ChildProcess | undefined
afterAll(async () => {
  if (child && child.exitCode === null) {
    const exited = new Promise((resolve) => child?.once('exit', resolve))
    child.kill('SIGTERM')
    await exited
  }
  data.remove()
})

describe('tally all', () => {
  it('logs JSON lines on stderr, prints only its banner on stdout, and serves one registry on every /metrics', async () => {
    child = spawn(
      process.execPath,
      ['bin/tally.js', 'all', '--quickstart', '--query-port', '0', '--stream-port', '0', '--batch-port', '0'],
      {
        env: {
          PATH: process.env.PATH ?? '',
          HOME: process.env.HOME ?? '',
          LOG_LEVEL: 'info',
          PORT: '0',
          TALLY_DATA_DIR: data.dir,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    )
    let stdout = ''
    let stderr = ''
    child.stdout?.on('data', (d: Buffer) => {
      stdout += d.toString()
    })
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString()
    })
    await eventually(
      async () => (/read token\s+rt_\S+/.test(stdout) ? true : undefined),
      60_000,
      'the banner',
    )
    const urls = [...stderr.matchAll(/"url":"(http:[^"]+)"/g)].map((m) => m[1]!)
    expect(urls.length).toBeGreaterThanOrEqual(4)
    // stdout: the banner, no log line; stderr: log lines, each a JSON object.
    expect(stdout).not.toMatch(/"level":/)
    const logLines = stderr.split('\n').filter((l) => l !== '')
    expect(logLines.length).toBeGreaterThan(0)
    for (const line of logLines) expect(JSON.parse(line)).toHaveProperty('level')
    expect(logLines.some((l) => (JSON.parse(l) as { msg?: string }).msg === 'query listening')).toBe(true)

    const [ingest, ...others] = urls
    await fetch(`${ingest}/healthz`)
    for (const url of [ingest!, ...others]) {
      const text = await (await fetch(`${url}/metrics`)).text()
      expect(text.match(/^# TYPE process_cpu_seconds_total /gm)).toHaveLength(1)
      expect(text).toMatch(/^nodejs_heap_size_used_bytes /m)
      expect(text).not.toMatch(/^tally_\w+_process_/m)
      // The same registry: the ingest server's request shows on every role's port.
      expect(text).toContain(
        'http_request_duration_seconds_count{method="GET",route="/healthz",status_code="200"}',
      )
      expect(text).toContain('tally_ingest_requests_total')
      expect(text).toContain('tally_stream_records_total')
      // Embedded backend: no Kafka producer, no Kafka metrics.
      expect(text).not.toContain('tally_ingest_kafka_')
    }
  })
})
