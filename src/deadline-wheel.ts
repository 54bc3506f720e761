/**
 * A hashed timing wheel over intrusive entries: the set of a service's open
 * connections, each with the time of its next check (heartbeat, max age,
 * close timeout), so that a tick visits only the connections that are due
 * rather than all of them. Thousands of idle connections then cost a tick
 * next to nothing until one of them has something to do.
 *
 * The wheel has SLOTS slots of `slotMs`; a deadline goes into the first slot
 * that starts at or after it, and fires at the tick that reaches that slot:
 * never early, at most one slot late. A deadline more than a revolution
 * away waits in its slot and is passed over (one look per revolution) until
 * its turn. Entries with no deadline (`Infinity`) are kept in a list of their
 * own, so the wheel is also the set of all entries (size, iteration).
 *
 * Entries carry their own links (no node objects, no Map or Set that takes an
 * add and a delete per entry: see docs/architecture.md, "Performance notes").
 */
export interface WheelEntry<T> {
  /**
   * The entry's deadline (ms, same clock as `advance`); -1: none. (Not
   * Infinity: a field that ever held a non-integer is boxed, 16 bytes more
   * per entry.) Start it at -1.
   */
  wheelAt: number;
  /** The slot it is listed in; -1: not in the wheel. */
  wheelSlot: number;
  wheelPrev: T | undefined;
  wheelNext: T | undefined;
}

const SLOTS = 1024;
const MASK = SLOTS - 1;
/** The list of entries without a deadline. */
const PARKED = SLOTS;

export class DeadlineWheel<T extends WheelEntry<T>> {
  #slotMs: number;
  /** SLOTS slot lists, then the parked list. */
  readonly #heads: (T | undefined)[] = new Array<T | undefined>(SLOTS + 1).fill(undefined);
  #size = 0;
  /** Entries without a deadline. */
  #parked = 0;
  /** The last slot number (time / slotMs, not wrapped) that `advance` has fired. */
  #done: number;

  constructor(slotMs: number, now: number) {
    this.#slotMs = slotMs;
    this.#done = Math.floor(now / slotMs);
  }

  get size(): number {
    return this.#size;
  }

  /** Entries with a deadline: while there are any, the owner's tick must run. */
  get timed(): number {
    return this.#size - this.#parked;
  }

  /** The time at which the next slot is due: when the owner's tick should run. */
  nextTickAt(): number {
    return (this.#done + 1) * this.#slotMs;
  }

  /** Add `e`, or move it, to fire at `at` (Infinity: keep it without a deadline). */
  set(e: T, at: number): void {
    if (e.wheelSlot >= 0) this.#unlink(e);
    else this.#size++;
    e.wheelAt = at === Infinity ? -1 : at;
    let slot = PARKED;
    if (at !== Infinity) {
      // The first slot starting at or after `at`, but never one already fired.
      const n = Math.max(Math.ceil(at / this.#slotMs), this.#done + 1);
      slot = n & MASK;
    }
    this.#link(e, slot);
  }

  delete(e: T): void {
    if (e.wheelSlot < 0) return;
    this.#unlink(e);
    e.wheelSlot = -1;
    this.#size--;
  }

  /**
   * Fire every entry due by `now`: each is taken out of the wheel, then
   * `fire(e)` is called. It may put `e` back with a new deadline, or leave it
   * out; it must not set or delete other entries.
   */
  advance(now: number, fire: (e: T) => void): void {
    const target = Math.floor(now / this.#slotMs);
    // A long gap (a stalled process) still looks at each slot once, not once per missed slot.
    let n = Math.max(this.#done + 1, target - MASK);
    for (; n <= target; n++) {
      const slot = n & MASK;
      let e = this.#heads[slot];
      this.#heads[slot] = undefined;
      // Fired from here on: what `fire` puts back goes into a later slot.
      this.#done = n;
      while (e !== undefined) {
        const next = e.wheelNext;
        e.wheelPrev = e.wheelNext = undefined;
        if (e.wheelAt <= now) {
          e.wheelSlot = -1;
          this.#size--;
          fire(e);
        } else {
          // Due in a later revolution: back into the slot it came from.
          this.#link(e, slot);
        }
        e = next;
      }
    }
    if (target > this.#done) this.#done = target;
  }

  /** Give slots a new width (a reload changed the tick); every entry keeps its deadline. */
  resize(slotMs: number, now: number): void {
    if (slotMs === this.#slotMs) return;
    const all = [...this];
    for (const e of all) this.delete(e);
    this.#slotMs = slotMs;
    this.#done = Math.floor(now / slotMs);
    for (const e of all) this.set(e, e.wheelAt < 0 ? Infinity : e.wheelAt);
  }

  *[Symbol.iterator](): IterableIterator<T> {
    for (let slot = 0; slot <= SLOTS; slot++) {
      let e = this.#heads[slot];
      while (e !== undefined) {
        // Read the link first: the caller may move or delete `e`.
        const next = e.wheelNext;
        yield e;
        e = next;
      }
    }
  }

  #link(e: T, slot: number): void {
    if (slot === PARKED) this.#parked++;
    const head = this.#heads[slot];
    e.wheelSlot = slot;
    e.wheelPrev = undefined;
    e.wheelNext = head;
    if (head !== undefined) head.wheelPrev = e;
    this.#heads[slot] = e;
  }

  #unlink(e: T): void {
    const prev = e.wheelPrev;
    const next = e.wheelNext;
    if (prev !== undefined) prev.wheelNext = next;
    else this.#heads[e.wheelSlot] = next;
    if (next !== undefined) next.wheelPrev = prev;
    e.wheelPrev = e.wheelNext = undefined;
    if (e.wheelSlot === PARKED) this.#parked--;
  }
}
