import { createServer, type Server } from 'node:http';
import { formatHostPort, type HostPort } from '../config/address.ts';
import { ListenError } from '../errors.ts';

/** Prometheus text for /metrics: a prom-client Registry, or an aggregate over worker processes. */
export interface MetricsText {
  readonly contentType: string;
  metrics(): Promise<string>;
}

export interface AdminState {
  /** True once shutdown began: /healthz turns 503 so load balancers stop sending. */
  draining(): boolean;
  /** JSON-able view of services and backends for /status. */
  status(): unknown;
}

/** The admin listener: `/metrics` (Prometheus), `/healthz`, `/status` (JSON). */
export class AdminServer {
  readonly address: HostPort;
  readonly #server: Server;

  constructor(address: HostPort, registry: MetricsText, state: AdminState) {
    this.address = address;
    this.#server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      if (path === '/metrics') {
        registry.metrics().then(
          (body) => res.writeHead(200, { 'content-type': registry.contentType }).end(body),
          (err: unknown) => res.writeHead(500).end(`metrics failed: ${String(err)}\n`),
        );
      } else if (path === '/healthz') {
        const draining = state.draining();
        res
          .writeHead(draining ? 503 : 200, { 'content-type': 'text/plain' })
          .end(draining ? 'draining\n' : 'ok\n');
      } else if (path === '/status') {
        Promise.resolve(state.status()).then(
          (status) =>
            res
              .writeHead(200, { 'content-type': 'application/json' })
              .end(`${JSON.stringify(status, null, 2)}\n`),
          (err: unknown) => res.writeHead(500).end(`status failed: ${String(err)}\n`),
        );
      } else {
        res
          .writeHead(404, { 'content-type': 'text/plain' })
          .end('not found: try /metrics, /healthz or /status\n');
      }
    });
    this.#server.keepAliveTimeout = 5_000;
    this.#server.headersTimeout = 10_000;
    this.#server.requestTimeout = 10_000;
  }

  get port(): number {
    const a = this.#server.address();
    return a !== null && typeof a === 'object' ? a.port : this.address.port;
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(new ListenError(formatHostPort(this.address), err));
      this.#server.once('error', onError);
      this.#server.listen(this.address.port, this.address.host, () => {
        this.#server.off('error', onError);
        resolve();
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }
}
