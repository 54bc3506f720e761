/**
 * Composition root: config → clusters, protocol handlers and listeners;
 * reload (SIGHUP) as a diff against what runs; graceful shutdown (SIGTERM).
 */
import type { Registry } from 'prom-client';
import { AdminServer } from './admin/server.ts';
import { createMetrics } from './admin/metrics.ts';
import { createBalancer } from './balance/index.ts';
import type { Backend } from './cluster/backend.ts';
import { type Clock, systemClock } from './cluster/clock.ts';
import { exposedGc, MemoryReducer } from './memory-reducer.ts';
import { Cluster } from './cluster/cluster.ts';
import { Membership } from './discovery/membership.ts';
import { formatHostPort } from './config/address.ts';
import { balancerOptions } from './config/balance.ts';
import { type Config, defaultBalance, type ServiceConfig } from './config/schema.ts';
import { ConfigError } from './errors.ts';
import type { Logger } from './log.ts';
import type { ProtocolHandler } from './proxy/handler.ts';
import { type HttpContext, type HttpParts, HttpProxy } from './proxy/http.ts';
import { requestParts } from './proxy/http-request.ts';
import { Listener } from './proxy/listener.ts';
import { WebSocketProxy } from './proxy/websocket.ts';
import { TcpProxy, tcpSettings } from './proxy/tcp.ts';

export interface GatewayOptions {
  log: Logger;
  clock?: Clock;
  /**
   * Run as one of several worker processes (`workers:` in the config): bind
   * listeners with SO_REUSEPORT and leave the admin listener to the primary.
   */
  worker?: boolean;
}

/** One configured service as it runs. */
export interface ServiceRuntime {
  readonly name: string;
  readonly protocol: ServiceConfig['protocol'];
  config: ServiceConfig;
  readonly cluster: Cluster;
  readonly handler: ProtocolHandler;
  /** Discovery source, health checks and outlier detection feeding `cluster`. */
  readonly membership: Membership;
}

/** Builds the data plane for a protocol. New protocols register here. */
type HandlerFactory = (cluster: Cluster, config: ServiceConfig, clock: Clock, log: Logger) => ProtocolHandler;

const handlers: Record<ServiceConfig['protocol'], HandlerFactory | undefined> = {
  tcp(cluster, config, clock, log) {
    const proxy = new TcpProxy(cluster, tcpSettings(config), clock, log);
    return {
      accept: proxy.accept,
      stats: proxy.stats,
      get live() {
        return proxy.live;
      },
      configure: (next) => proxy.configure(tcpSettings(next)),
    };
  },
  http(cluster, config, clock, log) {
    return new HttpProxy(cluster, config, clock, log, httpParts);
  },
};

/** The HTTP-family data planes of one service. */
function httpParts(ctx: HttpContext): HttpParts {
  return {
    ...requestParts(ctx), // HTTP/1.1 requests and HTTP/2 streams, balanced one by one (src/proxy/http-request.ts)
    websocket: new WebSocketProxy(ctx), // WebSocket upgrades: relay, heartbeats, rebalancing (src/proxy/websocket.ts)
  };
}

/**
 * An HTTP service without `balance:` picks requests with p2c but holds
 * upgraded connections (WebSocket) by least-connections; otherwise one policy
 * serves both.
 */
function connectionBalancerFor(config: ServiceConfig) {
  if (config.protocol !== 'http' || config.balance !== undefined) return undefined;
  // WebSockets on an HTTP service without `balance:`: least-connections, under the service's persistence too.
  const { slowStart, persistence } = balancerOptions(config);
  return createBalancer<Backend>('least-connections', { slowStart, persistence });
}

function balancerFor(config: ServiceConfig) {
  // Per-request HTTP defaults to p2c (least outstanding of two random picks); connections to least-connections.
  return createBalancer<Backend>(config.balance ?? defaultBalance(config.protocol), balancerOptions(config));
}

/** What decides whether a reload must swap the policy instance. */
function balancerKey(config: ServiceConfig): string {
  return JSON.stringify([config.balance, balancerOptions(config)]);
}

export class Gateway {
  readonly log: Logger;
  readonly clock: Clock;
  readonly services = new Map<string, ServiceRuntime>();
  readonly listeners = new Map<string, Listener>();
  readonly metrics: Registry;
  config: Config;
  #admin: AdminServer | undefined;
  readonly #worker: boolean;
  #draining = false;
  #reloading: Promise<void> = Promise.resolve();
  readonly #memoryReducer: MemoryReducer;

  private constructor(config: Config, opts: GatewayOptions) {
    this.config = config;
    this.log = opts.log;
    this.clock = opts.clock ?? systemClock;
    this.#worker = opts.worker ?? false;
    this.metrics = createMetrics({
      services: () =>
        [...this.services.values()].map((s) => ({ ...s, stats: s.handler.stats, live: s.handler.live })),
      draining: () => this.#draining,
    });
    this.#memoryReducer = new MemoryReducer({ clock: this.clock, log: this.log, gc: exposedGc() });
    this.#memoryReducer.start();
  }

  /** Start every service and listener of `config`. Throws (and cleans up) if any cannot start. */
  static async start(config: Config, opts: GatewayOptions): Promise<Gateway> {
    const gateway = new Gateway(config, opts);
    try {
      await gateway.#apply(config, true);
    } catch (err) {
      await gateway.shutdown();
      throw err;
    }
    return gateway;
  }

  /** Port actually bound by the listener configured as `host:port` (port 0 in tests). */
  portOf(address: string): number | undefined {
    return this.listeners.get(address)?.port;
  }

  get adminPort(): number | undefined {
    return this.#admin?.port;
  }

  /**
   * Move to `config`: listeners that stay are kept, new backends take new
   * connections at once, removed ones drain. If anything cannot be applied
   * (a port in use), nothing changes and the error is thrown.
   */
  reload(config: Config): Promise<void> {
    const run = this.#reloading.then(() => this.#apply(config, false));
    this.#reloading = run.catch(() => {});
    return run;
  }

  async #apply(config: Config, initial: boolean): Promise<void> {
    if (this.#draining) throw new ConfigError('the gateway is shutting down; reload ignored');
    for (const s of config.services) {
      if (handlers[s.protocol] === undefined) {
        throw new ConfigError(`protocol "${s.protocol}" is not supported yet; use tcp`, {
          field: `services.${s.name}.protocol`,
        });
      }
    }
    // 1. Bind what is new first, so a failure leaves the running config untouched.
    const wanted = new Map<string, ServiceConfig>();
    for (const s of config.services) for (const hp of s.listen) wanted.set(formatHostPort(hp), s);
    const fresh: Listener[] = [];
    try {
      for (const [key, s] of wanted) {
        if (this.listeners.has(key)) continue;
        // No handler yet: what it accepts waits until step 3 attaches the service.
        const listener = new Listener(
          s.listen.find((hp) => formatHostPort(hp) === key)!,
          undefined,
          {
            reusePort: this.#worker,
          },
        );
        await listener.listen();
        fresh.push(listener);
      }
      if (config.admin !== undefined && !this.#worker) {
        const same =
          this.#admin !== undefined &&
          formatHostPort(this.#admin.address) === formatHostPort(config.admin.listen);
        if (!same) {
          const admin = new AdminServer(config.admin.listen, this.metrics, {
            draining: () => this.#draining,
            status: () => this.status(),
          });
          await admin.listen();
          await this.#admin?.close();
          this.#admin = admin;
        }
      } else if (this.#admin !== undefined) {
        await this.#admin.close();
        this.#admin = undefined;
      }
    } catch (err) {
      for (const l of fresh) l.close();
      throw err;
    }
    for (const l of fresh) this.listeners.set(l.key, l);

    // 2. Services: create, update or retire.
    const next = new Map(config.services.map((s) => [s.name, s]));
    for (const [name, runtime] of this.services) {
      const s = next.get(name);
      if (s === undefined || s.protocol !== runtime.protocol) {
        this.services.delete(name);
        this.log.info({ service: name }, 'service removed; draining its connections');
        runtime.membership.stop();
        void runtime.cluster.close('drain');
      }
    }
    for (const s of config.services) {
      const runtime = this.services.get(s.name);
      if (runtime === undefined) {
        const cluster = new Cluster({
          name: s.name,
          balancer: balancerFor(s),
          connectionBalancer: connectionBalancerFor(s),
          clock: this.clock,
          log: this.log,
          drainTimeoutMs: s.drain.timeout,
          maxConnectionsPerBackend: s.limits.maxConnectionsPerBackend,
        });
        const handler = handlers[s.protocol]!(cluster, s, this.clock, this.log);
        const membership = new Membership(cluster, { clock: this.clock, log: this.log });
        membership.configure(s);
        this.services.set(s.name, {
          name: s.name,
          protocol: s.protocol,
          config: s,
          cluster,
          handler,
          membership,
        });
        if (!initial) this.log.info({ service: s.name }, 'service added');
      } else {
        runtime.cluster.configure({
          drainTimeoutMs: s.drain.timeout,
          maxConnectionsPerBackend: s.limits.maxConnectionsPerBackend,
        });
        if (balancerKey(s) !== balancerKey(runtime.config))
          runtime.cluster.setBalancer(balancerFor(s), connectionBalancerFor(s));
        runtime.handler.configure(s);
        runtime.membership.configure(s);
        runtime.config = s;
      }
    }

    // 3. Point every listener at its service; close the ones no longer configured.
    for (const [key, listener] of this.listeners) {
      const s = wanted.get(key);
      if (s === undefined) {
        listener.close();
        this.listeners.delete(key);
        this.log.info({ listener: key }, 'listener closed');
      } else {
        // Client keepalive is set on the listening socket, and accepted sockets inherit it.
        listener.attach(this.services.get(s.name)!.handler.accept, s.tcpKeepAlive);
      }
    }
    this.config = config;
    this.log.info(
      {
        services: config.services.map((s) => s.name),
        listeners: [...this.listeners.keys()],
        admin: config.admin === undefined || this.#worker ? undefined : formatHostPort(config.admin.listen),
      },
      initial
        ? this.#worker
          ? 'worker started'
          : 'holdfast started'
        : this.#worker
          ? 'worker reloaded'
          : 'config reloaded',
    );
  }

  /**
   * Stop accepting, ask every connection to leave gracefully (spread over each
   * service's drain timeout; leftovers destroyed at the deadline), then stop.
   */
  async shutdown(): Promise<void> {
    if (this.#draining) return;
    this.#draining = true;
    this.#memoryReducer.stop();
    for (const l of this.listeners.values()) l.close();
    this.listeners.clear();
    const live = [...this.services.values()].reduce((n, s) => n + s.handler.live, 0);
    this.log.info({ connections: live }, 'shutting down: draining connections');
    for (const s of this.services.values()) s.membership.stop();
    for (const s of this.services.values()) s.handler.drain?.();
    await Promise.all([...this.services.values()].map((s) => s.cluster.close('shutdown')));
    await this.#admin?.close();
    this.#admin = undefined;
    this.log.info('shutdown complete');
  }

  /** JSON view for /status. */
  status(): unknown {
    return {
      draining: this.#draining,
      services: [...this.services.values()].map((s) => ({
        name: s.name,
        protocol: s.protocol,
        balance: s.cluster.policy,
        connections: s.handler.live,
        listen: s.config.listen.map(formatHostPort),
        backends: [...s.cluster.backends.values()].map((b) => ({
          address: b.key,
          state: b.state,
          weight: b.weight,
          connections: b.connections.size,
        })),
      })),
    };
  }
}
