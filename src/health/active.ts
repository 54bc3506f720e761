import type { Logger } from 'pino';
import type { Backend } from '../cluster/backend.ts';
import type { Clock, Timer } from '../cluster/clock.ts';
import type { Cluster } from '../cluster/cluster.ts';
import type { HealthConfig } from '../config/health.ts';
import { SourceAddressPool } from '../proxy/source-address.ts';
import { probe, type ProbeResult } from './probe.ts';

interface Tracked {
  readonly backend: Backend;
  /**
   * The service's source addresses, round the list as traffic uses them
   * (same family rule). One round per backend rather than one for the
   * service: a shared round visiting backends in a fixed order could probe
   * each backend from the same address every time and never from the others.
   */
  readonly sources: SourceAddressPool;
  timer: Timer | undefined;
  passes: number;
  fails: number;
  running: boolean;
}

/**
 * Active health checks for one service: every backend (except draining ones)
 * is probed every `interval` ± jitter. `unhealthyThreshold` consecutive
 * failures mark it unhealthy, `healthyThreshold` consecutive passes mark it
 * healthy again; the thresholds are what damps flapping. A backend starts out
 * healthy, so a fresh service takes traffic before the first round.
 */
export class HealthChecker {
  readonly #cluster: Cluster;
  readonly #config: HealthConfig;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #random: () => number;
  readonly #sourceAddresses: readonly string[];
  readonly #tracked = new Map<string, Tracked>();
  #stopped = false;

  constructor(
    cluster: Cluster,
    config: HealthConfig,
    opts: {
      clock: Clock;
      log: Logger;
      random?: () => number;
      /** The service's `sourceAddresses`: probes bind them as traffic does. */
      sourceAddresses?: readonly string[];
    },
  ) {
    this.#cluster = cluster;
    this.#config = config;
    this.#clock = opts.clock;
    this.#log = opts.log;
    this.#random = opts.random ?? Math.random;
    this.#sourceAddresses = opts.sourceAddresses ?? [];
  }

  /** Follow the cluster's current backends: start checking new ones, forget gone or draining ones. */
  sync(): void {
    if (this.#stopped) return;
    for (const [key, t] of this.#tracked) {
      const b = this.#cluster.backends.get(key);
      if (b !== t.backend || b.state === 'draining') {
        t.timer?.cancel();
        this.#tracked.delete(key);
      }
    }
    for (const b of this.#cluster.backends.values()) {
      if (b.state === 'draining' || this.#tracked.has(b.key)) continue;
      const t: Tracked = {
        backend: b,
        sources: new SourceAddressPool(this.#sourceAddresses),
        timer: undefined,
        passes: 0,
        fails: 0,
        running: false,
      };
      this.#tracked.set(b.key, t);
      // The first probe comes within the jitter window, so a new backend is known soon.
      this.#schedule(t, this.#config.interval * this.#config.jitter * this.#random());
    }
  }

  stop(): void {
    this.#stopped = true;
    for (const t of this.#tracked.values()) t.timer?.cancel();
    this.#tracked.clear();
  }

  #schedule(t: Tracked, ms: number): void {
    t.timer = this.#clock.setTimer(() => this.#run(t), ms);
  }

  #next(): number {
    const { interval, jitter } = this.#config;
    return interval * (1 + jitter * (2 * this.#random() - 1));
  }

  #run(t: Tracked): void {
    t.timer = undefined;
    if (this.#stopped || this.#tracked.get(t.backend.key) !== t) return;
    t.running = true;
    const target = { host: t.backend.address.host, port: this.#config.port ?? t.backend.address.port };
    void probe(this.#config, target, this.#clock, t.sources.next(target.host)).then((result) => {
      t.running = false;
      if (this.#stopped || this.#tracked.get(t.backend.key) !== t) return;
      this.#record(t, result);
      this.#schedule(t, this.#next());
    });
  }

  #record(t: Tracked, result: ProbeResult): void {
    const b = t.backend;
    const c = this.#config;
    if (result.ok) {
      b.checksPassed++;
      t.passes++;
      t.fails = 0;
      if (!b.healthy && t.passes >= c.healthyThreshold) {
        this.#cluster.markHealth(
          b.key,
          true,
          `${t.passes} consecutive ${c.type} checks passed (${result.detail})`,
        );
      }
    } else {
      b.checksFailed++;
      t.fails++;
      t.passes = 0;
      this.#log.debug(
        {
          service: this.#cluster.name,
          backend: b.key,
          check: c.type,
          detail: result.detail,
          consecutive: t.fails,
        },
        'health check failed',
      );
      if (b.healthy && t.fails >= c.unhealthyThreshold) {
        this.#cluster.markHealth(
          b.key,
          false,
          `${t.fails} consecutive ${c.type} checks failed (${result.detail})`,
        );
      }
    }
  }
}
