import { connect, type Socket } from 'node:net';
import type { Logger } from 'pino';
import type { PickContext } from '../balance/types.ts';
import type { Backend } from '../cluster/backend.ts';
import type { Clock } from '../cluster/clock.ts';
import type { Cluster } from '../cluster/cluster.ts';
import type { LeaveReason, ProxiedConnection } from '../cluster/connection.ts';
import type { ServiceConfig } from '../config/schema.ts';
import { SourceAddressPool } from './source-address.ts';

/** Settings of a TCP service that a reload may change; read per new connection. */
export interface TcpSettings {
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  /** TCP keepalive idle time, or undefined for off. */
  keepAliveMs: number | undefined;
  maxConnections: number | undefined;
  sources: SourceAddressPool;
  /** Most backends tried for one client before giving up. */
  maxAttempts: number;
}

export function tcpSettings(config: ServiceConfig): TcpSettings {
  return {
    connectTimeoutMs: config.timeouts.connect,
    idleTimeoutMs: config.timeouts.idle,
    keepAliveMs: config.tcpKeepAlive === 'off' ? undefined : config.tcpKeepAlive,
    maxConnections: config.limits.maxConnections,
    sources: new SourceAddressPool(config.sourceAddresses),
    maxAttempts: 3,
  };
}

/** Why a client was turned away, as counted in metrics. */
export type RefusedReason = 'limit' | 'no-backend' | 'connect-failed';

export interface TcpStats {
  accepted: number;
  closed: number;
  refused: Record<RefusedReason, number>;
}

/**
 * L4 proxy for one service: each client connection is anchored to one
 * backend connection, bytes relayed both ways with backpressure, half-close
 * passed through, and the pair registered on its backend for its whole life.
 */
export class TcpProxy {
  readonly cluster: Cluster;
  settings: TcpSettings;
  readonly stats: TcpStats = {
    accepted: 0,
    closed: 0,
    refused: { limit: 0, 'no-backend': 0, 'connect-failed': 0 },
  };
  /** Client connections held now, including ones still connecting upstream. */
  live = 0;
  readonly clock: Clock;
  readonly log: Logger;

  constructor(cluster: Cluster, settings: TcpSettings, clock: Clock, log: Logger) {
    this.cluster = cluster;
    this.settings = settings;
    this.clock = clock;
    this.log = log;
  }

  /** Listener callback: take a freshly accepted (paused) client socket. */
  readonly accept = (client: Socket): void => {
    const s = this.settings;
    if (s.maxConnections !== undefined && this.live >= s.maxConnections) {
      this.stats.refused.limit++;
      client.destroy();
      return;
    }
    this.stats.accepted++;
    this.live++;
    if (s.keepAliveMs !== undefined) client.setKeepAlive(true, s.keepAliveMs);
    new TcpConnection(this, client).start();
  };

  /** Called once per client connection when it is fully closed. */
  done(): void {
    this.live--;
    this.stats.closed++;
  }
}

type Phase = 'connecting' | 'open' | 'leaving' | 'closed';

class TcpConnection implements ProxiedConnection {
  readonly openedAt: number;
  readonly #proxy: TcpProxy;
  readonly #client: Socket;
  #upstream: Socket | undefined;
  #backend: Backend | undefined;
  #tried: Set<Backend> | undefined;
  #phase: Phase = 'connecting';
  #closedSides = 0;
  #finished = false;

  constructor(proxy: TcpProxy, client: Socket) {
    this.#proxy = proxy;
    this.#client = client;
    this.openedAt = proxy.clock.now();
    client.on('error', () => {});
    client.on('close', this.#onClientClose);
  }

  get bytesIn(): number {
    return this.#upstream?.bytesRead ?? 0;
  }

  get bytesOut(): number {
    return this.#upstream?.bytesWritten ?? 0;
  }

  start(): void {
    const client = this.#client;
    const ctx: PickContext = {
      now: this.openedAt,
      clientIp: client.remoteAddress,
      clientPort: client.remotePort,
      localIp: client.localAddress,
      localPort: client.localPort,
    };
    const backend = this.#proxy.cluster.pick(ctx, this.#tried);
    if (backend === undefined) {
      const reason: RefusedReason = this.#tried === undefined ? 'no-backend' : 'connect-failed';
      this.#proxy.stats.refused[reason]++;
      this.#proxy.log.warn(
        { service: this.#proxy.cluster.name, client: client.remoteAddress, reason },
        reason === 'no-backend'
          ? 'no backend can take the connection'
          : 'every backend tried failed to connect',
      );
      client.destroy();
      return;
    }
    this.#backend = backend;
    this.#proxy.cluster.register(backend, this);
    const s = this.#proxy.settings;
    const upstream = connect({
      host: backend.address.host,
      port: backend.address.port,
      localAddress: s.sources.next(backend.address.host),
      allowHalfOpen: true,
      noDelay: true,
      keepAlive: s.keepAliveMs !== undefined,
      keepAliveInitialDelay: s.keepAliveMs ?? 0,
      timeout: s.connectTimeoutMs,
    });
    this.#upstream = upstream;
    upstream.on('timeout', this.#onConnectTimeout);
    upstream.on('error', this.#onConnectError);
    upstream.once('connect', this.#onConnect);
  }

  #onConnectTimeout = (): void => {
    this.#upstream?.destroy(new Error('connect timeout'));
  };

  #onConnectError = (err: Error): void => {
    const backend = this.#backend!;
    const proxy = this.#proxy;
    backend.connectFailures++;
    proxy.cluster.unregister(backend, this);
    proxy.cluster.reportFailure(backend, 'connect');
    this.#upstream?.removeAllListeners();
    this.#upstream = undefined;
    this.#backend = undefined;
    proxy.log.warn(
      { service: proxy.cluster.name, backend: backend.key, err: err.message },
      'backend connect failed',
    );
    if (this.#phase !== 'connecting' || this.#client.destroyed) return;
    (this.#tried ??= new Set()).add(backend);
    if (this.#tried.size >= proxy.settings.maxAttempts) {
      proxy.stats.refused['connect-failed']++;
      this.#client.destroy();
      return;
    }
    this.start();
  };

  #onConnect = (): void => {
    const upstream = this.#upstream!;
    const client = this.#client;
    upstream.off('timeout', this.#onConnectTimeout);
    upstream.off('error', this.#onConnectError);
    upstream.setTimeout(0);
    if (this.#phase !== 'connecting' || client.destroyed) {
      upstream.destroy();
      return;
    }
    this.#phase = 'open';
    this.#proxy.cluster.reportSuccess(this.#backend!);
    upstream.on('error', () => {});
    upstream.on('close', this.#onUpstreamClose);
    // Relay with backpressure: pause the reader while the writer's buffer is full.
    client.on('data', (chunk: Buffer) => {
      if (!upstream.writableEnded && !upstream.write(chunk)) client.pause();
    });
    upstream.on('data', (chunk: Buffer) => {
      if (!client.writableEnded && !client.write(chunk)) upstream.pause();
    });
    upstream.on('drain', () => client.resume());
    client.on('drain', () => upstream.resume());
    // Half-close: a FIN from one side becomes a FIN to the other, never a reset.
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    const idle = this.#proxy.settings.idleTimeoutMs;
    if (idle > 0) {
      // Client socket activity covers both directions: we read its data and write the backend's.
      client.setTimeout(idle, () => this.destroy());
    }
    client.resume();
  };

  #onClientClose = (hadError: boolean): void => {
    this.#sideClosed(hadError, this.#upstream);
  };

  #onUpstreamClose = (hadError: boolean): void => {
    if (hadError && this.#phase === 'open' && this.#backend !== undefined) this.#proxy.cluster.reportFailure(this.#backend, 'reset');
    this.#sideClosed(hadError, this.#client);
  };

  #sideClosed(hadError: boolean, other: Socket | undefined): void {
    if (this.#phase === 'connecting') {
      // The client went away (or was turned away) before the backend connection was up.
      this.#upstream?.destroy();
      this.#finish();
      return;
    }
    this.#closedSides++;
    if (hadError && other !== undefined && !other.destroyed) {
      // A reset on one side is passed on as a reset, a clean close as a clean close.
      other.resetAndDestroy();
    }
    if (this.#closedSides === 2) this.#finish();
  }

  #finish(): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#phase = 'closed';
    const backend = this.#backend;
    if (backend !== undefined) {
      backend.bytesReceivedClosed += this.#upstream?.bytesRead ?? 0;
      backend.bytesSentClosed += this.#upstream?.bytesWritten ?? 0;
      this.#proxy.cluster.unregister(backend, this);
    }
    this.#proxy.done();
  }

  leave(_reason: LeaveReason): void {
    if (this.#phase === 'open') {
      this.#phase = 'leaving';
      // FIN both ways; the peers close their halves and the pair goes away cleanly.
      this.#client.end();
      this.#upstream?.end();
    } else if (this.#phase === 'connecting') {
      this.destroy();
    }
  }

  destroy(): void {
    this.#client.destroy();
    this.#upstream?.destroy();
  }
}
