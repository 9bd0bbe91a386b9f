import { describe, expect, it } from 'vitest'
import { progressLine } from '../../batch/progress.js'
import { alignRange, rangeName } from '../../batch/rebuild.js'
import { defaultJobs, validateJobs } from '../../batch/scheduler.js'

const at = (iso: string) => Date.parse(iso)

describe('batch scheduling and ranges', () => {
  it('hourly covers the last closed hours, nightly the previous UTC day', () => {
    const [hourly, nightly] = defaultJobs({ hourlyHours: 3 })
    expect(hourly?.cron).toBe('5 * * * *')
    expect(nightly?.cron).toBe('30 0 * * *')
    const now = at('2024-05-02T10:05:30Z')
    expect(hourly!.range(now)).toEqual({
      fromMs: at('2024-05-02T07:00:00Z'),
      toMs: at('2024-05-02T10:00:00Z'),
    })
    expect(nightly!.range(now)).toEqual({
      fromMs: at('2024-05-01T00:00:00Z'),
      toMs: at('2024-05-02T00:00:00Z'),
    })
    expect(defaultJobs({ hourlyCron: '', nightlyCron: '' })).toEqual([])
    expect(() => defaultJobs({ hourlyHours: 0 })).toThrow(/hourlyHours/)
    expect(() => validateJobs(defaultJobs({ nightlyCron: 'at midnight' }))).toThrow(
      /invalid cron expression for the nightly/,
    )
  })

  it('rounds ranges out to whole hours and names them', () => {
    expect(alignRange(at('2024-05-01T10:20:00Z'), at('2024-05-01T12:00:01Z'))).toEqual({
      fromMs: at('2024-05-01T10:00:00Z'),
      toMs: at('2024-05-01T13:00:00Z'),
    })
    expect(() => alignRange(at('2024-05-01T10:00:00Z'), at('2024-05-01T10:00:00Z'))).toThrow(/empty/)
    expect(rangeName('a.test', at('2024-05-01T00:00:00Z'), at('2024-05-02T00:00:00Z'))).toBe(
      'rebuild|a.test|2024-05-01T00:00:00.000Z|2024-05-02T00:00:00.000Z',
    )
  })

  it('renders a progress line with phase, counts and ETA', () => {
    const line = progressLine(
      {
        phase: 'aggregate',
        done: 120,
        total: 300,
        fraction: 0.47,
        eventsRead: 1_234_567,
        rowsWritten: 0,
        elapsedMs: 5000,
        etaMs: 42_000,
      },
      10,
    )
    expect(line).toBe('[#####-----]  47% aggregate 120/300 segments · 1.2M events · 0 rows · ETA 0:42')
  })
})
