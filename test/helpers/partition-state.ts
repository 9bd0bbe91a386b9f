import { VisitState } from '../../core/aggregate/visits.js'
import { DedupSet } from '../../stream/dedup.js'
import type { PipelineState } from '../../stream/pipeline.js'
import { RowTable } from '../../stream/rows.js'

/** What a worker wrote for one partition that a restart reads back: checkpoint and visit state. */
export interface WrittenPartition {
  checkpoint: number
  visitState: { nextOffset: number; bytes: Uint8Array } | undefined
}

/**
 * A stream worker's memory of partition 0 as a restart makes it (tests without I/O): no rows held,
 * no dedup set, the visit state it last wrote (none: empty), replaying from its checkpoint.
 */
export function restoredPartition(
  written: WrittenPartition,
  gapMs: number,
  props?: PipelineState['props'],
): PipelineState & { processedNext: number } {
  const s = written.visitState
  return {
    ref: { partition: 0 },
    rows: new RowTable(),
    dedup: new DedupSet(),
    watermarkMs: 0,
    processedNext: written.checkpoint,
    visits: {
      state: VisitState.deserialize(s?.bytes ?? new Uint8Array(0), gapMs),
      nextOffset: s?.nextOffset ?? 0,
      changed: false,
    },
    ...(props ? { props } : {}),
  }
}
