import { ERR } from '../error-codes.js'
import type { ConsumedRecord, LogRecord } from '../ports/event-log.js'
import { type DeadLetter, deadLetter } from './result.js'

/**
 * The raw log's record framing, version 2 ("packed"): one Kafka record per producer flush and
 * partition, holding that partition's events in order. Version 1 is one record per event (its value
 * the event's JSON); a record is version 2 when its header `tally-format` is `2`. Readers take both
 * (`entriesOf`), so an upgrade needs no migration of the log.
 *
 * The value of a version-2 record, all integers big-endian:
 *
 * ```
 * u8  version (2, again: the bytes say what they are without the header)
 * u16 header sets; each: u16 pairs; each pair: u16 length + UTF-8 name, u16 length + UTF-8 value
 * u32 events; each:
 *     u16 header set (index into the sets above)
 *     f64 timestampMs (the event's log timestamp: when ingest received it)
 *     u16 length + UTF-8 partition key
 *     u32 length + value (the event's JSON, as ingest serialized it: copied, not re-encoded)
 * ```
 *
 * An event keeps the headers it would have had alone (trace context, request id, schema version,
 * site); the events of one request share one headers object, so a set is written once per record.
 * An event's position in the log is (offset, index). The framing is length-prefixed slices (as
 * Kafka's own record batch is), read with bounds checks: a cut or inconsistent frame is a dead
 * letter of the whole record (TALLY_ERR_CORRUPT_FRAME), never a crash.
 */

export const FORMAT_HEADER = 'tally-format'
export const PACKED_FORMAT = 2
const PACKED_FORMAT_TEXT = String(PACKED_FORMAT)

/** The largest number of events a packed record can frame (and its header sets: u16 indexes). */
export const MAX_PACKED_EVENTS = 65_535
const MAX_U16 = 65_535

/** One event of the raw log as readers see it, whatever record framing carried it. */
export interface RawEntry extends ConsumedRecord {
  /** Index of the event inside its record (0 for a version-1 record). */
  index: number
  /** Events in the record this entry came from (1 for a version-1 record). */
  count: number
  /** Set when the record could not be unpacked: the whole record is poison (value: its bytes). */
  problem?: DeadLetter
}

/** An event ready to pack: the LogRecord ingest made of it. */
export type PackableRecord = Pick<LogRecord, 'key' | 'value' | 'headers' | 'timestampMs'>

function headerSetBytes(headers: Readonly<Record<string, string>>): number {
  let n = 2
  for (const k in headers) n += 4 + Buffer.byteLength(k) + Buffer.byteLength(headers[k]!)
  return n
}

/** The bytes `packRecords` adds for one event besides its value: set index, timestamp, key. */
export function packedOverheadBytes(record: PackableRecord): number {
  return 2 + 8 + 2 + Buffer.byteLength(record.key) + 4
}

/**
 * Packs events (of one partition, in order) into the value of one version-2 record. Bounds: at
 * most MAX_PACKED_EVENTS events, keys and header names/values under 64 KiB (RangeError otherwise:
 * the producer splits before that).
 */
export function packRecords(records: readonly PackableRecord[]): Buffer {
  if (records.length === 0 || records.length > MAX_PACKED_EVENTS)
    throw new RangeError(`a packed record holds 1..${MAX_PACKED_EVENTS} events, got ${records.length}`)
  const sets = new Map<Readonly<Record<string, string>>, number>()
  const setOf = new Uint16Array(records.length)
  let size = 1 + 2 + 4
  for (let i = 0; i < records.length; i++) {
    const r = records[i]!
    let set = sets.get(r.headers)
    if (set === undefined) {
      set = sets.size
      sets.set(r.headers, set)
      size += headerSetBytes(r.headers)
    }
    setOf[i] = set
    size += packedOverheadBytes(r) + r.value.length
  }
  const out = Buffer.allocUnsafe(size)
  let at = out.writeUInt8(PACKED_FORMAT, 0)
  at = out.writeUInt16BE(sets.size, at)
  const writeString = (s: string): void => {
    const n = out.write(s, at + 2, 'utf8')
    if (n > MAX_U16) throw new RangeError(`a packed record's key or header is over ${MAX_U16} bytes`)
    out.writeUInt16BE(n, at)
    at += 2 + n
  }
  for (const headers of sets.keys()) {
    const names = Object.keys(headers)
    at = out.writeUInt16BE(names.length, at)
    for (const name of names) {
      writeString(name)
      writeString(headers[name]!)
    }
  }
  at = out.writeUInt32BE(records.length, at)
  for (let i = 0; i < records.length; i++) {
    const r = records[i]!
    at = out.writeUInt16BE(setOf[i]!, at)
    at = out.writeDoubleBE(r.timestampMs ?? 0, at)
    writeString(r.key)
    at = out.writeUInt32BE(r.value.length, at)
    at += r.value.copy(out, at)
  }
  return out
}

/** The headers of a packed record itself (its events carry their own inside the value). */
export function packedHeaders(): Record<string, string> {
  return { [FORMAT_HEADER]: PACKED_FORMAT_TEXT }
}

/** Reads a frame with bounds checks; any overrun throws FrameError with where it happened. */
class FrameError extends Error {}

class Reader {
  at = 0
  constructor(private readonly buf: Buffer) {}
  private need(n: number, what: string): void {
    if (this.at + n > this.buf.length)
      throw new FrameError(`${what} at byte ${this.at} runs past the end (${this.buf.length} bytes)`)
  }
  u8(what: string): number {
    this.need(1, what)
    return this.buf.readUInt8(this.at++)
  }
  u16(what: string): number {
    this.need(2, what)
    const v = this.buf.readUInt16BE(this.at)
    this.at += 2
    return v
  }
  u32(what: string): number {
    this.need(4, what)
    const v = this.buf.readUInt32BE(this.at)
    this.at += 4
    return v
  }
  f64(what: string): number {
    this.need(8, what)
    const v = this.buf.readDoubleBE(this.at)
    this.at += 8
    return v
  }
  string(what: string): string {
    const n = this.u16(`${what} length`)
    this.need(n, what)
    const s = this.buf.toString('utf8', this.at, this.at + n)
    this.at += n
    return s
  }
  bytes(what: string): Buffer {
    const n = this.u32(`${what} length`)
    this.need(n, what)
    const b = this.buf.subarray(this.at, this.at + n)
    this.at += n
    return b
  }
  get done(): boolean {
    return this.at === this.buf.length
  }
}

/**
 * The events of one record: a version-1 record is one entry (index 0); a version-2 record is one
 * entry per packed event, each with its own key, headers and timestamp, sharing the record's offset.
 * A record whose framing is unknown or corrupt is one entry with `problem` set (a dead letter of the
 * whole record: no event of a cut frame can be trusted to be whole).
 */
export function unpackRecord(record: ConsumedRecord): RawEntry[] {
  const format = record.headers[FORMAT_HEADER]
  if (format === undefined) return [{ ...record, index: 0, count: 1 }]
  if (format !== PACKED_FORMAT_TEXT)
    return [poison(record, deadLetter(ERR.FORMAT_VERSION, `unknown record format ${format}`))]
  const value = record.value
  if (!value || value.length === 0)
    return [poison(record, deadLetter(ERR.EMPTY_RECORD, 'packed record has no value'))]
  try {
    const r = new Reader(value)
    const version = r.u8('version')
    if (version !== PACKED_FORMAT) throw new FrameError(`value starts with version ${version}, header says 2`)
    const setCount = r.u16('header set count')
    const sets: Record<string, string>[] = []
    for (let s = 0; s < setCount; s++) {
      const pairs = r.u16('header pair count')
      const headers: Record<string, string> = {}
      for (let p = 0; p < pairs; p++) {
        const name = r.string('header name')
        headers[name] = r.string('header value')
      }
      sets.push(headers)
    }
    const count = r.u32('event count')
    if (count === 0) throw new FrameError('no events')
    if (count > MAX_PACKED_EVENTS) throw new FrameError(`${count} events (at most ${MAX_PACKED_EVENTS})`)
    const entries: RawEntry[] = new Array(count)
    for (let index = 0; index < count; index++) {
      const set = r.u16('header set')
      const headers = sets[set]
      if (headers === undefined) throw new FrameError(`event ${index} names header set ${set} of ${setCount}`)
      const timestampMs = r.f64('timestamp')
      const key = r.string('key')
      const eventValue = r.bytes('event value')
      entries[index] = { offset: record.offset, index, count, key, value: eventValue, headers, timestampMs }
    }
    if (!r.done) throw new FrameError(`${value.length - r.at} bytes after the last event`)
    return entries
  } catch (err) {
    if (!(err instanceof FrameError)) throw err
    return [poison(record, deadLetter(ERR.CORRUPT_FRAME, `packed record: ${err.message}`))]
  }
}

function poison(record: ConsumedRecord, problem: DeadLetter): RawEntry {
  return { ...record, index: 0, count: 1, problem }
}

/** The events of a batch's records, in log order ((offset, index)). */
export function entriesOf(records: readonly ConsumedRecord[]): RawEntry[] {
  const out: RawEntry[] = []
  for (const record of records) {
    if (record.headers[FORMAT_HEADER] === undefined) out.push({ ...record, index: 0, count: 1 })
    else for (const e of unpackRecord(record)) out.push(e)
  }
  return out
}
