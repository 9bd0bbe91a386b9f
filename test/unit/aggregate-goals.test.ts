import { describe, expect, it } from 'vitest'
import {
  eventGoal,
  type Goal,
  GoalMatcher,
  goalName,
  goalOf,
  MAX_GOALS,
  pageGoal,
  pathMatches,
} from '../../core/aggregate/goals.js'
import { parseFilters, parseProperty, parseQuery } from '../../query/params.js'
import { DEFAULT_QUERY_LIMITS } from '../../query/stats.js'
import { PropKeyCache } from '../../stream/prop-keys.js'

/** The pattern rule written out apart from the module: a segment-wise walk, `**` by backtracking. */
function matchesByHand(pattern: string, path: string): boolean {
  const go = (p: number, s: number): boolean => {
    if (p === pattern.length) return s === path.length
    if (pattern[p] === '*' && pattern[p + 1] === '*') {
      for (let k = s; k <= path.length; k++) if (go(p + 2, k)) return true
      return false
    }
    if (pattern[p] === '*') {
      for (let k = s; k <= path.length; k++) {
        if (go(p + 1, k)) return true
        if (path[k] === '/') return false
      }
      return false
    }
    return s < path.length && path[s] === pattern[p] && go(p + 1, s + 1)
  }
  return go(0, 0)
}

describe('goal path patterns', () => {
  it('* stays within a segment, ** crosses segments, the rest is literal, the whole path must match', () => {
    expect(pathMatches('/checkout/*', '/checkout/pay')).toBe(true)
    expect(pathMatches('/checkout/*', '/checkout/')).toBe(true)
    expect(pathMatches('/checkout/*', '/checkout/pay/done')).toBe(false)
    expect(pathMatches('/checkout/*', '/checkout')).toBe(false)
    expect(pathMatches('/blog/**', '/blog/a/b/c')).toBe(true)
    expect(pathMatches('/blog/**', '/blog/')).toBe(true)
    expect(pathMatches('/docs/*/edit', '/docs/x/edit')).toBe(true)
    expect(pathMatches('/docs/*/edit', '/docs/x/y/edit')).toBe(false)
    expect(pathMatches('/docs/**/edit', '/docs/x/y/edit')).toBe(true)
    expect(pathMatches('/a.b', '/axb')).toBe(false)
    expect(pathMatches('/a+(b)?', '/a+(b)?')).toBe(true)
    expect(pathMatches('/pricing', '/pricing/')).toBe(false)
    expect(pathMatches('/*', '/')).toBe(true)
  })

  it('agrees with the rule written out by hand over generated patterns and paths', () => {
    let seed = 7
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % n
    }
    const pick = <T>(xs: readonly T[]) => xs[rnd(xs.length)]!
    const pieces = ['/', 'a', 'b', '.', '*', '**', '-']
    const chars = ['/', 'a', 'b', '.', '-']
    for (let t = 0; t < 3000; t++) {
      let pattern = '/'
      for (let k = rnd(6); k > 0; k--) pattern += pick(pieces)
      if (pattern.includes('***')) continue
      let path = '/'
      for (let k = rnd(8); k > 0; k--) path += pick(chars)
      expect(pathMatches(pattern, path), `${pattern} ~ ${path}`).toBe(matchesByHand(pattern, path))
    }
  })
})

describe('goal definitions', () => {
  it('names goals as Plausible does', () => {
    expect(eventGoal('Signup')).toEqual({ name: 'Signup', kind: 'event', target: 'Signup' })
    expect(pageGoal('/checkout/*')).toEqual({
      name: 'Visit /checkout/*',
      kind: 'page',
      target: '/checkout/*',
    })
    expect(goalName('page', '/a')).toBe('Visit /a')
    expect(goalOf('page', '/a')).toEqual(pageGoal('/a'))
    expect(MAX_GOALS).toBe(20)
  })

  it('refuses what is no goal with TALLY_ERR_GOAL_INVALID naming where', () => {
    for (const bad of ['', ' Signup', 'a'.repeat(121), 'Visit /x', 'tab\there'])
      expect(() => eventGoal(bad), JSON.stringify(bad)).toThrow(
        expect.objectContaining({ code: 'TALLY_ERR_GOAL_INVALID', where: 'event' }),
      )
    for (const bad of ['checkout', '/a b', `/${'a'.repeat(256)}`, '/a/***', ''])
      expect(() => pageGoal(bad), JSON.stringify(bad)).toThrow(
        expect.objectContaining({ code: 'TALLY_ERR_GOAL_INVALID', where: 'page' }),
      )
    expect(() => goalOf('click', 'x')).toThrow(expect.objectContaining({ code: 'TALLY_ERR_GOAL_INVALID' }))
    expect(eventGoal('a'.repeat(120)).name).toHaveLength(120)
  })

  it('matches track events by name and pageviews by path, every goal an event completes', () => {
    const m = new GoalMatcher([eventGoal('Signup'), pageGoal('/checkout/*'), pageGoal('/checkout/**')])
    expect(m.reached('track', 'Signup', '/anything')).toEqual(['Signup'])
    expect(m.reached('track', 'signup', '/x')).toEqual([])
    // A pageview is no event goal's completion, whatever its event dimension says.
    expect(m.reached('page', 'Signup', '/checkout/a')).toEqual(['Visit /checkout/*', 'Visit /checkout/**'])
    expect(m.reached('page', 'pageview', '/checkout/a/b')).toEqual(['Visit /checkout/**'])
    expect(m.reached('screen', 'screen', '/checkout/a')).toEqual([])
    expect(m.reached('track', 'Buy', '/checkout/a')).toEqual([])
    expect(new GoalMatcher([]).empty).toBe(true)
  })
})

describe('the query parameters name goals', () => {
  it('takes property=goal and filters=goal==NAME', () => {
    expect(parseProperty('goal', 'property')).toBe('goal')
    expect(parseFilters('goal==Visit /checkout/*', 20)).toEqual([
      { property: 'goal', values: ['Visit /checkout/*'] },
    ])
  })

  it('answers conversions and conversion_rate by goal only, naming what is answered', () => {
    const q = (endpoint: 'aggregate' | 'breakdown', raw: Record<string, string>) =>
      parseQuery(endpoint, { site: 's', period: 'day', ...raw }, 0, DEFAULT_QUERY_LIMITS)
    expect(
      q('aggregate', { metrics: 'conversions,conversion_rate', filters: 'goal==Signup' }).metrics,
    ).toEqual(['conversions', 'conversion_rate'])
    expect(q('breakdown', { metrics: 'conversions', property: 'goal' }).property).toBe('goal')
    expect(() => q('aggregate', { metrics: 'conversions' })).toThrow(
      expect.objectContaining({
        code: 'TALLY_ERR_BAD_PARAMETER',
        where: 'metrics',
        message: expect.stringContaining('goal==NAME'),
      }),
    )
    // Conversions are kept by a declared custom property (goal|prop:KEY) and by exit_page (converters only).
    expect(
      q('breakdown', { metrics: 'conversions', property: 'prop:plan', filters: 'goal==Signup' }).property,
    ).toBe('prop:plan')
    expect(
      q('breakdown', { metrics: 'conversions', property: 'exit_page', filters: 'goal==Signup' }).property,
    ).toBe('exit_page')
    expect(() =>
      q('breakdown', { metrics: 'events', property: 'exit_page', filters: 'goal==Signup' }),
    ).toThrow(expect.objectContaining({ where: 'metrics' }))
    expect(() => q('aggregate', { metrics: 'visitors', filters: 'goal==Signup' })).not.toThrow()
    // Goal rows hold no visits.
    expect(() => q('aggregate', { metrics: 'visits', filters: 'goal==Signup' })).toThrow(
      expect.objectContaining({ where: 'metrics' }),
    )
  })
})

describe("the stream's goal cache (stream/prop-keys.ts)", () => {
  it('reads goals with the keys, counts a goal defined later after the TTL, keeps the last goals when the store fails', async () => {
    let now = 0
    let goals: Goal[] = [eventGoal('Signup')]
    let fail = false
    const source = {
      listPropKeys: async () => {
        if (fail) throw new Error('store down')
        return ['plan']
      },
      listGoals: async () => goals,
    }
    const cache = new PropKeyCache(source, 1000, undefined, 100, () => now)
    await cache.refresh(['s'])
    expect(cache.goalsOf('s').reached('track', 'Signup', '/')).toEqual(['Signup'])
    const first = cache.goalsOf('s')
    // Unchanged goals keep their matcher (and its cache of paths).
    now = 1000
    await cache.refresh(['s'])
    expect(cache.goalsOf('s')).toBe(first)
    goals = [eventGoal('Signup'), pageGoal('/checkout/*')]
    now = 1500
    await cache.refresh(['s'])
    expect(cache.goalsOf('s').reached('page', 'pageview', '/checkout/a')).toEqual([])
    now = 2000
    await cache.refresh(['s'])
    expect(cache.goalsOf('s').reached('page', 'pageview', '/checkout/a')).toEqual(['Visit /checkout/*'])
    fail = true
    now = 3000
    await cache.refresh(['s'])
    expect(cache.goalsOf('s').reached('page', 'pageview', '/checkout/a')).toEqual(['Visit /checkout/*'])
    // A source without goals (a store that predates them) counts none.
    const keysOnly = new PropKeyCache({ listPropKeys: async () => [] }, 1000)
    await keysOnly.refresh(['s'])
    expect(keysOnly.goalsOf('s').empty).toBe(true)
  })
})
