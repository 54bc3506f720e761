import type { Logger } from 'pino';
import type { BackendSpec } from '../cluster/backend.ts';
import type { Clock } from '../cluster/clock.ts';
import type { Cluster } from '../cluster/cluster.ts';
import { formatHostPort } from '../config/address.ts';
import type { ServiceConfig } from '../config/schema.ts';
import { HealthChecker } from '../health/active.ts';
import { OutlierDetector } from '../health/outlier.ts';
import { DnsSource } from './dns.ts';
import { FileSource } from './file.ts';
import type { DiscoverySource, SourceContext, SourceKind } from './source.ts';
import { StaticSource } from './static.ts';

/** Counters of one service's discovery and health, read by /metrics. */
export interface MembershipStats {
  source: SourceKind;
  /** Endpoint-set changes applied to the cluster. */
  updates: number;
  /** Failed lookups, reads or watches, by reason; the last good set stayed. */
  errors: Record<string, number>;
  /** Endpoints in the last set applied. */
  endpoints: number;
  /** Outlier ejections refused because of maxEjectionPercent. */
  readonly ejectionsCapped: () => number;
}

type KubernetesConfig = NonNullable<ServiceConfig['backends']['kubernetes']>;

/**
 * The Kubernetes source, loaded when first started: it brings undici (about
 * 6 MB of heap), which a gateway without Kubernetes discovery should not
 * carry — every major GC marks the whole heap, so its size is paid for in
 * throughput.
 */
class LazyKubernetesSource implements DiscoverySource {
  readonly kind = 'kubernetes';
  readonly #config: KubernetesConfig;
  readonly #ctx: SourceContext;
  #inner: DiscoverySource | undefined;
  #stopped = false;

  constructor(config: KubernetesConfig, ctx: SourceContext) {
    this.#config = config;
    this.#ctx = ctx;
  }

  start(): void {
    this.#stopped = false;
    import('./kubernetes.ts').then(
      ({ KubernetesSource }) => {
        if (this.#stopped) return;
        this.#inner = new KubernetesSource(this.#config, this.#ctx);
        this.#inner.start();
      },
      (err: unknown) =>
        this.#ctx.log.error({ err: String(err) }, 'cannot load the Kubernetes discovery source'),
    );
  }

  stop(): void {
    this.#stopped = true;
    this.#inner?.stop();
    this.#inner = undefined;
  }
}

/** Build the source configured under `backends:`. */
export function createSource(config: ServiceConfig, ctx: SourceContext): DiscoverySource {
  const b = config.backends;
  if (b.file !== undefined) return new FileSource(b.file, ctx);
  if (b.dns !== undefined) return new DnsSource(b.dns, ctx);
  if (b.kubernetes !== undefined) return new LazyKubernetesSource(b.kubernetes, ctx);
  return new StaticSource(b.static, ctx);
}

function signature(specs: readonly BackendSpec[]): string {
  return JSON.stringify(
    specs
      .map((s) => [formatHostPort(s.address), s.weight, s.maxConnections ?? null, s.draining === true])
      .sort(),
  );
}

/**
 * Who is in a service and who may take connections: its discovery source
 * feeding `Cluster.update` (exactly the reload path: new endpoints join,
 * missing ones drain), its active health checks and its outlier detection.
 * Started with the service, re-configured on reload, stopped with it.
 */
export class Membership {
  readonly #cluster: Cluster;
  readonly #clock: Clock;
  readonly #log: Logger;
  #config: ServiceConfig | undefined;
  #source: DiscoverySource | undefined;
  #checker: HealthChecker | undefined;
  #detector: OutlierDetector | undefined;
  #last: string | undefined;
  #stopped = false;
  readonly stats: MembershipStats;

  constructor(cluster: Cluster, opts: { clock: Clock; log: Logger }) {
    this.#cluster = cluster;
    this.#clock = opts.clock;
    this.#log = opts.log;
    this.stats = {
      source: 'static',
      updates: 0,
      errors: {},
      endpoints: 0,
      ejectionsCapped: () => this.#detector?.capped ?? 0,
    };
  }

  /** Apply a service config: first start, or a reload (only what changed is re-created). */
  configure(config: ServiceConfig): void {
    if (this.#stopped) return;
    const old = this.#config;
    this.#config = config;
    this.#cluster.closeOnUnhealthy = config.health?.closeOnUnhealthy ?? false;
    if (
      old === undefined ||
      JSON.stringify(old.outlierDetection) !== JSON.stringify(config.outlierDetection)
    ) {
      const o = config.outlierDetection;
      this.#detector =
        o === undefined
          ? undefined
          : new OutlierDetector(this.#cluster, o, { clock: this.#clock, log: this.#log });
      this.#cluster.observer = this.#detector;
    }
    if (
      old === undefined ||
      JSON.stringify(old.health) !== JSON.stringify(config.health) ||
      JSON.stringify(old.sourceAddresses) !== JSON.stringify(config.sourceAddresses)
    ) {
      this.#checker?.stop();
      const h = config.health;
      this.#checker =
        h === undefined
          ? undefined
          : new HealthChecker(this.#cluster, h, {
              clock: this.#clock,
              log: this.#log,
              sourceAddresses: config.sourceAddresses,
            });
      if (h === undefined) {
        for (const b of this.#cluster.backends.values())
          this.#cluster.markHealth(b.key, true, 'health checks turned off');
      }
    }
    if (old === undefined || JSON.stringify(old.backends) !== JSON.stringify(config.backends)) {
      this.#source?.stop();
      const name = this.#cluster.name;
      let source: DiscoverySource | undefined = undefined;
      const ctx: SourceContext = {
        service: name,
        clock: this.#clock,
        log: this.#log,
        emit: (specs, reason) => {
          if (source === this.#source && !this.#stopped) this.#apply(specs, reason);
        },
        error: (reason, message) => {
          if (source !== this.#source || this.#stopped) return;
          this.stats.errors[reason] = (this.stats.errors[reason] ?? 0) + 1;
          this.#log.warn(
            { service: name, source: this.stats.source, reason, err: message },
            'discovery failed; keeping the last endpoint set',
          );
        },
      };
      source = createSource(config, ctx);
      this.#source = source;
      this.stats.source = source.kind;
      if (old !== undefined) this.#log.info({ service: name, source: source.kind }, 'backend source changed');
      source.start();
    }
    this.#checker?.sync();
  }

  stop(): void {
    this.#stopped = true;
    this.#source?.stop();
    this.#checker?.stop();
    this.#cluster.observer = undefined;
  }

  #apply(specs: readonly BackendSpec[], reason: string): void {
    const sig = signature(specs);
    if (sig === this.#last) return;
    this.#last = sig;
    const { added, removed } = this.#cluster.update(specs);
    this.stats.updates++;
    this.stats.endpoints = specs.filter((s) => s.draining !== true).length;
    this.#log.info(
      {
        service: this.#cluster.name,
        source: this.#source?.kind,
        reason,
        added,
        removed,
        endpoints: this.stats.endpoints,
      },
      'endpoints changed',
    );
    this.#checker?.sync();
  }
}
