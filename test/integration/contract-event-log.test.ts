import { embeddedLogHarness, kafkaLogHarness } from '../contract/backends.js'
import { eventLogContract } from '../contract/event-log.js'

// One suite, two implementations of the event-log port.
eventLogContract('kafka', kafkaLogHarness)
eventLogContract('embedded', embeddedLogHarness)
