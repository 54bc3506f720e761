import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Backend } from '../cluster/backend.ts';
import type { Clock, Timer } from '../cluster/clock.ts';
import type { Cluster } from '../cluster/cluster.ts';
import type { LeaveReason } from '../cluster/connection.ts';
import { type RebalanceSettings, Rebalancer } from '../cluster/rebalance.ts';
import type { ServiceConfig } from '../config/schema.ts';
import { readEarly, Relay, relayHeld } from './relay.ts';
import { afterRead, ownBytes, readThrough } from './socket-reads.ts';
import type { Leg } from './stream-leg.ts';
import { connectBackend, type RelaySettings, relaySettings, SocketPickContext } from './upstream.ts';

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
      isHeld: relayHeld(cluster, clock),
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
    readThrough(client, readEarly);
    this.stats.accepted++;
    if (this.live++ === 0) this.rebalancer.start();
    // Client keepalive: set by the Listener (inherited from the listening socket).
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
        if (!(c instanceof TcpConnection) || c.down === undefined) continue;
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
 * One client connection anchored to one backend connection. Once both sides
 * are up it relays over two legs (stream-leg.ts) that report to it as their
 * owner (relay.ts): an idle proxied connection is then one small object, two
 * legs and the kernel's sockets.
 */
class TcpConnection extends Relay {
  readonly proxy: TcpProxy;
  /** The accepted socket, until the backend is connected (then the `down` leg). */
  client: Socket | undefined;
  #tried: Set<Backend> | undefined;
  #connectTimer: Timer | undefined;
  #early: Buffer | undefined;
  #phase: Phase = 'connecting';
  #closedSides = 0;
  /** Idle sweeping: traffic seen at the last sweep and when it last changed. */
  idleBytes = 0;
  idleSince: number;

  constructor(proxy: TcpProxy, client: Socket) {
    const openedAt = proxy.clock.now();
    super(client, openedAt);
    this.proxy = proxy;
    this.client = client;
    this.idleSince = openedAt;
  }

  start(): void {
    const client = this.client!;
    const proxy = this.proxy;
    const ctx = new SocketPickContext(client, this.openedAt);
    const backend = proxy.cluster.pick(ctx, this.#tried);
    if (backend === undefined) {
      const reason: RefusedReason = this.#tried === undefined ? 'no-backend' : 'connect-failed';
      proxy.stats.refused[reason]++;
      proxy.log.warn(
        { service: proxy.cluster.name, client: ctx.clientIp, reason },
        reason === 'no-backend'
          ? 'no backend can take the connection'
          : 'every backend tried failed to connect',
      );
      client.destroy();
      return;
    }
    this.place(proxy.cluster, backend, ctx);
    const s = proxy.settings;
    const up = connectBackend(backend, s, client, this);
    this.up = up;
    this.#connectTimer = proxy.clock.setTimer(
      () => this.connectFailed(up, `connect timed out after ${s.connectTimeoutMs} ms`),
      s.connectTimeoutMs,
    );
  }

  early(bytes: Buffer): void {
    this.#early = this.#early === undefined ? bytes : Buffer.concat([this.#early, bytes]);
  }

  clientGone(): void {
    if (this.#phase !== 'connecting') return;
    this.up?.destroy();
    this.#finish();
  }

  /** The backend leg `up` failed to connect (refused, unreachable, timed out): try another backend. */
  connectFailed(up: Leg, why: string): void {
    if (up !== this.up) return;
    this.#connectTimer?.cancel();
    this.#connectTimer = undefined;
    const backend = this.backend!;
    const proxy = this.proxy;
    backend.connectFailures++;
    proxy.cluster.unregister(backend, this);
    proxy.cluster.reportFailure(backend, 'connect');
    up.destroy();
    this.up = undefined;
    this.backend = undefined;
    this.held = undefined;
    proxy.log.warn({ service: proxy.cluster.name, backend: backend.key, err: why }, 'backend connect failed');
    const client = this.client;
    if (this.#phase !== 'connecting' || client === undefined || client.destroyed) return;
    (this.#tried ??= new Set()).add(backend);
    if (this.#tried.size >= proxy.settings.maxAttempts) {
      proxy.stats.refused['connect-failed']++;
      client.destroy();
      return;
    }
    this.start();
  }

  legConnect(up: Leg): void {
    if (up !== this.up) return;
    this.#connectTimer?.cancel();
    this.#connectTimer = undefined;
    const client = this.client;
    if (this.#phase !== 'connecting' || client === undefined || client.destroyed) {
      up.destroy();
      return;
    }
    this.#phase = 'open';
    this.proxy.cluster.reportSuccess(this.backend!);
    // Relay (legRead) with backpressure: a reader pauses while what it
    // forwarded stays queued, and resumes when the writer drains (legDrain).
    this.client = undefined;
    const down = this.takeClient(client);
    const early = this.#early;
    this.#early = undefined;
    // (`up` reads already, from its connect on.)
    if (early === undefined || up.write(early)) down.resume();
    this.idleSince = this.proxy.clock.now();
    this.proxy.watchIdle();
  }

  legRead(leg: Leg, n: number, buf: Buffer): void {
    const to = this.other(leg);
    let held = false;
    if (to !== undefined && !to.writableEnded) {
      held = !to.write(ownBytes(buf, 0, n));
      if (held) leg.pause();
    }
    afterRead(buf, n, held);
  }

  legClose(leg: Leg, error: boolean): void {
    if (this.#phase === 'connecting') {
      this.connectFailed(leg, leg.failure ?? 'the backend closed the connection');
      return;
    }
    if (leg !== this.up && leg !== this.down) return;
    const other = this.other(leg);
    if (error && leg === this.up && this.backend !== undefined)
      this.proxy.cluster.reportFailure(this.backend, 'reset');
    this.#closedSides++;
    // A reset on one side is passed on as a reset, a clean close as a clean close.
    if (error && other !== undefined && !other.destroyed) other.reset();
    if (this.#closedSides === 2 || other === undefined) this.#finish();
  }

  /** Bytes moved through the client's side, both ways: what the idle sweep watches. */
  get traffic(): number {
    const down = this.down;
    return down === undefined ? 0 : down.bytesRead + down.bytesWritten;
  }

  #finish(): void {
    if (this.#phase === 'closed') return;
    this.#phase = 'closed';
    this.unregister(this.proxy.cluster);
    this.proxy.done();
  }

  leave(_reason: LeaveReason): void {
    if (this.#phase === 'open') {
      this.#phase = 'leaving';
      // FIN both ways; the peers close their halves and the pair goes away cleanly.
      this.down?.end();
      this.up?.end();
    } else if (this.#phase === 'connecting') {
      this.destroy();
    }
  }

  destroy(): void {
    this.client?.destroy();
    this.down?.destroy();
    this.up?.destroy();
  }
}
