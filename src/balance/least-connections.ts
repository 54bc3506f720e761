import { slowStartFrom, type SlowStart, type SlowStartOptions } from './slow-start.ts';
import type { Balancer, PickContext, Target } from './types.ts';

export interface LeastConnectionsOptions {
  /** Ramp the weight of new targets (see `slow-start.ts`). */
  slowStart?: SlowStartOptions | undefined;
}

/**
 * Weighted least-connections, as HAProxy's `leastconn`: the target with the
 * lowest load per unit of weight wins, so idle targets always come first and,
 * with equal weights, a target with more live connections is never chosen
 * while one with fewer is eligible.
 *
 * Ties on load/weight go to the target that would stay least loaded after
 * taking the connection ((load + 1) / weight, so among idle targets the
 * heavier first), then round the list: each scan starts just after the
 * previous winner, so equally loaded targets are taken in turn rather than
 * always the first in the list.
 */
export class LeastConnections<T extends Target = Target> implements Balancer<T> {
  readonly name = 'least-connections';
  #targets: readonly T[] = [];
  #start = 0;
  readonly #slowStart: SlowStart | undefined;
  #rampEnd = -Infinity;

  constructor(options: LeastConnectionsOptions = {}) {
    this.#slowStart = slowStartFrom(options.slowStart);
  }

  setTargets(targets: readonly T[]): void {
    this.#targets = targets;
    if (this.#start >= targets.length) this.#start = 0;
    this.#rampEnd = this.#slowStart?.rampEnd(targets) ?? -Infinity;
  }

  pick(ctx: PickContext, exclude?: ReadonlySet<T>): T | undefined {
    const targets = this.#targets;
    const n = targets.length;
    if (n === 0) return undefined;
    const slow = ctx.now < this.#rampEnd ? this.#slowStart : undefined;
    const now = ctx.now;
    const start = this.#start;
    let best = -1;
    let bestLoad = 0;
    let bestWeight = 0;
    for (let i = 0; i < n; i++) {
      let j = start + i;
      if (j >= n) j -= n;
      const t = targets[j]!;
      if (!(t.weight > 0) || (exclude !== undefined && exclude.has(t))) continue;
      const w = slow === undefined ? t.weight : slow.weight(t, now);
      const load = t.load;
      if (best >= 0) {
        // Compare load / w with bestLoad / bestWeight without dividing.
        const a = load * bestWeight;
        const b = bestLoad * w;
        if (a > b || (a === b && (load + 1) * bestWeight >= (bestLoad + 1) * w)) continue;
      }
      best = j;
      bestLoad = load;
      bestWeight = w;
    }
    if (best < 0) return undefined;
    this.#start = best + 1 >= n ? 0 : best + 1;
    return targets[best];
  }
}
