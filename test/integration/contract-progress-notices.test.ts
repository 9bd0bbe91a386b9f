import { embeddedProgressHarness, kafkaProgressHarness } from '../contract/backends.js'
import { progressNoticesContract } from '../contract/progress-notices.js'

// One suite, two implementations of the progress-notice port. Only Kafka can be away or carry
// records that are not notices; the embedded bus is the process itself and takes notices only.
progressNoticesContract('kafka', kafkaProgressHarness, { canBeAway: true, carriesOtherRecords: true })
progressNoticesContract('embedded', embeddedProgressHarness, { canBeAway: false, carriesOtherRecords: false })
