import type { Balancer, PickContext, Target } from './types.ts';

/**
 * Weighted least-connections, as HAProxy's `leastconn`: the target with the
 * lowest load per unit of weight wins, so idle targets always come first.
 * Ties are broken fairly by starting each scan one place further round the
 * list, so equal targets are taken in turn instead of always the first one.
 */
export class LeastConnections<T extends Target = Target> implements Balancer<T> {
  readonly name = 'least-connections';
  #targets: readonly T[] = [];
  #start = 0;

  setTargets(targets: readonly T[]): void {
    this.#targets = targets;
    if (this.#start >= targets.length) this.#start = 0;
  }

  pick(_ctx: PickContext, exclude?: ReadonlySet<T>): T | undefined {
    const targets = this.#targets;
    const n = targets.length;
    if (n === 0) return undefined;
    const start = this.#start;
    this.#start = start + 1 >= n ? 0 : start + 1;
    let best: T | undefined;
    for (let i = 0; i < n; i++) {
      let j = start + i;
      if (j >= n) j -= n;
      const t = targets[j]!;
      if (t.weight <= 0 || (exclude !== undefined && exclude.has(t))) continue;
      // t.load / t.weight < best.load / best.weight, without division.
      if (best === undefined || t.load * best.weight < best.load * t.weight) best = t;
    }
    return best;
  }
}
