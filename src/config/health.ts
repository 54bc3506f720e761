/**
 * Config for active health checks (`health:`) and passive outlier detection
 * (`outlierDetection:`) of a service. Documented in docs/health.md.
 */
import { z } from 'zod';
import { formatDuration } from './duration.ts';
import { durationAtLeast, MIN_INTERVAL_MS, MIN_TIMEOUT_MS, refuseLowAboveHigh } from './fields.ts';

const positiveInt = z.number().int().positive();

/** `200-399`, `200`, or a list of those: which HTTP statuses count as healthy. */
const statusRanges = z.union([z.number().int(), z.string()]).transform((v, ctx): [number, number][] => {
  const out: [number, number][] = [];
  for (const part of String(v).split(',')) {
    const m = /^\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?$/.exec(part);
    if (m === null) {
      ctx.addIssue({
        code: 'custom',
        message: `"${part.trim()}" is not a status or range such as 200 or 200-399`,
      });
      return z.NEVER;
    }
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (hi < lo) {
      ctx.addIssue({ code: 'custom', message: `range "${part.trim()}" ends before it starts` });
      return z.NEVER;
    }
    out.push([lo, hi]);
  }
  return out;
});

export const healthSchema = z
  .strictObject({
    /** tcp: connect succeeds. http: GET `path` answers a status in `expectStatus`. grpc: grpc.health.v1 Check says SERVING. */
    type: z.enum(['tcp', 'http', 'grpc']).default('tcp'),
    interval: durationAtLeast(MIN_INTERVAL_MS).default(5_000),
    timeout: durationAtLeast(MIN_TIMEOUT_MS).default(2_000),
    /** Consecutive passes before an unhealthy backend takes connections again. */
    healthyThreshold: positiveInt.default(2),
    /** Consecutive failures before a backend is marked unhealthy. */
    unhealthyThreshold: positiveInt.default(3),
    /** Random share of the interval added to or removed from each wait, so checks do not march in step. */
    jitter: z.number().min(0).max(1).default(0.1),
    /** Check this port instead of the backend's traffic port. */
    port: z.number().int().min(1).max(65535).optional(),
    /** http: request path and Host header; healthy statuses. */
    path: z.string().startsWith('/', { error: 'a path starts with "/"' }).default('/healthz'),
    host: z.string().optional(),
    expectStatus: statusRanges.default([[200, 399]]),
    /** grpc: the service name sent in HealthCheckRequest ("" asks about the whole server). */
    grpcService: z.string().default(''),
    /** Drain the live connections of a backend marked unhealthy (gracefully, over drain.timeout). */
    closeOnUnhealthy: z.boolean().default(false),
  })
  .superRefine((h, ctx) => {
    if (h.timeout > h.interval) {
      ctx.addIssue({
        code: 'custom',
        path: ['timeout'],
        message: `${formatDuration(h.timeout)} must not be longer than interval (${formatDuration(h.interval)}); set a shorter timeout`,
      });
    }
  });

const BASE_EJECTION_MS = 30_000;
const MAX_EJECTION_MS = 300_000;

export const outlierSchema = z
  .strictObject({
    /** Consecutive connect failures or resets that eject a backend (0 turns this signal off). */
    consecutiveFailures: z.number().int().min(0).default(5),
    /** Consecutive HTTP 5xx answers that eject a backend (0 turns this signal off). */
    consecutive5xx: z.number().int().min(0).default(5),
    /** First ejection lasts this long; each repeat ejection adds as much again, up to maxEjectionTime. */
    baseEjectionTime: durationAtLeast(MIN_INTERVAL_MS).default(BASE_EJECTION_MS),
    maxEjectionTime: durationAtLeast(MIN_INTERVAL_MS).default(MAX_EJECTION_MS),
    /** Never eject more than this share of a service's backends (rounded down). */
    maxEjectionPercent: z.number().min(0).max(100).default(50),
  })
  .superRefine((o, ctx) => {
    refuseLowAboveHigh(
      ctx,
      { field: 'baseEjectionTime', ms: o.baseEjectionTime, default: BASE_EJECTION_MS },
      { field: 'maxEjectionTime', ms: o.maxEjectionTime, default: MAX_EJECTION_MS },
    );
  });

export type HealthConfig = z.output<typeof healthSchema>;
export type OutlierConfig = z.output<typeof outlierSchema>;
