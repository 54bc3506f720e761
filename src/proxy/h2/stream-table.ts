/**
 * A connection's open streams by id: open addressing with linear probing
 * over one array, keyed by `id >>> 1` (client stream ids are odd and
 * increasing, so the streams open at a time sit in consecutive slots).
 * Kept at most half full; grows by doubling and never shrinks.
 *
 * Why not a `Map`: a stream opens and closes for every request, and V8
 * rebuilds a Map's hash table as entries churn through it. On a connection
 * that lives for minutes (a gRPC channel does) the Map has reached the old
 * generation, and from then on every rebuilt table is allocated there; the
 * discarded tables still hold the streams they had, which keeps finished
 * requests alive through young-generation collections until they are
 * promoted too. That was most of the old-generation growth under HTTP/2
 * load, and a full collection every second or two. This table allocates only
 * when it grows, and a slot is cleared as its stream closes.
 */
export class StreamTable<T extends { readonly id: number }> {
  #slots: (T | undefined)[];
  #mask: number;
  #size = 0;

  /** `capacity`: slots to start with, a power of two. */
  constructor(capacity = 16) {
    this.#slots = new Array<T | undefined>(capacity).fill(undefined);
    this.#mask = capacity - 1;
  }

  get size(): number {
    return this.#size;
  }

  get(id: number): T | undefined {
    const slots = this.#slots;
    const mask = this.#mask;
    for (let i = (id >>> 1) & mask; ; i = (i + 1) & mask) {
      const s = slots[i];
      if (s === undefined || s.id === id) return s;
    }
  }

  /** Add a stream whose id is not in the table. */
  add(stream: T): void {
    if ((this.#size + 1) * 2 > this.#slots.length) this.#grow();
    this.#place(this.#slots, this.#mask, stream);
    this.#size++;
  }

  /** Remove the stream with this id. False if there is none. */
  delete(id: number): boolean {
    const slots = this.#slots;
    const mask = this.#mask;
    let hole = (id >>> 1) & mask;
    for (;;) {
      const s = slots[hole];
      if (s === undefined) return false;
      if (s.id === id) break;
      hole = (hole + 1) & mask;
    }
    // Close the gap: move back every later entry of the run that may live in
    // the hole (its home slot is not cyclically within (hole, j]), so lookups
    // never meet an empty slot before their entry.
    for (let j = (hole + 1) & mask; ; j = (j + 1) & mask) {
      const s = slots[j];
      if (s === undefined) break;
      const home = (s.id >>> 1) & mask;
      const inRun = hole <= j ? home > hole && home <= j : home > hole || home <= j;
      if (!inRun) {
        slots[hole] = s;
        hole = j;
      }
    }
    slots[hole] = undefined;
    this.#size--;
    return true;
  }

  /** The streams, in no particular order (a copy: the table may change while it is used). */
  values(): T[] {
    const out: T[] = [];
    for (const s of this.#slots) if (s !== undefined) out.push(s);
    return out;
  }

  /** Remove every stream and return them (a connection closing). */
  clear(): T[] {
    const out = this.values();
    this.#slots.fill(undefined);
    this.#size = 0;
    return out;
  }

  #grow(): void {
    const old = this.#slots;
    const slots = new Array<T | undefined>(old.length * 2).fill(undefined);
    const mask = slots.length - 1;
    for (const s of old) if (s !== undefined) this.#place(slots, mask, s);
    this.#slots = slots;
    this.#mask = mask;
  }

  #place(slots: (T | undefined)[], mask: number, stream: T): void {
    let i = (stream.id >>> 1) & mask;
    while (slots[i] !== undefined) i = (i + 1) & mask;
    slots[i] = stream;
  }
}
