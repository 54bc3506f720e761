import { createServer, type Server, type Socket } from 'node:net';
import { formatHostPort, type HostPort } from '../config/address.ts';
import { ListenError } from '../errors.ts';

/** What `inheritNoDelay` touches of a listening server. */
interface NoDelayServer {
  noDelay?: boolean;
  _handle?: { setNoDelay?: (on: boolean) => number } | null;
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
 * One bound address. The handler can be swapped on reload without
 * re-binding, so a listener that stays in the config never stops accepting.
 */
export class Listener {
  readonly address: HostPort;
  readonly key: string;
  handler: (socket: Socket) => void;
  readonly #server: Server;
  readonly #reusePort: boolean;

  /**
   * `reusePort`: bind with SO_REUSEPORT, so that several worker processes
   * each hold their own listening socket on the same port and the kernel
   * spreads new connections over them.
   */
  constructor(address: HostPort, handler: (socket: Socket) => void, opts: { reusePort?: boolean } = {}) {
    this.address = address;
    this.#reusePort = opts.reusePort ?? false;
    this.key = formatHostPort(address);
    this.handler = handler;
    this.#server = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (socket) =>
      this.handler(socket),
    );
    // Accept errors (EMFILE and the like) must not take the process down.
    this.#server.on('error', () => {});
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

  /** Stop accepting at once. Connections already accepted are not touched. */
  close(): void {
    this.#server.close();
  }
}
