import { getHeapSpaceStatistics } from 'node:v8';
import type { Logger } from 'pino';
import type { Clock, Timer } from './cluster/clock.ts';

/**
 * Give memory back to the system once a burst of new connections is over.
 *
 * Each new connection leaves garbage behind (the accepted net.Socket, the
 * parsed request, handshake strings). Under a burst most of it outlives a
 * young-generation collection and lands in the old generation, whose pages V8
 * then keeps: after 5,000 WebSockets open at once, 36 MiB committed for 20 MiB
 * live. V8's own memory reducer would shrink that when the process goes
 * quiet, but it judges quiet by the allocation rate, and thousands of
 * heartbeating connections keep it from ever deciding so (measured: it waits,
 * re-checks every 8 s and never runs). The resident memory per idle
 * connection then stays ~2 KB above what the connections hold.
 *
 * This does what V8's reducer would: every `checkMs` it looks whether the
 * process is quiet (under `quietCpu` of a core since the last look) and the
 * old generation either holds at least `minSlackBytes` (and a fifth of
 * itself) more than it uses, or has grown by as much since the last
 * reduction (or the start). The second rule is the one a burst meets: V8
 * counts garbage that no full collection has marked yet as used, so right
 * after a burst the heap looks full, not slack. If so, it asks for one
 * memory-reducing full collection, at most once per `minIntervalMs`. That
 * pause (~20–50 ms with 5,000 connections open) lands on a process that has
 * almost nothing to do. The young generation is left out of both rules: it
 * grows and shrinks with the traffic by itself.
 *
 * It needs `gc` from Node's `--expose-gc`, which the `holdfast` launcher
 * passes; without it, it stays off.
 */
export interface MemoryReducerOptions {
  clock: Clock;
  log: Logger;
  /** V8's collector (`globalThis.gc` under `--expose-gc`); undefined: the reducer is off. */
  gc?: GcFunction | undefined;
  checkMs?: number;
  /** Share of one core the process may have used since the last check and still count as quiet. */
  quietCpu?: number;
  minSlackBytes?: number;
  minIntervalMs?: number;
  /** The old generation's committed and used bytes, and CPU time, for tests. */
  heap?: () => { committed: number; used: number };
  cpuMicros?: () => number;
}

/** V8's `gc()` under `--expose-gc`, with the options V8 12+ understands (older ones ignore them). */
export type GcFunction = (options?: { type?: string; execution?: string; flavor?: string }) => unknown;

/** Reducing collections asked for in this process (for metrics). */
let reductions = 0;
export function memoryReductions(): number {
  return reductions;
}

export class MemoryReducer {
  readonly #o: Required<Omit<MemoryReducerOptions, 'gc'>> & { gc: GcFunction | undefined };
  #timer: Timer | undefined;
  #lastCpu = 0;
  #lastAt = 0;
  #lastRun = -Infinity;
  /** Old-generation size after the last reduction (or at the start): growth is measured from here. */
  #baseline = 0;
  /** A reduction was asked for; take the new baseline at the next look, once it has run. */
  #rebase = false;

  constructor(options: MemoryReducerOptions) {
    this.#o = {
      checkMs: 5_000,
      quietCpu: 0.1,
      minSlackBytes: 4 * 1024 * 1024,
      minIntervalMs: 60_000,
      heap: oldGeneration,
      cpuMicros: () => {
        const u = process.cpuUsage();
        return u.user + u.system;
      },
      ...options,
      gc: options.gc,
    };
  }

  /** Start checking (no-op without a `gc`). */
  start(): void {
    if (this.#o.gc === undefined || this.#timer !== undefined) return;
    this.#lastCpu = this.#o.cpuMicros();
    this.#lastAt = this.#o.clock.now();
    this.#baseline = this.#o.heap().committed;
    this.#schedule();
  }

  stop(): void {
    this.#timer?.cancel();
    this.#timer = undefined;
  }

  #schedule(): void {
    this.#timer = this.#o.clock.setTimer(() => {
      this.#check();
      if (this.#timer !== undefined) this.#schedule();
    }, this.#o.checkMs);
  }

  #check(): void {
    const o = this.#o;
    const now = o.clock.now();
    const cpu = o.cpuMicros();
    const busy = (cpu - this.#lastCpu) / 1000 / Math.max(1, now - this.#lastAt);
    this.#lastCpu = cpu;
    this.#lastAt = now;
    const { committed, used } = o.heap();
    if (this.#rebase || committed < this.#baseline) {
      this.#baseline = committed;
      this.#rebase = false;
    }
    if (busy > o.quietCpu || now - this.#lastRun < o.minIntervalMs) return;
    const slack = committed - used;
    const grown = committed - this.#baseline;
    const slackRule = slack >= o.minSlackBytes && slack >= committed / 5;
    const growthRule = grown >= o.minSlackBytes && grown >= this.#baseline / 5;
    if (!slackRule && !growthRule) return;
    this.#lastRun = now;
    this.#rebase = true;
    reductions++;
    // 'last-resort': V8's memory-reducing collection, which also releases
    // its pooled empty pages to the system; 'async' runs it as a task.
    o.gc!({ type: 'major', execution: 'async', flavor: 'last-resort' });
    o.log.debug(
      { committedBytes: committed, usedBytes: used, grownBytes: grown },
      'memory reducer: asked V8 for a memory-reducing collection',
    );
  }
}

/** Committed and used bytes of V8's heap without the young generation. */
function oldGeneration(): { committed: number; used: number } {
  let committed = 0;
  let used = 0;
  for (const space of getHeapSpaceStatistics()) {
    if (space.space_name === 'new_space' || space.space_name === 'new_large_object_space') continue;
    committed += space.space_size;
    used += space.space_used_size;
  }
  return { committed, used };
}

/** The process's `gc` if Node runs with `--expose-gc`. */
export function exposedGc(): GcFunction | undefined {
  const gc = (globalThis as { gc?: unknown }).gc;
  return typeof gc === 'function' ? (gc as GcFunction) : undefined;
}
