import type { Logger } from 'pino';
import { MAGLEV_LARGE_TABLE_SIZE, MaglevBalancer } from '../balance/maglev.ts';
import { setTargetsOffThread } from '../balance/maglev-worker.ts';
import type { Balancer, PickContext } from '../balance/types.ts';
import { formatHostPort } from '../config/address.ts';
import { Backend, type BackendSpec } from './backend.ts';
import type { Clock, Timer } from './clock.ts';
import type { LeaveReason, ProxiedConnection } from './connection.ts';
import { Drain } from './drain.ts';

export interface ClusterOptions {
  name: string;
  balancer: Balancer<Backend>;
  /**
   * Policy for connection-level picks (`pickConnection`, e.g. WebSocket
   * upgrades) when it differs from the per-request one: an HTTP service
   * balances requests with p2c by default but long-lived upgraded connections
   * with least-connections. Defaults to `balancer`.
   */
  connectionBalancer?: Balancer<Backend> | undefined;
  clock: Clock;
  log: Logger;
  drainTimeoutMs: number;
  maxConnectionsPerBackend?: number | undefined;
}

/** A passive failure signal from a data plane (see `Cluster.reportFailure`). */
export type FailureKind = 'connect' | 'reset' | 'http-5xx';

/** Told about passive signals; outlier detection (src/health/outlier.ts) implements it. */
export interface FailureObserver {
  failure(backend: Backend, kind: FailureKind): void;
  success(backend: Backend): void;
}

/**
 * The live model of one service's backends: which exist, which take new
 * connections, and which connections each one holds. The only place that
 * changes backend state.
 */
export class Cluster {
  readonly name: string;
  readonly #clock: Clock;
  readonly #log: Logger;
  #balancer: Balancer<Backend>;
  /** Connections counted by a policy's `hold`, to `release` on the same policy (a reload may swap it). */
  readonly #held = new Map<ProxiedConnection, { balancer: Balancer<Backend>; clientIp: string }>();
  #connectionBalancer: Balancer<Backend> | undefined;
  #drainTimeoutMs: number;
  #maxPerBackend: number | undefined;
  readonly #backends = new Map<string, Backend>();
  readonly #drains = new Map<Backend, Drain>();
  #eligible: Backend[] = [];
  #closing = false;
  #idleWaiters: (() => void)[] = [];
  /** Connections ever registered, for metrics. */
  connectionsTotal = 0;
  /** Set by outlier detection; data planes report through reportFailure/reportSuccess. */
  observer: FailureObserver | undefined;
  /** Drain the live connections of a backend marked unhealthy (health.closeOnUnhealthy). */
  closeOnUnhealthy = false;
  #ejectTimers = new Map<Backend, Timer>();

  constructor(opts: ClusterOptions) {
    this.name = opts.name;
    this.#clock = opts.clock;
    this.#log = opts.log;
    this.#balancer = opts.balancer;
    this.#connectionBalancer = opts.connectionBalancer;
    this.#drainTimeoutMs = opts.drainTimeoutMs;
    this.#maxPerBackend = opts.maxConnectionsPerBackend;
  }

  /** All backends, including draining ones that still hold connections. */
  get backends(): ReadonlyMap<string, Backend> {
    return this.#backends;
  }

  /** Live connections across all backends. */
  get connectionCount(): number {
    let n = 0;
    for (const b of this.#backends.values()) n += b.connections.size;
    return n;
  }

  get policy(): string {
    return this.#balancer.name;
  }

  /**
   * The backend the connection-level policy (the one `pickConnection` uses)
   * holds this client on (persistence, hashing), if any; read-only.
   */
  affinity(ctx: PickContext): Backend | undefined {
    return (this.#connectionBalancer ?? this.#balancer).affinity?.(ctx);
  }

  /** Apply settings that may change on reload. */
  configure(opts: { drainTimeoutMs: number; maxConnectionsPerBackend?: number | undefined }): void {
    this.#drainTimeoutMs = opts.drainTimeoutMs;
    this.#maxPerBackend = opts.maxConnectionsPerBackend;
  }

  /** Swap the policies (reload changed `balance:`); live connections stay where they are. */
  setBalancer(balancer: Balancer<Backend>, connectionBalancer?: Balancer<Backend>): void {
    this.#balancer = balancer;
    this.#connectionBalancer = connectionBalancer;
    this.#setTargets(balancer);
    if (connectionBalancer !== undefined) this.#setTargets(connectionBalancer);
  }

  /**
   * Make the backend set equal to `specs`: new ones take connections at once,
   * missing ones drain, changed weights apply to new picks.
   */
  update(specs: readonly BackendSpec[]): { added: string[]; removed: string[] } {
    const now = this.#clock.now();
    const added: string[] = [];
    const removed: string[] = [];
    const wanted = new Set<string>();
    for (const spec of specs) {
      const key = formatHostPort(spec.address);
      wanted.add(key);
      const existing = this.#backends.get(key);
      if (spec.draining === true) {
        // Terminating (Kubernetes): never added, drained if we have it.
        if (existing !== undefined && existing.state !== 'draining') {
          removed.push(key);
          this.#startDrain(existing, 'drain', 'terminating');
        }
        continue;
      }
      if (existing === undefined) {
        this.#backends.set(key, new Backend(spec, now));
        added.push(key);
        continue;
      }
      existing.weight = spec.weight;
      existing.maxConnections = spec.maxConnections;
      if (existing.state === 'draining' && !this.#closing) {
        this.#drains.get(existing)?.cancel();
        this.#drains.delete(existing);
        existing.state = 'active';
        existing.since = now;
        added.push(key);
        this.#log.info(
          { service: this.name, backend: key, reason: 'returned to config' },
          'backend active again',
        );
      }
    }
    for (const backend of this.#backends.values()) {
      if (!wanted.has(backend.key) && backend.state !== 'draining') {
        removed.push(backend.key);
        this.#startDrain(backend, 'drain', 'removed from config');
      }
    }
    for (const key of added) this.#log.info({ service: this.name, backend: key }, 'backend added');
    this.#refresh();
    return { added, removed };
  }

  /**
   * Choose a backend for a new connection or request, skipping `exclude`
   * (already tried) and backends at their connection limit.
   */
  pick(ctx: PickContext, exclude?: Set<Backend>): Backend | undefined {
    return this.#pickWith(this.#balancer, ctx, exclude);
  }

  /**
   * Choose a backend for a connection that will be held for long (a WebSocket
   * upgrade): the connection-level policy where the service has one.
   */
  pickConnection(ctx: PickContext, exclude?: Set<Backend>): Backend | undefined {
    return this.#pickWith(this.#connectionBalancer ?? this.#balancer, ctx, exclude);
  }

  #pickWith(balancer: Balancer<Backend>, ctx: PickContext, exclude?: Set<Backend>): Backend | undefined {
    if (this.#closing) return undefined;
    let skip = exclude;
    for (let tries = 0; tries <= this.#eligible.length; tries++) {
      const backend = balancer.pick(ctx, skip);
      if (backend === undefined) return undefined;
      // A table still being rebuilt off the event loop may name a backend that
      // has just left: pass over it as over a full one.
      if (backend.state === 'active' && !backend.full(this.#maxPerBackend)) return backend;
      skip ??= new Set();
      skip.add(backend);
    }
    return undefined;
  }

  /**
   * Record the verdict of active health checks. An unhealthy backend takes no
   * new connections; its live ones stay unless `closeOnUnhealthy`, which
   * drains them gracefully. Returns false if nothing changed.
   */
  markHealth(key: string, healthy: boolean, reason: string): boolean {
    const backend = this.#backends.get(key);
    if (backend === undefined || backend.healthy === healthy) return false;
    backend.healthy = healthy;
    const log = { service: this.name, backend: key, reason, connections: backend.connections.size };
    if (healthy) {
      this.#log.info(log, 'backend healthy');
      if (backend.state !== 'draining') {
        this.#drains.get(backend)?.cancel();
        this.#drains.delete(backend);
      }
    } else {
      this.#log.warn(log, 'backend unhealthy');
      if (this.closeOnUnhealthy && backend.state !== 'draining' && backend.connections.size > 0) {
        this.#drainConnections(backend, 'unhealthy');
      }
    }
    this.#refresh();
    return true;
  }

  /** Keep a backend out of new picks until `untilMs` (outlier detection). Live connections stay. */
  eject(key: string, untilMs: number, reason: string): boolean {
    const backend = this.#backends.get(key);
    if (backend === undefined || backend.state === 'draining') return false;
    const now = this.#clock.now();
    backend.ejectedUntil = untilMs;
    backend.ejections++;
    this.#log.warn(
      { service: this.name, backend: key, reason, forMs: Math.round(untilMs - now) },
      'backend ejected',
    );
    this.#ejectTimers.get(backend)?.cancel();
    this.#ejectTimers.set(
      backend,
      this.#clock.setTimer(() => {
        this.#ejectTimers.delete(backend);
        this.#refresh();
      }, untilMs - now),
    );
    this.#refresh();
    return true;
  }

  /** A data plane saw a connect failure, a reset or a 5xx from `backend`. */
  reportFailure(backend: Backend, kind: FailureKind): void {
    this.observer?.failure(backend, kind);
  }

  /** A data plane saw `backend` work (connected, answered below 500). */
  reportSuccess(backend: Backend): void {
    this.observer?.success(backend);
  }

  /**
   * Count a connection on its backend for its whole life. `ctx`: the context
   * a connection-level pick (`pick` for TCP, `pickConnection`) placed it
   * with; a policy that keeps affinity while connections are open
   * (persistence) is told, and told again when it unregisters.
   */
  register(backend: Backend, conn: ProxiedConnection, ctx?: PickContext): void {
    // A connection (an HTTP exchange) registering again reuses its node: nothing allocated per request.
    if (conn.backendNode === undefined) conn.backendNode = backend.connections.add(conn);
    else backend.connections.attach(conn.backendNode);
    backend.connectionsTotal++;
    this.connectionsTotal++;
    if (ctx === undefined) return;
    const balancer = this.#connectionBalancer ?? this.#balancer;
    if (balancer.hold === undefined || ctx.clientIp === undefined) return;
    balancer.hold(ctx);
    this.#held.set(conn, { balancer, clientIp: ctx.clientIp });
  }

  /** The connection has closed (or failed to connect). */
  unregister(backend: Backend, conn: ProxiedConnection): void {
    if (conn.backendNode === undefined || !backend.connections.delete(conn.backendNode)) return;
    // Only policies that keep affinity hold connections: no map lookup per request otherwise.
    const held = this.#held.size === 0 ? undefined : this.#held.get(conn);
    if (held !== undefined) {
      this.#held.delete(conn);
      held.balancer.release?.({ clientIp: held.clientIp, now: this.#clock.now() });
    }
    if (backend.state === 'draining' && backend.connections.size === 0) this.#forget(backend);
    if (this.#closing && this.#idleWaiters.length > 0 && this.connectionCount === 0) {
      for (const resolve of this.#idleWaiters.splice(0)) resolve();
    }
  }

  /**
   * Stop taking connections and ask every live one to leave over the drain
   * timeout. Resolves once all are gone (those left at the deadline are destroyed).
   */
  close(reason: LeaveReason = 'shutdown'): Promise<void> {
    this.#closing = true;
    for (const backend of this.#backends.values()) {
      if (backend.state !== 'draining') this.#startDrain(backend, reason, reason);
    }
    // One drain over everything, so a shutdown spreads over all connections.
    this.#refresh();
    if (this.connectionCount === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  #startDrain(backend: Backend, reason: LeaveReason, why: string): void {
    backend.state = 'draining';
    const count = backend.connections.size;
    this.#log.info(
      {
        service: this.name,
        backend: backend.key,
        reason: why,
        connections: count,
        timeoutMs: this.#drainTimeoutMs,
      },
      'backend draining',
    );
    if (count === 0) this.#forget(backend);
    else this.#drainConnections(backend, reason);
  }

  /** Ask a backend's live connections to leave, spread over the drain timeout (replacing any drain under way). */
  #drainConnections(backend: Backend, reason: LeaveReason): void {
    this.#drains.get(backend)?.cancel();
    this.#drains.set(
      backend,
      new Drain(backend.connections, {
        clock: this.#clock,
        reason,
        timeoutMs: this.#drainTimeoutMs,
        isOpen: (c) => backend.connections.has(c.backendNode),
      }),
    );
  }

  #forget(backend: Backend): void {
    this.#ejectTimers.get(backend)?.cancel();
    this.#ejectTimers.delete(backend);
    this.#drains.get(backend)?.cancel();
    this.#drains.delete(backend);
    if (this.#backends.get(backend.key) === backend) {
      this.#backends.delete(backend.key);
      this.#log.info({ service: this.name, backend: backend.key }, 'backend removed');
    }
  }

  /** Balancers that have had their first (synchronous) table. */
  readonly #built = new WeakSet<Balancer<Backend>>();

  /**
   * Hand the eligible set to a policy. A large Maglev table (655373 slots,
   * ~25 ms to build) is rebuilt in a worker thread and swapped in atomically
   * when done, so the event loop never stalls on a backend change; the very
   * first table is built at once, so a new service can pick immediately.
   */
  #setTargets(balancer: Balancer<Backend>): void {
    if (
      balancer instanceof MaglevBalancer &&
      balancer.m >= MAGLEV_LARGE_TABLE_SIZE &&
      this.#built.has(balancer)
    ) {
      const eligible = this.#eligible;
      setTargetsOffThread(balancer, eligible).catch((err: unknown) => {
        this.#log.warn(
          { service: this.name, err: String(err) },
          'off-thread Maglev build failed; building inline',
        );
        if (this.#eligible === eligible) balancer.setTargets(eligible);
      });
      return;
    }
    balancer.setTargets(this.#eligible);
    this.#built.add(balancer);
  }

  #refresh(): void {
    const now = this.#clock.now();
    for (const b of this.#backends.values()) {
      if (b.state === 'draining') continue;
      const state = b.ejectedUntil > now ? 'ejected' : b.healthy ? 'active' : 'unhealthy';
      if (state === b.state) continue;
      if (b.state === 'ejected')
        this.#log.info(
          { service: this.name, backend: b.key, reason: 'ejection time over' },
          'backend back from ejection',
        );
      // Coming back counts as joining: slow start ramps it up again.
      if (state === 'active') b.since = now;
      b.state = state;
    }
    this.#eligible = [...this.#backends.values()].filter((b) => b.state === 'active' && b.weight > 0);
    this.#setTargets(this.#balancer);
    if (this.#connectionBalancer !== undefined) this.#setTargets(this.#connectionBalancer);
  }
}
