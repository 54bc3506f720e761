/**
 * Hashing for balancing decisions, allocation-free.
 *
 * MurmurHash3 x86_32 (Austin Appleby, public domain algorithm), written here
 * with `Math.imul` and checked against the published test vectors. On top of
 * it: the 5-tuple, the client IP under a netmask (IPv4 and IPv6), and
 * arbitrary string keys (header, cookie, SNI), which are hashed as their
 * UTF-8 bytes without building a buffer.
 *
 * Functions named `*31` return a non-negative 31-bit integer, so that a
 * following `% m` stays in small-integer arithmetic instead of floating point.
 *
 * The IP helpers parse into a module-level scratch array; they are not
 * re-entrant across awaits (there are none here) and allocate nothing.
 */

const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;

function mixK(k: number): number {
  k = Math.imul(k, C1);
  k = (k << 15) | (k >>> 17);
  return Math.imul(k, C2);
}

function mixH(h: number, k: number): number {
  h ^= mixK(k);
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

function fmix(h: number, length: number): number {
  h ^= length;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** MurmurHash3 x86_32 of `bytes[start, end)`, as an unsigned 32-bit integer. */
export function murmur3(bytes: Uint8Array, seed = 0, start = 0, end = bytes.length): number {
  let h = seed | 0;
  const blocksEnd = start + ((end - start) & ~3);
  let i = start;
  for (; i < blocksEnd; i += 4) {
    h = mixH(h, bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24));
  }
  const rest = end - i;
  if (rest > 0) {
    let k = bytes[i]!;
    if (rest > 1) k ^= bytes[i + 1]! << 8;
    if (rest > 2) k ^= bytes[i + 2]! << 16;
    h ^= mixK(k);
  }
  return fmix(h, end - start);
}

// Streaming state for string hashing: bytes are pushed one at a time into a
// little-endian 32-bit accumulator, exactly as murmur3 would read them from a
// buffer holding the UTF-8 encoding.
let sH = 0;
let sAcc = 0;
let sN = 0;
let sLen = 0;

function pushByte(b: number): void {
  sAcc |= b << (sN << 3);
  sLen++;
  if (++sN === 4) {
    sH = mixH(sH, sAcc);
    sAcc = 0;
    sN = 0;
  }
}

function pushString(s: string, start: number, end: number): void {
  for (let i = start; i < end; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) {
      pushByte(c);
    } else if (c < 0x800) {
      pushByte(0xc0 | (c >> 6));
      pushByte(0x80 | (c & 0x3f));
    } else if (c >= 0xd800 && c <= 0xdbff && i + 1 < end && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      c = 0x10000 + ((c - 0xd800) << 10) + (s.charCodeAt(++i) - 0xdc00);
      pushByte(0xf0 | (c >> 18));
      pushByte(0x80 | ((c >> 12) & 0x3f));
      pushByte(0x80 | ((c >> 6) & 0x3f));
      pushByte(0x80 | (c & 0x3f));
    } else {
      // Lone surrogates encode as U+FFFD, as TextEncoder does.
      if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
      pushByte(0xe0 | (c >> 12));
      pushByte(0x80 | ((c >> 6) & 0x3f));
      pushByte(0x80 | (c & 0x3f));
    }
  }
}

function beginStream(seed: number): void {
  sH = seed | 0;
  sAcc = 0;
  sN = 0;
  sLen = 0;
}

function endStream(): number {
  let h = sH;
  if (sN > 0) h ^= mixK(sAcc);
  return fmix(h, sLen);
}

/** MurmurHash3 x86_32 of the UTF-8 encoding of `s.slice(start, end)`, unsigned 32-bit. No allocation. */
export function murmur3String(s: string, seed = 0, start = 0, end = s.length): number {
  beginStream(seed);
  pushString(s, start, end);
  return endStream();
}

/** {@link murmur3String} in 31 bits (non-negative small integer), for use before `%`. */
export function hashString31(s: string, seed = 0, start = 0, end = s.length): number {
  return murmur3String(s, seed, start, end) & 0x7fffffff;
}

/**
 * Hash of several strings as if concatenated with a 0 byte after each one
 * (so `['ab','c']` and `['a','bc']` differ). Used for repeated headers.
 */
export function hashStrings31(values: readonly string[], seed = 0): number {
  beginStream(seed);
  for (const v of values) {
    pushString(v, 0, v.length);
    pushByte(0);
  }
  return endStream() & 0x7fffffff;
}

// ---------------------------------------------------------------------------
// IP addresses

/** Address family returned by {@link parseIp}: 0 when the text is not an address. */
export type IpFamily = 0 | 4 | 6;

const groups = new Uint16Array(8);

/**
 * Parse an IPv4 or IPv6 address into `out` as 32-bit words in network order
 * (IPv4: `out[0]`; IPv6: `out[0..3]`). IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what
 * a dual-stack Node socket reports for IPv4 clients) is returned as IPv4, so
 * the same client hashes the same whichever socket it arrived on. A zone
 * (`%eth0`) is ignored. Returns 0 for anything that is not an address.
 */
export function parseIp(s: string, out: Uint32Array): IpFamily {
  const len = s.length;
  const v = parseIpv4(s, 0, len);
  if (v >= 0) {
    out[0] = v;
    return 4;
  }
  for (let i = 0; i < len; i++) if (s.charCodeAt(i) === 58 /* : */) return parseIpv6(s, len, out);
  return 0;
}

/** Parse dotted IPv4 in `s[start,end)`; returns the uint32 value or -1. */
function parseIpv4(s: string, start: number, end: number): number {
  let value = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = start; i < end; i++) {
    const d = s.charCodeAt(i) - 48;
    if (d >>> 0 < 10) {
      part = part * 10 + d;
      digits++;
    } else if (d === -2 /* '.' */) {
      if ((digits - 1) >>> 0 > 2 || part > 255 || ++dots > 3) return -1;
      value = (value << 8) | part;
      part = 0;
      digits = 0;
    } else {
      return -1;
    }
  }
  // (digits - 1) >>> 0 > 2 rejects 0 digits (wraps to 2^32 - 1) and more than 3.
  if ((digits - 1) >>> 0 > 2 || part > 255 || dots !== 3) return -1;
  return ((value << 8) | part) >>> 0;
}

function parseIpv6(s: string, len: number, out: Uint32Array): IpFamily {
  let n = 0; // groups written
  let gap = -1; // index in groups where '::' stood
  let v = 0;
  let digits = 0;
  let i = 0;
  let end = len;
  if (s.charCodeAt(0) === 58 /* : */) {
    if (s.charCodeAt(1) !== 58) return 0;
    gap = 0;
    i = 2;
  }
  for (; i < len; i++) {
    const c = s.charCodeAt(i);
    let d = c - 48;
    if (d >>> 0 > 9) {
      d = (c | 0x20) - 87;
      if (d < 10 || d > 15) d = -1;
    }
    if (d >= 0) {
      v = (v << 4) | d;
      if (++digits > 4) return 0;
    } else if (c === 58 /* : */) {
      if (digits === 0) {
        // The second ':' of '::' (a leading '::' was consumed above).
        if (gap >= 0 || s.charCodeAt(i - 1) !== 58) return 0;
        gap = n;
      } else {
        if (n >= 8) return 0;
        groups[n++] = v;
        v = 0;
        digits = 0;
      }
    } else if (c === 46 /* . */) {
      // Embedded IPv4 in the last two groups: re-read this group as dotted.
      let stop = s.indexOf('%', i);
      if (stop < 0) stop = len;
      const v4 = parseIpv4(s, i - digits, stop);
      if (v4 < 0 || n > 6) return 0;
      groups[n++] = v4 >>> 16;
      groups[n++] = v4 & 0xffff;
      digits = -1; // consumed
      end = stop;
      break;
    } else if (c === 37 /* % */ && i > 0) {
      end = i; // zone id: ignored
      break;
    } else {
      return 0;
    }
  }
  if (digits > 0) {
    if (n >= 8) return 0;
    groups[n++] = v;
  } else if (digits === 0) {
    // Ends with ':': only valid as a trailing '::'.
    if (gap !== n || end < 2 || s.charCodeAt(end - 1) !== 58 || s.charCodeAt(end - 2) !== 58) return 0;
  }
  if (gap >= 0) {
    if (n > 7) return 0;
    const move = n - gap;
    const fill = 8 - n;
    for (let k = move - 1; k >= 0; k--) groups[gap + fill + k] = groups[gap + k]!;
    for (let k = 0; k < fill; k++) groups[gap + k] = 0;
  } else if (n !== 8) {
    return 0;
  }
  // ::ffff:a.b.c.d → IPv4
  if (
    groups[0] === 0 &&
    groups[1] === 0 &&
    groups[2] === 0 &&
    groups[3] === 0 &&
    groups[4] === 0 &&
    groups[5] === 0xffff
  ) {
    out[0] = ((groups[6]! << 16) | groups[7]!) >>> 0;
    return 4;
  }
  out[0] = ((groups[0]! << 16) | groups[1]!) >>> 0;
  out[1] = ((groups[2]! << 16) | groups[3]!) >>> 0;
  out[2] = ((groups[4]! << 16) | groups[5]!) >>> 0;
  out[3] = ((groups[6]! << 16) | groups[7]!) >>> 0;
  return 6;
}

/** Keep the first `prefix` bits of an address parsed by {@link parseIp}. */
export function maskIp(words: Uint32Array, family: IpFamily, prefix: number): void {
  const count = family === 4 ? 1 : family === 6 ? 4 : 0;
  for (let w = 0; w < count; w++) {
    const bits = prefix - w * 32;
    if (bits >= 32) continue;
    words[w] = bits <= 0 ? 0 : (words[w]! & (~0 << (32 - bits))) >>> 0;
  }
}

/**
 * Validate an IPv4 netmask as a prefix length 0–32, or a dotted mask such as
 * `255.255.255.0` (contiguous ones only, as LVS requires). Returns the prefix
 * length, or -1 when invalid.
 */
export function netmaskPrefix(netmask: number | string, max = 32): number {
  if (typeof netmask === 'number')
    return Number.isInteger(netmask) && netmask >= 0 && netmask <= max ? netmask : -1;
  const text = netmask.startsWith('/') ? netmask.slice(1) : netmask;
  if (/^\d+$/.test(text)) return netmaskPrefix(Number(text), max);
  if (max !== 32) return -1;
  const v = parseIpv4(text, 0, text.length);
  if (v < 0) return -1;
  const inverted = ~v >>> 0;
  // Contiguous: inverted must be 2^k - 1.
  if ((inverted & (inverted + 1)) !== 0) return -1;
  return 32 - Math.round(Math.log2(inverted + 1));
}

const wordsA = new Uint32Array(4);
const wordsB = new Uint32Array(4);

function pushWord(w: number): void {
  sH = mixH(sH, w | 0);
  sLen += 4;
}

/**
 * Hash of a client IP under a netmask (IPv4 prefix `prefix4`, IPv6 prefix
 * `prefix6`), 31 bits; -1 when `ip` is not an address. IPv4 hashes one word,
 * IPv6 four, so the families never share a key.
 */
export function hashSourceIp31(ip: string, prefix4 = 32, prefix6 = 128, seed = 0): number {
  const family = parseIp(ip, wordsA);
  if (family === 0) return -1;
  maskIp(wordsA, family, family === 4 ? prefix4 : prefix6);
  beginStream(seed);
  pushWord(wordsA[0]!);
  if (family === 6) {
    pushWord(wordsA[1]!);
    pushWord(wordsA[2]!);
    pushWord(wordsA[3]!);
  }
  return endStream() & 0x7fffffff;
}

// The destination of a 5-tuple is the listener's own address, the same for
// every connection on it: remember the last one parsed.
let lastDstIp = '';
let lastDstFamily: IpFamily = 0;

/** TCP's IP protocol number, the fifth element of the tuple. */
export const PROTOCOL_TCP = 6;

/**
 * Hash of the 5-tuple (source address and port, destination address and
 * port, protocol), 31 bits. Addresses that do not parse contribute a zero
 * word, so a missing local address still gives a usable hash.
 */
export function hashFiveTuple31(
  srcIp: string,
  srcPort: number,
  dstIp: string,
  dstPort: number,
  protocol = PROTOCOL_TCP,
  seed = 0,
): number {
  // Same byte sequence as murmur3 over [src words][dst words][ports][protocol],
  // with the plain-IPv4 case (the common one) kept free of array traffic.
  let h = seed | 0;
  let len = 8;
  const a = parseIpv4(srcIp, 0, srcIp.length);
  if (a >= 0) {
    h = mixH(h, a | 0);
    len += 4;
  } else {
    const fa = parseIp(srcIp, wordsA);
    h = mixH(h, fa === 0 ? 0 : wordsA[0]! | 0);
    len += 4;
    if (fa === 6) {
      h = mixH(mixH(mixH(h, wordsA[1]! | 0), wordsA[2]! | 0), wordsA[3]! | 0);
      len += 12;
    }
  }
  if (dstIp !== lastDstIp) {
    lastDstFamily = parseIp(dstIp, wordsB);
    if (lastDstFamily === 0) wordsB[0] = 0;
    lastDstIp = dstIp;
  }
  h = mixH(h, wordsB[0]! | 0);
  len += 4;
  if (lastDstFamily === 6) {
    h = mixH(mixH(mixH(h, wordsB[1]! | 0), wordsB[2]! | 0), wordsB[3]! | 0);
    len += 12;
  }
  h = mixH(h, ((srcPort & 0xffff) << 16) | (dstPort & 0xffff));
  h = mixH(h, protocol & 0xff);
  return fmix(h, len) & 0x7fffffff;
}
