/**
 * Value types shared by every part of the config schema: durations with a
 * unit, `host:port` addresses, IP addresses. One definition each, so every
 * field of a kind takes the same spellings and gives the same error.
 */
import { isIP } from 'node:net';
import { z } from 'zod';
import { type HostPort, parseHostPort } from './address.ts';
import { formatDuration, parseDuration } from './duration.ts';

/**
 * Floors for durations that cannot be 0. Zero, or a few milliseconds, is
 * never what a user means: a timer of 0 re-arms in a busy loop, and a timeout
 * nothing on a real network can meet fails every attempt. The floors sit
 * below any value a sensible config (or a test) uses; see docs/config.md.
 */
/** A single wait: a connect, probe, query or request timeout; a closing handshake. */
export const MIN_TIMEOUT_MS = 10;
/** Something that repeats or ends a life: intervals, polls, heartbeats, back-offs, ages, idle limits. */
export const MIN_INTERVAL_MS = 50;

const DURATION_TYPE = 'write a duration with its unit, such as 500ms, 30s, 5m or 1h';

function notADuration(text: string, orOff: boolean): string {
  return `"${text}" is not a duration: write it as 500ms, 30s, 5m or 1h${orOff ? ', or "off"' : ''}`;
}

/** A duration written with its unit (`500ms`, `30s`, `5m`, `1h`), as milliseconds; 0 allowed. */
export const duration = z.string({ error: DURATION_TYPE }).transform((text, ctx): number => {
  const ms = parseDuration(text);
  if (ms === undefined) {
    ctx.addIssue({ code: 'custom', message: notADuration(text, false) });
    return z.NEVER;
  }
  return ms;
});

/**
 * A duration of at least `minMs`. `offToo` says the field also takes `off`
 * (as a union beside this), so the message can offer it.
 */
export function durationAtLeast(minMs: number, offToo = false) {
  return z
    .string({ error: `${DURATION_TYPE}${offToo ? ', or "off"' : ''}` })
    .transform((text, ctx): number => {
      const ms = parseDuration(text);
      if (ms === undefined) {
        ctx.addIssue({ code: 'custom', message: notADuration(text, offToo) });
        return z.NEVER;
      }
      if (ms < minMs) {
        ctx.addIssue({
          code: 'custom',
          message: `"${text}" is too short: write at least ${formatDuration(minMs)}${offToo ? ', or "off"' : ''}`,
        });
        return z.NEVER;
      }
      return ms;
    });
}

/** A duration of at least `minMs`, or `off` (also written `0s`), as 0 ms. */
export function durationOrOff(minMs: number) {
  return z.string({ error: `${DURATION_TYPE}, or "off"` }).transform((text, ctx): number => {
    if (text === 'off') return 0;
    const ms = parseDuration(text);
    if (ms === undefined) {
      ctx.addIssue({ code: 'custom', message: notADuration(text, true) });
      return z.NEVER;
    }
    if (ms !== 0 && ms < minMs) {
      ctx.addIssue({
        code: 'custom',
        message: `"${text}" is too short: write at least ${formatDuration(minMs)}, or "off" for none`,
      });
      return z.NEVER;
    }
    return ms;
  });
}

/** A duration field of a min/max pair, as parsed: its name, its value, and its default. */
export interface PairEnd {
  readonly field: string;
  readonly ms: number;
  readonly default: number;
}

/**
 * Refuse a lower bound longer than its upper bound (`backoff` and
 * `maxBackoff`, `baseEjectionTime` and `maxEjectionTime`, …), which would
 * otherwise be silently capped. The error stands at the upper bound, unless
 * that still has its default and the lower one does not: then the user
 * raised the lower one, and that is the line to show. The message gives both
 * values (saying which is a default) and both ways out.
 */
export function refuseLowAboveHigh(ctx: z.RefinementCtx, lo: PairEnd, hi: PairEnd): void {
  if (lo.ms <= hi.ms) return;
  const loDefault = lo.ms === lo.default;
  const hiDefault = hi.ms === hi.default;
  const shown = (end: PairEnd, isDefault: boolean): string =>
    `${end.field} (${formatDuration(end.ms)}${isDefault ? ', the default' : ''})`;
  ctx.addIssue({
    code: 'custom',
    path: [hiDefault && !loDefault ? lo.field : hi.field],
    message: `${shown(lo, loDefault)} is longer than ${shown(hi, hiDefault)}; set ${hi.field} to at least ${formatDuration(lo.ms)}, or ${lo.field} to at most ${formatDuration(hi.ms)}`,
  });
}

/** `host:port`, IPv6 in brackets. */
export const hostPort = z
  .string({ error: 'write an address as host:port, for example 127.0.0.1:7000' })
  .transform((text, ctx): HostPort => {
    const parsed = parseHostPort(text);
    if (typeof parsed === 'string') {
      ctx.addIssue({ code: 'custom', message: parsed });
      return z.NEVER;
    }
    return parsed;
  });

/** An IPv4 or IPv6 address. */
export const ipAddress = z
  .string()
  .refine((s) => isIP(s) !== 0, { error: (issue) => `"${String(issue.input)}" is not an IP address` });
