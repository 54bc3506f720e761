/**
 * Balancing options of a service, spread into the service object of
 * schema.ts beside `balance:`. Documented in docs/config.md and, policy by
 * policy, in docs/balancing.md. Values are checked against the policy by
 * `createBalancer` at load time (see schema.ts), so a misplaced option is a
 * config error with its line, not a surprise at the first connection.
 */
import { z } from 'zod';
import type { BalancerOptions } from '../balance/index.ts';
import { duration, durationAtLeast, MIN_INTERVAL_MS, MIN_TIMEOUT_MS } from './fields.ts';

const netmask = z.union([z.number().int().min(0).max(32), z.string().regex(/^\d{1,3}(\.\d{1,3}){3}$/)], {
  error: 'a netmask is a prefix length 0-32 (24) or a dotted mask ("255.255.255.0")',
});
const netmask6 = z.number().int().min(0).max(128);

export const balanceFields = {
  /**
   * `maglev` only: what to hash — `five-tuple` (default), `source-ip`, `sni`,
   * `header:NAME`, `cookie:NAME`.
   */
  hashKey: z
    .string()
    .regex(/^(five-tuple|source-ip|sni|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|cookie:[^\s;=,]+)$/, {
      error: 'hashKey is five-tuple, source-ip, sni, header:NAME or cookie:NAME',
    })
    .optional(),
  /** `maglev` only: lookup table size, a prime (65537 default; 655373 for large backend sets). */
  tableSize: z.number().int().positive().optional(),
  /** Prefix lengths for `hashKey: source-ip` (default: persistence's, else 32/128). */
  netmask: z.number().int().min(0).max(32).optional(),
  netmask6: netmask6.optional(),
  /** LVS persistence: the same client network sticks to one backend while used within `timeout`. */
  persistence: z
    .strictObject({
      timeout: durationAtLeast(MIN_INTERVAL_MS).default(300_000),
      netmask: netmask.optional(),
      netmask6: netmask6.optional(),
      maxEntries: z.number().int().positive().max(10_000_000).optional(),
    })
    .optional(),
  /** New backends' weight ramps up over `window` (not with maglev). */
  slowStart: z
    .strictObject({
      /** 0s: no ramp (the same as no slowStart). */
      window: duration,
      aggression: z.number().positive().optional(),
      minWeightPercent: z.number().min(0).max(100).optional(),
    })
    .optional(),
  /** `p2c` only: weigh outstanding requests by peak-EWMA latency. */
  peakEwma: z
    .union([
      z.boolean(),
      z.strictObject({ decay: durationAtLeast(MIN_TIMEOUT_MS).optional(), defaultRtt: duration.optional() }),
    ])
    .optional(),
};

type BalanceFields = { [K in keyof typeof balanceFields]?: z.output<(typeof balanceFields)[K]> };

/** Map the config fields to `createBalancer` options (durations already in ms). */
export function balancerOptions(s: BalanceFields): BalancerOptions {
  const p = s.persistence;
  const e = s.peakEwma;
  return {
    hashKey: s.hashKey,
    tableSize: s.tableSize,
    netmask: s.netmask,
    netmask6: s.netmask6,
    persistence:
      p === undefined
        ? undefined
        : { timeoutMs: p.timeout, netmask: p.netmask, netmask6: p.netmask6, maxEntries: p.maxEntries },
    slowStart:
      s.slowStart === undefined
        ? undefined
        : {
            windowMs: s.slowStart.window,
            aggression: s.slowStart.aggression,
            minWeightPercent: s.slowStart.minWeightPercent,
          },
    peakEwma:
      e === undefined || typeof e === 'boolean' ? e : { decayMs: e.decay, defaultRttMs: e.defaultRtt },
  };
}
