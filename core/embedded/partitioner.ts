/** Kafka's default partitioner, which the embedded log places keys with: the raw-record module's. */
export { murmur2, partitionForKey } from '../record/partition.js'
