import type { Socket } from 'node:net';
import {
  streamBinding,
  type WritableHandle,
  type WriteReq as BindingWriteReq,
  writeToHandle,
} from './stream-binding.ts';

/**
 * Writes straight to a socket's handle when nothing is queued.
 *
 * `socket.write()` goes through the Writable machinery: its state
 * bookkeeping, a new WriteWrap per write, and a callback deferred to the next
 * tick even when the kernel took every byte at once, which for small
 * responses on loopback is nearly always. Per HTTP/1.1 request through the
 * proxy that is two writes (the request to the backend, the response to the
 * client), a noticeable part of the CPU the proxy spends on a request.
 *
 * When the socket has nothing queued (nothing in its Writable, no write of
 * ours in flight), `writeDirect` hands the bytes to the handle itself, as
 * net.Socket would (`writeLatin1String` / `writeBuffer`, which try a
 * synchronous write first). If the kernel did not take everything, the handle
 * queues the rest (libuv keeps writes in order) and the write counts as in
 * flight: until it completes, every write goes through `socket.write()`,
 * which libuv orders behind it; 'drain' is emitted once all is flushed, so
 * backpressure works as with `write()`. `socket.end()` waits for it too (a
 * shutdown is queued behind pending writes).
 *
 * These are Node internals (`process.binding('stream_wrap')`, deprecated in
 * documentation only, DEP0111; the handle's write methods, which also count
 * the bytes behind `socket.bytesWritten`): each is checked once,
 * and where one is missing every write goes through `socket.write()`,
 * correct, only slower. `directWrites()` says which (a test checks that the
 * Node we ship takes the direct path).
 */

/** A write request of ours: the socket and bytes are set only on a write in flight. */
interface WriteReq extends BindingWriteReq {
  socket?: Socket | undefined;
  buffer?: string | Buffer | undefined;
}

/** The handle of a TCP socket, as far as writing needs. */
interface SocketFields {
  _handle: WritableHandle | null;
  [kInFlight]?: number;
}

const kInFlight = Symbol('holdfast.writes.inFlight');

const binding = streamBinding();
/** Writes that took the direct path, and writes that went through `socket.write()` (for tests). */
let direct = 0;
let plain = 0;

/** The kernel took every byte at once: nothing refers to them any more (a Buffer may be filled again). */
export const WROTE = 0;
/** `socket.write()` took them under its high-water mark: go on, but the Writable may still hold them. */
export const ACCEPTED = 1;
/** Some are queued: 'drain' follows once everything queued is flushed. */
export const QUEUED = 2;
/** The handle refused the write: the socket is destroyed with the error. */
export const FAILED = 3;
/**
 * What `writeDirectOutcome` did with the bytes. WROTE and ACCEPTED: go on
 * writing; QUEUED and FAILED: wait ('drain', or 'close' after a failure).
 */
export type WriteOutcome = typeof WROTE | typeof ACCEPTED | typeof QUEUED | typeof FAILED;

/** A direct write the kernel did not take whole has completed (or failed, or the socket closed). */
function onDirectDone(this: WriteReq, status: number): void {
  const socket = this.socket!;
  this.socket = undefined;
  this.buffer = undefined;
  const fields = socket as unknown as SocketFields;
  const left = (fields[kInFlight] ?? 1) - 1;
  fields[kInFlight] = left;
  if (socket.destroyed) return;
  if (status < 0) {
    socket.destroy(writeError(status));
    return;
  }
  if (left > 0 || socket.writableEnded) return;
  if (socket.writableLength === 0) socket.emit('drain');
  else if (!socket.writableNeedDrain) {
    // Writes queued behind this one in the Writable will not end in a 'drain'
    // of their own (they were under the high-water mark): send one after them.
    socket.write('', 'latin1', () => {
      if (!socket.destroyed) socket.emit('drain');
    });
  }
  // Otherwise the Writable emits 'drain' itself once it is empty.
}

function writeError(status: number): Error {
  const err = new Error(`write failed (${status})`) as Error & { errno: number; syscall: string };
  err.errno = status;
  err.syscall = 'write';
  return err;
}

/**
 * Whether `socket` can be written to directly now: a plain TCP socket with a
 * handle, connected, not ending, no timeout to refresh, nothing queued.
 */
function canWriteDirectly(socket: Socket): boolean {
  const fields = socket as unknown as SocketFields;
  if ((fields[kInFlight] ?? 0) > 0 || socket.writableLength !== 0) return false;
  const handle = fields._handle;
  return (
    handle !== null &&
    typeof handle === 'object' &&
    typeof handle.writeLatin1String === 'function' &&
    !socket.connecting &&
    !socket.writableEnded &&
    !socket.destroyed &&
    !(socket.timeout! > 0) &&
    (socket as Socket & { encrypted?: boolean }).encrypted !== true
  );
}

/**
 * Write `data` (a latin1 string or bytes) to `socket`. Returns true when the
 * kernel took all of it now (or, where the write went through
 * `socket.write()`, when that returned true); false when some of it is
 * queued, and 'drain' follows once everything queued is flushed (as
 * `socket.write()` with a high-water mark of 0). Bytes are not copied: a
 * Buffer must not change until the write is done (as with `socket.write()`).
 */
export function writeDirect(socket: Socket, data: string | Buffer): boolean {
  return writeDirectOutcome(socket, data) <= ACCEPTED;
}

/**
 * `writeDirect`, saying what became of the bytes (see WriteOutcome): WROTE
 * tells a caller that it may fill the same Buffer again for its next write.
 */
export function writeDirectOutcome(socket: Socket, data: string | Buffer): WriteOutcome {
  if (binding === null || !canWriteDirectly(socket)) {
    plain++;
    const ok = typeof data === 'string' ? socket.write(data, 'latin1') : socket.write(data);
    return ok ? ACCEPTED : QUEUED;
  }
  const fields = socket as unknown as SocketFields;
  const handle = fields._handle!;
  direct++;
  const r = writeToHandle(binding, handle, data);
  if (r === 0) return WROTE;
  if (typeof r === 'number') {
    socket.destroy(writeError(r));
    return FAILED;
  }
  // The handle keeps the rest (and this request object) until the write completes.
  const req = r as WriteReq;
  req.oncomplete = onDirectDone;
  req.socket = socket;
  req.buffer = data;
  fields[kInFlight] = (fields[kInFlight] ?? 0) + 1;
  return QUEUED;
}

/** Whether a direct write of ours to `socket` is still in flight. */
export function directWritePending(socket: Socket): boolean {
  return ((socket as unknown as SocketFields)[kInFlight] ?? 0) > 0;
}

/** Whether writes can go straight to handles on this Node (false: every write takes `socket.write()`). */
export function directWrites(): boolean {
  return binding !== null;
}

/** Writes so far that went straight to a handle, and through `socket.write()`. */
export function writeCounts(): { direct: number; plain: number } {
  return { direct, plain };
}
