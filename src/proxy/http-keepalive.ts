/**
 * HTTP/2 PING keepalive (gRPC's keepalive, Envoy's connection_keepalive): a
 * PING every interval (± jitter); a session whose ACK does not arrive within
 * the timeout is declared dead, so a peer that vanished without a FIN (frozen
 * process, lost node) is found in seconds rather than TCP's hours.
 */
import type { Clock, Timer } from '../cluster/clock.ts';

/** What the keepalive needs of a session: node:http2's, or holdfast's own server connection (h2/connection.ts). */
export interface Pingable {
  readonly destroyed: boolean;
  readonly closed: boolean;
  /** Send a PING; `cb` runs on its ACK. False when too many are unacknowledged. */
  ping(cb: (err: Error | null) => void): boolean;
  once(event: 'close', listener: () => void): unknown;
}

export interface KeepaliveOptions {
  /** ms between PINGs; 0 = off. */
  intervalMs: number;
  /** ms to wait for the ACK; 0 = wait for ever. */
  timeoutMs: number;
  /** Share of the interval by which each wait is randomised (0.1 = ±10 %). */
  jitter: number;
}

/** Connection-level HTTP/2 flow-control window the proxy opens on every session, both sides. */
export const SESSION_WINDOW = 16 << 20;

/**
 * Randomise `ms` by ± `jitter` (a share), in steps of 1/512 of `ms` (at least
 * 1 ms): Node keeps one timer list per distinct duration, so timers that
 * share a few durations share a few lists, where durations to the
 * millisecond would cost a list (and a leftover map entry) each.
 */
export function jittered(ms: number, jitter: number): number {
  const step = Math.max(1, Math.floor(ms / 512));
  return Math.max(1, Math.round((ms * (1 + jitter * (2 * Math.random() - 1))) / step) * step);
}

/**
 * How often a handler sweeps its client connections for `clientIdle` and
 * `maxConnectionAge` (0 or less: off): within a quarter of the idle timeout
 * and a twentieth of the age, at most a minute apart, at least 10 ms. 0 when
 * both are off (no sweep).
 */
export function sweepEvery(idleMs: number, ageMs: number): number {
  if (idleMs <= 0 && ageMs <= 0) return 0;
  let every = 60_000;
  if (idleMs > 0) every = Math.min(every, idleMs / 4);
  if (ageMs > 0) every = Math.min(every, ageMs / 20);
  return Math.max(10, every);
}

/**
 * Ping `session` until it closes. `onDead` runs once when an ACK is late; the
 * caller decides how to close (it usually destroys the session). Returns a
 * function that stops the keepalive.
 */
export function startKeepalive(
  session: Pingable,
  opts: KeepaliveOptions,
  clock: Clock,
  onDead: () => void,
): () => void {
  if (opts.intervalMs <= 0) return () => {};
  let wait: Timer | undefined;
  let deadline: Timer | undefined;
  let stopped = false;
  const stop = (): void => {
    stopped = true;
    wait?.cancel();
    deadline?.cancel();
  };
  const schedule = (): void => {
    if (stopped) return;
    wait = clock.setTimer(ping, jittered(opts.intervalMs, opts.jitter));
  };
  const ping = (): void => {
    if (stopped || session.destroyed || session.closed) return stop();
    let acked = false;
    const sent = session.ping((err) => {
      acked = true;
      deadline?.cancel();
      if (err === null) schedule();
    });
    if (!sent) return schedule(); // too many unacknowledged pings already: try later
    if (opts.timeoutMs > 0) {
      deadline = clock.setTimer(() => {
        if (acked || stopped) return;
        stop();
        onDead();
      }, opts.timeoutMs);
    }
  };
  session.once('close', stop);
  schedule();
  return stop;
}
