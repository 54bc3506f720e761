import { fastRandom } from './fast-random.ts';
import { slowStartFrom, type SlowStart, type SlowStartOptions } from './slow-start.ts';
import type { Balancer, PickContext, Random as RandomSource, Target } from './types.ts';

export interface RandomOptions {
  /** Ramp the weight of new targets (see `slow-start.ts`). */
  slowStart?: SlowStartOptions | undefined;
}

/**
 * Weighted random choice. With equal weights this is what kube-proxy's
 * iptables mode does once per connection; it is kept so benchmarks can show
 * what the other policies improve on.
 */
export class RandomPick<T extends Target = Target> implements Balancer<T> {
  readonly name = 'random';
  #targets: readonly T[] = [];
  #totalWeight = 0;
  readonly #random: RandomSource;
  readonly #slowStart: SlowStart | undefined;
  #rampEnd = -Infinity;

  constructor(random: RandomSource = fastRandom, options: RandomOptions = {}) {
    this.#random = random;
    this.#slowStart = slowStartFrom(options.slowStart);
  }

  setTargets(targets: readonly T[]): void {
    this.#targets = targets;
    this.#totalWeight = targets.reduce((sum, t) => (t.weight > 0 ? sum + t.weight : sum), 0);
    this.#rampEnd = this.#slowStart?.rampEnd(targets) ?? -Infinity;
  }

  pick(ctx: PickContext, exclude?: ReadonlySet<T>): T | undefined {
    const targets = this.#targets;
    const slow = ctx.now < this.#rampEnd ? this.#slowStart : undefined;
    const now = ctx.now;
    let total = this.#totalWeight;
    const filtered = exclude !== undefined && exclude.size > 0;
    if (filtered || slow !== undefined) {
      total = 0;
      for (let i = 0; i < targets.length; i++) {
        const t = targets[i]!;
        if (!(t.weight > 0) || (filtered && exclude.has(t))) continue;
        total += slow === undefined ? t.weight : slow.weight(t, now);
      }
    }
    if (!(total > 0)) return undefined;
    let r = this.#random() * total;
    let last: T | undefined;
    for (let i = 0; i < targets.length; i++) {
      const t = targets[i]!;
      if (!(t.weight > 0) || (filtered && exclude.has(t))) continue;
      last = t;
      r -= slow === undefined ? t.weight : slow.weight(t, now);
      if (r < 0) return t;
    }
    return last;
  }
}
