/**
 * Node's stream binding (`process.binding('stream_wrap')`): the write and
 * shutdown request classes a libuv stream handle takes, and the shared
 * Int32Array through which a handle reports a read's byte count and whether a
 * write went asynchronous. Used where holdfast drives handles without
 * net.Socket's Writable (socket-writes.ts, stream-leg.ts).
 *
 * `process.binding` is deprecated in documentation only (DEP0111: no
 * warning unless `--pending-deprecation`); it is the only way to these
 * request classes. Looked up and checked once; null where anything is
 * missing, and then every caller keeps to net.Socket's own paths.
 */

/**
 * A write request; the handle uses it only when the write goes asynchronous,
 * then calls `oncomplete` on it (as `this`: callers type it as their own
 * extension of this interface, hence `this: never` here).
 */
export interface WriteReq {
  oncomplete: ((this: never, status: number) => void) | undefined;
}

/** A shutdown (FIN) request; `oncomplete` as for writes. */
export interface ShutdownReq {
  oncomplete: ((this: never, status: number) => void) | undefined;
}

export interface StreamBinding {
  WriteWrap: new () => WriteReq;
  ShutdownWrap: new () => ShutdownReq;
  /** Node's shared report of the last read and write. */
  state: Int32Array;
  /** Index in `state`: the byte count (or error) of the read being delivered. */
  kReadBytesOrError: number;
  /** Index in `state`: 1 when the last write was queued rather than taken at once. */
  kLastWriteWasAsync: number;
}

let binding: StreamBinding | null | undefined;

/** The stream binding, or null on a Node without it (checked once). */
export function streamBinding(): StreamBinding | null {
  if (binding !== undefined) return binding;
  binding = null;
  try {
    const load = (process as unknown as { binding?: (name: string) => unknown }).binding;
    if (typeof load !== 'function') return null;
    const sw = load.call(process, 'stream_wrap') as Partial<{
      WriteWrap: new () => WriteReq;
      ShutdownWrap: new () => ShutdownReq;
      streamBaseState: Int32Array;
      kReadBytesOrError: number;
      kLastWriteWasAsync: number;
    }>;
    if (
      typeof sw.WriteWrap === 'function' &&
      typeof sw.ShutdownWrap === 'function' &&
      sw.streamBaseState instanceof Int32Array &&
      typeof sw.kReadBytesOrError === 'number' &&
      typeof sw.kLastWriteWasAsync === 'number'
    )
      binding = {
        WriteWrap: sw.WriteWrap,
        ShutdownWrap: sw.ShutdownWrap,
        state: sw.streamBaseState,
        kReadBytesOrError: sw.kReadBytesOrError,
        kLastWriteWasAsync: sw.kLastWriteWasAsync,
      };
  } catch {
    binding = null;
  }
  return binding;
}

/** A stream handle's write methods (a TCP wrap). */
export interface WritableHandle {
  writeBuffer(req: WriteReq, data: Uint8Array): number;
  writeLatin1String(req: WriteReq, data: string): number;
}

/** A request for the next write, kept while writes complete at once (then libuv never saw it). */
let spare: WriteReq | undefined;

/**
 * Write `data` (bytes, or a latin1 string) to `handle`. Returns 0 when the
 * kernel took all of it at once, a negative errno when the write failed, or
 * the request now in flight: libuv writes the rest from `data` later, so the
 * caller keeps `data` alive on the request and sets its `oncomplete` (called
 * with the status; libuv keeps writes in order).
 */
export function writeToHandle(
  b: StreamBinding,
  handle: WritableHandle,
  data: Buffer | string,
): WriteReq | number {
  const req = spare ?? new b.WriteWrap();
  spare = undefined;
  const err = typeof data === 'string' ? handle.writeLatin1String(req, data) : handle.writeBuffer(req, data);
  if (err !== 0) return err;
  if (b.state[b.kLastWriteWasAsync] === 0) {
    spare = req;
    return 0;
  }
  return req;
}
