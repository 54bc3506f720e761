/**
 * Gradual rebalancing of long-lived connections. After scale-out (or any
 * drift), the most loaded backends ask some of their connections to leave
 * (`leave('rebalance')`: WebSocket close 1012, …) so that their clients
 * reconnect and land on the least loaded ones. Bounded: at most
 * `maxPerSecond` in any second, never a connection the policy holds by
 * affinity, never one younger than `minAge`, and never a move that would
 * make the spread worse.
 */
import type { Logger } from 'pino';
import type { Backend } from './backend.ts';
import type { Clock, Timer } from './clock.ts';
import type { Cluster } from './cluster.ts';
import type { ProxiedConnection } from './connection.ts';

export interface RebalanceSettings {
  /** Allowed deviation from a backend's fair share, as a fraction of it (0.1 = ±10 %). */
  maxSkew: number;
  /** Most connections asked to leave within any one second. */
  maxPerSecond: number;
  /** Connections younger than this are never chosen (they may have just moved). */
  minAge: number;
}

export interface RebalancerOptions {
  clock: Clock;
  log: Logger;
  /** Undefined: rebalancing is off. */
  settings: RebalanceSettings | undefined;
  /**
   * Is this connection held on `backend` by the policy's affinity
   * (persistence, hashing)? Such connections are never moved: the client
   * would come straight back. Default: nothing is held.
   */
  isHeld?: (conn: ProxiedConnection, backend: Backend) => boolean;
  /** How often the spread is looked at (default 100 ms). */
  tickMs?: number;
}

/** The rate window is a little longer than a second, so that observers never count more than maxPerSecond. */
const WINDOW_MS = 1050;

/** One planned move, for tests and logs. */
export interface Move {
  from: Backend;
  to: Backend;
  conn: ProxiedConnection;
}

/**
 * Watches one cluster and moves connections a few at a time. Works only
 * through the Cluster's public model: its backends and their connection sets.
 */
export class Rebalancer {
  readonly #cluster: Cluster;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #isHeld: ((conn: ProxiedConnection, backend: Backend) => boolean) | undefined;
  readonly #tickMs: number;
  #settings: RebalanceSettings | undefined;
  #timer: Timer | undefined;
  #running = false;
  /** Times of recent moves (ring of the last maxPerSecond), for the rate limit. */
  #recent: number[] = [];
  /** Connections already asked to leave and still registered. */
  readonly #leaving = new WeakSet<ProxiedConnection>();
  /** Moves made since start, for metrics and tests. */
  moved = 0;

  constructor(cluster: Cluster, opts: RebalancerOptions) {
    this.#cluster = cluster;
    this.#clock = opts.clock;
    this.#log = opts.log;
    this.#isHeld = opts.isHeld;
    this.#tickMs = opts.tickMs ?? 100;
    this.#settings = opts.settings;
  }

  configure(settings: RebalanceSettings | undefined): void {
    this.#settings = settings;
    if (settings === undefined) this.#cancel();
    else if (this.#running) this.#schedule();
  }

  /** Begin watching (idempotent); the owner calls it while it holds connections. */
  start(): void {
    this.#running = true;
    if (this.#settings !== undefined) this.#schedule();
  }

  /** Stop watching (idempotent). */
  stop(): void {
    this.#running = false;
    this.#cancel();
  }

  #cancel(): void {
    this.#timer?.cancel();
    this.#timer = undefined;
  }

  #schedule(): void {
    if (this.#timer !== undefined) return;
    this.#timer = this.#clock.setTimer(() => {
      this.#timer = undefined;
      if (!this.#running || this.#settings === undefined) return;
      this.step();
      this.#schedule();
    }, this.#tickMs);
  }

  /**
   * Plan and make the moves allowed now. Returns them (also for tests that
   * drive a ManualClock).
   */
  step(): Move[] {
    const s = this.#settings;
    if (s === undefined) return [];
    const now = this.#clock.now();
    const budget = this.#budget(now, s.maxPerSecond);
    if (budget === 0) return [];
    const plan = this.plan(now, budget);
    for (const move of plan) {
      this.#leaving.add(move.conn);
      this.#recent.push(now);
      this.moved++;
    }
    if (this.#recent.length > s.maxPerSecond) this.#recent.splice(0, this.#recent.length - s.maxPerSecond);
    if (plan.length > 0) {
      const from: Record<string, number> = {};
      for (const m of plan) from[m.from.key] = (from[m.from.key] ?? 0) + 1;
      this.#log.info({ service: this.#cluster.name, moves: plan.length, from }, 'rebalancing connections');
    }
    // Ask after planning, so that leave() unregistering synchronously cannot disturb the plan.
    for (const move of plan) move.conn.leave('rebalance');
    return plan;
  }

  /** How many moves the rate limit allows now. */
  #budget(now: number, maxPerSecond: number): number {
    const recent = this.#recent;
    let inWindow = 0;
    for (let i = recent.length - 1; i >= 0 && now - recent[i]! < WINDOW_MS; i--) inWindow++;
    return Math.max(0, maxPerSecond - inWindow);
  }

  /**
   * Choose up to `budget` moves: repeatedly take the most loaded backend
   * (relative to its weight) and the least loaded; move one connection while
   * one of them is outside its fair share ± maxSkew and the move narrows the
   * spread. Each move assumes the client reconnects to the least loaded one.
   */
  plan(now: number, budget: number): Move[] {
    const s = this.#settings;
    if (s === undefined) return [];
    const backends = [...this.#cluster.backends.values()].filter((b) => b.state === 'active' && b.weight > 0);
    if (backends.length < 2) return [];
    const load = new Map<Backend, number>();
    let total = 0;
    let weights = 0;
    for (const b of backends) {
      let n = 0;
      for (const c of b.connections) if (!this.#leaving.has(c)) n++;
      load.set(b, n);
      total += b.connections.size;
      weights += b.weight;
    }
    if (total === 0) return [];
    const share = (b: Backend): number => (total * b.weight) / weights;
    const norm = (b: Backend, n: number): number => n / b.weight;
    const moves: Move[] = [];
    const taken = new Set<ProxiedConnection>();
    while (moves.length < budget) {
      let hi: Backend | undefined;
      let lo: Backend | undefined;
      for (const b of backends) {
        const n = load.get(b)!;
        if (hi === undefined || norm(b, n) > norm(hi, load.get(hi)!)) hi = b;
        if (lo === undefined || norm(b, n) < norm(lo, load.get(lo)!)) lo = b;
      }
      if (hi === undefined || lo === undefined || hi === lo) break;
      const nh = load.get(hi)!;
      const nl = load.get(lo)!;
      const over = nh > Math.floor(share(hi) * (1 + s.maxSkew));
      const under = nl < Math.ceil(share(lo) * (1 - s.maxSkew));
      if (!over && !under) break;
      // Never worse: after the move the donor must still be at least as loaded as the receiver.
      if (norm(hi, nh - 1) < norm(lo, nl + 1)) break;
      const conn = this.#candidate(hi, now, s.minAge, taken);
      if (conn === undefined) {
        // Nothing movable there; stop rather than take from a less loaded backend.
        break;
      }
      taken.add(conn);
      moves.push({ from: hi, to: lo, conn });
      load.set(hi, nh - 1);
      load.set(lo, nl + 1);
    }
    return moves;
  }

  /** The oldest connection of `backend` that may move (it certainly did not just move). */
  #candidate(
    backend: Backend,
    now: number,
    minAge: number,
    taken: Set<ProxiedConnection>,
  ): ProxiedConnection | undefined {
    // Registration order, oldest first.
    for (const c of backend.connections) {
      if (now - c.openedAt < minAge) return undefined;
      if (taken.has(c) || this.#leaving.has(c)) continue;
      if (this.#isHeld?.(c, backend) === true) continue;
      return c;
    }
    return undefined;
  }
}
