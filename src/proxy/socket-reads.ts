import { connect, type NetConnectOpts, type OnReadOpts, Socket, type SocketConstructorOpts } from 'node:net';

/**
 * Relay reads without a new buffer per read.
 *
 * By default Node reads a socket into a freshly allocated ArrayBuffer per
 * read. At relay rates (a gigabyte a second is ~16,000 reads of 64 KB) those
 * buffers are what V8 spends its time on: each counts as external memory, and
 * the external-memory limit starts a full mark-compact many times a second
 * (measured: ~350 ms of user time per GB relayed, most of it GC; ~30 ms/GB
 * with the scheme below). Node's `onread` option reads into a buffer the
 * caller supplies and calls back with the byte count. This module decides
 * which buffer each socket reads into:
 *
 * - A quiet socket reads into one buffer shared by every quiet socket. Its
 *   bytes live only until the read callback returns: whatever the callback
 *   keeps or forwards, it copies (`ownBytes`; small copies come from Node's
 *   buffer pool).
 * - A busy socket (one read of 16 KB or more) gets a buffer of its own from a
 *   small pool. Its callback forwards views without copying. A writer that
 *   cannot send a view at once keeps it queued: then the reader pauses until
 *   that writer drains, so the buffer is never read into while a view of it
 *   waits. When the socket quietens (a read under 2 KB with nothing queued)
 *   the buffer goes back to the pool.
 *
 * Sockets read this way write with a high-water mark of 0, so that `write`
 * returns false whenever bytes stay queued and 'drain' follows once they
 * are sent: see `held`.
 *
 * Every read callback must end with `afterRead(buf, n, held)`, which picks the
 * buffer for that socket's next read (Node asks for it right after the
 * callback returns, without saying which socket asks: hence the hand-over
 * through `next`).
 */

/** Called with `n` bytes read into `buf[0, n)`; `this` is the socket. */
export type ReadCallback = (this: Socket, n: number, buf: Buffer) => void;

const READ_SIZE = 64 * 1024;
/** A read at least this large makes a quiet socket busy. */
const BUSY_READ = 16 * 1024;
/** A read below this (with nothing queued) makes a busy socket quiet again. */
const QUIET_READ = 2 * 1024;
/** Own buffers kept for reuse (4 MiB). More busy sockets than that allocate. */
const POOL_MAX = 64;

const shared = Buffer.allocUnsafeSlow(READ_SIZE);
const pool: Buffer[] = [];
/** The buffer for the read after the current callback; reset to `shared` each time it is taken. */
let next: Buffer = shared;

function nextReadBuffer(): Buffer {
  const b = next;
  next = shared;
  return b;
}

/**
 * Settle the buffer `buf` (the one the callback was given) after a read of
 * `n` bytes. `held`: a view of `buf` is still queued on a writer (see `held`).
 */
export function afterRead(buf: Buffer, n: number, held: boolean): void {
  if (buf === shared) {
    if (n >= BUSY_READ) next = pool.pop() ?? Buffer.allocUnsafeSlow(READ_SIZE);
  } else if (held || n >= QUIET_READ) {
    next = buf;
  } else if (buf.length === READ_SIZE && pool.length < POOL_MAX) {
    pool.push(buf);
  }
}

/**
 * The bytes `buf[start, end)` in a form that may outlive the read callback:
 * a view where `buf` belongs to this socket alone, a copy where it is the
 * shared buffer.
 */
export function ownBytes(buf: Buffer, start: number, end: number): Buffer {
  const view = buf.subarray(start, end);
  return buf === shared ? Buffer.from(view) : view;
}

/**
 * Write bytes a read callback forwards and say whether they stayed queued:
 * then the reader must pause until `to` emits 'drain' (and tell `afterRead`).
 */
export function forward(to: Socket, bytes: Buffer): boolean {
  return !to.write(bytes) && to.writableLength > 0;
}

/** Options that make a socket Node creates read through `callback`. */
export function readOptions(callback: ReadCallback): Pick<NetConnectOpts, 'onread'> & {
  writableHighWaterMark: number;
} {
  // Node reads any return but `false` as "go on"; callbacks pause explicitly instead.
  const cb = callback as unknown as OnReadOpts['callback'];
  return { onread: { buffer: nextReadBuffer, callback: cb }, writableHighWaterMark: 0 };
}

/** Connect a socket that reads through `callback`. */
export function connectReading(options: NetConnectOpts, callback: ReadCallback): Socket {
  return connect({ ...options, ...readOptions(callback) });
}

/** Node's TCP wrap, as far as taking it over needs. */
interface StreamHandle {
  useUserBuffer(buf: Uint8Array): void;
  readStart(): number;
  readStop(): number;
}

function isStreamHandle(h: unknown): h is StreamHandle {
  return (
    typeof h === 'object' &&
    h !== null &&
    typeof (h as Partial<StreamHandle>).useUserBuffer === 'function' &&
    typeof (h as Partial<StreamHandle>).readStop === 'function'
  );
}

const kFallback = Symbol('holdfast.reads');
type PlainSocket = Socket & { [kFallback]: ReadCallback };

/** 'data' listener of a socket read plainly: same callback, Node's buffers. */
function onDataFallback(this: PlainSocket, chunk: Buffer): void {
  this[kFallback](chunk.length, chunk);
  // Node's chunk is not one of ours: it must never become a read buffer.
  next = shared;
}

/**
 * Deliver a socket's reads to `callback` through 'data' events, in Node's own
 * fresh buffers (views of them may be kept). For sockets that cannot read
 * through `onread`, and for the partner of one: a relay whose other leg writes
 * with Node's default high-water mark cannot tell `afterRead` when a view is
 * still queued, so neither leg may read into a reused buffer.
 */
export function readPlainly(socket: Socket, callback: ReadCallback): void {
  (socket as PlainSocket)[kFallback] = callback;
  socket.on('data', onDataFallback);
}

/**
 * Make a socket a server accepted read through `callback`, paused (call
 * `resume()` to start). The socket must not have been read from by anyone
 * yet (nothing buffered), and must have no listeners that matter.
 *
 * Node offers `onread` only for sockets it connects, not for accepted ones.
 * So the accepted socket's handle (`_handle`, Node's internal TCP wrap; stable
 * since Node 12, and what `new Socket({ handle })` is documented-internal for)
 * moves to a new Socket built with `onread`; the old Socket object is retired
 * without closing the connection.
 *
 * If the handle is not what is expected (another Node, a TLS socket), the
 * socket is returned as is and delivers through 'data' events to the same
 * callback, with Node's own buffers: correct, only slower. Callers that pair
 * it with a second socket should then connect that one plainly too
 * (`readsOwnBuffers` tells).
 */
export function adoptReading(
  socket: Socket,
  callback: ReadCallback,
  options: { allowHalfOpen: boolean; noDelay: boolean },
): Socket {
  const holder = socket as unknown as { _handle: unknown };
  const handle = holder._handle;
  if (!isStreamHandle(handle) || socket.readableLength > 0 || socket.destroyed || socket.connecting) {
    readPlainly(socket, callback);
    socket.pause();
    return socket;
  }
  holder._handle = null;
  socket.destroy();
  // `handle` and `pauseOnCreate` (do not start reading yet) are what Node's
  // own server passes for the sockets it accepts; they are not in the types.
  const opts: SocketConstructorOpts & { pauseOnCreate: boolean } = {
    handle: handle as unknown as SocketConstructorOpts['handle'],
    pauseOnCreate: true,
    allowHalfOpen: options.allowHalfOpen,
    noDelay: options.noDelay,
    readable: true,
    writable: true,
    ...readOptions(callback),
  };
  return new Socket(opts);
}

/** Whether `socket` reads through `onread` (taken over or connected here), as opposed to the fallback. */
export function readsOwnBuffers(socket: Socket): boolean {
  return !(kFallback in socket);
}
