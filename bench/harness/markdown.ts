import { formatBytes, formatNumber, type RunReport } from './report.js'
import { round } from './stats.js'

/** BENCHMARKS.md from a run's report: the figures, where and how they were taken, and what they mean. */

const cell = (v: string) => v.replaceAll('|', '\\|')

export function formatMarkdown(r: RunReport): string {
  const m = r.machine
  const out: string[] = []
  out.push(
    '# Benchmarks',
    '',
    `Latest figures of \`npm run bench\` (bench/run.ts). Written by the bench itself (\`--markdown\`) from the run below;`,
    'rerun the command to refresh them. Every figure comes with its peer measured in the same run on the same',
    'machine, and every number the bench timed was checked against the workload’s ground truth: counts exactly,',
    'and `visitors` exactly against the HyperLogLog estimate of the true visitor set (DuckDB’s exact distinct',
    'exactly; its approx_count_distinct loosely). A figure whose check failed is marked FAILED.',
    '',
    '## Where and how',
    '',
    `- **Date**: ${r.date}`,
    `- **Command**: \`${r.command}\`${r.quick ? ' (quick: figures only keep the suite working; not for comparison)' : ''}`,
    `- **Machine**: ${m.cpus} cores (${m.cpuModel}), ${formatBytes(m.memoryBytes)} memory, ${m.platform}, Node ${m.node}.`,
    '  Kafka, Cassandra, the load generators and the measured processes share these cores, and other work on the',
    '  machine may add to it: absolute figures are noisy; the ratios to the peers, measured in the same run, are the',
    '  ones to compare.',
    `- **Versions**: ${Object.entries(r.versions)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
    `- **Whole run**: ${r.durationSec} s`,
    '',
    '## Figures',
    '',
    '| scenario | system | throughput | p50 ms | p90 ms | p99 ms | peak RSS | non-2xx | checks |',
    '|---|---|---:|---:|---:|---:|---:|---:|---|',
  )
  for (const f of r.figures) {
    const t = f.throughput
    const failed = f.checks.filter((c) => !c.ok).length
    out.push(
      `| ${[
        f.scenario,
        f.system,
        f.status === 'not-available' ? 'not available' : t ? `${formatNumber(t.value)} ${t.unit}` : f.status,
        f.latencyMs ? String(round(f.latencyMs.p50)) : '—',
        f.latencyMs ? String(round(f.latencyMs.p90)) : '—',
        f.latencyMs ? String(round(f.latencyMs.p99)) : '—',
        formatBytes(f.peakRssBytes),
        f.failedRequests === undefined ? '—' : String(f.failedRequests),
        f.status === 'not-available'
          ? 'n/a'
          : f.checks.length === 0
            ? f.status
            : failed === 0
              ? `ok (${f.checks.length})`
              : `FAILED ${failed}/${f.checks.length}`,
      ]
        .map(cell)
        .join(' | ')} |`,
    )
  }
  if (r.ratios.length > 0) {
    out.push('', '## Ratios to the peers', '', '| scenario | ratio | value | target |', '|---|---|---:|---|')
    for (const x of r.ratios)
      out.push(`| ${cell(x.scenario)} | ${cell(x.metric)} | ${round(x.value)} | ${cell(x.target ?? '—')} |`)
  }
  if (r.targets.length > 0) {
    out.push(
      '',
      '## Targets of issues 3–6',
      '',
      '| scenario | figure | value | target | met |',
      '|---|---|---:|---|---|',
    )
    for (const t of r.targets)
      out.push(
        `| ${cell(t.scenario)} | ${cell(t.metric)} | ${formatNumber(t.value)} ${cell(t.unit)} | ${cell(t.target)} | ${t.met ? 'yes' : 'no'} |`,
      )
  }
  for (const f of r.figures) {
    if (!f.series) continue
    out.push('', `## ${f.series.title}`, '', `| ${f.series.columns.map(cell).join(' | ')} |`)
    out.push(`|${f.series.columns.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`)
    for (const row of f.series.rows) out.push(`| ${row.map(cell).join(' | ')} |`)
  }
  out.push('', '## What each figure is', '')
  for (const f of r.figures) {
    const parts: string[] = []
    if (f.reason) parts.push(f.reason)
    if (f.throughput) parts.push(`throughput: ${f.throughput.what}`)
    if (f.latencyMs) parts.push(`latency: ${f.latencyMs.what} (${f.latencyMs.samples} samples)`)
    for (const c of f.checks) parts.push(`${c.ok ? 'checked' : '**CHECK FAILED**'}: ${c.detail}`)
    out.push(`- **${f.scenario} — ${f.system}**: ${parts.join('; ')}`)
  }
  out.push(
    '',
    '## How the bench measures',
    '',
    '- Every Tally role and every peer runs in a process of its own (`node bin/tally.js <role>`, `dist/bench/peers/*`);',
    '  peak RSS is that process’s high-water mark (`VmHWM` in /proc, or its own `maxRSS`), not the bench’s.',
    '- HTTP load comes from autocannon in the bench process, on loopback; latency is taken per response (float ms).',
    '  Ingest runs are sized by request count, so nothing is in flight at the end and the count check is exact;',
    '  Tally and the bare route alternate their peak runs (best of two each), and latency is read at half the peak.',
    '- Ingest over time (`ingest.steady`): one fresh ingest process under the same open-loop load for every interval;',
    '  CPU-µs per event is its CPU time (/proc/PID/stat) over the events answered 2xx in the interval, so it holds on a',
    '  shared machine where rates do not; fewer events per Kafka send make each event dearer.',
    '- Stream: events are loaded into a fresh topic first, then one worker process is timed from its first record to',
    '  every checkpoint at the end of the topic. Freshness: probes through /v1/track under steady background traffic,',
    '  polled through the query API every 20 ms. Its details carry the worker’s CPU-µs per counted event (steadier',
    '  than the wall rate on shared cores); what visits cost it without I/O: `node dist/bench/stream-visits-cpu.js`',
    '  (CPU-µs per event with visits and without, rows and visit-state bytes per flush; docs/design.md, visits).',
    '- Stream, what dimensions cost (issue 17): the same load is counted again by a worker with `TALLY_BREAKDOWNS` =',
    '  the dimensions before issue 17 (event, path, referrer, utm_source, browser, os, device, entry/exit page) —',
    '  `tally (issue-17 dimensions off)` — and, in a full run, by one with 3 custom properties and 2 goals declared',
    "  (`tally (3 properties, 2 goals)`). Each figure's details give `storeRowsPerCountedEvent`: the rows the worker",
    '  held at the end (`tally_stream_open_rows`, every row it wrote, as no window was evicted: `windowsEvicted` 0)',
    '  over the events it counted (`tally_stream_records_total{outcome="counted"}`), and `rowsWrittenPerCountedEvent`',
    '  (row writes, a row rewritten at each flush that changed it). The ratios `… all dimensions / issue-17 dimensions',
    '  off` compare the two runs of the same load: rows per event above 1 is the rows the new dimensions add, events/s',
    '  below 1 their cost in speed. Rows per event depends on the load (distinct values per window over events per',
    '  window): compare the ratio, not the absolute figure, across runs of another size.',
    '- Query: the site is loaded through ingest and the stream (at most 7 days late: the stream’s largest grace), so',
    '  a 30-day range holds 6.5 days of data. One client alone first, then 32 concurrent clients.',
    '- Batch: the same events go through ingest → Kafka → archiver into Arrow segments for Tally’s rebuild, and into',
    '  Parquet for DuckDB (one thread). Tally’s figure is the rebuild’s compute time (dedup + aggregation passes),',
    '  without writing the final rows to Cassandra; DuckDB’s is its dedup + aggregation into a table.',
    '  `batch.rebuild.large`: 10 M logical events of one day (plus retries) written once as Arrow segments and NDJSON',
    '  (kept between runs in the OS temp folder, `tally-bench-cache/`); Tally’s compute alone (dedup + aggregation',
    '  + visits down to final rows with serialized registers) in one warmed process over segments already read, best',
    '  of 2 passes, against DuckDB (1 thread, exact distinct) from a native table and from Parquet, every grouping set (31',
    '  with 14 dimensions) and the hourly totals alone; Tally and DuckDB check each other (counts exactly, visitors within 2× the',
    '  HyperLogLog bound).',
    '- Embedded (`embedded.*`, beside the figure of the same name): `tally all` alone in one process on the embedded',
    '  backend (SQLite log and store in a fresh data folder, no Kafka or Cassandra), with the same workloads, loads',
    '  and checks. Its ingest, stream worker, archiver and query API share that process, so ingest runs start once',
    '  the stream and archiver caught up; the stream figure runs from the worker taking its partitions on a preloaded',
    '  log until the query API counts every event; the rebuild runs with `tally all` stopped (the folder is locked).',
    '  Checks read the query API while it runs and the store itself once it stopped.',
    '- Workloads come from the seeded generator (bench/workload.ts): Zipf paths and referrers, sessions, bots,',
    '  client retries (duplicate messageIds), out-of-order sends; its truth is what the checks compare with.',
    '- Keyspace `tally_bench_<run>`, topics `tally_bench_<run>_*`; all removed at the end. Local Kafka and',
    '  Cassandra are started when down and stopped afterwards (`--keep-services` leaves them).',
    '- `npm run bench -- --help` lists the options; `--only ingest,stream,query,batch,embedded`, `--json PATH`.',
    '',
  )
  return out.join('\n')
}
