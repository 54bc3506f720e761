import { connect, isIP, type NetConnectOpts, Socket, type SocketConstructorOpts } from 'node:net';
import { getSystemErrorName } from 'node:util';
import {
  connectReading,
  nextReadBuffer,
  type ReadCallback,
  readBufferOf,
  readPlainly,
  readThrough,
  releaseReadBuffer,
  releaseReads,
  SHARED_READ_BUFFER,
} from './socket-reads.ts';
import {
  type ShutdownReq as BindingShutdownReq,
  type StreamBinding,
  streamBinding,
  type WriteReq as BindingWriteReq,
  writeToHandle,
} from './stream-binding.ts';

/**
 * Relay legs: the two sockets of a relayed connection once it only moves
 * bytes, as one small object each.
 *
 * A net.Socket is a Duplex stream: with its readable and writable states,
 * listener arrays and properties it is ~1 KB of heap, twice per proxied
 * connection, for machinery a relay does not use (it reads through `onread`
 * into its own buffers and writes with a high-water mark of 0). For idle
 * long-lived connections that is most of what the gateway holds. `takeOver`
 * therefore lifts the socket's libuv handle out of its net.Socket and drives
 * it directly: reads arrive in `onread` (same buffers as socket-reads.ts),
 * writes go to the handle with a write request only when the kernel could not
 * take them at once, FIN and close are the handle's own. The emptied Socket is
 * destroyed (without its handle) and collected.
 *
 * That uses Node internals: the handle's methods, the `owner_symbol` by which
 * Node finds a handle's socket, `process.binding('stream_wrap')` for the
 * write and shutdown requests and the shared read/write state
 * (stream-binding.ts), and `process.binding('tcp_wrap')` for the TCP handles
 * that `connectLeg` connects (DEP0111, a documentation-only deprecation: the
 * only way to these, and guarded). Everything is checked once; a socket
 * that cannot be taken over (TLS, a write still queued, another Node) becomes a
 * `SocketLeg` over the net.Socket instead: same interface, same behaviour,
 * only larger.
 */

/** What a relay is told about its legs. Calls come from libuv callbacks, never from inside a leg method. */
export interface LegOwner {
  /**
   * A leg made by `connectLeg` is connected. It reads already: its reads
   * come after this call, and pausing it here holds them.
   */
  legConnect?(leg: Leg): void;
  /**
   * `n` bytes were read into `buf[0, n)` (socket-reads.ts rules: keep or
   * forward them only through `ownBytes`; end with `afterRead`).
   */
  legRead(leg: Leg, n: number, buf: Buffer): void;
  /** Everything written to `leg` reached the kernel, after a `write` that returned false. */
  legDrain(leg: Leg): void;
  /** The peer of `leg` ended its side (FIN). `leg` may still be written to. */
  legEnd(leg: Leg): void;
  /**
   * `leg` closed; `error`: cut by an error (refused or failed connect, reset,
   * failed write), not a clean close. `leg.failure` says what, where known.
   */
  legClose(leg: Leg, error: boolean): void;
}

/** One socket of a relay. */
export interface Leg {
  readonly owner: LegOwner;
  /** False while it holds a net.Socket (TLS, or the take-over was not possible). */
  readonly lean: boolean;
  /** Write bytes; false when some stayed queued (then `legDrain` follows), true also after end/destroy. */
  write(bytes: Buffer): boolean;
  /** Send FIN once queued bytes are out. */
  end(): void;
  /** Close now; queued bytes are dropped. `legClose` follows. */
  destroy(): void;
  /** Close with a TCP reset (RST), to pass a peer's reset on. `legClose` follows. */
  reset(): void;
  pause(): void;
  resume(): void;
  readonly destroyed: boolean;
  /** `end()` or `destroy()` was called: nothing more may be written. */
  readonly writableEnded: boolean;
  readonly bytesRead: number;
  readonly bytesWritten: number;
  /** What cut the leg, for logs (`connect ECONNREFUSED 10.0.0.7:8080`), once it closed with an error. */
  readonly failure: string | undefined;
}

/**
 * Take `socket` over as a leg of `owner`. The socket must read through
 * `onread` already (`readThrough` or `connectReading`), be paused, and have
 * no bytes still read-buffered by Node; `resume()` the leg to start reading.
 * The socket must not be used afterwards, and the caller's listeners on it
 * must be removed first (its 'error' listener may stay).
 */
export function takeOver(socket: Socket, owner: LegOwner): Leg {
  const handle = liftable(socket);
  if (handle === undefined) return new SocketLeg(socket, owner);
  const k = internals!;
  const buf = readBufferOf(socket)!;
  // Out of the Socket: its destroy() no longer touches the handle, and
  // still does the bookkeeping (the server's connection count, 'close').
  const s = socket as unknown as { _handle: unknown };
  s._handle = null;
  socket.removeAllListeners();
  socket.on('error', noop);
  socket.destroy();
  const leg = new HandleLeg(handle, owner, buf);
  handle[k.owner] = leg;
  handle.onread = onHandleRead;
  // A paused net.Socket may still have its handle reading (Readable asks for
  // more in the background); a leg starts stopped.
  handle.readStop();
  return leg;
}

function noop(): void {}

/** Open legs by kind: on handles (lean) and over net.Sockets (TLS, or a fallback). */
const open = { handle: 0, socket: 0 };

/** Relay legs open now, by kind (for metrics, and for tests: no silent fallback). */
export function openLegs(): Readonly<{ handle: number; socket: number }> {
  return open;
}

/** Where and how `connectLeg` connects. */
export interface LegConnectOptions {
  host: string;
  port: number;
  /** Local address to bind, or undefined to let the kernel choose. */
  localAddress: string | undefined;
  /** TCP keepalive idle time (ms), or undefined for off. */
  keepAliveMs: number | undefined;
  /**
   * Read into reused buffers (socket-reads.ts). False when the other leg is
   * read plainly (TLS): then this one must be too.
   */
  ownBuffers: boolean;
}

/**
 * Connect a new leg for `owner`: `legConnect` when connected (Nagle off,
 * half-close allowed, reading), `legClose(leg, true)` if the connect fails. To an IP
 * address with reused buffers, no net.Socket is made at all; otherwise (a
 * host name, TLS on the other leg, another Node) it is a leg over net.connect.
 * Timeouts are the owner's: `destroy()` cancels a connect.
 */
export function connectLeg(o: LegConnectOptions, owner: LegOwner): Leg {
  const family = isIP(o.host);
  const k = family !== 0 && o.ownBuffers ? probe() : null;
  if (k === null) {
    const options: NetConnectOpts = {
      host: o.host,
      port: o.port,
      localAddress: o.localAddress,
      allowHalfOpen: true,
      noDelay: true,
      keepAlive: o.keepAliveMs !== undefined,
      keepAliveInitialDelay: o.keepAliveMs ?? 0,
    };
    let socket: Socket;
    // Not paused: Node starts reading once 'connect' (legConnect) is out.
    if (o.ownBuffers) socket = connectReading(options, onSocketRead);
    else {
      socket = connect(options);
      readPlainly(socket, onSocketRead);
    }
    return new SocketLeg(socket, owner, true);
  }
  const handle = new k.TCP(k.SOCKET);
  const leg = new HandleLeg(handle, owner, SHARED_READ_BUFFER);
  leg.flags |= F_CONNECTING;
  handle[k.owner] = leg;
  handle.onread = onHandleRead;
  handle.useUserBuffer(leg.buf);
  const six = family === 6;
  let err = 0;
  if (o.localAddress !== undefined)
    err = six ? handle.bind6(o.localAddress, 0, 0) : handle.bind(o.localAddress, 0);
  if (err === 0) {
    const req = new k.TCPConnectWrap();
    req.oncomplete = onConnected;
    req.address = o.host;
    req.port = o.port;
    req.keepAliveMs = o.keepAliveMs;
    err = six ? handle.connect6(req, o.host, o.port) : handle.connect(req, o.host, o.port);
    // Reading from the connect on, not from legConnect: libuv then watches the
    // socket for the connect and for reads in one epoll registration, and only
    // narrows it once connected. A read started after the connect would
    // re-register a socket that epoll still holds (libuv stops watching it for
    // the connect without removing it): an EPOLL_CTL_ADD that fails with
    // EEXIST and is retried as a MOD, one more io_uring submission per
    // connection. libuv reads nothing before the connect completes.
    if (err === 0) {
      err = handle.readStart();
      if (err === 0) leg.flags &= ~F_PAUSED;
    }
  }
  if (err !== 0) {
    // Reported like a failed connect: from a callback, not from here.
    leg.failure = `connect ${getSystemErrorName(err)} ${o.host}:${o.port}`;
    leg.fail();
  }
  return leg;
}

// ---- handle legs ----

/** Node's TCP handle (a libuv stream), as far as a leg drives it. */
interface StreamHandle {
  readStart(): number;
  readStop(): number;
  useUserBuffer(buf: Uint8Array): void;
  writeBuffer(req: BindingWriteReq, buf: Uint8Array): number;
  writeLatin1String(req: BindingWriteReq, data: string): number;
  shutdown(req: ShutdownReq): number;
  close(cb: (this: StreamHandle) => void): void;
  reset?(cb: (this: StreamHandle) => void): number;
  onread: ((this: StreamHandle) => Buffer | undefined) | null;
  readonly bytesRead: number;
  readonly bytesWritten: number;
  [owner: symbol]: unknown;
}

/** A TCP handle made here, before it is connected. */
interface TcpHandle extends StreamHandle {
  bind(address: string, port: number): number;
  bind6(address: string, port: number, flags: number): number;
  connect(req: ConnectReq, address: string, port: number): number;
  connect6(req: ConnectReq, address: string, port: number): number;
  setNoDelay(on: boolean): number;
  setKeepAlive(on: boolean, delaySeconds: number): number;
}

/** A write request of a leg; our fields are set only on those that went async. */
interface WriteReq extends BindingWriteReq {
  leg: HandleLeg | undefined;
  buffer: Buffer | undefined;
}
interface ShutdownReq extends BindingShutdownReq {
  leg: HandleLeg | undefined;
}
interface ConnectReq {
  oncomplete: ((this: ConnectReq, status: number, handle: TcpHandle) => void) | undefined;
  address: string;
  port: number;
  keepAliveMs: number | undefined;
}

/** The stream binding (stream-binding.ts) and what legs add to it. */
interface Internals extends StreamBinding {
  /** The symbol under which a handle points at its owner (Node: its Socket). */
  owner: symbol;
  TCP: new (type: number) => TcpHandle;
  TCPConnectWrap: new () => ConnectReq;
  SOCKET: number;
}

/** libuv's end-of-stream code (-4095 on every platform); checked against the system's error names. */
const UV_EOF = -4095;

let internals: Internals | null | undefined;

interface TcpWrapBinding {
  TCP: new (type: number) => TcpHandle;
  TCPConnectWrap: new () => ConnectReq;
  constants: { SOCKET: number };
}

/** The Node internals legs use, looked up and checked once; null where any is missing. */
function probe(): Internals | null {
  if (internals !== undefined) return internals;
  internals = null;
  try {
    const binding = (process as unknown as { binding?: (name: string) => unknown }).binding;
    const sw = streamBinding();
    if (typeof binding !== 'function' || sw === null || getSystemErrorName(UV_EOF) !== 'EOF') return null;
    // The TCP handle class: legs to backends are connected on handles of their own.
    const tw = binding.call(process, 'tcp_wrap') as Partial<TcpWrapBinding>;
    if (
      typeof tw.TCP !== 'function' ||
      typeof tw.TCPConnectWrap !== 'function' ||
      typeof tw.constants?.SOCKET !== 'number'
    )
      return null;
    // A Socket made around a handle of our own shows the symbol it points at it by.
    const handle = new tw.TCP(tw.constants.SOCKET);
    // Not readable: a Socket around a handle would otherwise start reading it.
    const opts = { handle, readable: false, writable: false };
    const probeSocket = new Socket(opts as unknown as SocketConstructorOpts);
    probeSocket.on('error', noop);
    const owner = Object.getOwnPropertySymbols(handle).find(
      (sym) => sym.description === 'owner_symbol' && handle[sym] === probeSocket,
    );
    probeSocket.destroy();
    const methods = ['readStart', 'readStop', 'useUserBuffer', 'writeBuffer', 'shutdown', 'close', 'connect'];
    if (
      owner === undefined ||
      methods.some((m) => typeof (handle as unknown as Record<string, unknown>)[m] !== 'function')
    )
      return null;
    internals = {
      ...sw,
      owner,
      TCP: tw.TCP,
      TCPConnectWrap: tw.TCPConnectWrap,
      SOCKET: tw.constants.SOCKET,
    };
  } catch {
    internals = null;
  }
  return internals;
}

/** The socket's handle if it can be lifted out now, else undefined. */
function liftable(socket: Socket): StreamHandle | undefined {
  const s = socket as unknown as {
    _handle?: StreamHandle | null;
    _writableState?: { length: number; pendingcb: number };
    encrypted?: boolean;
  };
  const h = s._handle;
  if (
    h === null ||
    h === undefined ||
    s.encrypted === true ||
    socket.destroyed ||
    socket.connecting ||
    socket.readableLength > 0 ||
    socket.readableEnded ||
    socket.writableEnded ||
    // A write in flight would complete into the Socket.
    s._writableState?.length !== 0 ||
    s._writableState.pendingcb !== 0 ||
    readBufferOf(socket) === undefined ||
    probe() === null ||
    // A TCP wrap, whose methods the probe checked, and this socket's own.
    !(h instanceof internals!.TCP) ||
    h[internals!.owner] !== socket
  )
    return undefined;
  return h;
}

const F_PAUSED = 1;
const F_ENDED = 2;
const F_EOF = 4;
const F_SHUT = 8;
const F_DESTROYED = 16;
const F_ERROR = 32;
const F_CONNECTING = 64;

class HandleLeg implements Leg {
  readonly owner: LegOwner;
  readonly handle: StreamHandle;
  /** The buffer the handle reads into now. */
  buf: Buffer;
  flags = F_PAUSED;
  /** Writes handed to libuv and not yet complete. */
  queued = 0;
  failure: string | undefined = undefined;
  /** The handle's byte counts as it closed (-1 before): Node detaches it from them after its close callback. */
  #readAtClose = -1;
  #writtenAtClose = -1;

  constructor(handle: StreamHandle, owner: LegOwner, buf: Buffer) {
    this.handle = handle;
    this.owner = owner;
    this.buf = buf;
    open.handle++;
  }

  get lean(): boolean {
    return true;
  }

  get destroyed(): boolean {
    return (this.flags & F_DESTROYED) !== 0;
  }

  get writableEnded(): boolean {
    return (this.flags & (F_ENDED | F_DESTROYED)) !== 0;
  }

  get bytesRead(): number {
    return this.#readAtClose >= 0 ? this.#readAtClose : this.handle.bytesRead;
  }

  get bytesWritten(): number {
    return this.#writtenAtClose >= 0 ? this.#writtenAtClose : this.handle.bytesWritten;
  }

  /** The handle has closed: keep its counts for the owner, which may read them after the other leg closes. */
  closed(): void {
    this.#readAtClose = this.handle.bytesRead;
    this.#writtenAtClose = this.handle.bytesWritten;
    open.handle--;
    releaseReadBuffer(this.buf);
    this.owner.legClose(this, (this.flags & F_ERROR) !== 0);
  }

  write(bytes: Buffer): boolean {
    if ((this.flags & (F_ENDED | F_DESTROYED)) !== 0) return true;
    const r = writeToHandle(internals!, this.handle, bytes);
    if (r === 0) return true;
    if (typeof r === 'number') {
      this.failure = `write ${getSystemErrorName(r)}`;
      this.fail();
      return true;
    }
    const req = r as WriteReq;
    req.oncomplete = onWritten;
    req.leg = this;
    // libuv writes from it later: keep it alive until then.
    req.buffer = bytes;
    this.queued++;
    return false;
  }

  end(): void {
    if ((this.flags & (F_ENDED | F_DESTROYED)) !== 0) return;
    this.flags |= F_ENDED;
    // The peer has ended its side already and nothing is queued: closing now
    // sends the same FIN (after whatever the kernel still holds) and is where
    // the shutdown's completion would lead anyway, without the shutdown call,
    // its request and its callback. Nothing can be unread after the peer's
    // FIN, so the close is never a reset. (A relayed connection whose backend
    // answers and closes first ends this way: one syscall less.)
    if ((this.flags & F_EOF) !== 0 && this.queued === 0) {
      this.destroy();
      return;
    }
    const req = new internals!.ShutdownWrap() as ShutdownReq;
    req.oncomplete = onShutdown;
    req.leg = this;
    // libuv sends FIN after the queued writes.
    if (this.handle.shutdown(req) !== 0) this.destroy();
  }

  destroy(): void {
    if ((this.flags & F_DESTROYED) !== 0) return;
    this.flags |= F_DESTROYED;
    this.handle.close(onHandleClosed);
  }

  reset(): void {
    if ((this.flags & F_DESTROYED) !== 0) return;
    const handle = this.handle;
    if (typeof handle.reset !== 'function') {
      this.destroy();
      return;
    }
    this.flags |= F_DESTROYED;
    if (handle.reset(onHandleClosed) !== 0) handle.close(onHandleClosed);
  }

  /** Close because of an error: the owner hears `error`. */
  fail(): void {
    this.flags |= F_ERROR;
    this.destroy();
  }

  pause(): void {
    if ((this.flags & (F_PAUSED | F_DESTROYED)) !== 0) return;
    this.flags |= F_PAUSED;
    this.handle.readStop();
  }

  resume(): void {
    if ((this.flags & (F_PAUSED | F_DESTROYED | F_EOF | F_CONNECTING)) !== F_PAUSED) return;
    this.flags &= ~F_PAUSED;
    if (this.handle.readStart() !== 0) this.fail();
  }

  /** FIN from the peer: reading is over; closed once our own FIN is out too. */
  eof(): void {
    this.flags |= F_EOF | F_PAUSED;
    this.handle.readStop();
    this.owner.legEnd(this);
    if ((this.flags & F_SHUT) !== 0) this.destroy();
  }
}

function onHandleRead(this: StreamHandle): Buffer | undefined {
  const k = internals!;
  const leg = this[k.owner] as HandleLeg;
  const n = k.state[k.kReadBytesOrError]!;
  if (n > 0) {
    const buf = leg.buf;
    leg.owner.legRead(leg, n, buf);
    // Always taken (it resets the hand-over); a closed leg gives its buffer back in onHandleClosed.
    const next = nextReadBuffer();
    if (next === buf) return undefined;
    leg.buf = next;
    return next;
  }
  if (n === 0 || (leg.flags & F_DESTROYED) !== 0) return undefined;
  if (n === UV_EOF) leg.eof();
  else {
    leg.failure = `read ${getSystemErrorName(n)}`;
    leg.fail();
  }
  return undefined;
}

function onConnected(this: ConnectReq, status: number, handle: TcpHandle): void {
  const leg = handle[internals!.owner] as HandleLeg;
  if ((leg.flags & F_DESTROYED) !== 0) return;
  leg.flags &= ~F_CONNECTING;
  if (status !== 0) {
    leg.failure = `connect ${getSystemErrorName(status)} ${this.address}:${this.port}`;
    leg.fail();
    return;
  }
  handle.setNoDelay(true);
  // Node's keepalive delay is in whole seconds.
  if (this.keepAliveMs !== undefined) keepAliveSoon(leg, Math.max(1, Math.floor(this.keepAliveMs / 1000)));
  leg.owner.legConnect?.(leg);
}

/**
 * TCP keepalive on a connected leg, set within a moment (between
 * KEEPALIVE_AFTER_MS and twice that) rather than at once: four setsockopt
 * calls (libuv sets SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT)
 * that a connection closed by then never makes, which counts when clients
 * connect, exchange a little and close by the thousand.
 *
 * Dead-peer detection is unchanged: Linux times the first probe from the last
 * segment received, also for a socket whose TCP_KEEPIDLE is set after it was
 * established (tcp_sock_set_keepidle_locked arms the timer for the idle time
 * less what has elapsed since then). Set within the smallest idle time the
 * config allows (1 s), the first probe goes out exactly when it would have.
 */
const KEEPALIVE_AFTER_MS = 250;
/** Connected since the last tick, and before it; each tick sets keepalive on the older ones. */
let keepAliveNewer: HandleLeg[] = [];
let keepAliveNewerSeconds: number[] = [];
let keepAliveOlder: HandleLeg[] = [];
let keepAliveOlderSeconds: number[] = [];
let keepAliveTimer: ReturnType<typeof setTimeout> | undefined;

function keepAliveSoon(leg: HandleLeg, seconds: number): void {
  keepAliveNewer.push(leg);
  keepAliveNewerSeconds.push(seconds);
  if (keepAliveTimer === undefined) keepAliveTimer = setTimeout(keepAliveTick, KEEPALIVE_AFTER_MS).unref();
}

function keepAliveTick(): void {
  keepAliveTimer = undefined;
  const legs = keepAliveOlder;
  const seconds = keepAliveOlderSeconds;
  for (let i = 0; i < legs.length; i++) {
    const leg = legs[i]!;
    if ((leg.flags & F_DESTROYED) === 0) (leg.handle as TcpHandle).setKeepAlive(true, seconds[i]!);
  }
  // The arrays swap roles rather than being made anew each tick.
  legs.length = 0;
  seconds.length = 0;
  keepAliveOlder = keepAliveNewer;
  keepAliveOlderSeconds = keepAliveNewerSeconds;
  keepAliveNewer = legs;
  keepAliveNewerSeconds = seconds;
  if (keepAliveOlder.length > 0) keepAliveTimer = setTimeout(keepAliveTick, KEEPALIVE_AFTER_MS).unref();
}

function onWritten(this: WriteReq, status: number): void {
  const leg = this.leg!;
  this.leg = undefined;
  this.buffer = undefined;
  leg.queued--;
  if ((leg.flags & F_DESTROYED) !== 0) return;
  if (status < 0) {
    leg.failure = `write ${getSystemErrorName(status)}`;
    leg.fail();
  } else if (leg.queued === 0) leg.owner.legDrain(leg);
}

function onShutdown(this: ShutdownReq, status: number): void {
  const leg = this.leg!;
  this.leg = undefined;
  if ((leg.flags & F_DESTROYED) !== 0) return;
  leg.flags |= F_SHUT;
  if (status < 0) {
    leg.failure = `shutdown ${getSystemErrorName(status)}`;
    leg.fail();
  } else if ((leg.flags & F_EOF) !== 0) leg.destroy();
}

function onHandleClosed(this: StreamHandle): void {
  (this[internals!.owner] as HandleLeg).closed();
}

// ---- socket legs (fallback) ----

const kLeg = Symbol('holdfast.leg');
type LegSocket = Socket & { [kLeg]: SocketLeg };

/** A leg over a net.Socket: TLS, or a socket the take-over could not lift. */
class SocketLeg implements Leg {
  readonly owner: LegOwner;
  readonly socket: Socket;

  failure: string | undefined = undefined;

  /** `connecting`: made by connectLeg, already reading through onSocketRead. */
  constructor(socket: Socket, owner: LegOwner, connecting = false) {
    this.socket = socket;
    this.owner = owner;
    const s = socket as LegSocket;
    s[kLeg] = this;
    open.socket++;
    socket.on('error', onSocketError);
    socket.on('drain', onSocketDrain);
    socket.on('end', onSocketEnd);
    socket.on('close', onSocketClose);
    if (connecting) socket.once('connect', onSocketConnect);
    else readThrough(socket, onSocketRead);
  }

  get lean(): boolean {
    return false;
  }

  get destroyed(): boolean {
    return this.socket.destroyed;
  }

  get writableEnded(): boolean {
    return this.socket.writableEnded || this.socket.destroyed;
  }

  get bytesRead(): number {
    return this.socket.bytesRead;
  }

  get bytesWritten(): number {
    return this.socket.bytesWritten;
  }

  write(bytes: Buffer): boolean {
    const socket = this.socket;
    if (socket.writableEnded || socket.destroyed) return true;
    return socket.write(bytes) || socket.writableLength === 0;
  }

  end(): void {
    if (!this.socket.writableEnded) this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }

  reset(): void {
    if (!this.socket.destroyed) this.socket.resetAndDestroy();
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }
}

const onSocketRead: ReadCallback = function (this: Socket, n: number, buf: Buffer): void {
  const leg = (this as LegSocket)[kLeg];
  leg.owner.legRead(leg, n, buf);
};
function onSocketConnect(this: LegSocket): void {
  this[kLeg].owner.legConnect?.(this[kLeg]);
}
function onSocketError(this: LegSocket, err: Error): void {
  this[kLeg].failure ??= err.message;
}
function onSocketDrain(this: LegSocket): void {
  this[kLeg].owner.legDrain(this[kLeg]);
}
function onSocketEnd(this: LegSocket): void {
  this[kLeg].owner.legEnd(this[kLeg]);
}
function onSocketClose(this: LegSocket, hadError: boolean): void {
  open.socket--;
  releaseReads(this);
  this[kLeg].owner.legClose(this[kLeg], hadError);
}
