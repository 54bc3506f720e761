import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Backend } from '../cluster/backend.ts';
import type { Clock, Timer } from '../cluster/clock.ts';
import type { Cluster } from '../cluster/cluster.ts';
import type { LeaveReason, ProxiedConnection } from '../cluster/connection.ts';
import { type RebalanceSettings, Rebalancer } from '../cluster/rebalance.ts';
import type { ServiceConfig } from '../config/schema.ts';
import { afterRead, forward, ownBytes, readsOwnBuffers, readThrough, releaseReads } from './socket-reads.ts';
import { connectUpstream, type RelaySettings, relaySettings, SocketPickContext } from './upstream.ts';

/** Settings of a TCP service that a reload may change; read per new connection. */
export interface TcpSettings extends RelaySettings {
  idleTimeoutMs: number;
  rebalance: RebalanceSettings | undefined;
}

export function tcpSettings(config: ServiceConfig): TcpSettings {
  return { ...relaySettings(config), idleTimeoutMs: config.timeouts.idle, rebalance: config.rebalance };
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

  /**
   * Gradual rebalancing (`rebalance:`, off when absent): after scale-out, the
   * most loaded backends ask a few connections at a time to leave (FIN both
   * ways) so that reconnecting clients land on the least loaded ones. Never a
   * connection that persistence or hashing holds on its backend.
   */
  readonly rebalancer: Rebalancer;

  constructor(cluster: Cluster, settings: TcpSettings, clock: Clock, log: Logger) {
    this.cluster = cluster;
    this.settings = settings;
    this.clock = clock;
    this.log = log;
    this.rebalancer = new Rebalancer(cluster, {
      clock,
      log,
      settings: settings.rebalance,
      isHeld: (conn, backend) =>
        conn instanceof TcpConnection &&
        cluster.affinity(new SocketPickContext(conn.client, clock.now())) === backend,
    });
  }

  /** Apply a reloaded config to new connections (and to rebalancing). */
  configure(settings: TcpSettings): void {
    this.settings = settings;
    this.rebalancer.configure(settings.rebalance);
    if (this.live > 0) this.rebalancer.start();
  }

  /** Listener callback: take a freshly accepted (paused) client socket. */
  readonly accept = (client: Socket): void => {
    const s = this.settings;
    if (s.maxConnections !== undefined && this.live >= s.maxConnections) {
      this.stats.refused.limit++;
      client.destroy();
      return;
    }
    readThrough(client, onClientRead);
    this.stats.accepted++;
    if (this.live++ === 0) this.rebalancer.start();
    if (s.keepAliveMs !== undefined) client.setKeepAlive(true, s.keepAliveMs);
    new TcpConnection(this, client).start();
  };

  /** Called once per client connection when it is fully closed. */
  done(): void {
    if (--this.live === 0) this.rebalancer.stop();
    this.stats.closed++;
  }

  #idleTimer: Timer | undefined;

  /**
   * Idle timeout without a timer per connection: one sweep per service looks
   * at each connection's byte counters and closes those that have not moved
   * for the idle timeout. A connection closes between 1 and 1.25 idle timeouts
   * after its last byte. Nothing runs per byte.
   */
  watchIdle(): void {
    if (this.#idleTimer !== undefined || this.settings.idleTimeoutMs <= 0) return;
    const every = Math.max(10, Math.min(this.settings.idleTimeoutMs / 4, 60_000));
    this.#idleTimer = this.clock.setTimer(() => {
      this.#idleTimer = undefined;
      this.#sweepIdle();
      if (this.live > 0) this.watchIdle();
    }, every);
  }

  #sweepIdle(): void {
    const now = this.clock.now();
    const limit = this.settings.idleTimeoutMs;
    if (limit <= 0) return;
    for (const backend of this.cluster.backends.values()) {
      for (const c of backend.connections) {
        if (!(c instanceof TcpConnection) || c.upstream === undefined) continue;
        const traffic = c.traffic;
        if (traffic !== c.idleBytes) {
          c.idleBytes = traffic;
          c.idleSince = now;
        } else if (now - c.idleSince >= limit) {
          c.destroy();
        }
      }
    }
  }
}

type Phase = 'connecting' | 'open' | 'leaving' | 'closed';

/**
 * Listeners are shared module-level functions that find their connection
 * through this property, rather than closures made per connection: an idle
 * proxied connection then costs its two sockets and one small object.
 */
const kConn = Symbol('holdfast.tcp');
interface Leg extends Socket {
  [kConn]: TcpConnection;
}

function noop(): void {}

/**
 * Relay `n` bytes read by `from` to `to`, pausing `from` while they stay
 * queued (backpressure; see socket-reads.ts for why a queued view matters).
 */
function relay(from: Socket, to: Socket | undefined, n: number, buf: Buffer): void {
  let held = false;
  if (to !== undefined && !to.writableEnded) {
    held = forward(to, ownBytes(buf, 0, n));
    if (held) from.pause();
  }
  afterRead(buf, n, held);
}
function onClientRead(this: Socket, n: number, buf: Buffer): void {
  relay(this, (this as Leg)[kConn].upstream, n, buf);
}
function onUpstreamRead(this: Socket, n: number, buf: Buffer): void {
  relay(this, (this as Leg)[kConn].client, n, buf);
}
function onClientDrain(this: Leg): void {
  this[kConn].upstream?.resume();
}
function onUpstreamDrain(this: Leg): void {
  this[kConn].client.resume();
}
// Half-close: a FIN from one side becomes a FIN to the other, never a reset.
function onClientEnd(this: Leg): void {
  this[kConn].upstream?.end();
}
function onUpstreamEnd(this: Leg): void {
  this[kConn].client.end();
}
function onClientClose(this: Leg, hadError: boolean): void {
  releaseReads(this);
  const conn = this[kConn];
  conn.sideClosed(hadError, conn.upstream);
}
function onUpstreamClose(this: Leg, hadError: boolean): void {
  releaseReads(this);
  const conn = this[kConn];
  if (hadError && conn.backend !== undefined) conn.proxy.cluster.reportFailure(conn.backend, 'reset');
  conn.sideClosed(hadError, conn.client);
}
class ConnectTimeoutError extends Error {
  constructor(ms: number) {
    super(`connect timed out after ${ms} ms`);
  }
}

function onConnectError(this: Leg, err: Error): void {
  this[kConn].connectFailed(this, err);
}
function onConnect(this: Leg): void {
  this[kConn].connected(this);
}

class TcpConnection implements ProxiedConnection {
  readonly openedAt: number;
  readonly proxy: TcpProxy;
  readonly client: Leg;
  upstream: Leg | undefined;
  backend: Backend | undefined;
  #tried: Set<Backend> | undefined;
  #connectTimer: Timer | undefined;
  #phase: Phase = 'connecting';
  #closedSides = 0;
  /** Idle sweeping: traffic seen at the last sweep and when it last changed. */
  idleBytes = 0;
  idleSince: number;

  constructor(proxy: TcpProxy, client: Socket) {
    this.proxy = proxy;
    this.client = client as Leg;
    this.client[kConn] = this;
    this.openedAt = proxy.clock.now();
    this.idleSince = this.openedAt;
    client.on('error', noop);
    client.on('close', onClientClose);
  }

  get bytesIn(): number {
    return this.upstream?.bytesRead ?? 0;
  }

  get bytesOut(): number {
    return this.upstream?.bytesWritten ?? 0;
  }

  start(): void {
    const client = this.client;
    const proxy = this.proxy;
    const ctx = new SocketPickContext(client, this.openedAt);
    const backend = proxy.cluster.pick(ctx, this.#tried);
    if (backend === undefined) {
      const reason: RefusedReason = this.#tried === undefined ? 'no-backend' : 'connect-failed';
      proxy.stats.refused[reason]++;
      proxy.log.warn(
        { service: proxy.cluster.name, client: client.remoteAddress, reason },
        reason === 'no-backend'
          ? 'no backend can take the connection'
          : 'every backend tried failed to connect',
      );
      client.destroy();
      return;
    }
    this.backend = backend;
    proxy.cluster.register(backend, this, ctx);
    const s = proxy.settings;
    const upstream = connectUpstream(backend, s, onUpstreamRead, readsOwnBuffers(this.client)) as Leg;
    upstream[kConn] = this;
    this.upstream = upstream;
    // Our own timer rather than socket.setTimeout(): the socket would keep its
    // Timeout object for the connection's whole life after we clear it.
    this.#connectTimer = proxy.clock.setTimer(
      () => upstream.destroy(new ConnectTimeoutError(s.connectTimeoutMs)),
      s.connectTimeoutMs,
    );
    upstream.on('error', onConnectError);
    upstream.once('connect', onConnect);
  }

  connectFailed(upstream: Leg, err: Error): void {
    if (upstream !== this.upstream) return;
    this.#connectTimer?.cancel();
    this.#connectTimer = undefined;
    const backend = this.backend!;
    const proxy = this.proxy;
    backend.connectFailures++;
    proxy.cluster.unregister(backend, this);
    proxy.cluster.reportFailure(backend, 'connect');
    upstream.removeAllListeners();
    upstream.on('error', noop);
    this.upstream = undefined;
    this.backend = undefined;
    proxy.log.warn(
      { service: proxy.cluster.name, backend: backend.key, err: err.message },
      'backend connect failed',
    );
    if (this.#phase !== 'connecting' || this.client.destroyed) return;
    (this.#tried ??= new Set()).add(backend);
    if (this.#tried.size >= proxy.settings.maxAttempts) {
      proxy.stats.refused['connect-failed']++;
      this.client.destroy();
      return;
    }
    this.start();
  }

  connected(upstream: Leg): void {
    const client = this.client;
    this.#connectTimer?.cancel();
    this.#connectTimer = undefined;
    upstream.off('error', onConnectError);
    upstream.on('error', noop);
    if (this.#phase !== 'connecting' || client.destroyed) {
      upstream.destroy();
      return;
    }
    this.#phase = 'open';
    this.proxy.cluster.reportSuccess(this.backend!);
    upstream.on('close', onUpstreamClose);
    // Relay (onClientRead, onUpstreamRead) with backpressure: a reader pauses
    // while what it forwarded stays queued, and resumes when the writer drains.
    upstream.on('drain', onUpstreamDrain);
    client.on('drain', onClientDrain);
    client.on('end', onClientEnd);
    upstream.on('end', onUpstreamEnd);
    this.idleSince = this.proxy.clock.now();
    this.proxy.watchIdle();
    client.resume();
  }

  /** Bytes moved through the client socket, both ways: what the idle sweep watches. */
  get traffic(): number {
    return this.client.bytesRead + this.client.bytesWritten;
  }

  sideClosed(hadError: boolean, other: Socket | undefined): void {
    if (this.#phase === 'connecting') {
      // The client went away (or was turned away) before the backend connection was up.
      this.upstream?.destroy();
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
    if (this.#phase === 'closed') return;
    this.#phase = 'closed';
    const backend = this.backend;
    if (backend !== undefined) {
      backend.bytesReceivedClosed += this.upstream?.bytesRead ?? 0;
      backend.bytesSentClosed += this.upstream?.bytesWritten ?? 0;
      this.proxy.cluster.unregister(backend, this);
    }
    this.proxy.done();
  }

  leave(_reason: LeaveReason): void {
    if (this.#phase === 'open') {
      this.#phase = 'leaving';
      // FIN both ways; the peers close their halves and the pair goes away cleanly.
      this.client.end();
      this.upstream?.end();
    } else if (this.#phase === 'connecting') {
      this.destroy();
    }
  }

  destroy(): void {
    this.client.destroy();
    this.upstream?.destroy();
  }
}
