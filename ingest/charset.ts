import { TextDecoder } from 'node:util'
import { ERR } from '../core/error-codes.js'
import { TallyError } from '../core/errors.js'

/**
 * Request bodies in the charset their Content-Type names. UTF-8 (or no charset: JSON is UTF-8) is
 * the usual case and decodes as before; any other charset the WHATWG Encoding standard knows
 * (TextDecoder: windows-1252, iso-8859-*, utf-16le, shift_jis, …) is decoded before JSON parsing,
 * rather than being read as UTF-8 and turned into replacement characters. A charset TextDecoder
 * does not know is refused with 415. Invalid bytes become U+FFFD in every charset alike.
 */

const UTF8 = new Set(['utf-8', 'utf8', 'unicode-1-1-utf-8'])

// One decoder per label seen; bounded by the labels TextDecoder accepts (about 220), since an
// unknown label throws before it is stored.
const decoders = new Map<string, TextDecoder>()

/** The `charset` parameter of a Content-Type header, lower-cased and unquoted; undefined if none. */
export function charsetOf(contentType: string | undefined): string | undefined {
  // The usual `application/json` has no parameter: nothing to split.
  if (contentType === undefined || !contentType.includes(';')) return undefined
  for (const param of contentType.split(';').slice(1)) {
    const eq = param.indexOf('=')
    if (eq < 0 || param.slice(0, eq).trim().toLowerCase() !== 'charset') continue
    const value = param
      .slice(eq + 1)
      .trim()
      .replace(/^"(.*)"$/, '$1')
      .trim()
      .toLowerCase()
    return value === '' ? undefined : value
  }
  return undefined
}

/** The body as text, decoded from the charset of `contentType` (UTF-8 when none is given). */
export function decodeBody(bytes: Buffer, contentType: string | undefined): string {
  const charset = charsetOf(contentType)
  if (charset === undefined || UTF8.has(charset)) return bytes.toString('utf8')
  let decoder = decoders.get(charset)
  if (decoder === undefined) {
    try {
      decoder = new TextDecoder(charset)
    } catch (err) {
      throw new TallyError(
        ERR.UNSUPPORTED_CHARSET,
        `charset ${JSON.stringify(charset.slice(0, 64))} is not supported: send UTF-8`,
        { where: 'content-type', cause: err },
      )
    }
    decoders.set(charset, decoder)
  }
  return decoder.decode(bytes)
}
