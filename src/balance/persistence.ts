/**
 * Persistence as LVS does it (`ipvsadm -p TIMEOUT -M NETMASK`): the first
 * connection from a client network is balanced by the inner policy, and later
 * ones from the same network go to the same target while the entry is fresh.
 *
 * - The key is the client address under a netmask (IPv4 prefix `netmask`,
 *   IPv6 prefix `netmask6`); IPv4-mapped IPv6 addresses count as IPv4.
 * - An entry lives `timeoutMs` after its last use; every pick that uses it
 *   refreshes it (time comes from `ctx.now`). While connections placed by it
 *   are open (`hold` / `release`), it does not expire: as in LVS, its timer
 *   starts again when the last of them closes. A client holding a long-lived
 *   connection gets its next one on the same target, however long ago the
 *   first was picked.
 * - One table per balancer instance, and a service has one instance shared by
 *   all its listen ports, so the ports share affinity as an LVS firewall-mark
 *   service does.
 * - Entries pointing at a target that left the set (removed, draining,
 *   ejected) are dropped in `setTargets`; an entry whose target is present
 *   but cannot take the connection (excluded, weight 0) is re-balanced and
 *   overwritten.
 * - The table holds at most `maxEntries`; when full the least recently used
 *   entry is evicted and counted.
 *
 * The table is open addressing with linear probing over typed arrays, with a
 * least-recently-used list threaded through them, so a pick allocates nothing
 * (the arrays grow by doubling up to the bound).
 */
import { ConfigError } from '../errors.ts';
import { maskIp, netmaskPrefix, parseIp, type IpFamily } from './hash.ts';
import type { Balancer, PickContext, Target } from './types.ts';

export interface PersistenceOptions {
  /** How long an entry lives after its last use, in ms (> 0). LVS default is 300 000 (5 min). */
  timeoutMs: number;
  /** IPv4 netmask: prefix length 0–32 or a dotted mask (`255.255.255.0`). Default 32 (one address). */
  netmask?: number | string | undefined;
  /** IPv6 prefix length 0–128. Default 128 (one address). */
  netmask6?: number | undefined;
  /** Bound on entries; the least recently used is evicted beyond it. Default 65 536. */
  maxEntries?: number | undefined;
}

export interface PersistenceStats {
  /** Live entries (some may be past their timeout until the next pick expires them). */
  entries: number;
  /** Entries evicted because the table was full. */
  evictions: number;
  /** Entries dropped because their timeout passed. */
  expirations: number;
  /** Entries dropped because their target left the set. */
  dropped: number;
}

const EMPTY = 0;
const MIN_CAPACITY = 64;

function mixWord(h: number, k: number): number {
  k = Math.imul(k, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  h ^= Math.imul(k, 0x1b873593);
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

function finish(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/** A policy wrapper adding LVS-style persistence to any inner policy. */
export class Persistent<T extends Target = Target> implements Balancer<T> {
  readonly name: string;
  readonly inner: Balancer<T>;
  readonly timeoutMs: number;
  readonly prefix4: number;
  readonly prefix6: number;
  readonly maxEntries: number;

  // Open-addressed table; slot i is empty when family[i] === EMPTY.
  #cap = 0;
  #mask = 0;
  #family = new Uint8Array(0);
  #words = new Uint32Array(0); // 4 per slot
  #home = new Int32Array(0); // the slot the key hashes to
  #target = new Int32Array(0); // target slot id
  #used = new Float64Array(0); // last use
  #refs = new Int32Array(0); // open connections placed by the entry
  #prev = new Int32Array(0); // LRU list: head is least recently used
  #next = new Int32Array(0);
  #head = -1;
  #tail = -1;
  #size = 0;
  #evictions = 0;
  #expirations = 0;
  #dropped = 0;

  // Target ids: stable small integers per target key, so entries survive
  // setTargets calls that replace target objects.
  #idByKey = new Map<string, number>();
  #byId: (T | undefined)[] = [];
  #freeIds: number[] = [];

  readonly #ip = new Uint32Array(4);

  constructor(inner: Balancer<T>, options: PersistenceOptions) {
    const { timeoutMs, netmask = 32, netmask6 = 128, maxEntries = 65_536 } = options;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
      throw new ConfigError(`timeout must be a duration > 0, got ${timeoutMs} ms`, {
        field: 'persistence.timeout',
      });
    }
    const p4 = netmaskPrefix(netmask, 32);
    if (p4 < 0) {
      throw new ConfigError(
        `netmask must be a prefix length 0-32 or a dotted mask like 255.255.255.0, got ${String(netmask)}`,
        {
          field: 'persistence.netmask',
        },
      );
    }
    const p6 = netmaskPrefix(netmask6, 128);
    if (p6 < 0) {
      throw new ConfigError(`netmask6 must be a prefix length 0-128, got ${netmask6}`, {
        field: 'persistence.netmask6',
      });
    }
    if (!Number.isSafeInteger(maxEntries) || maxEntries < 1) {
      throw new ConfigError(`maxEntries must be an integer >= 1, got ${maxEntries}`, {
        field: 'persistence.maxEntries',
      });
    }
    this.inner = inner;
    this.name = inner.name;
    this.timeoutMs = timeoutMs;
    this.prefix4 = p4;
    this.prefix6 = p6;
    this.maxEntries = maxEntries;
    this.#allocate(MIN_CAPACITY);
  }

  setTargets(targets: readonly T[]): void {
    this.inner.setTargets(targets);
    const present = new Set<string>();
    for (const t of targets) present.add(t.key);
    let removed = false;
    for (const [key, id] of this.#idByKey) {
      if (present.has(key)) continue;
      this.#byId[id] = undefined;
      this.#idByKey.delete(key);
      this.#freeIds.push(id);
      removed = true;
    }
    if (removed) this.#sweep();
    for (const t of targets) {
      let id = this.#idByKey.get(t.key);
      if (id === undefined) {
        id = this.#freeIds.pop() ?? this.#byId.length;
        this.#idByKey.set(t.key, id);
      }
      this.#byId[id] = t;
    }
  }

  pick(ctx: PickContext, exclude?: ReadonlySet<T>): T | undefined {
    const ip = ctx.clientIp;
    const family = ip === undefined ? 0 : this.#key(ip);
    if (family === 0) return this.inner.pick(ctx, exclude);
    const now = ctx.now;
    this.#expire(now);
    let i = this.#find(family);
    if (i >= 0) {
      const t = this.#byId[this.#target[i]!];
      if (t !== undefined && t.weight > 0 && (exclude === undefined || !exclude.has(t))) {
        this.#used[i] = now;
        this.#toTail(i);
        return t;
      }
    }
    const chosen = this.inner.pick(ctx, exclude);
    if (chosen === undefined) return undefined;
    const id = this.#idByKey.get(chosen.key);
    if (id === undefined) return chosen; // not from the set we were given: do not remember it
    if (i < 0) {
      if (this.#size >= this.maxEntries) {
        this.#remove(this.#head);
        this.#evictions++;
      } else if (this.#size + 1 > this.#cap >>> 1) {
        this.#allocate(this.#cap * 2);
      }
      i = this.#insert(family);
    }
    this.#target[i] = id;
    this.#used[i] = now;
    this.#toTail(i);
    return chosen;
  }

  /**
   * The target this client is held on by a fresh persistence entry, if any
   * (without refreshing it). A rebalancer must not move such a connection:
   * the client's next connection would come back to the same target.
   */
  affinity(ctx: PickContext): T | undefined {
    const ip = ctx.clientIp;
    if (ip === undefined) return undefined;
    const family = this.#key(ip);
    if (family === 0) return undefined;
    const i = this.#find(family);
    if (i < 0 || (this.#refs[i] === 0 && !(ctx.now - this.#used[i]! < this.timeoutMs))) return undefined;
    const t = this.#byId[this.#target[i]!];
    return t !== undefined && t.weight > 0 ? t : undefined;
  }

  /** A connection of this client was placed (by `pick`) and is open: its entry stays while it is. */
  hold(ctx: PickContext): void {
    const i = this.#slotOf(ctx);
    if (i >= 0) this.#refs[i]!++;
  }

  /** A connection `hold` counted has closed; the last one to close restarts the entry's timer. */
  release(ctx: PickContext): void {
    const i = this.#slotOf(ctx);
    if (i < 0 || this.#refs[i]! === 0) return;
    if (--this.#refs[i]! === 0) {
      this.#used[i] = ctx.now;
      this.#toTail(i);
    }
  }

  #slotOf(ctx: PickContext): number {
    const ip = ctx.clientIp;
    const family = ip === undefined ? 0 : this.#key(ip);
    return family === 0 ? -1 : this.#find(family);
  }

  /** Whether `target` holds this client by persistence (see {@link affinity}). */
  holds(ctx: PickContext, target: T): boolean {
    const t = this.affinity(ctx);
    return t !== undefined && t.key === target.key;
  }

  /** Forget the entry of the client in `ctx` (e.g. an operator moving a client). */
  forget(ctx: PickContext): boolean {
    if (ctx.clientIp === undefined) return false;
    const family = this.#key(ctx.clientIp);
    const i = family === 0 ? -1 : this.#find(family);
    if (i >= 0) this.#remove(i);
    return i >= 0;
  }

  stats(): PersistenceStats {
    return {
      entries: this.#size,
      evictions: this.#evictions,
      expirations: this.#expirations,
      dropped: this.#dropped,
    };
  }

  // --- table internals -----------------------------------------------------

  /** Parse and mask the address into #ip; returns the family. */
  #key(ip: string): IpFamily {
    const family = parseIp(ip, this.#ip);
    if (family === 4) {
      maskIp(this.#ip, 4, this.prefix4);
      this.#ip[1] = 0;
      this.#ip[2] = 0;
      this.#ip[3] = 0;
    } else if (family === 6) {
      maskIp(this.#ip, 6, this.prefix6);
    }
    return family;
  }

  #hash(family: number): number {
    const w = this.#ip;
    let h = mixWord(family, w[0]!);
    if (family === 6) h = mixWord(mixWord(mixWord(h, w[1]!), w[2]!), w[3]!);
    return finish(h) & this.#mask;
  }

  #find(family: number): number {
    const w = this.#ip;
    const fam = this.#family;
    const words = this.#words;
    const mask = this.#mask;
    for (let i = this.#hash(family); ; i = (i + 1) & mask) {
      const f = fam[i]!;
      if (f === EMPTY) return -1;
      const o = i << 2;
      if (
        f === family &&
        words[o] === w[0] &&
        words[o + 1] === w[1] &&
        words[o + 2] === w[2] &&
        words[o + 3] === w[3]
      ) {
        return i;
      }
    }
  }

  /** Insert the key in #ip (known absent); returns its slot, unlinked. */
  #insert(family: IpFamily): number {
    const home = this.#hash(family);
    let i = home;
    while (this.#family[i] !== EMPTY) i = (i + 1) & this.#mask;
    this.#family[i] = family;
    const o = i << 2;
    this.#words[o] = this.#ip[0]!;
    this.#words[o + 1] = this.#ip[1]!;
    this.#words[o + 2] = this.#ip[2]!;
    this.#words[o + 3] = this.#ip[3]!;
    this.#home[i] = home;
    this.#refs[i] = 0;
    this.#prev[i] = -1;
    this.#next[i] = -1;
    this.#size++;
    return i;
  }

  #unlink(i: number): void {
    const p = this.#prev[i]!;
    const n = this.#next[i]!;
    if (p >= 0) this.#next[p] = n;
    else if (this.#head === i) this.#head = n;
    if (n >= 0) this.#prev[n] = p;
    else if (this.#tail === i) this.#tail = p;
    this.#prev[i] = -1;
    this.#next[i] = -1;
  }

  #toTail(i: number): void {
    if (this.#tail === i) return;
    this.#unlink(i);
    this.#prev[i] = this.#tail;
    this.#next[i] = -1;
    if (this.#tail >= 0) this.#next[this.#tail] = i;
    this.#tail = i;
    if (this.#head < 0) this.#head = i;
  }

  /** Delete slot i, shifting later entries of its probe run back (no tombstones). */
  #remove(i: number): void {
    this.#unlink(i);
    this.#family[i] = EMPTY;
    this.#size--;
    const mask = this.#mask;
    let hole = i;
    for (let j = (i + 1) & mask; this.#family[j] !== EMPTY; j = (j + 1) & mask) {
      const k = this.#home[j]!;
      // Entry j may move into the hole unless its home lies cyclically in (hole, j].
      const stays = hole <= j ? hole < k && k <= j : hole < k || k <= j;
      if (stays) continue;
      this.#move(j, hole);
      hole = j;
    }
  }

  #move(from: number, to: number): void {
    this.#family[to] = this.#family[from]!;
    this.#family[from] = EMPTY;
    const a = from << 2;
    const b = to << 2;
    this.#words[b] = this.#words[a]!;
    this.#words[b + 1] = this.#words[a + 1]!;
    this.#words[b + 2] = this.#words[a + 2]!;
    this.#words[b + 3] = this.#words[a + 3]!;
    this.#home[to] = this.#home[from]!;
    this.#target[to] = this.#target[from]!;
    this.#used[to] = this.#used[from]!;
    this.#refs[to] = this.#refs[from]!;
    const p = this.#prev[from]!;
    const n = this.#next[from]!;
    this.#prev[to] = p;
    this.#next[to] = n;
    if (p >= 0) this.#next[p] = to;
    else this.#head = to;
    if (n >= 0) this.#prev[n] = to;
    else this.#tail = to;
  }

  #expire(now: number): void {
    const timeout = this.timeoutMs;
    while (this.#head >= 0 && now - this.#used[this.#head]! >= timeout) {
      const i = this.#head;
      if (this.#refs[i]! > 0) {
        // Connections it placed are open: not expired; looked at again a timeout later.
        this.#used[i] = now;
        this.#toTail(i);
        continue;
      }
      this.#remove(i);
      this.#expirations++;
    }
  }

  /** Drop every entry whose target left the set. */
  #sweep(): void {
    const byId = this.#byId;
    for (let i = 0; i < this.#cap; i++) {
      while (this.#family[i] !== EMPTY && byId[this.#target[i]!] === undefined) {
        this.#remove(i);
        this.#dropped++;
      }
    }
  }

  /** (Re)allocate at `capacity` slots, re-inserting entries in LRU order. */
  #allocate(capacity: number): void {
    const old = {
      family: this.#family,
      words: this.#words,
      target: this.#target,
      used: this.#used,
      refs: this.#refs,
      next: this.#next,
      head: this.#head,
    };
    const key0 = this.#ip[0]!;
    const key1 = this.#ip[1]!;
    const key2 = this.#ip[2]!;
    const key3 = this.#ip[3]!;
    this.#cap = capacity;
    this.#mask = capacity - 1;
    this.#family = new Uint8Array(capacity);
    this.#words = new Uint32Array(capacity * 4);
    this.#home = new Int32Array(capacity);
    this.#target = new Int32Array(capacity);
    this.#used = new Float64Array(capacity);
    this.#refs = new Int32Array(capacity);
    this.#prev = new Int32Array(capacity);
    this.#next = new Int32Array(capacity);
    this.#head = -1;
    this.#tail = -1;
    this.#size = 0;
    for (let j = old.head; j >= 0; j = old.next[j]!) {
      const o = j << 2;
      this.#ip[0] = old.words[o]!;
      this.#ip[1] = old.words[o + 1]!;
      this.#ip[2] = old.words[o + 2]!;
      this.#ip[3] = old.words[o + 3]!;
      const i = this.#insert(old.family[j]! as IpFamily);
      this.#target[i] = old.target[j]!;
      this.#used[i] = old.used[j]!;
      this.#refs[i] = old.refs[j]!;
      this.#toTail(i);
    }
    this.#ip[0] = key0;
    this.#ip[1] = key1;
    this.#ip[2] = key2;
    this.#ip[3] = key3;
  }
}
