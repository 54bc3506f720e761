/**
 * RFC 6455 frames as the relay sees them: constants, the gateway's own
 * frames (built once, shared by every connection) and the checks the relay
 * applies to frame headers and close frames. The frame walker itself lives in
 * websocket.ts, on the connection object, so that a connection's parser state
 * is a few numeric fields rather than an object per direction.
 */
import { randomBytes } from 'node:crypto';
import { isUtf8 } from 'node:buffer';

export const OP_CONTINUATION = 0x0;
export const OP_TEXT = 0x1;
export const OP_BINARY = 0x2;
export const OP_CLOSE = 0x8;
export const OP_PING = 0x9;
export const OP_PONG = 0xa;

/** WebSocket close codes the gateway sends. */
export const CLOSE_NORMAL = 1000;
export const CLOSE_GOING_AWAY = 1001;
export const CLOSE_PROTOCOL_ERROR = 1002;
export const CLOSE_INVALID_PAYLOAD = 1007;
export const CLOSE_TOO_BIG = 1009;
export const CLOSE_INTERNAL_ERROR = 1011;
export const CLOSE_SERVICE_RESTART = 1012;
/**
 * Bad Gateway (IANA WebSocket close code registry; not in RFC 6455 itself):
 * the gateway lost its backend. ws and Chromium accept it on receipt
 * (only 1005, 1006 and 1015 may never come on the wire).
 */
export const CLOSE_BAD_GATEWAY = 1014;

/** Why a frame was refused; also the `reason` label of holdfast_protocol_errors_total. */
export type FrameError =
  | 'ws-frame-too-large'
  | 'ws-message-too-large'
  | 'ws-reserved-bits'
  | 'ws-reserved-opcode'
  | 'ws-unmasked-client-frame'
  | 'ws-masked-server-frame'
  | 'ws-control-frame-too-large'
  | 'ws-fragmented-control-frame'
  | 'ws-unexpected-continuation'
  | 'ws-expected-continuation'
  | 'ws-invalid-close-code'
  | 'ws-invalid-close-reason';

/** The close code a frame error is answered with. */
export function closeCodeFor(error: FrameError): number {
  switch (error) {
    case 'ws-frame-too-large':
    case 'ws-message-too-large':
      return CLOSE_TOO_BIG;
    case 'ws-invalid-close-reason':
      return CLOSE_INVALID_PAYLOAD;
    default:
      return CLOSE_PROTOCOL_ERROR;
  }
}

/** Close codes a peer may send (RFC 6455 §7.4, plus the IANA-registered 1012–1014). */
export function validCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

/** Token carried by the gateway's own pings, so their pongs can be told from the peers'. */
export const TOKEN = randomBytes(8);
/** A process-wide masking key for frames the gateway sends to backends (as a client must). */
const MASK = randomBytes(4);

function buildFrame(opcode: number, payload: Buffer, masked: boolean): Buffer {
  const frame = Buffer.allocUnsafe(2 + (masked ? 4 : 0) + payload.length);
  frame[0] = 0x80 | opcode;
  frame[1] = (masked ? 0x80 : 0) | payload.length;
  let at = 2;
  if (masked) {
    MASK.copy(frame, 2);
    at = 6;
  }
  for (let i = 0; i < payload.length; i++) frame[at + i] = masked ? payload[i]! ^ MASK[i & 3]! : payload[i]!;
  return frame;
}

/** The gateway's ping towards a client (unmasked) and towards a backend (masked); built once. */
export const PING_TO_CLIENT = buildFrame(OP_PING, TOKEN, false);
export const PING_TO_BACKEND = buildFrame(OP_PING, TOKEN, true);

const closeFrames = new Map<string, Buffer>();
/**
 * A close frame with `code` and a short constant `reason` (ASCII, at most
 * 123 bytes), masked for backends; cached per code and reason.
 */
export function closeFrame(code: number, masked: boolean, reason = ''): Buffer {
  const key = `${code}${masked ? 'm' : ''}${reason}`;
  let frame = closeFrames.get(key);
  if (frame === undefined) {
    const payload = Buffer.concat([Buffer.from([code >> 8, code & 0xff]), Buffer.from(reason, 'utf8')]);
    frame = buildFrame(OP_CLOSE, payload, masked);
    closeFrames.set(key, frame);
  }
  return frame;
}

/**
 * Is the control frame payload at `at` (length TOKEN.length) the gateway's
 * token? Compared in place, unmasking on the fly (no copy).
 */
export function isOwnPong(chunk: Buffer, at: number, masked: boolean): boolean {
  const n = TOKEN.length;
  if (!masked) {
    for (let i = 0; i < n; i++) if (chunk[at + i] !== TOKEN[i]) return false;
    return true;
  }
  for (let i = 0; i < n; i++) if ((chunk[at + i]! ^ chunk[at - 4 + (i & 3)]!) !== TOKEN[i]) return false;
  return true;
}

const scratch = Buffer.allocUnsafe(125);

/** Check a close frame's payload (code and UTF-8 reason); undefined when it is fine. */
export function checkClose(chunk: Buffer, at: number, plen: number, masked: boolean): FrameError | undefined {
  if (plen === 0) return undefined;
  if (plen === 1) return 'ws-invalid-close-code';
  let payload = chunk.subarray(at, at + plen);
  if (masked) {
    for (let i = 0; i < plen; i++) scratch[i] = chunk[at + i]! ^ chunk[at - 4 + (i & 3)]!;
    payload = scratch.subarray(0, plen);
  }
  if (!validCloseCode(payload.readUInt16BE(0))) return 'ws-invalid-close-code';
  if (plen > 2 && !isUtf8(payload.subarray(2))) return 'ws-invalid-close-reason';
  return undefined;
}
