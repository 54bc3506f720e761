import type { Balancer, PickContext, Random as RandomSource, Target } from './types.ts';

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

  constructor(random: RandomSource = Math.random) {
    this.#random = random;
  }

  setTargets(targets: readonly T[]): void {
    this.#targets = targets;
    this.#totalWeight = targets.reduce((sum, t) => sum + Math.max(0, t.weight), 0);
  }

  pick(_ctx: PickContext, exclude?: ReadonlySet<T>): T | undefined {
    const targets = this.#targets;
    let total = this.#totalWeight;
    if (exclude !== undefined && exclude.size > 0) {
      total = 0;
      for (const t of targets) if (t.weight > 0 && !exclude.has(t)) total += t.weight;
    }
    if (total <= 0) return undefined;
    let r = this.#random() * total;
    let last: T | undefined;
    for (const t of targets) {
      if (t.weight <= 0 || (exclude !== undefined && exclude.has(t))) continue;
      last = t;
      r -= t.weight;
      if (r < 0) return t;
    }
    return last;
  }
}
