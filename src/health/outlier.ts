import type { Logger } from 'pino';
import type { Backend } from '../cluster/backend.ts';
import type { Clock } from '../cluster/clock.ts';
import type { Cluster, FailureKind, FailureObserver } from '../cluster/cluster.ts';
import type { OutlierConfig } from '../config/health.ts';

interface OutlierRecord {
  consecutive: number;
  consecutive5xx: number;
  /** Ejections so far (decays): the next one lasts base × (n + 1). */
  ejections: number;
  lastEjectionEnd: number;
}

/**
 * Passive outlier detection, in the manner of Envoy's: data planes report
 * connect failures, resets and HTTP 5xx through `Cluster.reportFailure`; a
 * backend reaching a consecutive-failure threshold is ejected for
 * `baseEjectionTime × (previous ejections + 1)`, at most `maxEjectionTime`,
 * and never more than `maxEjectionPercent` of the backends at once. A backend
 * that stays out of trouble for `maxEjectionTime` after an ejection starts
 * from scratch.
 */
export class OutlierDetector implements FailureObserver {
  readonly #cluster: Cluster;
  readonly #config: OutlierConfig;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #records = new WeakMap<Backend, OutlierRecord>();
  /** Ejections refused because of the cap, for metrics. */
  capped = 0;

  constructor(cluster: Cluster, config: OutlierConfig, opts: { clock: Clock; log: Logger }) {
    this.#cluster = cluster;
    this.#config = config;
    this.#clock = opts.clock;
    this.#log = opts.log;
  }

  #record(b: Backend): OutlierRecord {
    let r = this.#records.get(b);
    if (r === undefined) {
      r = { consecutive: 0, consecutive5xx: 0, ejections: 0, lastEjectionEnd: 0 };
      this.#records.set(b, r);
    }
    return r;
  }

  success(backend: Backend): void {
    const r = this.#records.get(backend);
    if (r === undefined) return;
    r.consecutive = 0;
    r.consecutive5xx = 0;
  }

  failure(backend: Backend, kind: FailureKind): void {
    if (backend.state === 'draining' || backend.state === 'ejected') return;
    const r = this.#record(backend);
    const c = this.#config;
    let threshold: number;
    let count: number;
    if (kind === 'http-5xx') {
      count = ++r.consecutive5xx;
      threshold = c.consecutive5xx;
    } else {
      count = ++r.consecutive;
      threshold = c.consecutiveFailures;
    }
    if (threshold === 0 || count < threshold) return;
    r.consecutive = 0;
    r.consecutive5xx = 0;
    let total = 0;
    let ejected = 0;
    for (const b of this.#cluster.backends.values()) {
      if (b.state === 'draining') continue;
      total++;
      if (b.state === 'ejected') ejected++;
    }
    const allowed = Math.floor((total * c.maxEjectionPercent) / 100);
    const why = `${count} consecutive ${kind === 'http-5xx' ? 'HTTP 5xx answers' : kind === 'reset' ? 'failures (last: reset)' : 'failures (last: connect)'}`;
    if (ejected >= allowed) {
      this.capped++;
      this.#log.warn(
        {
          service: this.#cluster.name,
          backend: backend.key,
          reason: why,
          ejected,
          allowed,
          maxEjectionPercent: c.maxEjectionPercent,
        },
        'outlier not ejected: ejection cap reached',
      );
      return;
    }
    const now = this.#clock.now();
    if (r.ejections > 0 && now - r.lastEjectionEnd >= c.maxEjectionTime) r.ejections = 0;
    const ms = Math.min(c.maxEjectionTime, c.baseEjectionTime * (r.ejections + 1));
    r.ejections++;
    r.lastEjectionEnd = now + ms;
    this.#cluster.eject(backend.key, now + ms, why);
  }
}
