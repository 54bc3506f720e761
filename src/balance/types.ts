/**
 * The contract between the live cluster model and the pure balancing policies.
 *
 * A policy is a small stateful object in the grpc-js sense of a balancer that
 * hands out picks: the cluster tells it which targets are eligible whenever that
 * set changes (`setTargets`), and asks it for one target per new connection or
 * request (`pick`). Policies never touch sockets or timers; whatever depends on
 * time reads `ctx.now`.
 */

/** What a policy may know about a backend. `load` is read at pick time. */
export interface Target {
  /** Stable identity of the backend, e.g. `10.0.0.7:8080`. Hash-based policies hash this. */
  readonly key: string;
  /** Configured weight, > 0 for eligible targets. */
  readonly weight: number;
  /**
   * Live load: open connections for connection-level balancing, outstanding
   * requests/streams for request-level balancing. Read at every pick.
   */
  readonly load: number;
  /** Time (ms, same clock as `PickContext.now`) the target became eligible; used by slow start. */
  readonly since: number;
}

/** What a policy may hash or match on. Policies read it; they never touch sockets. */
export interface PickContext {
  /** Current time in ms (injected; `performance.now()`-like or `Date.now()`, consistently). */
  now: number;
  /** Client (remote) address as seen by the listener, without brackets for IPv6. */
  clientIp?: string | undefined;
  clientPort?: number | undefined;
  /** Local address and port the client connected to. */
  localIp?: string | undefined;
  localPort?: number | undefined;
  /** TLS SNI, HTTP host, path, headers (lower-case names), cookies where known. */
  sni?: string | undefined;
  host?: string | undefined;
  path?: string | undefined;
  headers?: Readonly<Record<string, string | string[] | undefined>> | undefined;
}

/** A balancing policy instance for one service. */
export interface Balancer<T extends Target = Target> {
  /** The policy's config name, e.g. `least-connections`. */
  readonly name: string;
  /**
   * Replace the eligible set. Called when membership, weights or eligibility
   * change, not per pick. Implementations precompute here (e.g. Maglev tables).
   */
  setTargets(targets: readonly T[]): void;
  /**
   * Choose a target, or `undefined` when none is eligible. `exclude` holds
   * targets already tried for this connection (refused, timed out, full).
   */
  pick(ctx: PickContext, exclude?: ReadonlySet<T>): T | undefined;
  /**
   * Optional, for policies with affinity (persistence, hashing on a client
   * key): the target a client with this context is bound to right now, read
   * without changing any state. A rebalancer must not move a connection whose
   * target is its affinity: the client's next connection would land there
   * again. Policies without affinity leave it out (no target is held).
   */
  affinity?(ctx: PickContext): T | undefined;
  /**
   * Optional, for policies whose affinity should outlive its timeout while
   * connections are open (persistence): a connection this policy placed for
   * the client in `ctx` is open. Paired with one `release` when it closes.
   */
  hold?(ctx: PickContext): void;
  /** Optional: a connection counted by `hold` closed (`ctx.now` is when). */
  release?(ctx: PickContext): void;
}

/** A source of randomness in [0, 1); injectable so tests are deterministic. */
export type Random = () => number;
