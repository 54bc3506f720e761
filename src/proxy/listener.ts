import { createServer, type Server, type Socket } from 'node:net';
import { formatHostPort, type HostPort } from '../config/address.ts';
import { ListenError } from '../errors.ts';

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
        resolve();
      });
    });
  }

  /** Stop accepting at once. Connections already accepted are not touched. */
  close(): void {
    this.#server.close();
  }
}
