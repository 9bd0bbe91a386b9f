/**
 * Kafka's default partitioner for keyed records: `toPositive(murmur2(utf8(key))) % partitions`
 * (Java client `Utils.murmur2`, which kafkajs copies). The embedded log uses it so that a key lands
 * in the same partition number as it would in a Kafka topic with as many partitions: moving an
 * embedded log into Kafka keeps every key's records in one partition, in order. The Kafka producer
 * uses it to pack (core/kafka/producer.ts): kafkajs's own copy computes on `Long` objects and
 * filters the partition list per call, 9 % of ingest's CPU on /v1/batch.
 */

const SEED = 0x9747b28c
const M = 0x5bd1e995

/** Kafka's 32-bit murmur2 of the first `length` bytes of `data` (a signed 32-bit integer, as Java returns it). */
export function murmur2(data: Uint8Array, length: number = data.length): number {
  let h = SEED ^ length
  const length4 = length >>> 2
  for (let i = 0; i < length4; i++) {
    const i4 = i * 4
    let k = data[i4]! | (data[i4 + 1]! << 8) | (data[i4 + 2]! << 16) | (data[i4 + 3]! << 24)
    k = Math.imul(k, M)
    k ^= k >>> 24
    k = Math.imul(k, M)
    h = Math.imul(h, M)
    h ^= k
  }
  // Java's switch on length % 4 falls through from 3 to 1: the same, written as ifs.
  const tail = length & ~3
  const rest = length & 3
  if (rest === 3) h ^= data[tail + 2]! << 16
  if (rest >= 2) h ^= data[tail + 1]! << 8
  if (rest >= 1) {
    h ^= data[tail]!
    h = Math.imul(h, M)
  }
  h ^= h >>> 13
  h = Math.imul(h, M)
  h ^= h >>> 15
  return h | 0
}

// Keys are encoded into one reused buffer (grown for a longer key) rather than a new one per call.
let scratch = Buffer.allocUnsafe(256)

/** The partition of a keyed record among `partitions`, as Kafka's default partitioner picks it. */
export function partitionForKey(key: string, partitions: number): number {
  if (!Number.isInteger(partitions) || partitions < 1) {
    throw new RangeError(`partitions must be a positive integer, got ${partitions}`)
  }
  // A UTF-16 unit takes at most 3 UTF-8 bytes, so the key always fits whole.
  if (key.length * 3 > scratch.length) scratch = Buffer.allocUnsafe(key.length * 3)
  const bytes = scratch.write(key, 0, 'utf8')
  return (murmur2(scratch, bytes) & 0x7fffffff) % partitions
}
