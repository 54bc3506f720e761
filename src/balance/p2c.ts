import { fastRandom } from './fast-random.ts';
import { slowStartFrom, type SlowStart, type SlowStartOptions } from './slow-start.ts';
import type { Balancer, PickContext, Random, Target } from './types.ts';

/** Peak-EWMA latency tracking, as Linkerd (after Finagle) does it. */
export interface PeakEwmaOptions {
  /** Time constant of the decay in ms: after this long, an estimate has moved ~63 % toward new samples. Default 10 000. */
  decayMs?: number | undefined;
  /** Latency assumed for a target that has no sample yet, in ms. Default 30. */
  defaultRttMs?: number | undefined;
}

export interface P2COptions {
  /** Randomness for the two choices; injectable for tests. Default: a non-allocating PRNG (see fast-random.ts). */
  random?: Random | undefined;
  /** Weigh load by observed latency (cost = latency × (load + 1) / weight). Off by default. */
  peakEwma?: PeakEwmaOptions | boolean | undefined;
  /** Ramp the weight of new targets (see `slow-start.ts`). */
  slowStart?: SlowStartOptions | undefined;
}

/**
 * Power of two choices: take two different eligible targets at random and
 * keep the one with the lower cost. The cost is (load + 1) / weight (load is
 * outstanding requests or streams), or with peak-EWMA latency × (load + 1) /
 * weight, where the latency estimate jumps up to any slower sample at once
 * (the peak) and otherwise moves toward samples exponentially in time, and
 * decays toward zero while a target gets no samples, so a target that was
 * slow is tried again later. Report latencies with {@link observe}.
 *
 * Cheap (two reads per pick), nearly as good as least-loaded, and it avoids
 * the herd effect of every gateway replica choosing the same least-loaded
 * target at once.
 */
export class PowerOfTwoChoices<T extends Target = Target> implements Balancer<T> {
  readonly name = 'p2c';
  #targets: readonly T[] = [];
  readonly #random: Random;
  readonly #slowStart: SlowStart | undefined;
  #rampEnd = -Infinity;
  readonly #ewma: boolean;
  readonly #decayMs: number;
  readonly #defaultRtt: number;
  // Latency state, parallel to #targets, carried across setTargets by key.
  #index = new Map<string, number>();
  #rtt = new Float64Array(0);
  #stamp = new Float64Array(0);
  #sampled = new Uint8Array(0);

  constructor(options: P2COptions = {}) {
    this.#random = options.random ?? fastRandom;
    this.#slowStart = slowStartFrom(options.slowStart);
    const ewma = options.peakEwma;
    this.#ewma = ewma !== undefined && ewma !== false;
    const o = typeof ewma === 'object' ? ewma : {};
    this.#decayMs = o.decayMs ?? 10_000;
    this.#defaultRtt = o.defaultRttMs ?? 30;
    if (!(this.#decayMs > 0)) throw new RangeError('peakEwma.decayMs must be > 0');
    if (!(this.#defaultRtt >= 0)) throw new RangeError('peakEwma.defaultRttMs must be >= 0');
  }

  setTargets(targets: readonly T[]): void {
    const n = targets.length;
    const index = new Map<string, number>();
    const rtt = new Float64Array(n);
    const stamp = new Float64Array(n);
    const sampled = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      const key = targets[i]!.key;
      index.set(key, i);
      const old = this.#index.get(key);
      if (old !== undefined) {
        rtt[i] = this.#rtt[old]!;
        stamp[i] = this.#stamp[old]!;
        sampled[i] = this.#sampled[old]!;
      }
    }
    this.#targets = targets;
    this.#index = index;
    this.#rtt = rtt;
    this.#stamp = stamp;
    this.#sampled = sampled;
    this.#rampEnd = this.#slowStart?.rampEnd(targets) ?? -Infinity;
  }

  /**
   * Report an observed latency (e.g. time to response headers, or a
   * heartbeat round trip) of `rttMs` for `target` at time `now`. Targets not
   * in the current set are ignored.
   */
  observe(target: Target, rttMs: number, now: number): void {
    const i = this.#index.get(target.key);
    if (i === undefined || !(rttMs >= 0)) return;
    if (this.#sampled[i] === 0) {
      this.#sampled[i] = 1;
      this.#rtt[i] = rttMs;
    } else {
      const current = this.#decayed(i, now);
      if (rttMs > current) {
        this.#rtt[i] = rttMs; // peak: take a slower sample at once
      } else {
        const elapsed = now - this.#stamp[i]!;
        const w = elapsed > 0 ? Math.exp(-elapsed / this.#decayMs) : 1;
        // Without elapsed time (several samples in one ms), still move a little.
        const keep = w === 1 ? 1 - 1 / 16 : w;
        this.#rtt[i] = current * keep + rttMs * (1 - keep);
      }
    }
    this.#stamp[i] = now;
  }

  /** Current latency estimate for `target` in ms (decayed to `now`), or undefined when unknown. */
  latency(target: Target, now: number): number | undefined {
    const i = this.#index.get(target.key);
    if (i === undefined) return undefined;
    return this.#sampled[i] === 0 ? this.#defaultRtt : this.#decayed(i, now);
  }

  #decayed(i: number, now: number): number {
    const elapsed = now - this.#stamp[i]!;
    const rtt = this.#rtt[i]!;
    return elapsed > 0 ? rtt * Math.exp(-elapsed / this.#decayMs) : rtt;
  }

  #cost(i: number, t: T, now: number, slow: SlowStart | undefined): number {
    const w = slow === undefined ? t.weight : slow.weight(t, now);
    let cost = (t.load + 1) / w;
    if (this.#ewma) cost *= this.#sampled[i] === 0 ? this.#defaultRtt : this.#decayed(i, now);
    return cost;
  }

  #eligible(t: T, exclude: ReadonlySet<T> | undefined): boolean {
    return t.weight > 0 && (exclude === undefined || !exclude.has(t));
  }

  pick(ctx: PickContext, exclude?: ReadonlySet<T>): T | undefined {
    const targets = this.#targets;
    const n = targets.length;
    if (n === 0) return undefined;
    const now = ctx.now;
    const slow = now < this.#rampEnd ? this.#slowStart : undefined;
    if (n === 1) return this.#eligible(targets[0]!, exclude) ? targets[0] : undefined;
    // Two distinct random indices; a few draws find eligible ones when most
    // are, and a scan handles sets where most are not.
    let a = -1;
    let b = -1;
    for (let tries = 0; tries < 8 && b < 0; tries++) {
      const i = Math.floor(this.#random() * n);
      if (i === a || i >= n || !this.#eligible(targets[i]!, exclude)) continue;
      if (a < 0) a = i;
      else b = i;
    }
    if (b < 0) return this.#scan(now, slow, exclude);
    const ta = targets[a]!;
    const tb = targets[b]!;
    const ca = this.#cost(a, ta, now, slow);
    const cb = this.#cost(b, tb, now, slow);
    return cb < ca ? tb : ta;
  }

  /** Fallback: least cost over every eligible target. */
  #scan(now: number, slow: SlowStart | undefined, exclude: ReadonlySet<T> | undefined): T | undefined {
    const targets = this.#targets;
    let best: T | undefined;
    let bestCost = Infinity;
    for (let i = 0; i < targets.length; i++) {
      const t = targets[i]!;
      if (!this.#eligible(t, exclude)) continue;
      const c = this.#cost(i, t, now, slow);
      if (best === undefined || c < bestCost) {
        best = t;
        bestCost = c;
      }
    }
    return best;
  }
}
