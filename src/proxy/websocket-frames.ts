/**
 * RFC 6455 frames as the relay sees them: only headers are parsed, to find
 * frame boundaries and check them; data payloads are never unmasked or
 * copied. Control frames (at most 125 bytes) are looked at whole, so the
 * gateway can consume the pongs that answer its own pings and check close codes.
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
const TOKEN = randomBytes(8);
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
/** A close frame with `code` (no reason), masked for backends; cached per code. */
export function closeFrame(code: number, masked: boolean): Buffer {
  const key = `${code}${masked ? 'm' : ''}`;
  let frame = closeFrames.get(key);
  if (frame === undefined) {
    const payload = Buffer.from([code >> 8, code & 0xff]);
    frame = buildFrame(OP_CLOSE, payload, masked);
    closeFrames.set(key, frame);
  }
  return frame;
}

/** What the reader does with each piece of the stream. */
export interface FrameSink {
  /** Relay these bytes unchanged (a view into the received chunk). Returns false when the writer is full. */
  forward(bytes: Buffer): boolean;
  /** A pong answering the gateway's own ping arrived (it is consumed, not forwarded). */
  pong(): void;
  /** A close frame arrived (already forwarded unless consumed by the connection state). */
  close(): void;
  /** The peer broke the protocol or a limit; nothing from this frame on was forwarded. */
  error(reason: FrameError): void;
  /** At a frame boundary of the output: a chance to inject the gateway's own frames. */
  boundary(): void;
}

const scratch = Buffer.allocUnsafe(125);

/**
 * Reads one direction of a WebSocket connection: a state machine over frame
 * headers. Per chunk it forwards views of the input (`subarray`, no copy),
 * cut only around frames the gateway consumes or refuses.
 */
export class FrameReader {
  /** Frames from a client must be masked; frames from a server must not. */
  readonly fromClient: boolean;
  maxFrameSize: number;
  maxMessageSize: number;
  /** RSV1 is allowed on the first frame of a message when permessage-deflate was negotiated. */
  compression = false;
  /** Drop all input (the connection is closing) but still watch for a close frame. */
  discard = false;
  /** Set by the connection when it wants `boundary()` called at the next frame boundary. */
  wantBoundary = false;
  /** Payload bytes of the current data frame still to come. */
  #remaining = 0;
  #inMessage = false;
  #messageBytes = 0;
  /** Bytes of an incomplete header or control frame carried to the next chunk (rare). */
  #carry: Buffer | undefined;
  #failed = false;
  /** Where the reader's decisions go (a subclass may pass itself). */
  sink: FrameSink;

  constructor(
    fromClient: boolean,
    sink: FrameSink | undefined,
    limits: { maxFrameSize: number; maxMessageSize: number },
  ) {
    this.fromClient = fromClient;
    this.sink = sink ?? (this as unknown as FrameSink);
    this.maxFrameSize = limits.maxFrameSize;
    this.maxMessageSize = limits.maxMessageSize;
  }

  /** Between frames on the output (nothing partially relayed; carried bytes are not yet relayed)? */
  get atBoundary(): boolean {
    return this.#remaining === 0;
  }

  /** True once a frame was refused; the reader ignores further input. */
  get failed(): boolean {
    return this.#failed;
  }

  /** Feed one received chunk. Returns false if the output asked to pause. */
  push(input: Buffer): boolean {
    if (this.#failed) return true;
    let chunk = input;
    if (this.#carry !== undefined) {
      chunk = Buffer.concat([this.#carry, input]);
      this.#carry = undefined;
    }
    const sink = this.sink;
    const len = chunk.length;
    let ok = true;
    let pos = 0;
    let seg = 0; // start of bytes not yet forwarded
    if (this.#remaining > 0) {
      const take = Math.min(this.#remaining, len);
      pos = take;
      this.#remaining -= take;
      if (this.#remaining > 0) {
        return this.discard ? true : sink.forward(chunk);
      }
      if (this.wantBoundary) {
        if (!this.discard) ok = sink.forward(chunk.subarray(0, pos)) && ok;
        seg = pos;
        sink.boundary();
      }
    }
    while (pos < len) {
      if (len - pos < 2) break;
      const b0 = chunk[pos]!;
      const b1 = chunk[pos + 1]!;
      let plen = b1 & 0x7f;
      let hlen = 2;
      if (plen === 126) {
        hlen = 4;
        if (len - pos < 4) break;
        plen = chunk.readUInt16BE(pos + 2);
      } else if (plen === 127) {
        hlen = 10;
        if (len - pos < 10) break;
        const hi = chunk.readUInt32BE(pos + 2);
        // Beyond 2^53 cannot be represented; anything that large is over every limit anyway.
        plen = hi >= 0x200000 ? Number.MAX_SAFE_INTEGER : hi * 0x100000000 + chunk.readUInt32BE(pos + 6);
      }
      const masked = (b1 & 0x80) !== 0;
      if (masked) hlen += 4;
      if (len - pos < hlen) break;
      const opcode = b0 & 0x0f;
      const fin = (b0 & 0x80) !== 0;
      if (!this.discard) {
        const err = this.#check(b0, opcode, fin, masked, plen);
        if (err !== undefined) {
          if (pos > seg) ok = sink.forward(chunk.subarray(seg, pos)) && ok;
          this.#failed = true;
          sink.error(err);
          return ok;
        }
      }
      if (opcode >= 0x8) {
        // Control frame: look at it whole (≤ 125 bytes of payload).
        const end = pos + hlen + plen;
        if (end > len) break;
        let consume = false;
        if (opcode === OP_PONG && plen === TOKEN.length) {
          const payload = this.#unmask(chunk, pos + hlen, plen, masked);
          if (payload.equals(TOKEN)) consume = true;
        } else if (opcode === OP_CLOSE && !this.discard) {
          const err = this.#checkClose(chunk, pos + hlen, plen, masked);
          if (err !== undefined) {
            if (pos > seg) ok = sink.forward(chunk.subarray(seg, pos)) && ok;
            this.#failed = true;
            sink.error(err);
            return ok;
          }
        }
        if (consume) {
          if (!this.discard && pos > seg) ok = sink.forward(chunk.subarray(seg, pos)) && ok;
          seg = end;
          pos = end;
          sink.pong();
        } else {
          pos = end;
          if (opcode === OP_CLOSE) {
            if (!this.discard) ok = sink.forward(chunk.subarray(seg, pos)) && ok;
            seg = pos;
            sink.close();
          }
        }
      } else {
        pos += hlen;
        const take = Math.min(plen, len - pos);
        pos += take;
        if (take < plen) {
          this.#remaining = plen - take;
          break;
        }
      }
      if (this.wantBoundary) {
        if (!this.discard && pos > seg) ok = sink.forward(chunk.subarray(seg, pos)) && ok;
        seg = pos;
        sink.boundary();
      }
      if (this.#failed) return ok;
    }
    if (this.#remaining === 0 && pos < len) {
      // An incomplete header or control frame: keep its bytes for the next chunk.
      this.#carry = Buffer.from(chunk.subarray(pos));
      if (!this.discard && pos > seg) ok = sink.forward(chunk.subarray(seg, pos)) && ok;
      return ok;
    }
    if (!this.discard && seg < len) ok = sink.forward(seg === 0 ? chunk : chunk.subarray(seg)) && ok;
    return ok;
  }

  #check(b0: number, opcode: number, fin: boolean, masked: boolean, plen: number): FrameError | undefined {
    if (masked !== this.fromClient)
      return this.fromClient ? 'ws-unmasked-client-frame' : 'ws-masked-server-frame';
    const rsv = b0 & 0x70;
    if (opcode >= 0x8) {
      if (opcode > OP_PONG) return 'ws-reserved-opcode';
      if (rsv !== 0) return 'ws-reserved-bits';
      if (plen > 125) return 'ws-control-frame-too-large';
      if (!fin) return 'ws-fragmented-control-frame';
      return undefined;
    }
    if (opcode > OP_BINARY) return 'ws-reserved-opcode';
    if (rsv !== 0 && !(rsv === 0x40 && this.compression && opcode !== OP_CONTINUATION))
      return 'ws-reserved-bits';
    if (opcode === OP_CONTINUATION) {
      if (!this.#inMessage) return 'ws-unexpected-continuation';
    } else if (this.#inMessage) {
      return 'ws-expected-continuation';
    } else {
      this.#messageBytes = 0;
    }
    if (plen > this.maxFrameSize) return 'ws-frame-too-large';
    this.#messageBytes += plen;
    if (this.#messageBytes > this.maxMessageSize) return 'ws-message-too-large';
    this.#inMessage = !fin;
    return undefined;
  }

  #checkClose(chunk: Buffer, at: number, plen: number, masked: boolean): FrameError | undefined {
    if (plen === 0) return undefined;
    if (plen === 1) return 'ws-invalid-close-code';
    const payload = this.#unmask(chunk, at, plen, masked);
    if (!validCloseCode(payload.readUInt16BE(0))) return 'ws-invalid-close-code';
    if (plen > 2 && !isUtf8(payload.subarray(2))) return 'ws-invalid-close-reason';
    return undefined;
  }

  /** A control frame's payload, unmasked into a shared scratch buffer (valid until the next call). */
  #unmask(chunk: Buffer, at: number, plen: number, masked: boolean): Buffer {
    if (!masked) return chunk.subarray(at, at + plen);
    const k0 = chunk[at - 4]!;
    const k1 = chunk[at - 3]!;
    const k2 = chunk[at - 2]!;
    const k3 = chunk[at - 1]!;
    for (let i = 0; i < plen; i++) {
      const k = (i & 3) === 0 ? k0 : (i & 3) === 1 ? k1 : (i & 3) === 2 ? k2 : k3;
      scratch[i] = chunk[at + i]! ^ k;
    }
    return scratch.subarray(0, plen);
  }
}
