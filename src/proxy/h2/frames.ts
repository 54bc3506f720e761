/** HTTP/2 frame layout and codes (RFC 9113 §4, §6, §7, §11). */

export const FRAME_HEADER = 9;

/** Frame types. */
export const DATA = 0x0;
export const HEADERS = 0x1;
export const PRIORITY = 0x2;
export const RST_STREAM = 0x3;
export const SETTINGS = 0x4;
export const PUSH_PROMISE = 0x5;
export const PING = 0x6;
export const GOAWAY = 0x7;
export const WINDOW_UPDATE = 0x8;
export const CONTINUATION = 0x9;

/** Flags. */
export const FLAG_END_STREAM = 0x1;
export const FLAG_ACK = 0x1;
export const FLAG_END_HEADERS = 0x4;
export const FLAG_PADDED = 0x8;
export const FLAG_PRIORITY = 0x20;

/** Error codes (those we send or read). */
export const NO_ERROR = 0x0;
export const PROTOCOL_ERROR = 0x1;
export const INTERNAL_ERROR = 0x2;
export const FLOW_CONTROL_ERROR = 0x3;
export const STREAM_CLOSED = 0x5;
export const FRAME_SIZE_ERROR = 0x6;
export const REFUSED_STREAM = 0x7;
export const CANCEL = 0x8;
export const COMPRESSION_ERROR = 0x9;
export const ENHANCE_YOUR_CALM = 0xb;

/** Settings identifiers. */
export const SETTINGS_HEADER_TABLE_SIZE = 0x1;
export const SETTINGS_ENABLE_PUSH = 0x2;
export const SETTINGS_MAX_CONCURRENT_STREAMS = 0x3;
export const SETTINGS_INITIAL_WINDOW_SIZE = 0x4;
export const SETTINGS_MAX_FRAME_SIZE = 0x5;
export const SETTINGS_MAX_HEADER_LIST_SIZE = 0x6;

/** Protocol constants. */
export const DEFAULT_WINDOW = 65_535;
export const MAX_WINDOW = 0x7fff_ffff;
export const DEFAULT_MAX_FRAME = 16_384;
/** SETTINGS_HEADER_TABLE_SIZE until a peer says otherwise (both HPACK tables start at it). */
export const DEFAULT_HEADER_TABLE = 4096;
export const MAX_MAX_FRAME = 16_777_215;

/** The client connection preface (RFC 9113 §3.4). */
export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/** Write a frame header at `off`. */
export function putFrameHeader(
  buf: Buffer,
  off: number,
  length: number,
  type: number,
  flags: number,
  stream: number,
): void {
  buf[off] = length >>> 16;
  buf[off + 1] = (length >>> 8) & 0xff;
  buf[off + 2] = length & 0xff;
  buf[off + 3] = type;
  buf[off + 4] = flags;
  buf[off + 5] = (stream >>> 24) & 0x7f;
  buf[off + 6] = (stream >>> 16) & 0xff;
  buf[off + 7] = (stream >>> 8) & 0xff;
  buf[off + 8] = stream & 0xff;
}

/** One frame as bytes (tests and rare paths). */
export function frame(
  type: number,
  flags: number,
  stream: number,
  payload: Buffer = Buffer.alloc(0),
): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER + payload.length);
  putFrameHeader(out, 0, payload.length, type, flags, stream);
  payload.copy(out, FRAME_HEADER);
  return out;
}
