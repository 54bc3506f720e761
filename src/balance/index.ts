/**
 * The balancing core: pure decisions about where a connection or request goes.
 *
 * `createBalancer(policy, options)` builds one policy instance per service;
 * the cluster feeds it targets (`setTargets`) and asks it per connection or
 * request (`pick`). Everything here is synchronous and free of I/O and timers
 * (time arrives as `ctx.now`), except `maglev-worker.ts`, which builds large
 * Maglev tables in a worker thread.
 */
import { ConfigError } from '../errors.ts';
import { netmaskPrefix } from './hash.ts';
import { LeastConnections } from './least-connections.ts';
import { MaglevBalancer, parseHashKey, type HashKey } from './maglev.ts';
import { PowerOfTwoChoices, type PeakEwmaOptions } from './p2c.ts';
import { Persistent, type PersistenceOptions } from './persistence.ts';
import { RandomPick } from './random.ts';
import { RoundRobin } from './round-robin.ts';
import type { SlowStartOptions } from './slow-start.ts';
import type { Balancer, PickContext, Random, Target } from './types.ts';

export type { Balancer, PickContext, Random, Target } from './types.ts';
export type { HashKey, MaglevOptions, MaglevTable, MaglevBackend, MaglevStaged } from './maglev.ts';
export {
  MaglevBalancer,
  MaglevTableSizeError,
  MaglevBackendsError,
  MAGLEV_FORMAT,
  MAGLEV_DEFAULT_TABLE_SIZE,
  MAGLEV_LARGE_TABLE_SIZE,
  buildMaglevTable,
  isPrime,
  parseHashKey,
} from './maglev.ts';
export type { PersistenceOptions, PersistenceStats } from './persistence.ts';
export { Persistent } from './persistence.ts';
export type { SlowStartOptions } from './slow-start.ts';
export type { PeakEwmaOptions } from './p2c.ts';
export { PowerOfTwoChoices } from './p2c.ts';
export { LeastConnections } from './least-connections.ts';
export { RoundRobin } from './round-robin.ts';
export { RandomPick } from './random.ts';

/** Policy names accepted in `balance:`. */
export const BALANCE_POLICIES = ['least-connections', 'round-robin', 'random', 'p2c', 'maglev'] as const;
export type BalancePolicy = (typeof BALANCE_POLICIES)[number];

/** The fixed `hashKey` values; `header:NAME` and `cookie:NAME` are accepted too. */
export const HASH_KEYS = ['five-tuple', 'source-ip', 'sni'] as const;

/**
 * Everything a policy may be configured with; each policy reads what it
 * needs, and combinations that make no sense are rejected with a ConfigError
 * naming the field. Durations are already in milliseconds.
 */
export interface BalancerOptions {
  /** Randomness for `random` and `p2c` (default: a non-allocating PRNG seeded from Math.random); inject for deterministic tests. */
  random?: Random | undefined;
  /**
   * `maglev` only: what to hash. `five-tuple` (default: client and local
   * address and port), `source-ip` (client address under `netmask`/`netmask6`:
   * stateless persistence that gateway replicas agree on), `sni`,
   * `header:NAME`, `cookie:NAME`.
   */
  hashKey?: string | undefined;
  /** `maglev` only: table size, a prime; 65537 (default) or 655373 for large backend sets. */
  tableSize?: number | undefined;
  /**
   * IPv4 prefix length for `maglev` with `hashKey: source-ip` (refused
   * elsewhere). Defaults to `persistence.netmask` when that is set, else 32.
   */
  netmask?: number | undefined;
  /** IPv6 prefix length for `maglev` with `hashKey: source-ip` (refused elsewhere). Defaults to `persistence.netmask6`, else 128. */
  netmask6?: number | undefined;
  /**
   * LVS-style persistence in front of the policy: the same client network goes
   * to the same target while its entry is younger than `timeoutMs` since last
   * use. One table per balancer, i.e. per service across all its ports.
   */
  persistence?: PersistenceOptions | undefined;
  /**
   * Ramp new targets' weight over `windowMs` (Envoy's slow start). Applies to
   * least-connections, round-robin, random and p2c; not to maglev, whose
   * table cannot follow a weight that changes every millisecond.
   */
  slowStart?: SlowStartOptions | undefined;
  /** `p2c` only: weigh load by peak-EWMA latency reported through `observe()`. */
  peakEwma?: PeakEwmaOptions | boolean | undefined;
}

/** Build a fresh policy instance for one service. Throws ConfigError (or a HoldfastError with its own code) on bad options. */
export function createBalancer<T extends Target>(
  policy: BalancePolicy,
  options: BalancerOptions = {},
): Balancer<T> {
  if (policy !== 'maglev') {
    if (options.hashKey !== undefined)
      throw new ConfigError('hashKey applies only to balance: maglev', { field: 'hashKey' });
    if (options.tableSize !== undefined) {
      throw new ConfigError('tableSize applies only to balance: maglev', { field: 'tableSize' });
    }
  }
  // Only a source-ip Maglev hash reads these; persistence has its own (`persistence.netmask`).
  if (policy !== 'maglev' || options.hashKey !== 'source-ip') {
    for (const field of ['netmask', 'netmask6'] as const) {
      if (options[field] === undefined) continue;
      throw new ConfigError(
        `${field} applies only to balance: maglev with hashKey: source-ip; ${options.persistence === undefined ? 'remove it' : `for persistence, set persistence.${field} instead`}`,
        { field },
      );
    }
  }
  if (policy !== 'p2c' && options.peakEwma !== undefined && options.peakEwma !== false) {
    throw new ConfigError('peakEwma applies only to balance: p2c', { field: 'peakEwma' });
  }
  const slowStart = options.slowStart;
  let inner: Balancer<T>;
  switch (policy) {
    case 'least-connections':
      inner = new LeastConnections<T>({ slowStart });
      break;
    case 'round-robin':
      inner = new RoundRobin<T>({ slowStart });
      break;
    case 'random':
      inner = new RandomPick<T>(options.random, { slowStart });
      break;
    case 'p2c':
      inner = new PowerOfTwoChoices<T>({ random: options.random, slowStart, peakEwma: options.peakEwma });
      break;
    case 'maglev': {
      if (slowStart !== undefined && slowStart.windowMs > 0) {
        throw new ConfigError(
          'slowStart does not apply to balance: maglev (its table is fixed between target changes)',
          {
            field: 'slowStart',
          },
        );
      }
      const hashKey: HashKey = parseHashKey(options.hashKey ?? 'five-tuple');
      const pn = options.persistence?.netmask;
      inner = new MaglevBalancer<T>({
        tableSize: options.tableSize,
        hashKey,
        netmask: options.netmask ?? (pn !== undefined ? netmaskPrefix(pn) : undefined),
        netmask6: options.netmask6 ?? options.persistence?.netmask6,
      });
      break;
    }
  }
  return options.persistence !== undefined ? new Persistent<T>(inner, options.persistence) : inner;
}

/**
 * Whether `target` is held for the client in `ctx` by persistence or a
 * client-keyed hash, so that a rebalancer should leave that connection where
 * it is.
 */
export function isHeld<T extends Target>(balancer: Balancer<T>, ctx: PickContext, target: T): boolean {
  const held = balancer.affinity?.(ctx);
  return held !== undefined && held.key === target.key;
}
