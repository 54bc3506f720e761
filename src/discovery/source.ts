import type { Logger } from 'pino';
import type { BackendSpec } from '../cluster/backend.ts';
import type { Clock } from '../cluster/clock.ts';

/** Which kind of source feeds a service's backends. */
export type SourceKind = 'static' | 'file' | 'dns' | 'kubernetes';

/** What a source is given: where to send endpoint sets, and how to report trouble. */
export interface SourceContext {
  readonly service: string;
  readonly clock: Clock;
  readonly log: Logger;
  /**
   * The full endpoint set as the source now sees it, with why it was read
   * (e.g. `file changed`, `dns answer`, `EndpointSlice MODIFIED`). Sending the
   * same set again is harmless: only changes reach the cluster.
   */
  emit(specs: readonly BackendSpec[], reason: string): void;
  /**
   * A lookup, read or watch failed; the last good set stays. `reason` is a short
   * stable word for metrics (`timeout`, `nxdomain`, `parse`, `gone`, …).
   */
  error(reason: string, message: string): void;
}

/**
 * An endpoint source: static, file, dns or kubernetes. Started with its
 * service, stopped when the service is removed, its config changes or the
 * gateway shuts down. After stop() it emits nothing.
 */
export interface DiscoverySource {
  readonly kind: SourceKind;
  start(): void;
  stop(): void;
}

/** Exponential back-off with full jitter: a random wait in [base, min(max, base·2^n)]. */
export function backoffDelay(
  attempt: number,
  baseMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return baseMs + random() * Math.max(0, cap - baseMs);
}
