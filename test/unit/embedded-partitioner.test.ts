import { describe, expect, it } from 'vitest'
import { murmur2, partitionForKey } from '../../core/embedded/partitioner.js'

// Known answers of Kafka's murmur2 (Java client Utils.murmur2, as copied by kafkajs), one per tail
// length 0..3, plus multi-byte UTF-8. The contract suite checks the partitions against a real broker.
const KNOWN: Array<[string, number, number]> = [
  ['', 275646681, 3],
  ['a', -1563381124, 4],
  ['ab', 316155434, 2],
  ['abc', 479470107, 3],
  ['abcd', -1323649548, 2],
  ['alpha.test:3f2a9c1e-visitor', 1211052824, 2],
  ['héllo wörld', 439213890, 0],
  ['site-1.test:visitor-42', -1158966113, 3],
]

describe('embedded log partitioner', () => {
  it("is Kafka's murmur2 and default partitioner", () => {
    for (const [key, hash, partition] of KNOWN) {
      expect(murmur2(Buffer.from(key, 'utf8')), key).toBe(hash)
      expect(partitionForKey(key, 6), key).toBe(partition)
    }
  })

  it('refuses a partition count that is not a positive integer', () => {
    expect(() => partitionForKey('k', 0)).toThrow(RangeError)
    expect(() => partitionForKey('k', 1.5)).toThrow(RangeError)
  })
})
