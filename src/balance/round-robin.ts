import { slowStartFrom, type SlowStart, type SlowStartOptions } from './slow-start.ts';
import type { Balancer, PickContext, Target } from './types.ts';

export interface RoundRobinOptions {
  /** Ramp the weight of new targets (see `slow-start.ts`). */
  slowStart?: SlowStartOptions | undefined;
}

/**
 * Smooth weighted round-robin (the interleaving NGINX uses): with weights
 * 5/1/1 the order is a a b a c a a, not a a a a a b c. Each pick adds every
 * target's weight to its running score, takes the highest, and subtracts the
 * total from the winner. Scores survive `setTargets` for targets that stay.
 */
export class RoundRobin<T extends Target = Target> implements Balancer<T> {
  readonly name = 'round-robin';
  #targets: readonly T[] = [];
  #current = new Float64Array(0);
  readonly #slowStart: SlowStart | undefined;
  #rampEnd = -Infinity;

  constructor(options: RoundRobinOptions = {}) {
    this.#slowStart = slowStartFrom(options.slowStart);
  }

  setTargets(targets: readonly T[]): void {
    const previous = new Map<string, number>();
    this.#targets.forEach((t, i) => previous.set(t.key, this.#current[i]!));
    this.#targets = targets;
    this.#current = new Float64Array(targets.length);
    targets.forEach((t, i) => (this.#current[i] = previous.get(t.key) ?? 0));
    this.#rampEnd = this.#slowStart?.rampEnd(targets) ?? -Infinity;
  }

  pick(ctx: PickContext, exclude?: ReadonlySet<T>): T | undefined {
    const targets = this.#targets;
    const current = this.#current;
    const slow = ctx.now < this.#rampEnd ? this.#slowStart : undefined;
    let total = 0;
    let best = -1;
    for (let i = 0; i < targets.length; i++) {
      const t = targets[i]!;
      if (!(t.weight > 0) || (exclude !== undefined && exclude.has(t))) continue;
      const w = slow === undefined ? t.weight : slow.weight(t, ctx.now);
      current[i]! += w;
      total += w;
      if (best < 0 || current[i]! > current[best]!) best = i;
    }
    if (best < 0) return undefined;
    current[best]! -= total;
    return targets[best];
  }
}
