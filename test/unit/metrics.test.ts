import { describe, expect, it } from 'vitest'
import { createHttpServer } from '../../core/http.js'
import { createLogger } from '../../core/log.js'
import { createProcessRegistry } from '../../core/metrics.js'
import { createIngestKafkaMetrics, createIngestMetrics } from '../../ingest/metrics.js'
import { createQueryMetrics } from '../../query/metrics.js'
import { createStreamMetrics } from '../../stream/metrics.js'

const logger = createLogger('silent')

describe('the process registry', () => {
  it('holds the standard process_* and nodejs_* metrics, unprefixed', async () => {
    const text = await createProcessRegistry().metrics()
    expect(text).toMatch(/^process_resident_memory_bytes \d+/m)
    expect(text).toMatch(/^nodejs_eventloop_lag_seconds /m)
    expect(text).not.toMatch(/^tally_\w*process_/m)
  })

  it('takes the metrics of several roles, as in `tally all`, and Kafka metrics only when asked', async () => {
    const registry = createProcessRegistry()
    createIngestMetrics(registry)
    createStreamMetrics(registry)
    createQueryMetrics({ registry })
    let text = await registry.metrics()
    expect(text).toContain('tally_ingest_requests_total')
    expect(text).toContain('tally_stream_records_total')
    expect(text).toContain('tally_query_requests_total')
    expect(text.match(/^# TYPE process_cpu_seconds_total /gm)).toHaveLength(1)
    expect(text).not.toContain('tally_ingest_kafka')
    createIngestKafkaMetrics(registry)
    text = await registry.metrics()
    expect(text).toContain('tally_ingest_kafka_send_seconds')
  })

  it('times every request of every HTTP server into one http_request_duration_seconds', async () => {
    const registry = createProcessRegistry()
    const servers = [1, 2].map(() =>
      createHttpServer({ logger, bodyLimit: 1024, requestTimeoutMs: 1000, registry }),
    )
    servers[0]!.get('/things/:id', async () => ({ ok: true }))
    servers[1]!.get('/healthz', async () => ({ status: 'ok' }))
    await servers[0]!.inject({ method: 'GET', url: '/things/1' })
    await servers[0]!.inject({ method: 'GET', url: '/things/2' })
    await servers[0]!.inject({ method: 'GET', url: '/nowhere' })
    await servers[1]!.inject({ method: 'GET', url: '/healthz' })
    const text = await registry.metrics()
    expect(text).toContain(
      'http_request_duration_seconds_count{method="GET",route="/things/:id",status_code="200"} 2',
    )
    expect(text).toContain(
      'http_request_duration_seconds_count{method="GET",route="unmatched",status_code="404"} 1',
    )
    expect(text).toContain(
      'http_request_duration_seconds_count{method="GET",route="/healthz",status_code="200"} 1',
    )
    for (const s of servers) await s.close()
  })
})
