import { connect, type NetConnectOpts, type OnReadOpts, Socket } from 'node:net';

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
 * - A busy socket (one read of 4 KB or more) gets a buffer of its own from a
 *   small pool, while fewer than 256 such buffers are out (16 MiB: memory stays
 *   bounded however many connections are busy; beyond that, sockets copy).
 *   Relays give it back when a socket closes (`releaseReads`). Its callback forwards views without copying. A writer that
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
const BUSY_READ = 4 * 1024;
/** Own buffers held by sockets at most (16 MiB); more busy sockets read into the shared one. */
const MAX_OWNED = 256;
/** Own buffers held by sockets now: handed out, not yet back in the pool or released. */
let owned = 0;
/** Reads that would have made a socket busy but found MAX_OWNED buffers out (it copied instead). */
let overBound = 0;
/** A read below this (with nothing queued) makes a busy socket quiet again. */
const QUIET_READ = 2 * 1024;
/** Own buffers kept for reuse (4 MiB). More busy sockets than that allocate. */
const POOL_MAX = 64;

const shared = Buffer.allocUnsafeSlow(READ_SIZE);

/**
 * The one buffer quiet sockets read into, for readers that manage their own
 * `onread` and copy everything they keep before the callback returns (the
 * HTTP/1.1 upstream pool). Reads are handled one at a time, so they share it.
 */
export const SHARED_READ_BUFFER: Buffer = shared;

/** Views of the shared buffer handed out lately, by a hash of their range. */
const views: (Buffer | undefined)[] = new Array<Buffer | undefined>(64).fill(undefined);

/**
 * `SHARED_READ_BUFFER[start, end)` as a Buffer of its own, for a reader that
 * hands a read on as a Buffer: the same view object again when the same
 * range comes up again (requests and responses of one size repeat), so that
 * a read allocates nothing. Like the shared buffer's bytes, it is valid only
 * during the read callback.
 */
export function sharedView(start: number, end: number): Buffer {
  const k = (start * 7 + end) & 63;
  const v = views[k];
  if (v !== undefined && v.byteOffset === start && v.length === end - start) return v;
  const view = shared.subarray(start, end);
  views[k] = view;
  return view;
}
const pool: Buffer[] = [];
/** The buffer for the read after the current callback; reset to `shared` each time it is taken. */
let next: Buffer = shared;

/**
 * The buffer for a socket's next read, as `afterRead` settled it; must be
 * taken once after every read callback (it resets the hand-over).
 */
export function nextReadBuffer(): Buffer {
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
    if (n >= BUSY_READ) {
      if (owned < MAX_OWNED) {
        next = pool.pop() ?? Buffer.allocUnsafeSlow(READ_SIZE);
        owned++;
      } else {
        overBound++;
      }
    }
  } else if (held || n >= QUIET_READ) {
    next = buf;
  } else if (buf.length === READ_SIZE) {
    // Only our own buffers get here: a plainly read socket's chunk has n === its length.
    owned--;
    if (pool.length < POOL_MAX) pool.push(buf);
  }
}

/**
 * A socket read through `readThrough` or `connectReading` closed: the buffer
 * of its own it may hold no longer counts against the bound. It is not
 * pooled: a view of it may still be queued on the other leg (half-close).
 */
export function releaseReads(socket: Socket): void {
  const k = socketInternals();
  if (k === null) return;
  const buf = (socket as unknown as Record<symbol, unknown>)[k.kBuffer];
  if (buf instanceof Buffer && releaseReadBuffer(buf)) {
    (socket as unknown as Record<symbol, unknown>)[k.kBuffer] = shared;
  }
}

/**
 * A reader that held `buf` (its current read buffer) closed: if `buf` is an
 * own buffer, it no longer counts against the bound (it is not pooled: a view
 * of it may still be queued on the other leg). True if it was one.
 */
export function releaseReadBuffer(buf: Buffer): boolean {
  if (buf === shared || buf.length !== READ_SIZE) return false;
  owned--;
  return true;
}

/** The buffer a socket read through `onread` reads into next, or undefined for one read plainly. */
export function readBufferOf(socket: Socket): Buffer | undefined {
  const k = socketInternals();
  if (k === null || kFallback in socket) return undefined;
  const buf = (socket as unknown as Record<symbol, unknown>)[k.kBuffer];
  return buf instanceof Buffer ? buf : undefined;
}

/** Own buffers held by sockets now (for tests and metrics). */
export function ownedReadBuffers(): number {
  return owned;
}

/** Reads that found the bound reached and copied instead (for metrics). */
export function readBufferBoundHits(): number {
  return overBound;
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

/** Options that make a socket Node creates read through `callback`. */
function readOptions(callback: ReadCallback): Pick<NetConnectOpts, 'onread'> & {
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
    typeof (h as Partial<StreamHandle>).readStart === 'function' &&
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
  const plain = socket as PlainSocket;
  const already = kFallback in plain;
  plain[kFallback] = callback;
  if (!already) socket.on('data', onDataFallback);
}

/** The private fields of Node's net.Socket that `onread` sets up, found once by their names. */
interface SocketInternals {
  kBuffer: symbol;
  kBufferCb: symbol;
  kBufferGen: symbol;
}
let internals: SocketInternals | null | undefined;

function socketInternals(): SocketInternals | null {
  if (internals !== undefined) return internals;
  const probe = new Socket();
  const bySymbol = new Map(Object.getOwnPropertySymbols(probe).map((k) => [k.description, k]));
  probe.destroy();
  const kBuffer = bySymbol.get('kBuffer');
  const kBufferCb = bySymbol.get('kBufferCb');
  const kBufferGen = bySymbol.get('kBufferGen');
  internals =
    kBuffer !== undefined && kBufferCb !== undefined && kBufferGen !== undefined
      ? { kBuffer, kBufferCb, kBufferGen }
      : null;
  return internals;
}

/** What `readThrough` touches of a socket, as far as it checks before touching it. */
interface Convertible {
  _handle: StreamHandle & { reading: boolean };
  _writableState: { highWaterMark: number; length: number };
}

/**
 * Make a socket that a server accepted read through `callback`, paused (call
 * `resume()` to start). Nothing may have been read from it into Node's
 * buffers yet.
 *
 * Node offers `onread` only for sockets it connects itself. An accepted
 * socket is switched in place, doing what the `onread` option does at
 * construction: the socket's own (private) read-buffer fields are set, its
 * handle is told to read into our buffer, and its writable high-water mark
 * becomes 0. In place rather than by moving the handle to a new Socket: a
 * second Socket per connection left ~1 KB of garbage per accepted connection
 * behind, promoted to the old generation under connection bursts (RSS per
 * idle WebSocket rose from 4.8 to 7.3 KB).
 *
 * These are Node internals, so each is checked first; where one is missing
 * (another Node release, a TLS socket), the socket delivers through 'data'
 * events to the same callback with Node's own buffers: correct, only slower.
 * The partner leg must then be read plainly too (`readsOwnBuffers` tells).
 */
export function readThrough(socket: Socket, callback: ReadCallback): void {
  const k = socketInternals();
  const s = socket as unknown as Partial<Convertible> & Record<symbol, unknown>;
  const handle = s._handle;
  const writable = s._writableState;
  if (k !== null && s[k.kBufferGen] === nextReadBuffer) {
    // Switched before (the HTTP/1.1 front, now handing over to WebSocket): a
    // new reader only, whatever is still queued for writing (a pipelined
    // response before the upgrade).
    socket.pause();
    s[k.kBufferCb] = callback;
    return;
  }
  if (
    k === null ||
    // TLS: the handle reads ciphertext; decrypted bytes come through 'data'.
    (socket as Socket & { encrypted?: boolean }).encrypted === true ||
    !isStreamHandle(handle) ||
    typeof writable?.highWaterMark !== 'number' ||
    writable.length !== 0 ||
    socket.readableLength > 0 ||
    socket.destroyed ||
    socket.connecting
  ) {
    readPlainly(socket, callback);
    socket.pause();
    return;
  }
  // Stop reading (`pause()` alone leaves the handle reading into the stream buffer).
  socket.pause();
  handle.reading = false;
  handle.readStop();
  const first = nextReadBuffer();
  s[k.kBuffer] = first;
  s[k.kBufferCb] = callback;
  s[k.kBufferGen] = nextReadBuffer;
  handle.useUserBuffer(first);
  writable.highWaterMark = 0;
}

/** Whether `socket` reads through `onread` (switched by `readThrough` or connected here), not plainly. */
export function readsOwnBuffers(socket: Socket): boolean {
  return !(kFallback in socket);
}
