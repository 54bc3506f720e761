/**
 * One HTTP/2 stream of a server connection (RFC 9113 §5.1): its flow-control
 * windows both ways, the response DATA it could not send yet, and the request
 * body as a Readable that credits the client's window only as it is read.
 */
import { Readable } from 'node:stream';
import { BLOCK_SIZE, takeBlock } from './blocks.ts';
import type { H2Connection } from './connection.ts';
import { CANCEL, PROTOCOL_ERROR } from './frames.ts';

/** Response bytes a stream may hold unsent before `write` asks the writer to wait. */
const STREAM_HWM = 16 * 1024;
/** Request body bytes buffered in the Readable before crediting waits for reads. */
const BODY_HWM = 64 * 1024;
/**
 * Response bytes kept from a transient chunk go into pooled blocks from this
 * size on (a fresh buffer that large is external memory: see blocks.ts);
 * smaller copies come from Node's buffer pool.
 */
const BLOCK_COPY_MIN = 4 * 1024;

/** A trailer or header map as the proxy forwards it. */
export type Fields = Record<string, string | string[]>;

/** The request body: pushed by the connection, read by the upstream. */
export class H2Body extends Readable {
  readonly #stream: H2Stream;
  constructor(stream: H2Stream) {
    super({ highWaterMark: BODY_HWM });
    this.#stream = stream;
  }
  override _read(): void {
    this.#stream.bodyWanted();
  }
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#stream.discardBody();
    cb(err);
  }
}

/** `chunk[from…]` in a buffer of its own. */
function copyOf(chunk: Buffer, from: number): Buffer {
  const copy = Buffer.allocUnsafe(chunk.length - from);
  chunk.copy(copy, 0, from);
  return copy;
}

export class H2Stream {
  readonly conn: H2Connection;
  readonly id: number;
  /** What the client lets us send on this stream (its SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_UPDATEs). */
  sendWindow: number;
  /** What the client may still send us before our next WINDOW_UPDATE. */
  recvWindow: number;
  /** Body bytes consumed but not yet credited back to the client. */
  unacked = 0;
  /** Body bytes pushed beyond the Readable's high-water mark: credited once read. */
  #held = 0;
  /** Response DATA waiting for window or socket (the writer's chunks, or copies of transient ones). */
  #queue: Buffer[] | undefined;
  /** Beside each entry of `#queue`: the pooled block it is a copy in, if it is one. */
  #blocks: (Buffer | undefined)[] | undefined;
  queued = 0;
  /** `finish` was called while DATA was still queued: END_STREAM (and trailers) follow it. */
  #endPending = false;
  #trailers: Fields | undefined;
  /** We sent END_STREAM / the client did / the stream is gone (closed or reset). */
  localClosed = false;
  remoteClosed = false;
  closed = false;
  headersSent = false;
  /** A write returned false: tell the writer once everything queued has gone. */
  needDrain = false;
  /** In the connection's list of streams with something to send. */
  ready = false;
  /** Declared request content-length (-1: none) and DATA bytes received. */
  contentLength = -1;
  #received = 0;
  body: H2Body | undefined;
  /** Request body no longer wanted: DATA is credited and dropped. */
  #discard = false;
  #drainFn: (() => void) | undefined;

  constructor(conn: H2Connection, id: number, endStream: boolean) {
    this.conn = conn;
    this.id = id;
    this.sendWindow = conn.peerInitialWindow;
    this.recvWindow = conn.limits.streamWindow;
    this.remoteClosed = endStream;
    if (!endStream) this.body = new H2Body(this);
    conn.addStream(this);
  }

  // ---- request side (called by the connection) ----

  /** DATA payload `buf[start, end)` of a frame `frameLength` long (padding included). */
  data(buf: Buffer, start: number, end: number, frameLength: number, endStream: boolean): void {
    const n = end - start;
    this.#received += n;
    if (this.contentLength >= 0 && this.#received > this.contentLength) {
      this.conn.creditConnection(frameLength);
      this.conn.resetStream(this, PROTOCOL_ERROR);
      return;
    }
    const body = this.body;
    if (n === 0 || this.#discard || body === undefined) this.conn.credit(this, frameLength);
    else {
      if (frameLength > n) this.conn.credit(this, frameLength - n);
      const copy = Buffer.allocUnsafe(n);
      buf.copy(copy, 0, start, end);
      if (body.push(copy)) this.conn.credit(this, n);
      else this.#held += n;
    }
    if (endStream && !this.closed) this.remoteEnd();
  }

  /** The client ended its side (END_STREAM on DATA or trailers). */
  remoteEnd(): void {
    if (this.contentLength >= 0 && this.#received !== this.contentLength) {
      this.conn.resetStream(this, PROTOCOL_ERROR);
      return;
    }
    this.remoteClosed = true;
    this.body?.push(null);
  }

  bodyWanted(): void {
    const held = this.#held;
    if (held === 0) return;
    this.#held = 0;
    // On a closed stream this still gives the connection window back (credit() knows).
    this.conn.credit(this, held);
  }

  /** Stop delivering the request body: what is held is credited, what comes is dropped. */
  discardBody(): void {
    if (this.#discard) return;
    this.#discard = true;
    const held = this.#held;
    this.#held = 0;
    // Also once the stream closed: the connection window must get these bytes back.
    if (held > 0) this.conn.credit(this, held);
    const body = this.body;
    if (body !== undefined && !body.destroyed && !body.readableEnded) body.resume();
  }

  // ---- response side ----

  /** Send the response head (a complete HPACK block). */
  sendHeaders(block: Buffer, endStream: boolean): void {
    if (this.closed || this.headersSent) return;
    this.headersSent = true;
    this.conn.headersFrame(this, block, endStream);
    if (endStream) this.#localEnd();
  }

  /**
   * Queue or send DATA; false when the writer should wait for `drained`.
   * `transient`: the chunk is valid only during this call (a view of a read
   * buffer): what is kept beyond it, a large frame's payload or what waits in
   * the queue, is copied; what goes into the connection's scratch buffer is not.
   */
  writeData(chunk: Buffer, transient = false): boolean {
    if (this.closed || this.localClosed || this.#endPending) return true;
    const conn = this.conn;
    if (this.queued === 0) {
      let off = 0;
      const len = chunk.length;
      while (off < len) {
        const n = conn.sendable(this, len - off);
        if (n <= 0) break;
        conn.dataFrame(this, chunk, off, off + n, false, transient);
        off += n;
      }
      if (off === len) {
        if (!conn.congested) return true;
        this.needDrain = true;
        conn.markReady(this);
        return false;
      }
      this.#enqueue(chunk, off, transient);
    } else this.#enqueue(chunk, 0, transient);
    conn.markReady(this);
    if (this.queued < STREAM_HWM && !conn.congested) return true;
    this.needDrain = true;
    return false;
  }

  /** Queue `chunk[from…]`: a copy of it when it is transient. */
  #enqueue(chunk: Buffer, from: number, transient: boolean): void {
    const queue = (this.#queue ??= []);
    const blocks = (this.#blocks ??= []);
    const len = chunk.length;
    this.queued += len - from;
    if (!transient || len - from < BLOCK_COPY_MIN) {
      queue.push(!transient ? (from === 0 ? chunk : chunk.subarray(from)) : copyOf(chunk, from));
      blocks.push(undefined);
      return;
    }
    while (from < len) {
      const b = takeBlock();
      const n = Math.min(BLOCK_SIZE, len - from);
      chunk.copy(b, 0, from, from + n);
      queue.push(n === BLOCK_SIZE ? b : b.subarray(0, n));
      blocks.push(b);
      from += n;
    }
  }

  /** Drop what is queued; its blocks go back through the connection (a frame may still refer to one). */
  #dropQueue(): void {
    const blocks = this.#blocks;
    if (blocks !== undefined) {
      for (let k = 0; k < blocks.length; k++) {
        const b = blocks[k];
        if (b !== undefined) this.conn.retire(b);
      }
    }
    this.#queue = undefined;
    this.#blocks = undefined;
    this.queued = 0;
  }

  onDrained(fn: () => void): void {
    this.#drainFn = fn;
  }

  /** End the response, with trailers (sent once the queued DATA is out) when there are any. */
  finish(trailers: Fields | undefined): void {
    if (this.closed || this.localClosed || this.#endPending) return;
    if (trailers !== undefined) {
      let any = false;
      for (const _ in trailers) {
        any = true;
        break;
      }
      if (!any) trailers = undefined;
    }
    this.#trailers = trailers;
    if (this.queued > 0) {
      this.#endPending = true;
      return;
    }
    this.#sendEnd();
  }

  get ending(): boolean {
    return this.#endPending || this.localClosed;
  }

  #sendEnd(): void {
    const trailers = this.#trailers;
    this.#trailers = undefined;
    this.#endPending = false;
    if (trailers !== undefined) this.conn.trailersFrame(this, trailers);
    else this.conn.endData(this);
    this.#localEnd();
  }

  /**
   * Send what the windows allow, one frame at most (the connection goes
   * round the ready streams). Returns whether a frame was sent.
   */
  pump(): boolean {
    const queue = this.#queue;
    if (queue === undefined || this.queued === 0 || this.closed) return false;
    const head = queue[0]!;
    const conn = this.conn;
    const n = conn.sendable(this, head.length);
    if (n <= 0) return false;
    const last = n === head.length && this.queued === n;
    conn.dataFrame(this, head, 0, n, false);
    this.queued -= n;
    if (n === head.length) {
      queue.shift();
      const b = this.#blocks!.shift();
      if (b !== undefined) conn.retire(b);
    } else queue[0] = head.subarray(n);
    if (last && this.#endPending) this.#sendEnd();
    return true;
  }

  /** Called by the connection's pump when the stream's queue is empty and the socket is not congested. */
  drained(): void {
    if (!this.needDrain || this.queued > 0) return;
    this.needDrain = false;
    const fn = this.#drainFn;
    this.#drainFn = undefined;
    fn?.();
  }

  /** Reset the stream from our side. */
  reset(code = CANCEL): void {
    if (this.closed) return;
    this.conn.resetStream(this, code);
  }

  #localEnd(): void {
    this.localClosed = true;
    this.#dropQueue();
    this.conn.localEnded(this);
  }

  /**
   * The stream is closed (by the connection): `complete` when our response
   * was sent whole. Subclasses hear of it through `closedHook`.
   */
  close(complete: boolean): void {
    if (this.closed) return;
    this.closed = true;
    this.#dropQueue();
    this.#drainFn = undefined;
    const body = this.body;
    if (body !== undefined && !body.readableEnded && !body.destroyed) {
      if (this.remoteClosed) body.push(null);
      else body.destroy();
    }
    // Body bytes held back from the window (nobody read them): the connection gets them back
    // whoever ends the stream, or a whole upload answered early would keep them for ever.
    this.bodyWanted();
    this.closedHook(complete);
  }

  /** Override: the stream closed. */
  protected closedHook(_complete: boolean): void {}
}
