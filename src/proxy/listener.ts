import { createServer, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { formatHostPort, type HostPort } from '../config/address.ts';
import { ListenError } from '../errors.ts';

/** What `inheritNoDelay` and `Listener.keepAlive` touch of a listening server (Node internals, each checked). */
interface ListeningHandle {
  setNoDelay?: (on: boolean) => number;
  setKeepAlive?: (on: boolean, delaySeconds: number) => number;
}
interface NoDelayServer {
  noDelay?: boolean;
  _handle?: ListeningHandle | null;
}

/**
 * Nagle off on the listening socket itself, where accepted sockets inherit
 * it (Linux copies a listener's TCP options to each socket it accepts), and
 * then not again per accepted socket: a setsockopt call less per connection,
 * which counts when clients reconnect by the thousand. Node's per-socket
 * `setNoDelay` stays where the listening handle cannot take it or the
 * system does not copy it.
 */
function inheritNoDelay(server: Server): void {
  if (process.platform !== 'linux') return;
  const s = server as Server & NoDelayServer;
  const handle = s._handle;
  if (s.noDelay !== true || typeof handle?.setNoDelay !== 'function') return;
  if (handle.setNoDelay(true) === 0) s.noDelay = false;
}

/**
 * After the listening socket's keepalive changes, sockets accepted within
 * this long also get it set on their own: they may have been established
 * (and their options copied) before the change, while waiting in the accept
 * queue.
 */
const KEEPALIVE_CHANGE_GRACE_MS = 5_000;
/** Sockets accepted before a handler is attached (a listener binds before its service exists): beyond this, refused. */
const MAX_WAITING = 1_024;

/**
 * One bound address. The handler can be swapped on reload without
 * re-binding, so a listener that stays in the config never stops accepting.
 */
export class Listener {
  readonly address: HostPort;
  readonly key: string;
  readonly #server: Server;
  readonly #reusePort: boolean;
  #handler: ((socket: Socket) => void) | undefined;
  /** Accepted before `attach`: handed over then. */
  #waiting: Socket[] = [];
  /** TCP keepalive for accepted sockets, in ms, or 'off'; undefined: not managed here. */
  #keepAlive: number | 'off' | undefined;
  /** The listening socket carries `#keepAlive`, and accepted sockets inherit it. */
  #inherited = false;
  /** Until when (performance.now()) accepted sockets get keepalive set on their own after a change. */
  #graceUntil = 0;

  /**
   * `reusePort`: bind with SO_REUSEPORT, so that several worker processes
   * each hold their own listening socket on the same port and the kernel
   * spreads new connections over them. `handler`: where accepted sockets go;
   * without one they wait (paused) until `attach`.
   */
  constructor(address: HostPort, handler?: (socket: Socket) => void, opts: { reusePort?: boolean } = {}) {
    this.address = address;
    this.#reusePort = opts.reusePort ?? false;
    this.key = formatHostPort(address);
    this.#handler = handler;
    this.#server = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (socket) =>
      this.#accept(socket),
    );
    // Accept errors (EMFILE and the like) must not take the process down.
    this.#server.on('error', () => {});
  }

  /** Where accepted sockets go now. */
  get handler(): ((socket: Socket) => void) | undefined {
    return this.#handler;
  }

  /**
   * Send accepted sockets to `handler` from now on (on reload, the service's
   * new handler), with TCP keepalive `keepAlive` (ms before the first probe,
   * or 'off') on each. Sockets accepted before a first handler go to it now.
   */
  attach(handler: (socket: Socket) => void, keepAlive?: number | 'off'): void {
    this.#handler = handler;
    if (keepAlive !== undefined) this.#setKeepAlive(keepAlive);
    const waiting = this.#waiting;
    if (waiting.length === 0) return;
    this.#waiting = [];
    for (const socket of waiting) if (!socket.destroyed) this.#accept(socket);
  }

  #accept(socket: Socket): void {
    const handler = this.#handler;
    if (handler === undefined) {
      if (this.#waiting.length >= MAX_WAITING) socket.destroy();
      else this.#waiting.push(socket);
      return;
    }
    const keepAlive = this.#keepAlive;
    if (
      keepAlive !== undefined &&
      (!this.#inherited || (this.#graceUntil !== 0 && performance.now() < this.#graceUntil))
    ) {
      if (keepAlive === 'off') socket.setKeepAlive(false);
      else socket.setKeepAlive(true, keepAlive);
    }
    handler(socket);
  }

  /**
   * Keepalive on the listening socket itself, where accepted sockets inherit
   * it (Linux copies SO_KEEPALIVE and the TCP_KEEPIDLE, TCP_KEEPINTVL and
   * TCP_KEEPCNT values libuv sets): four setsockopt calls less per
   * connection, which counts when clients reconnect by the thousand. Where the
   * listening handle cannot take it, each accepted socket gets it instead.
   */
  #setKeepAlive(keepAlive: number | 'off'): void {
    const before = this.#keepAlive;
    if (before === keepAlive) return;
    this.#keepAlive = keepAlive;
    const handle = (this.#server as Server & NoDelayServer)._handle;
    this.#inherited =
      process.platform === 'linux' &&
      typeof handle?.setKeepAlive === 'function' &&
      // Node's keepalive delay is in whole seconds.
      handle.setKeepAlive(
        keepAlive !== 'off',
        keepAlive === 'off' ? 0 : Math.max(1, Math.floor(keepAlive / 1000)),
      ) === 0;
    if (before !== undefined) this.#graceUntil = performance.now() + KEEPALIVE_CHANGE_GRACE_MS;
  }

  /** The port actually bound (useful with port 0 in tests). */
  get port(): number {
    const a = this.#server.address();
    return a !== null && typeof a === 'object' ? a.port : this.address.port;
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(new ListenError(this.key, err));
      this.#server.once('error', onError);
      const options = { host: this.address.host, port: this.address.port, backlog: 4096 };
      const reuse = this.#reusePort ? { reusePort: true, exclusive: true } : {};
      this.#server.listen({ ...options, ...reuse }, () => {
        this.#server.off('error', onError);
        inheritNoDelay(this.#server);
        resolve();
      });
    });
  }

  /** Stop accepting at once. Connections already accepted are not touched; those still waiting for a handler are closed. */
  close(): void {
    this.#server.close();
    for (const socket of this.#waiting) socket.destroy();
    this.#waiting = [];
  }
}
