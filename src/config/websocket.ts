/**
 * Service fields for long-lived WebSocket connections: heartbeats and size
 * limits (`websocket:`), the age after which a connection is asked to
 * reconnect (`maxConnectionAge:`), and gradual rebalancing (`rebalance:`).
 * Documented in docs/websocket.md.
 */
import { z } from 'zod';
import { durationAtLeast, MIN_INTERVAL_MS, MIN_TIMEOUT_MS } from './fields.ts';

const SIZE_UNITS: Readonly<Record<string, number>> = {
  '': 1,
  b: 1,
  kb: 1000,
  mb: 1_000_000,
  kib: 1024,
  mib: 1024 * 1024,
  gib: 1024 * 1024 * 1024,
};

/** Parse `65536`, `64KiB`, `16MiB`, `1MB` into bytes; undefined if it is none of those. */
export function parseSize(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/.exec(text.trim());
  if (m === null) return undefined;
  const unit = SIZE_UNITS[m[2]!.toLowerCase()];
  if (unit === undefined) return undefined;
  return Math.floor(Number(m[1]) * unit);
}

const size = z.union([z.number().int().positive(), z.string()]).transform((v, ctx): number => {
  const n = typeof v === 'number' ? v : parseSize(v);
  if (n === undefined || n <= 0 || n > Number.MAX_SAFE_INTEGER) {
    ctx.addIssue({
      code: 'custom',
      message: `"${String(v)}" is not a size: write bytes, or 64KiB, 16MiB, 1MB`,
    });
    return z.NEVER;
  }
  return n;
});

/** `websocket:` — heartbeats on both legs and frame/message limits. */
export const websocketSchema = z
  .strictObject({
    ping: z
      .union([
        z.literal('off'),
        z.strictObject({
          interval: durationAtLeast(MIN_INTERVAL_MS).default(10_000),
          timeout: durationAtLeast(MIN_TIMEOUT_MS).default(5_000),
        }),
      ])
      .default({ interval: 10_000, timeout: 5_000 }),
    /** Largest single frame payload accepted from either side (close 1009 above it). */
    maxFrameSize: size.default(16 * 1024 * 1024),
    /** Largest message (all fragments) accepted from either side (close 1009 above it). */
    maxMessageSize: size.default(64 * 1024 * 1024),
    /** How long a closing handshake may take before the sockets are destroyed. */
    closeTimeout: durationAtLeast(MIN_TIMEOUT_MS).default(5_000),
  })
  .prefault({});

/** `maxConnectionAge:` — older connections are asked to reconnect (±10 % jitter); `off` to disable. */
export const maxConnectionAgeSchema = z
  .union([z.literal('off'), durationAtLeast(MIN_INTERVAL_MS, true)])
  .default(30 * 60_000);

/** `rebalance:` — absent means off. */
export const rebalanceSchema = z
  .strictObject({
    /** Allowed deviation of a backend's share from its fair share (0.1 = ±10 %). */
    maxSkew: z.number().min(0).max(10).default(0.1),
    /** At most this many connections asked to move in any one second. */
    maxPerSecond: z.number().int().positive().default(50),
    /** A connection younger than this (it may just have moved) is never chosen. */
    minAge: durationAtLeast(MIN_TIMEOUT_MS).default(5_000),
  })
  .optional();

export type WebSocketConfig = z.output<typeof websocketSchema>;
export type RebalanceConfig = NonNullable<z.output<typeof rebalanceSchema>>;
