import { cassandraHarness, embeddedHarness } from '../contract/backends.js'
import { batchStoreContract } from '../contract/batch-store.js'

// The batch layer's stores (leases, job runs, archive commits, final rows), two implementations.
batchStoreContract('cassandra', cassandraHarness)
batchStoreContract('embedded', embeddedHarness)
