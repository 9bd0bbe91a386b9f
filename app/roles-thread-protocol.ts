import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue, type Registry } from 'prom-client'
import type { TallyConfig } from '../core/config.js'
import type { ProgressNotice } from '../core/ports/progress-notices.js'

/**
 * The messages between `tally all`'s main thread (ingest, query, the data folder's lock, the log's
 * writer for ingest) and its roles thread (stream worker, archiver, rebuild scheduler) on the
 * embedded backend. See roles-host.ts (main side) and roles-thread.ts (thread side).
 */

export interface RolesThreadData {
  config: TallyConfig
  streamPort: number
  batchPort: number
}

export type MetricsJson = MetricObjectWithValues<MetricValue<string>>[]

/** Main thread → roles thread. */
export type ToThread =
  /** Ingest committed records up to `end`: wake the consumers waiting on that partition. */
  | { type: 'appended'; topic: string; partition: number; end: number }
  | { type: 'metrics'; id: number; json: MetricsJson }
  | { type: 'metrics-request'; id: number }
  /** Close in order (final flush, checkpoint, files); `abort`: after a crash, no final flush. */
  | { type: 'close'; abort: boolean }

/** Roles thread → main thread. */
export type FromThread =
  | { type: 'started'; streamUrl: string; batchUrl: string }
  | { type: 'failed'; message: string; code?: string }
  | { type: 'progress'; notice: ProgressNotice }
  | { type: 'metrics'; id: number; json: MetricsJson }
  | { type: 'metrics-request'; id: number }
  | { type: 'closed'; error?: string }

/**
 * Makes `registry.metrics()` serve this thread's metrics and the other thread's as one registry
 * (what `tally all` promises on each /metrics endpoint): a metric both threads hold (the HTTP
 * request histogram, counters of the same name) is summed, one only a thread holds is taken as is.
 * `other` fetches the other thread's metrics as JSON; when it fails, this thread's alone are served.
 */
export function bridgeRegistry(registry: Registry, other: () => Promise<MetricsJson>): void {
  const own = () => registry.getMetricsAsJSON() as Promise<MetricsJson>
  registry.metrics = async () => {
    const [mine, theirs] = await Promise.all([own(), other().catch(() => [] as MetricsJson)])
    const inMine = new Set(mine.map((m) => m.name))
    const inTheirs = new Set(theirs.map((m) => m.name))
    const mark = (list: MetricsJson, otherNames: Set<string>) =>
      list.map((m) => ({ ...m, aggregator: otherNames.has(m.name) ? ('sum' as const) : ('first' as const) }))
    return AggregatorRegistry.aggregate([mark(mine, inTheirs), mark(theirs, inMine)]).metrics()
  }
}

/** Request/response over a port: ids, pending answers, a bound wait. */
export class Requests<T> {
  private next = 1
  private readonly pending = new Map<number, { resolve: (v: T) => void; timer: NodeJS.Timeout }>()

  constructor(private readonly timeoutMs: number) {}

  ask(send: (id: number) => void, fallback: T): Promise<T> {
    const id = this.next++
    return new Promise<T>((resolve) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        resolve(fallback)
      }, this.timeoutMs)
      timer.unref()
      this.pending.set(id, { resolve, timer })
      send(id)
    })
  }

  answer(id: number, value: T): void {
    const p = this.pending.get(id)
    if (!p) return
    this.pending.delete(id)
    clearTimeout(p.timer)
    p.resolve(value)
  }
}
