import { describe, expect, it } from 'vitest'
import { SESSION_DIMENSIONS } from '../../core/aggregate/definition.js'
import {
  eventGoal,
  GOAL_BY_DIMENSIONS,
  GOAL_BY_NAMES,
  goalByDimension,
  goalByOf,
  goalByValue,
  isGoalByDimension,
  isRebuiltOnly,
  pageGoal,
  splitGoalByValue,
} from '../../core/aggregate/goals.js'
import { parseQuery } from '../../query/params.js'
import { DEFAULT_QUERY_LIMITS } from '../../query/stats.js'

/** A small deterministic generator (the test's own, not the product's hash). */
function lcg(seed: number): () => number {
  let x = seed >>> 0
  return () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0
    return x / 2 ** 32
  }
}

describe('conversions by dimension: the key scheme (goal|DIM, NAME U+001F VALUE)', () => {
  it('names the rows of each dimension conversions are kept by, and reads the dimension back', () => {
    for (const d of [...SESSION_DIMENSIONS, 'entry_page', 'path', 'event'] as const) {
      expect(GOAL_BY_DIMENSIONS).toContain(d)
      expect(goalByDimension(d)).toBe(`goal|${d}`)
      expect(goalByOf(`goal|${d}`)).toBe(d)
      expect(isRebuiltOnly(`goal|${d}`)).toBe(true)
    }
    for (const other of [
      'goal',
      'source',
      'goal|',
      'goal|prop:',
      'goal|prop:-bad',
      'prop:plan',
      'goals|path',
    ])
      expect(goalByOf(other)).toBeUndefined()
  })

  it('keeps conversions by every custom property key the key syntax accepts (goal|prop:KEY)', () => {
    for (const key of ['plan', 'Plan_2', 'a.b-c', 'x'.repeat(64)]) {
      const d = `prop:${key}` as const
      expect(isGoalByDimension(d)).toBe(true)
      expect(goalByDimension(d)).toBe(`goal|prop:${key}`)
      expect(goalByOf(`goal|prop:${key}`)).toBe(d)
      // Rebuilt only, as goal and prop:KEY rows are (the rebuild's values are exact).
      expect(isRebuiltOnly(`goal|prop:${key}`)).toBe(true)
    }
    for (const bad of ['prop:', 'prop:_x', `prop:${'x'.repeat(65)}`, 'prop:a b', 'goal'])
      expect(isGoalByDimension(bad)).toBe(false)
    // Conversions by exit page are kept too, by ended visits (not in GOAL_BY_DIMENSIONS, which the
    // per-event step walks).
    expect(GOAL_BY_DIMENSIONS).not.toContain('exit_page')
    expect(isGoalByDimension('exit_page')).toBe(true)
    expect(goalByOf('goal|exit_page')).toBe('exit_page')
    expect(isRebuiltOnly('goal|exit_page')).toBe(true)
    expect(GOAL_BY_NAMES).toEqual([...GOAL_BY_DIMENSIONS, 'exit_page', 'prop:KEY'])
  })

  it('splits a stored value into the goal and the value whatever the value holds', () => {
    const rnd = lcg(17)
    const alphabet = ['a', 'Z', '/', '|', ' ', '*', '\u001f', 'é', '(', ')', ':', '\u0001']
    const pick = (n: number) =>
      Array.from({ length: n }, () => alphabet[Math.floor(rnd() * alphabet.length)]!).join('')
    for (let k = 0; k < 500; k++) {
      // A goal's name: an event name or a page pattern as the goal module accepts them.
      const raw = [...pick(1 + Math.floor(rnd() * 8))].map((c) => (c <= ' ' ? 'x' : c)).join('')
      const goal = rnd() < 0.5 ? eventGoal(raw.startsWith('Visit ') ? `x${raw}` : raw) : pageGoal(`/${raw}`)
      const value = pick(Math.floor(rnd() * 10))
      const stored = goalByValue(goal.name, value)
      expect(splitGoalByValue(stored)).toEqual({ goal: goal.name, value })
    }
    expect(splitGoalByValue('no separator')).toBeUndefined()
    expect(splitGoalByValue('\u001fvalue without goal')).toBeUndefined()
  })

  it('a goal name never holds the separator (the split is unambiguous)', () => {
    expect(() => eventGoal('Sign\u001fup')).toThrow(
      expect.objectContaining({ code: 'TALLY_ERR_GOAL_INVALID' }),
    )
    expect(() => pageGoal('/a\u001fb')).toThrow(expect.objectContaining({ code: 'TALLY_ERR_GOAL_INVALID' }))
  })
})

describe('conversions by dimension: the query parameters', () => {
  const q = (raw: Record<string, string>) =>
    parseQuery('breakdown', { site: 's', period: 'day', ...raw }, 0, DEFAULT_QUERY_LIMITS)

  it('takes a goal filter with a breakdown by a dimension conversions are kept by', () => {
    for (const property of GOAL_BY_DIMENSIONS) {
      const metrics =
        property === 'entry_page' ? 'visitors,conversions,events' : 'visitors,conversions,conversion_rate'
      const parsed = q({ property, filters: 'goal==Signup', metrics })
      expect(parsed.property).toBe(property)
      expect(parsed.metrics).toEqual(metrics.split(','))
    }
    expect(
      q({ property: 'source', filters: 'goal==Signup;source==Google', metrics: 'conversions' }).filters,
    ).toEqual([
      { property: 'goal', values: ['Signup'] },
      { property: 'source', values: ['Google'] },
    ])
  })

  it('takes a goal filter with a breakdown by a custom property, and goal + DIM filters on a timeseries', () => {
    const parsed = q({
      property: 'prop:plan',
      filters: 'goal==Signup',
      metrics: 'conversions,conversion_rate',
    })
    expect(parsed.property).toBe('prop:plan')
    for (const other of ['source==Google', 'prop:plan==pro|team', 'path==/a']) {
      const ts = parseQuery(
        'timeseries',
        {
          site: 's',
          period: 'day',
          interval: 'hour',
          filters: `goal==Signup;${other}`,
          metrics: 'conversions,conversion_rate',
        },
        0,
        DEFAULT_QUERY_LIMITS,
      )
      expect(ts.filters.map((f) => f.property)).toEqual(['goal', other.slice(0, other.indexOf('=='))])
    }
  })

  it("under a goal filter, entry and exit pages default to the goal rows' metrics", () => {
    expect(q({ property: 'exit_page', filters: 'goal==Signup' }).metrics).toEqual(['visitors', 'conversions'])
    expect(q({ property: 'entry_page', filters: 'goal==Signup' }).metrics).toEqual([
      'visitors',
      'pageviews',
      'events',
    ])
    for (const [filters, want] of [
      ['goal==Signup;entry_page==/a', ['visitors', 'pageviews', 'events']],
      ['goal==Signup;exit_page==/a', ['visitors', 'conversions']],
    ] as const)
      for (const endpoint of ['aggregate', 'timeseries'] as const)
        expect(
          parseQuery(endpoint, { site: 's', period: 'day', filters }, 0, DEFAULT_QUERY_LIMITS).metrics,
          `${endpoint} ${filters}`,
        ).toEqual(want)
  })

  it('refuses what the rows cannot answer, naming it', () => {
    expect(() => q({ property: 'entry_page', filters: 'goal==Signup', metrics: 'conversion_rate' })).toThrow(
      expect.objectContaining({ where: 'metrics', message: expect.stringContaining('entry_page') }),
    )
    // Goal rows hold no visits, by any dimension.
    expect(() => q({ property: 'source', filters: 'goal==Signup', metrics: 'visits' })).toThrow(
      expect.objectContaining({ where: 'metrics' }),
    )
    // By exit page: converters only (visitors, conversions), no completions, pageviews or rate.
    expect(
      q({ property: 'exit_page', filters: 'goal==Signup', metrics: 'conversions,visitors' }).metrics,
    ).toEqual(['conversions', 'visitors'])
    for (const m of ['events', 'pageviews', 'conversion_rate'])
      expect(() =>
        q({ property: 'exit_page', filters: 'goal==Signup', metrics: `conversions,${m}` }),
      ).toThrow(expect.objectContaining({ where: 'metrics', message: expect.stringContaining('exit_page') }))
  })
})
