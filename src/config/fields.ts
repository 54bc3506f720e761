/**
 * Value types shared by every part of the config schema: durations with a
 * unit, `host:port` addresses, IP addresses. One definition each, so every
 * field of a kind takes the same spellings and gives the same error.
 */
import { isIP } from 'node:net';
import { z } from 'zod';
import { type HostPort, parseHostPort } from './address.ts';
import { parseDuration } from './duration.ts';

/** A duration written with its unit (`500ms`, `30s`, `5m`, `1h`), as milliseconds. */
export const duration = z
  .string({ error: 'write a duration with its unit, such as 500ms, 30s, 5m or 1h' })
  .transform((text, ctx): number => {
    const ms = parseDuration(text);
    if (ms === undefined) {
      ctx.addIssue({
        code: 'custom',
        message: `"${text}" is not a duration: write it as 500ms, 30s, 5m or 1h`,
      });
      return z.NEVER;
    }
    return ms;
  });

/** A duration longer than zero. */
export const positiveDuration = z
  .string({ error: 'write a duration with its unit, such as 500ms, 30s, 5m or 1h' })
  .transform((text, ctx): number => {
    const ms = parseDuration(text);
    if (ms === undefined || ms <= 0) {
      ctx.addIssue({
        code: 'custom',
        message: `"${text}" is not a duration > 0: write it as 500ms, 30s, 5m or 1h`,
      });
      return z.NEVER;
    }
    return ms;
  });

/** A duration, or `off` (0 ms). */
export const durationOrOff = z
  .string({ error: 'write a duration with its unit, such as 500ms, 30s, 5m or 1h, or "off"' })
  .transform((text, ctx): number => {
    if (text === 'off') return 0;
    const ms = parseDuration(text);
    if (ms === undefined) {
      ctx.addIssue({
        code: 'custom',
        message: `"${text}" is not a duration: write it as 500ms, 30s, 5m or 1h, or "off"`,
      });
      return z.NEVER;
    }
    return ms;
  });

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
