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
