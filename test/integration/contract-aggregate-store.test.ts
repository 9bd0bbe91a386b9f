import { aggregateStoreContract } from '../contract/aggregate-store.js'
import { cassandraHarness, embeddedHarness } from '../contract/backends.js'
import { siteStoreContract } from '../contract/site-store.js'

// One suite per port, two implementations each (Cassandra, embedded).
aggregateStoreContract('cassandra', cassandraHarness)
aggregateStoreContract('embedded', embeddedHarness)
siteStoreContract('cassandra', cassandraHarness)
siteStoreContract('embedded', embeddedHarness)
