import type { Clock, Timer } from './clock.ts';
import type { LeaveReason, ProxiedConnection } from './connection.ts';

export interface DrainOptions {
  clock: Clock;
  reason: LeaveReason;
  /** Total time allowed; whatever is still open then is destroyed. */
  timeoutMs: number;
  /**
   * Share of the timeout over which `leave()` calls are spread (default 0.5),
   * so peers do not all reconnect at once and each keeps at least the rest of
   * the timeout to close gracefully.
   */
  spread?: number;
  /** Still registered? Connections that closed meanwhile are skipped. */
  isOpen: (conn: ProxiedConnection) => boolean;
}

/** Smallest gap between two batches of leave() calls. */
const MIN_TICK_MS = 20;

/**
 * Ask a set of connections to leave, spread evenly over part of a timeout,
 * then destroy the ones still open when the timeout passes. One timer at a
 * time, whatever the number of connections.
 */
export class Drain {
  readonly #conns: ProxiedConnection[];
  readonly #opts: DrainOptions;
  readonly #start: number;
  readonly #window: number;
  #next = 0;
  #timer: Timer | undefined;
  #deadline: Timer | undefined;
  #cancelled = false;

  constructor(conns: Iterable<ProxiedConnection>, opts: DrainOptions) {
    this.#conns = [...conns];
    this.#opts = opts;
    this.#start = opts.clock.now();
    this.#window = Math.max(0, opts.timeoutMs * (opts.spread ?? 0.5));
    this.#deadline = opts.clock.setTimer(() => this.#expire(), opts.timeoutMs);
    this.#tick();
  }

  /** Stop asking (e.g. the backend came back). Connections already asked stay asked. */
  cancel(): void {
    this.#cancelled = true;
    this.#timer?.cancel();
    this.#deadline?.cancel();
  }

  #tick(): void {
    this.#timer = undefined;
    if (this.#cancelled) return;
    const n = this.#conns.length;
    const elapsed = this.#opts.clock.now() - this.#start;
    const due = this.#window <= 0 ? n : Math.min(n, Math.ceil((n * Math.max(elapsed, 1)) / this.#window));
    while (this.#next < due) {
      const conn = this.#conns[this.#next++]!;
      if (this.#opts.isOpen(conn)) conn.leave(this.#opts.reason);
    }
    if (this.#next < n) {
      const gap = Math.max(MIN_TICK_MS, this.#window / n);
      this.#timer = this.#opts.clock.setTimer(() => this.#tick(), gap);
    }
  }

  #expire(): void {
    this.#timer?.cancel();
    this.#deadline = undefined;
    if (this.#cancelled) return;
    for (const conn of this.#conns) if (this.#opts.isOpen(conn)) conn.destroy();
  }
}
