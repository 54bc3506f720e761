/**
 * Slow start, as Envoy does it: a target that became eligible less than
 * `windowMs` ago gets a fraction of its weight that grows with time,
 *
 *   factor = max(minWeightPercent / 100, (age / windowMs) ^ (1 / aggression))
 *
 * so a fresh backend is not flooded by every new connection at once (which
 * least-connections would otherwise do: an empty backend is the least loaded).
 * After the window the factor is 1. `Target.since` is when the target became
 * eligible, `PickContext.now` the current time, on the same clock. A cluster
 * that does not want initial targets to ramp sets their `since` to -Infinity.
 */
import { ConfigError } from '../errors.ts';
import type { Target } from './types.ts';

export interface SlowStartOptions {
  /** Ramp duration in ms; 0 disables slow start. */
  windowMs: number;
  /** Shape of the ramp: 1 is linear, larger ramps faster early on. Default 1. */
  aggression?: number | undefined;
  /** Floor of the factor in percent, so a new target still gets some traffic. Default 10. */
  minWeightPercent?: number | undefined;
}

/** Precomputed slow-start parameters. */
export class SlowStart {
  readonly windowMs: number;
  readonly #exponent: number;
  readonly #floor: number;

  constructor(options: SlowStartOptions) {
    const { windowMs, aggression = 1, minWeightPercent = 10 } = options;
    if (!Number.isFinite(windowMs) || windowMs < 0) {
      throw new ConfigError(`window must be a duration >= 0, got ${windowMs} ms`, {
        field: 'slowStart.window',
      });
    }
    if (!Number.isFinite(aggression) || aggression <= 0) {
      throw new ConfigError(`aggression must be > 0, got ${aggression}`, { field: 'slowStart.aggression' });
    }
    if (!Number.isFinite(minWeightPercent) || minWeightPercent < 0 || minWeightPercent > 100) {
      throw new ConfigError(`minWeightPercent must be between 0 and 100, got ${minWeightPercent}`, {
        field: 'slowStart.minWeightPercent',
      });
    }
    this.windowMs = windowMs;
    this.#exponent = 1 / aggression;
    this.#floor = minWeightPercent / 100;
  }

  /** Weight multiplier in (0, 1] for a target eligible since `since`, at `now`. */
  factor(since: number, now: number): number {
    const age = now - since;
    if (!(age < this.windowMs)) return 1; // also NaN-safe and -Infinity-safe
    if (age <= 0) return this.#floor > 0 ? this.#floor : Number.MIN_VALUE;
    const f = this.#exponent === 1 ? age / this.windowMs : Math.pow(age / this.windowMs, this.#exponent);
    return f > this.#floor ? f : this.#floor > 0 ? this.#floor : Number.MIN_VALUE;
  }

  /** Effective weight of `t` at `now`. */
  weight(t: Target, now: number): number {
    return t.weight * this.factor(t.since, now);
  }

  /** The time after which no target in `targets` is ramping (for a fast path). */
  rampEnd(targets: readonly Target[]): number {
    let end = -Infinity;
    for (const t of targets) if (t.since + this.windowMs > end) end = t.since + this.windowMs;
    return end;
  }
}

/** `new SlowStart(options)` when slow start is configured with a window > 0, otherwise undefined. */
export function slowStartFrom(options: SlowStartOptions | undefined): SlowStart | undefined {
  if (options === undefined) return undefined;
  const s = new SlowStart(options);
  return s.windowMs > 0 ? s : undefined;
}
