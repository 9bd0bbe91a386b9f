import type { AggregateReader } from '../../core/ports/aggregate-store.js'
import type { GeneratedEvent } from '../workload.js'
import type { ScenarioContext } from './context.js'
import type { Scenario, SiteKeys } from './environment.js'
import { importEvents } from './feed.js'
import { spawnRole, urlOf } from './proc.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Waits until every partition's stream checkpoint reached the end of the scenario's raw topic. */
export async function waitCaughtUp(
  ctx: ScenarioContext,
  scenario: Scenario,
  reader: AggregateReader,
  timeoutMs: number,
): Promise<void> {
  const { config } = scenario
  const ends = await ctx.env.topicEnds(config)
  const deadline = performance.now() + timeoutMs
  while (performance.now() < deadline) {
    const progress = await reader.streamProgress(
      config.stream.group,
      config.kafka.topicRaw,
      config.kafka.partitions,
    )
    const done = new Map(progress.map((p) => [p.partition, p.nextOffset]))
    if ([...ends].every(([p, end]) => end === 0 || (done.get(p) ?? 0) >= end)) return
    await sleep(100)
  }
  throw new Error(`the stream did not reach the end of ${config.kafka.topicRaw} within ${timeoutMs} ms`)
}

/**
 * Fills the aggregate store the way production does: events through the ingest role's /v1/import
 * (original timestamps), then one stream worker until its checkpoints reach the end of the topic.
 * Both processes are stopped before it returns. Returns the number of events accepted.
 */
export async function loadThroughPipeline(
  ctx: ScenarioContext,
  scenario: Scenario,
  events: readonly GeneratedEvent[],
  keys: ReadonlyMap<string, SiteKeys>,
  reader: AggregateReader,
): Promise<number> {
  const ingest = await spawnRole('ingest', scenario.env, ctx.env.logDir, 'ingest-loader')
  let accepted: number
  try {
    accepted = await importEvents(urlOf(ingest), events, (s) => keys.get(s)!.writeKey)
  } finally {
    await ingest.stop()
  }
  const worker = await spawnRole('stream', scenario.env, ctx.env.logDir, 'stream-loader')
  try {
    await waitCaughtUp(ctx, scenario, reader, 600_000)
  } finally {
    await worker.stop()
  }
  return accepted
}
