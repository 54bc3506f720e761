/**
 * HPACK's Huffman code (RFC 7541 §5.2, Appendix B). The code is canonical:
 * the lengths below (spec data, Appendix B's "len in bits" column for
 * symbols 0–255 and EOS) determine every code, assigned in order of length,
 * then symbol. From them a decoder table is built that reads four bits at a
 * time (each step emits at most one symbol, as no code is shorter than five).
 */

/** Code length in bits of each symbol; index 256 is EOS. */
const LENGTHS = [
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28,
  28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7,
  8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19,
  13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13,
  28, 20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21,
  22, 23, 22, 23, 23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23,
  22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
  19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25,
  25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

/** Canonical codes from the lengths (RFC 7541's table is canonical). */
function canonicalCodes(): number[] {
  const order = Array.from({ length: 257 }, (_, s) => s).sort((a, b) => LENGTHS[a]! - LENGTHS[b]! || a - b);
  const codes = new Array<number>(257).fill(0);
  let code = 0;
  let prev = LENGTHS[order[0]!]!;
  for (let i = 0; i < order.length; i++) {
    const s = order[i]!;
    const len = LENGTHS[s]!;
    if (i > 0) code = (code + 1) * 2 ** (len - prev);
    prev = len;
    codes[s] = code;
  }
  return codes;
}

/** Exposed for tests: the code and its length for a symbol (256 = EOS). */
export const HUFFMAN_CODES: readonly number[] = canonicalCodes();
export const HUFFMAN_LENGTHS: readonly number[] = LENGTHS;

/*
 * Decoder: the code tree's internal nodes are the states (root = 0). For each
 * state and 4-bit nibble, DECODE holds the next state, the symbol emitted (if
 * any) and whether EOS was hit (an error). ACCEPT marks states a string may end
 * in: the root, or a node reached from it by at most seven 1 bits (padding is
 * a prefix of EOS, shorter than a byte).
 */
const EMIT = 1 << 16;
const FAIL = 1 << 17;
const DECODE = new Uint32Array(256 * 16);
const ACCEPT = new Uint8Array(256);

function buildDecoder(): void {
  // Tree: children[node*2 + bit] = internal node index, or -(symbol + 1) for a leaf.
  const children = new Int32Array(256 * 2);
  let nodes = 1;
  for (let s = 0; s < 257; s++) {
    const len = LENGTHS[s]!;
    const code = HUFFMAN_CODES[s]!;
    let node = 0;
    for (let b = len - 1; b >= 0; b--) {
      const bit = Math.floor(code / 2 ** b) & 1;
      const slot = node * 2 + bit;
      if (b === 0) children[slot] = -(s + 1);
      else {
        if (children[slot] === 0) children[slot] = nodes++;
        node = children[slot]!;
      }
    }
  }
  // States on the all-ones path within seven bits accept the end of a string.
  let node = 0;
  ACCEPT[0] = 1;
  for (let d = 1; d <= 7; d++) {
    node = children[node * 2 + 1]!;
    ACCEPT[node] = 1;
  }
  for (let state = 0; state < nodes; state++) {
    for (let nibble = 0; nibble < 16; nibble++) {
      let cur = state;
      let entry = 0;
      for (let b = 3; b >= 0; b--) {
        const next = children[cur * 2 + ((nibble >> b) & 1)]!;
        if (next < 0) {
          const sym = -next - 1;
          if (sym === 256) {
            entry |= FAIL;
            break;
          }
          entry |= EMIT | (sym << 8);
          cur = 0;
        } else cur = next;
      }
      DECODE[state * 16 + nibble] = entry | ((entry & FAIL) !== 0 ? 0 : cur);
    }
  }
}
buildDecoder();

let scratch = Buffer.allocUnsafeSlow(4096);

/**
 * Decode the Huffman-coded bytes `src[start, end)` into a latin1 string, or
 * undefined when they are not a valid encoding (EOS inside, padding longer
 * than seven bits or not all ones).
 */
export function huffmanDecode(src: Buffer, start: number, end: number): string | undefined {
  // At most 8/5 symbols per byte.
  const max = ((end - start) * 8) / 5 + 1;
  if (scratch.length < max) scratch = Buffer.allocUnsafeSlow(Math.max(max, scratch.length * 2));
  const out = scratch;
  let n = 0;
  let state = 0;
  for (let i = start; i < end; i++) {
    const byte = src[i]!;
    let e = DECODE[state * 16 + (byte >> 4)]!;
    if ((e & FAIL) !== 0) return undefined;
    if ((e & EMIT) !== 0) out[n++] = (e >> 8) & 0xff;
    state = e & 0xff;
    e = DECODE[state * 16 + (byte & 15)]!;
    if ((e & FAIL) !== 0) return undefined;
    if ((e & EMIT) !== 0) out[n++] = (e >> 8) & 0xff;
    state = e & 0xff;
  }
  if (ACCEPT[state] === 0) return undefined;
  return out.toString('latin1', 0, n);
}

/** Huffman-encode a latin1 string (tests, and callers that want it). */
export function huffmanEncode(text: string): Buffer {
  let bits = 0;
  for (let i = 0; i < text.length; i++) bits += LENGTHS[text.charCodeAt(i) & 0xff]!;
  const out = Buffer.alloc(Math.ceil(bits / 8));
  let pos = 0;
  for (let i = 0; i < text.length; i++) {
    const s = text.charCodeAt(i) & 0xff;
    const len = LENGTHS[s]!;
    const code = HUFFMAN_CODES[s]!;
    for (let b = len - 1; b >= 0; b--, pos++) {
      if ((Math.floor(code / 2 ** b) & 1) !== 0) out[pos >> 3]! |= 0x80 >> (pos & 7);
    }
  }
  // Pad with the most significant bits of EOS (all ones).
  for (; (pos & 7) !== 0; pos++) out[pos >> 3]! |= 0x80 >> (pos & 7);
  return out;
}
