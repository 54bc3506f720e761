import { LeastConnections } from './least-connections.ts';
import { RandomPick } from './random.ts';
import { RoundRobin } from './round-robin.ts';
import type { Balancer, Random, Target } from './types.ts';

export type { Balancer, PickContext, Random, Target } from './types.ts';

/** Policy names accepted in `balance:`. */
export const BALANCE_POLICIES = ['least-connections', 'round-robin', 'random'] as const;
export type BalancePolicy = (typeof BALANCE_POLICIES)[number];

/** Everything a policy may be configured with; each policy reads what it needs. */
export interface BalancerOptions {
  random?: Random;
}

/** Build a fresh policy instance for one service. */
export function createBalancer<T extends Target>(
  policy: BalancePolicy,
  options: BalancerOptions = {},
): Balancer<T> {
  switch (policy) {
    case 'least-connections':
      return new LeastConnections<T>();
    case 'round-robin':
      return new RoundRobin<T>();
    case 'random':
      return new RandomPick<T>(options.random);
  }
}
