import { describe, expect, it } from 'vitest'
import { announceBackend } from '../../app/cli/run-role.js'
import { loadConfig } from '../../core/config.js'

function stderr(isTTY: boolean) {
  const lines: string[] = []
  return { lines, isTTY, write: (line: string) => lines.push(line) > 0 }
}

describe('the backend line of every command', () => {
  it('names the backend the configuration picks, with where it is', () => {
    const embedded = stderr(false)
    announceBackend(loadConfig({ TALLY_DATA_DIR: '/srv/tally' }), 'all', 'always', embedded)
    expect(embedded.lines).toEqual([
      'tally all: backend: embedded (TALLY_DATA_DIR=/srv/tally; TALLY_BACKEND=auto)\n',
    ])
    const kafka = stderr(false)
    announceBackend(loadConfig({ KAFKA_BROKERS: 'k1:9092' }), 'ingest', 'always', kafka)
    expect(kafka.lines[0]).toMatch(/^tally ingest: backend: kafka-cassandra \(KAFKA_BROKERS=k1:9092, /)
  })

  it('a long-running command with its logger says it as a log line, so stderr holds log lines only', () => {
    const logged: Array<[Record<string, unknown>, string]> = []
    const logger = { info: (o: Record<string, unknown>, msg: string) => void logged.push([o, msg]) }
    const piped = stderr(false)
    announceBackend(loadConfig({ TALLY_DATA_DIR: '/srv/tally' }), 'all', 'always', piped, logger as never)
    expect(piped.lines).toEqual([])
    expect(logged).toEqual([
      [
        { backend: 'embedded' },
        'tally all: backend: embedded (TALLY_DATA_DIR=/srv/tally; TALLY_BACKEND=auto)',
      ],
    ])
  })

  it('one-shot commands say it on a terminal only, so scripts see an empty stderr on success', () => {
    const config = loadConfig({ TALLY_DATA_DIR: '/srv/tally' })
    const piped = stderr(false)
    announceBackend(config, 'sites', 'on-terminal', piped)
    expect(piped.lines).toEqual([])
    const terminal = stderr(true)
    announceBackend(config, 'sites', 'on-terminal', terminal)
    expect(terminal.lines).toHaveLength(1)
  })
})
