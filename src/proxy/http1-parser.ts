/**
 * A strict HTTP/1.1 message-head parser and chunked-body decoder (RFC 9112)
 * for the raw-socket data plane: request heads from clients, response heads
 * from backends. Works on Buffers with indexOf and latin1 slices; allocates
 * one object and one header map per message, or in raw mode (field lines
 * passed through) nothing in the common case: the head is filled into an
 * object the connection reuses, the target and field values are left where
 * they are. Anything ambiguous that could
 * smuggle a request (conflicting Content-Length, Content-Length with
 * Transfer-Encoding, a Transfer-Encoding other than `chunked`, obs-fold,
 * whitespace before the colon, bare CR or LF) is rejected.
 */
import { HoldfastError } from '../errors.ts';

/** Lowercase header name → value; repeated fields joined with `, ` (cookies with `; `, set-cookie kept as a list). */
export type ParsedHeaders = Record<string, string | string[]>;

export interface MessageHead {
  /** Request: method; response: undefined. */
  method: string;
  /** Request: target; response: ''. */
  target: string;
  /** Response status (0 for requests). */
  status: number;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor: number;
  headers: ParsedHeaders;
  /** Header fields in the head (for the count limit). */
  count: number;
  /** Body framing: -1 none given (requests: no body; responses: until close), ≥0 Content-Length. */
  contentLength: number;
  chunked: boolean;
  /** The connection may stay open after this message (HTTP/1.1 without `close`, HTTP/1.0 with `keep-alive`). */
  keepAlive: boolean;
  /** Offset just past the blank line ending the head. */
  end: number;
}

/** Why a head was refused; `status` is what a client is told (400 or 431). */
export class HttpParseError extends HoldfastError {
  readonly status: 400 | 431;
  readonly reason: 'bad-request' | 'header-too-large' | 'too-many-headers';
  constructor(reason: 'bad-request' | 'header-too-large' | 'too-many-headers', message: string) {
    super('HOLDFAST_ERR_HTTP_PARSE', message);
    this.reason = reason;
    this.status = reason === 'bad-request' ? 400 : 431;
  }
}

export interface HeadLimits {
  maxSize: number;
  maxCount: number;
}

/**
 * Where a head's field lines are, for passing them through without a header
 * map (`parseHead` fills it in place of `headers`). Reused: one per upstream
 * connection (responses) or client connection (requests).
 */
export interface RawFields {
  /** Offset of the first field line, and of the CRLF that ends the head. */
  start: number;
  end: number;
  /** [from, to) offsets of the field lines a proxy drops (hop-by-hop and framing), in order: the first `dropped` numbers (the array is reused). */
  readonly drop: number[];
  dropped: number;
  /**
   * The fields cannot be passed through line by line: parse them into a map
   * instead. Responses: a Connection option naming other fields, a repeated
   * Content-Length. Requests: the same, and fields a proxy rewrites or acts on
   * (Upgrade, Expect, TE, X-Forwarded-For, Forwarded).
   */
  opaque: boolean;
  /**
   * Requests: the Host value ('' when none). The string of the previous head
   * is kept when the value has the same bytes (no new string per request).
   */
  host?: string;
  /** Requests: where the target is in the start line (`parseHead` leaves `target` empty). */
  targetStart?: number;
  targetEnd?: number;
  /** Requests: an X-Forwarded-Proto field is present (this hop adds none). */
  forwardedProto?: boolean;
}

/** Names the raw mode looks at, by id. */
const N_OTHER = 0;
const N_CONTENT_LENGTH = 1;
const N_TRANSFER_ENCODING = 2;
const N_CONNECTION = 3;
const N_HOST = 4;
/** Hop-by-hop fields never forwarded, either way. */
const N_DROP = 5;
/** Upgrade: dropped from responses; a request with it is handled from a map. */
const N_UPGRADE = 6;
/** Hop-by-hop fields only requests drop (responses pass them on, as node:http would). */
const N_REQUEST_DROP = 7;
/** Request fields this hop rewrites or acts on: such a request is handled from a map. */
const N_REQUEST_OPAQUE = 8;
const N_FORWARDED_PROTO = 9;
/** TE: handled from a map in a request (like N_REQUEST_OPAQUE) and in a response (an HTTP/2 client must not get it). */
const N_TE = 10;
const NAMES: readonly (readonly [Buffer, number])[] = [
  ['content-length', N_CONTENT_LENGTH],
  ['transfer-encoding', N_TRANSFER_ENCODING],
  ['connection', N_CONNECTION],
  ['host', N_HOST],
  ['keep-alive', N_DROP],
  ['proxy-connection', N_DROP],
  ['trailer', N_DROP],
  ['upgrade', N_UPGRADE],
  ['proxy-authenticate', N_REQUEST_DROP],
  ['proxy-authorization', N_REQUEST_DROP],
  ['http2-settings', N_REQUEST_DROP],
  ['expect', N_REQUEST_OPAQUE],
  ['te', N_TE],
  ['x-forwarded-for', N_REQUEST_OPAQUE],
  ['forwarded', N_REQUEST_OPAQUE],
  ['x-forwarded-proto', N_FORWARDED_PROTO],
].map(([name, id]) => [Buffer.from(name as string, 'latin1'), id as number] as const);
/** Candidates by name length. */
const NAMES_BY_LENGTH: (readonly [Buffer, number])[][] = [];
for (const n of NAMES) (NAMES_BY_LENGTH[n[0].length] ??= []).push(n);

/** The id of the field name at `buf[from..to)` (case-insensitive), N_OTHER for any other name. */
function nameId(buf: Buffer, from: number, to: number): number {
  const candidates = NAMES_BY_LENGTH[to - from];
  if (candidates === undefined) return N_OTHER;
  outer: for (const [name, id] of candidates) {
    // Names are tchar only: `| 0x20` folds A-Z to a-z and leaves '-' (and no other tchar) on '-'.
    for (let k = 0; k < name.length; k++) if ((buf[from + k]! | 0x20) !== name[k]) continue outer;
    return id;
  }
  return N_OTHER;
}

/** `HTTP/1.` at `buf[i]`. */
function isHttp1(buf: Buffer, i: number): boolean {
  return (
    buf[i] === 72 &&
    buf[i + 1] === 84 &&
    buf[i + 2] === 84 &&
    buf[i + 3] === 80 &&
    buf[i + 4] === 47 &&
    buf[i + 5] === 49 &&
    buf[i + 6] === 46
  );
}

/** The method at `buf[from..to)`: the common ones without a new string. */
function methodName(buf: Buffer, from: number, to: number): string {
  const n = to - from;
  const c = buf[from];
  if (n === 3 && c === 71 && buf[from + 1] === 69 && buf[from + 2] === 84) return 'GET';
  if (n === 4 && c === 80 && buf[from + 1] === 79 && buf[from + 2] === 83 && buf[from + 3] === 84) {
    return 'POST';
  }
  return buf.toString('latin1', from, to);
}

const NO_HEADERS: ParsedHeaders = Object.freeze({});

/** tchar (RFC 9110 §5.6.2) lookup. */
const TCHAR = new Uint8Array(256);
for (let c = 0; c < 256; c++) {
  const ch = String.fromCharCode(c);
  TCHAR[c] = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]$/.test(ch) ? 1 : 0;
}
/** Bytes allowed in a field value: VCHAR, obs-text, SP, HTAB. */
const VCHAR = new Uint8Array(256);
for (let c = 0; c < 256; c++) VCHAR[c] = c === 9 || (c >= 32 && c !== 127) ? 1 : 0;
/** Bytes allowed in a request target: visible ASCII (no spaces or controls). */
const TARGET = new Uint8Array(256);
for (let c = 0; c < 256; c++) TARGET[c] = c > 32 && c < 127 ? 1 : 0;

const CR = 13;
const LF = 10;

/**
 * Where the blank line ending a head starts (the CRLFCRLF in `buf[start..limit)`), or -1.
 *
 * A scan in JS, not `buf.indexOf`: for heads of a few hundred bytes the call
 * into C++ (argument checks, buffer lookups, a string search set up per call)
 * cost more than the search, about 8 % of the proxy's user CPU per HTTP/1.1
 * request. The scan looks at the byte where a terminator would end: a byte
 * that is neither CR nor LF rules out the four windows that hold it, so most
 * steps skip four bytes.
 */
export function headEnd(buf: Buffer, start: number, limit: number): number {
  let i = start + 3;
  while (i < limit) {
    const c = buf[i];
    if (c === LF) {
      if (buf[i - 1] === CR && buf[i - 2] === LF && buf[i - 3] === CR) return i - 3;
      i += 2; // a window ending at i + 1 would need a CR here
    } else if (c === CR) i += 1;
    else i += 4;
  }
  return -1;
}

function bad(message: string): never {
  throw new HttpParseError('bad-request', message);
}

/** A head to fill in place (`parseHead`'s `out`): one per connection, reused. */
export function emptyHead(): MessageHead {
  return {
    method: '',
    target: '',
    status: 0,
    minor: 0,
    headers: NO_HEADERS,
    count: 0,
    contentLength: -1,
    chunked: false,
    keepAlive: false,
    end: 0,
  };
}

/** Do the bytes `buf[from..to)` spell `s` (latin1)? */
function sameBytes(buf: Buffer, from: number, to: number, s: string): boolean {
  if (to - from !== s.length) return false;
  for (let k = 0; k < s.length; k++) if (buf[from + k] !== s.charCodeAt(k)) return false;
  return true;
}

/** Do the bytes `buf[from..to)` spell the lower-case `s`, in any case? */
function sameBytesFolded(buf: Buffer, from: number, to: number, s: string): boolean {
  if (to - from !== s.length) return false;
  // Only for letters and '-': `| 0x20` folds A-Z to a-z and leaves them.
  for (let k = 0; k < s.length; k++) if ((buf[from + k]! | 0x20) !== s.charCodeAt(k)) return false;
  return true;
}

/** A Content-Length value (1 to 15 digits) at `buf[from..to)`, or -1 if it is not one. */
function lengthValue(buf: Buffer, from: number, to: number): number {
  if (to <= from || to - from > 15) return -1;
  let n = 0;
  for (let k = from; k < to; k++) {
    const d = buf[k]! - 48;
    if (d < 0 || d > 9) return -1;
    n = n * 10 + d;
  }
  return n;
}

/**
 * Parse the head at `buf[start..limit)`. Returns undefined when the blank line has
 * not arrived yet (and the bytes so far are within `limits.maxSize`); throws
 * HttpParseError on a malformed or oversize head. With `raw`, the fields are
 * checked just the same but no header map is built (`headers` is empty):
 * `raw` says where the field lines are instead, and for a request where its
 * target is (`target` is left empty). `out` (raw mode only): the head is
 * filled into it and returned, instead of a new object.
 */
export function parseHead(
  buf: Buffer,
  start: number,
  isRequest: boolean,
  limits: HeadLimits,
  limit: number = buf.length,
  raw?: RawFields,
  out?: MessageHead,
): MessageHead | undefined {
  const stop = headEnd(buf, start, limit);
  if (stop < 0) {
    if (limit - start > limits.maxSize) throw new HttpParseError('header-too-large', 'header too large');
    return undefined;
  }
  if (stop + 4 - start > limits.maxSize) throw new HttpParseError('header-too-large', 'header too large');
  // Start line. Every byte is checked, and lines are found by the same scans
  // (a CR ends each scan: at the latest the one at `stop`).
  let pos: number;
  let method = '';
  let target = '';
  let status = 0;
  let minor: number;
  if (isRequest) {
    let i = start;
    while (TCHAR[buf[i]!] === 1) i++;
    if (i === start || buf[i] !== 32) bad('bad method');
    method = methodName(buf, start, i);
    const t0 = ++i;
    while (TARGET[buf[i]!] === 1) i++;
    if (i === t0 || buf[i] !== 32) bad('bad request target');
    if (raw === undefined) target = buf.toString('latin1', t0, i);
    else {
      raw.targetStart = t0;
      raw.targetEnd = i;
    }
    i++;
    const m = buf[i + 7];
    if (
      !isHttp1(buf, i) ||
      (m !== 49 /* 1 */ && m !== 48) /* 0 */ ||
      (buf[i + 8] !== CR && buf[i + 8] !== LF)
    ) {
      bad('bad HTTP version');
    }
    if (buf[i + 8] !== CR || buf[i + 9] !== LF) bad('start line does not end with CRLF');
    minor = m - 48;
    pos = i + 10;
  } else {
    // HTTP/1.x SSS reason
    if (!isHttp1(buf, start)) bad('bad status line');
    const m = buf[start + 7]!;
    if (m !== 48 && m !== 49) bad('bad status line');
    if (buf[start + 8] !== 32) bad('bad status line');
    minor = m - 48;
    for (let k = start + 9; k < start + 12; k++) {
      const d = buf[k]!;
      if (d < 48 || d > 57) bad('bad status code');
      status = status * 10 + d - 48;
    }
    let k = start + 12;
    if (buf[k] !== CR) {
      if (buf[k] !== 32) bad('bad status line');
      while (VCHAR[buf[++k]!] === 1);
      if (buf[k] !== CR && buf[k] !== LF) bad('bad reason phrase');
    }
    if (buf[k] !== CR || buf[k + 1] !== LF) bad('start line does not end with CRLF');
    pos = k + 2;
  }
  // Header fields.
  const headers: ParsedHeaders = raw === undefined ? {} : NO_HEADERS;
  const prevHost = raw?.host ?? '';
  if (raw !== undefined) {
    raw.start = pos;
    raw.end = stop + 2;
    raw.dropped = 0;
    raw.opaque = false;
    if (isRequest) {
      raw.host = '';
      raw.forwardedProto = false;
    }
  }
  let count = 0;
  let contentLength = -1;
  let chunked = false;
  let sawTe = false;
  let connection = '';
  let hosts = 0;
  const end = stop + 2; // the CRLF ending the last field line (or the start line)
  while (pos < end) {
    const first = buf[pos];
    if (first === 32 || first === 9) bad('obsolete line folding');
    let i = pos;
    let upper = false;
    for (let c = buf[i]!; TCHAR[c] === 1; c = buf[++i]!) if (c >= 65 && c <= 90) upper = true;
    if (i === pos || buf[i] !== 58 /* : */) bad('bad header field name');
    if (++count > limits.maxCount) throw new HttpParseError('too-many-headers', 'too many header fields');
    let v0 = i + 1;
    while (buf[v0] === 32 || buf[v0] === 9) v0++;
    let le = v0;
    while (VCHAR[buf[le]!] === 1) le++;
    if (buf[le] !== CR || buf[le + 1] !== LF) {
      bad(
        buf[le] === CR || buf[le] === LF
          ? 'field line does not end with CRLF'
          : 'bad character in a header value',
      );
    }
    let v1 = le;
    while (v1 > v0 && (buf[v1 - 1] === 32 || buf[v1 - 1] === 9)) v1--;
    const lineStart = pos;
    pos = le + 2;
    let id = nameId(buf, lineStart, i);
    // Framing and Connection: one set of checks, on the bytes, for both modes.
    switch (id) {
      case N_CONTENT_LENGTH: {
        const n = lengthValue(buf, v0, v1);
        if (n < 0) bad('bad Content-Length');
        if (contentLength >= 0) {
          if (contentLength !== n) bad('conflicting Content-Length');
          if (raw !== undefined) raw.opaque = true; // repeated: forwarded once, from the map
        }
        contentLength = n;
        break;
      }
      case N_TRANSFER_ENCODING:
        if (sawTe || !sameBytesFolded(buf, v0, v1, 'chunked')) bad('unsupported Transfer-Encoding');
        sawTe = true;
        chunked = true;
        break;
      case N_CONNECTION: {
        // The usual values without a new string.
        const v = sameBytesFolded(buf, v0, v1, 'keep-alive')
          ? 'keep-alive'
          : sameBytesFolded(buf, v0, v1, 'close')
            ? 'close'
            : buf.toString('latin1', v0, v1).toLowerCase();
        connection = connection === '' ? v : `${connection}, ${v}`;
        break;
      }
      case N_HOST:
        hosts++;
        break;
    }
    if (raw === undefined) {
      const rawName = buf.toString('latin1', lineStart, i);
      const name = upper ? rawName.toLowerCase() : rawName;
      const value = buf.toString('latin1', v0, v1);
      const prev = headers[name];
      // A repeated Content-Length (the same, as checked above) is kept once.
      if (prev === undefined || id === N_CONTENT_LENGTH)
        headers[name] = name === 'set-cookie' ? [value] : value;
      else if (typeof prev !== 'string') prev.push(value);
      else headers[name] = `${prev}${name === 'cookie' ? '; ' : ', '}${value}`;
      continue;
    }
    // Raw mode: which lines pass through, and which make the head take the map path.
    if (id >= N_REQUEST_DROP && !isRequest) {
      // Kept in a response, but hop-by-hop ones (te, proxy-authenticate, http2-settings) must not
      // reach an HTTP/2 client: such rare heads take the header-map path, which leaves them out.
      if (id === N_REQUEST_DROP || id === N_TE) raw.opaque = true;
      id = N_OTHER;
    }
    switch (id) {
      case N_OTHER:
      case N_CONTENT_LENGTH:
        continue;
      case N_HOST:
        if (isRequest)
          raw.host = sameBytes(buf, v0, v1, prevHost) ? prevHost : buf.toString('latin1', v0, v1);
        continue;
      case N_UPGRADE:
        if (isRequest) {
          raw.opaque = true;
          continue;
        }
        break;
      case N_REQUEST_OPAQUE:
      case N_TE:
        raw.opaque = true;
        continue;
      case N_FORWARDED_PROTO:
        raw.forwardedProto = true;
        continue;
    }
    // Transfer-Encoding, Connection, and the other hop-by-hop fields.
    raw.drop[raw.dropped++] = lineStart;
    raw.drop[raw.dropped++] = pos;
  }
  if (chunked && contentLength >= 0) bad('Content-Length together with Transfer-Encoding');
  if (chunked && minor === 0) bad('Transfer-Encoding in HTTP/1.0');
  if (isRequest && (hosts > 1 || (hosts === 0 && minor === 1))) bad('a request needs exactly one Host');
  if (raw !== undefined && connection !== '' && connection !== 'keep-alive' && connection !== 'close') {
    // Connection may name other fields to drop: only the usual options pass through line by line.
    for (const part of connection.split(',')) {
      const t = part.trim();
      if (t !== 'keep-alive' && t !== 'close' && t !== '') raw.opaque = true;
    }
  }
  const keepAlive = minor === 1 ? !hasToken(connection, 'close') : hasToken(connection, 'keep-alive');
  const head = out ?? emptyHead();
  head.method = method;
  head.target = target;
  head.status = status;
  head.minor = minor;
  head.headers = headers;
  head.count = count;
  head.contentLength = contentLength;
  head.chunked = chunked;
  head.keepAlive = keepAlive;
  head.end = stop + 4;
  return head;
}

/** Does a comma-separated, lowercased list contain `token`? */
export function hasToken(list: string, token: string): boolean {
  if (list === '') return false;
  if (list === token) return true;
  if (!list.includes(',')) return list.trim() === token;
  for (const part of list.split(',')) if (part.trim() === token) return true;
  return false;
}

/** Where decoded chunked data goes. */
export interface ChunkSink {
  chunkData(data: Buffer): void;
}

const S_SIZE = 0;
const S_EXT = 1;
const S_SIZE_LF = 2;
const S_DATA = 3;
const S_DATA_CR = 4;
const S_DATA_LF = 5;
const S_TRAILER = 6;
const S_DONE = 7;

/** Hex digit value, or -1. */
function hex(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  const l = c | 0x20;
  if (l >= 97 && l <= 102) return l - 87;
  return -1;
}

/**
 * Incremental `Transfer-Encoding: chunked` decoder. Chunk extensions are
 * skipped (validated for bare CR/LF); trailer fields are collected raw, up to
 * `maxTrailer` bytes.
 */
export class ChunkedDecoder {
  #state = S_SIZE;
  #size = 0;
  #digits = 0;
  #remaining = 0;
  #trailer: Buffer[] | undefined;
  #trailerLen = 0;
  #lineLen = 0;
  #sawCr = false;
  readonly #maxTrailer: number;

  constructor(maxTrailer: number) {
    this.#maxTrailer = maxTrailer;
  }

  get done(): boolean {
    return this.#state === S_DONE;
  }

  /**
   * Decode `buf[start..end)`; data goes to `sink`. Returns the offset where
   * decoding stopped (the end of the message when `done`, else `end`).
   * Throws HttpParseError on malformed framing.
   */
  feed(buf: Buffer, start: number, end: number, sink: ChunkSink): number {
    let i = start;
    while (i < end) {
      switch (this.#state) {
        case S_SIZE: {
          const c = buf[i]!;
          const h = hex(c);
          if (h >= 0) {
            if (++this.#digits > 12) bad('chunk size too large');
            this.#size = this.#size * 16 + h;
            i++;
          } else if (this.#digits === 0) {
            bad('bad chunk size');
          } else if (c === CR) {
            this.#state = S_SIZE_LF;
            i++;
          } else if (c === 59 /* ; */ || c === 32 || c === 9) {
            this.#state = S_EXT;
            i++;
          } else bad('bad chunk size');
          break;
        }
        case S_EXT: {
          const c = buf[i]!;
          if (c === CR) this.#state = S_SIZE_LF;
          else if (c === LF || (c < 32 && c !== 9) || c === 127) bad('bad chunk extension');
          i++;
          break;
        }
        case S_SIZE_LF:
          if (buf[i] !== LF) bad('chunk size line does not end with CRLF');
          i++;
          this.#digits = 0;
          if (this.#size === 0) {
            this.#state = S_TRAILER;
          } else {
            this.#remaining = this.#size;
            this.#size = 0;
            this.#state = S_DATA;
          }
          break;
        case S_DATA: {
          const n = Math.min(this.#remaining, end - i);
          sink.chunkData(buf.subarray(i, i + n));
          i += n;
          this.#remaining -= n;
          if (this.#remaining === 0) this.#state = S_DATA_CR;
          break;
        }
        case S_DATA_CR:
          if (buf[i] !== CR) bad('chunk data does not end with CRLF');
          i++;
          this.#state = S_DATA_LF;
          break;
        case S_DATA_LF:
          if (buf[i] !== LF) bad('chunk data does not end with CRLF');
          i++;
          this.#state = S_SIZE;
          break;
        case S_TRAILER: {
          // Trailer section: field lines, then an empty line (byte by byte: it may be split anywhere).
          const from = i;
          let finished = false;
          while (i < end) {
            const c = buf[i++]!;
            if (c === LF) {
              if (!this.#sawCr) bad('bare LF in trailers');
              this.#sawCr = false;
              if (this.#lineLen === 0) {
                finished = true;
                break;
              }
              this.#lineLen = 0;
            } else if (this.#sawCr) bad('bare CR in trailers');
            else if (c === CR) this.#sawCr = true;
            else this.#lineLen++;
          }
          this.#trailerLen += i - from;
          if (this.#trailerLen > this.#maxTrailer) bad('trailer section too large');
          if (finished) {
            // Kept with the final empty line (it may have been split from its CR): trailers() skips it.
            if (this.#trailer !== undefined || i - 2 > from)
              (this.#trailer ??= []).push(Buffer.from(buf.subarray(from, i)));
            this.#state = S_DONE;
            return i;
          }
          (this.#trailer ??= []).push(Buffer.from(buf.subarray(from, i)));
          break;
        }
        default:
          return i;
      }
    }
    return i;
  }

  /** Trailer fields (lowercase names), once done; undefined when there were none. */
  trailers(): ParsedHeaders | undefined {
    if (this.#trailer === undefined) return undefined;
    const text = Buffer.concat(this.#trailer).toString('latin1');
    const out: ParsedHeaders = {};
    for (const line of text.split('\r\n')) {
      if (line === '') continue;
      const colon = line.indexOf(':');
      if (colon <= 0 || line.includes('\n') || line.includes('\r')) bad('bad trailer field');
      const name = line.slice(0, colon);
      for (let k = 0; k < name.length; k++) if (TCHAR[name.charCodeAt(k)] !== 1) bad('bad trailer field');
      out[name.toLowerCase()] = line.slice(colon + 1).trim();
    }
    return out;
  }
}
