/**
 * HPACK (RFC 7541). The decoder keeps the dynamic table the client's encoder
 * fills and hands each field to a sink as it is decoded (no list is built).
 * The encoder writes responses without the dynamic table: `:status` and
 * names from the static table where they are in it, otherwise literals
 * without indexing, no Huffman (the proxy forwards what it is given; bytes
 * spent on a literal cost less than the CPU to compress it).
 */
import { huffmanDecode } from './huffman.ts';

/** The static table (RFC 7541 Appendix A); index 0 is unused. */
const STATIC_TABLE: readonly (readonly [string, string])[] = [
  ['', ''],
  [':authority', ''],
  [':method', 'GET'],
  [':method', 'POST'],
  [':path', '/'],
  [':path', '/index.html'],
  [':scheme', 'http'],
  [':scheme', 'https'],
  [':status', '200'],
  [':status', '204'],
  [':status', '206'],
  [':status', '304'],
  [':status', '400'],
  [':status', '404'],
  [':status', '500'],
  ['accept-charset', ''],
  ['accept-encoding', 'gzip, deflate'],
  ['accept-language', ''],
  ['accept-ranges', ''],
  ['accept', ''],
  ['access-control-allow-origin', ''],
  ['age', ''],
  ['allow', ''],
  ['authorization', ''],
  ['cache-control', ''],
  ['content-disposition', ''],
  ['content-encoding', ''],
  ['content-language', ''],
  ['content-length', ''],
  ['content-location', ''],
  ['content-range', ''],
  ['content-type', ''],
  ['cookie', ''],
  ['date', ''],
  ['etag', ''],
  ['expect', ''],
  ['expires', ''],
  ['from', ''],
  ['host', ''],
  ['if-match', ''],
  ['if-modified-since', ''],
  ['if-none-match', ''],
  ['if-range', ''],
  ['if-unmodified-since', ''],
  ['last-modified', ''],
  ['link', ''],
  ['location', ''],
  ['max-forwards', ''],
  ['proxy-authenticate', ''],
  ['proxy-authorization', ''],
  ['range', ''],
  ['referer', ''],
  ['refresh', ''],
  ['retry-after', ''],
  ['server', ''],
  ['set-cookie', ''],
  ['strict-transport-security', ''],
  ['transfer-encoding', ''],
  ['user-agent', ''],
  ['vary', ''],
  ['via', ''],
  ['www-authenticate', ''],
];
const STATIC_COUNT = 61;
const STATIC_NAMES: string[] = STATIC_TABLE.map((e) => e[0]);
const STATIC_VALUES: string[] = STATIC_TABLE.map((e) => e[1]);

/** First static-table index of each name (for the encoder). */
const STATIC_NAME_INDEX = new Map<string, number>();
for (let i = STATIC_COUNT; i >= 1; i--) STATIC_NAME_INDEX.set(STATIC_NAMES[i]!, i);

/** Receives decoded fields, in order. */
export interface HeaderSink {
  field(name: string, value: string): void;
}

/** Thrown nowhere: decoding failures are reported by `decode` returning false (COMPRESSION_ERROR). */
const ENTRY_OVERHEAD = 32;

/** HPACK decoder: one per connection (its dynamic table follows the client's encoder). */
export class HpackDecoder {
  /** The most SETTINGS_HEADER_TABLE_SIZE we advertised (a size update may not exceed it). */
  readonly #limit: number;
  #maxSize: number;
  #size = 0;
  /** Entries, oldest first, from `#first` to the end of the arrays. */
  #names: string[] = [];
  #values: string[] = [];
  #first = 0;
  /** Read position while decoding (avoids returning pairs). */
  #pos = 0;

  constructor(maxTableSize = 4096) {
    this.#limit = maxTableSize;
    this.#maxSize = maxTableSize;
  }

  /** Bytes the dynamic table holds now (RFC 7541 §4.1 accounting). */
  get size(): number {
    return this.#size;
  }

  /** Entries in the dynamic table, newest first (tests). */
  entries(): [string, string][] {
    const out: [string, string][] = [];
    for (let i = this.#names.length - 1; i >= this.#first; i--) out.push([this.#names[i]!, this.#values[i]!]);
    return out;
  }

  /**
   * Decode the header block `buf[start, end)`, handing each field to `sink`.
   * False on any decoding error (the connection then fails with
   * COMPRESSION_ERROR: the table is out of step for good).
   */
  decode(buf: Buffer, start: number, end: number, sink: HeaderSink): boolean {
    this.#pos = start;
    let fields = false;
    while (this.#pos < end) {
      const b = buf[this.#pos]!;
      if (b >= 0x80) {
        // Indexed field (§6.1).
        const index = this.#int(buf, end, 7);
        if (index <= 0) return false;
        if (index <= STATIC_COUNT) sink.field(STATIC_NAMES[index]!, STATIC_VALUES[index]!);
        else {
          const at = this.#at(index);
          if (at < 0) return false;
          sink.field(this.#names[at]!, this.#values[at]!);
        }
        fields = true;
      } else if (b >= 0x40) {
        // Literal with incremental indexing (§6.2.1).
        const index = this.#int(buf, end, 6);
        if (index < 0) return false;
        const name = index === 0 ? this.#string(buf, end) : this.#name(index);
        if (name === undefined) return false;
        const value = this.#string(buf, end);
        if (value === undefined) return false;
        this.#insert(name, value);
        sink.field(name, value);
        fields = true;
      } else if (b >= 0x20) {
        // Dynamic table size update (§6.3): only before the first field of a block.
        if (fields) return false;
        const size = this.#int(buf, end, 5);
        if (size < 0 || size > this.#limit) return false;
        this.#maxSize = size;
        this.#evict(0);
      } else {
        // Literal without indexing (0000) or never indexed (0001) (§6.2.2, §6.2.3).
        const index = this.#int(buf, end, 4);
        if (index < 0) return false;
        const name = index === 0 ? this.#string(buf, end) : this.#name(index);
        if (name === undefined) return false;
        const value = this.#string(buf, end);
        if (value === undefined) return false;
        sink.field(name, value);
        fields = true;
      }
    }
    return true;
  }

  /** An integer with an N-bit prefix (§5.1); -1 when truncated or beyond 2^31. */
  #int(buf: Buffer, end: number, prefix: number): number {
    const mask = (1 << prefix) - 1;
    let v = buf[this.#pos++]! & mask;
    if (v < mask) return v;
    let shift = 0;
    for (;;) {
      if (this.#pos >= end || shift > 28) return -1;
      const c = buf[this.#pos++]!;
      v += (c & 0x7f) * 2 ** shift;
      if ((c & 0x80) === 0) break;
      shift += 7;
    }
    return v > 0x7fff_ffff ? -1 : v;
  }

  /** A string literal (§5.2), as latin1. */
  #string(buf: Buffer, end: number): string | undefined {
    if (this.#pos >= end) return undefined;
    const huffman = (buf[this.#pos]! & 0x80) !== 0;
    const len = this.#int(buf, end, 7);
    if (len < 0 || this.#pos + len > end) return undefined;
    const at = this.#pos;
    this.#pos += len;
    return huffman ? huffmanDecode(buf, at, at + len) : buf.toString('latin1', at, at + len);
  }

  #name(index: number): string | undefined {
    if (index <= STATIC_COUNT) return STATIC_NAMES[index];
    const at = this.#at(index);
    return at < 0 ? undefined : this.#names[at];
  }

  /** Array position of dynamic index `index` (62 = newest), -1 when out of range. */
  #at(index: number): number {
    const at = this.#names.length - 1 - (index - STATIC_COUNT - 1);
    return at >= this.#first ? at : -1;
  }

  #insert(name: string, value: string): void {
    const size = name.length + value.length + ENTRY_OVERHEAD;
    if (size > this.#maxSize) {
      // Larger than the whole table: it empties the table and is not added (§4.4).
      this.#evict(this.#maxSize);
      return;
    }
    this.#evict(size);
    this.#names.push(name);
    this.#values.push(value);
    this.#size += size;
  }

  /** Evict oldest entries until `room` more bytes fit. */
  #evict(room: number): void {
    const names = this.#names;
    const values = this.#values;
    while (this.#size + room > this.#maxSize && this.#first < names.length) {
      this.#size -= names[this.#first]!.length + values[this.#first]!.length + ENTRY_OVERHEAD;
      this.#first++;
    }
    if (this.#first === names.length) {
      names.length = 0;
      values.length = 0;
      this.#first = 0;
      this.#size = 0;
    } else if (this.#first > 64 && this.#first * 2 > names.length) {
      names.splice(0, this.#first);
      values.splice(0, this.#first);
      this.#first = 0;
    }
  }
}

/** `:status` values with a static index (RFC 7541 Appendix A). */
const STATUS_INDEX: Record<number, number> = { 200: 8, 204: 9, 206: 10, 304: 11, 400: 12, 404: 13, 500: 14 };

/**
 * Builds one header block at a time in a buffer shared by every connection
 * (blocks are built and copied out synchronously). `begin()` starts one,
 * `block()` returns a view valid until the next `begin()`.
 */
export class HpackEncoder {
  #buf = Buffer.allocUnsafeSlow(16 * 1024);
  #pos = 0;

  begin(): void {
    this.#pos = 0;
  }

  block(): Buffer {
    return this.#buf.subarray(0, this.#pos);
  }

  #room(n: number): void {
    if (this.#pos + n <= this.#buf.length) return;
    const bigger = Buffer.allocUnsafeSlow(Math.max(this.#buf.length * 2, this.#pos + n));
    this.#buf.copy(bigger, 0, 0, this.#pos);
    this.#buf = bigger;
  }

  /** An integer with an N-bit prefix, `first` holding the pattern bits above it. */
  #int(first: number, prefix: number, v: number): void {
    const buf = this.#buf;
    const mask = (1 << prefix) - 1;
    if (v < mask) {
      buf[this.#pos++] = first | v;
      return;
    }
    buf[this.#pos++] = first | mask;
    v -= mask;
    while (v >= 0x80) {
      buf[this.#pos++] = (v & 0x7f) | 0x80;
      v = Math.floor(v / 128);
    }
    buf[this.#pos++] = v;
  }

  status(code: number): void {
    this.#room(8);
    const index = STATUS_INDEX[code];
    if (index !== undefined) {
      this.#buf[this.#pos++] = 0x80 | index;
      return;
    }
    // Literal without indexing, name :status (index 8), value three digits.
    this.#buf[this.#pos++] = 0x08;
    this.#buf[this.#pos++] = 3;
    this.#pos += this.#buf.write(String(code).padStart(3, '0').slice(-3), this.#pos, 'latin1');
  }

  /** A field with a lowercase name (latin1 strings). */
  field(name: string, value: string): void {
    this.#room(name.length + value.length + 12);
    const index = STATIC_NAME_INDEX.get(name);
    if (index !== undefined && index > 7) this.#int(0x00, 4, index);
    else {
      this.#buf[this.#pos++] = 0x00;
      this.#int(0x00, 7, name.length);
      this.#pos += this.#buf.write(name, this.#pos, 'latin1');
    }
    this.#int(0x00, 7, value.length);
    this.#pos += this.#buf.write(value, this.#pos, 'latin1');
  }

  /**
   * A field copied from HTTP/1.1 field-line bytes: name `src[n0, n1)` (made
   * lowercase), value `src[v0, v1)`.
   */
  fieldBytes(src: Buffer, n0: number, n1: number, v0: number, v1: number): void {
    this.#room(n1 - n0 + v1 - v0 + 12);
    const buf = this.#buf;
    buf[this.#pos++] = 0x00;
    this.#int(0x00, 7, n1 - n0);
    for (let i = n0; i < n1; i++) {
      const c = src[i]!;
      buf[this.#pos++] = c >= 0x41 && c <= 0x5a ? c | 0x20 : c;
    }
    this.#int(0x00, 7, v1 - v0);
    this.#pos += src.copy(buf, this.#pos, v0, v1);
  }
}

/** The encoder every connection shares (blocks are built and copied out synchronously). */
export const sharedEncoder = new HpackEncoder();
