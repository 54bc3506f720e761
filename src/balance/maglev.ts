/**
 * Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
 * Software Network Load Balancer", NSDI 2016, §3.4), weighted by turn
 * frequency.
 *
 * Each backend has a permutation of the table's M slots given by an offset and
 * a skip derived from two hashes of its key; backends take turns claiming the
 * next free slot of their own permutation until the table is full. A backend
 * of weight w takes a turn in iteration i when i·w reaches its running target
 * (which then grows by the largest weight), so the heaviest backends take a
 * turn every iteration and the others proportionally less often.
 *
 * Determinism: the table depends only on the set of (key, weight) pairs, the
 * table size and {@link MAGLEV_FORMAT}; backends are sorted by key (UTF-16
 * code unit order, never locale order) before building, hashes are murmur3 of
 * the key's UTF-8 bytes with fixed seeds, and all arithmetic is exact integer
 * arithmetic (weights that are not integers go through IEEE doubles, which are
 * deterministic too). The same input gives the same table on every machine
 * and Node version; golden vectors in the tests pin it.
 */
import { ConfigError, HoldfastError } from '../errors.ts';
import { hashFiveTuple31, hashSourceIp31, hashString31, hashStrings31 } from './hash.ts';
import type { Balancer, PickContext, Target } from './types.ts';

/**
 * Version of the permutation's inputs: the backend key format (the Target key
 * hashed as UTF-8, e.g. `10.0.0.7:8080` or `[2001:db8::7]:8080`) and the two
 * seeds. Any change to either must bump the version, because tables built by
 * different versions disagree (replicas would send the same flow to
 * different backends).
 */
export const MAGLEV_FORMAT = { version: 1, offsetSeed: 0x686f6c64, skipSeed: 0x66617374 } as const;

/** Default table size: prime, about 100 entries per backend for up to ~650 backends. */
export const MAGLEV_DEFAULT_TABLE_SIZE = 65537;
/** Table size for large backend sets (build it off the event loop: see `maglev-worker.ts`). */
export const MAGLEV_LARGE_TABLE_SIZE = 655373;
/** Largest accepted table size. */
export const MAGLEV_MAX_TABLE_SIZE = 16_777_213;

/** Table size is not a prime in range. */
export class MaglevTableSizeError extends HoldfastError {
  readonly size: number;
  constructor(size: number) {
    super(
      'HOLDFAST_ERR_MAGLEV_TABLE_SIZE',
      `maglev table size ${size} must be a prime between 3 and ${MAGLEV_MAX_TABLE_SIZE} ` +
        `(use ${MAGLEV_DEFAULT_TABLE_SIZE}, or ${MAGLEV_LARGE_TABLE_SIZE} for more than a few hundred backends)`,
    );
    this.size = size;
  }
}

/** The backend set cannot be put in a table (duplicate keys, bad weights, more backends than slots). */
export class MaglevBackendsError extends HoldfastError {
  constructor(message: string) {
    super('HOLDFAST_ERR_MAGLEV_BACKENDS', message);
  }
}

/** True when `n` is a prime (trial division; table sizes are small enough). */
export function isPrime(n: number): boolean {
  if (!Number.isSafeInteger(n) || n < 2) return false;
  if (n % 2 === 0) return n === 2;
  for (let d = 3; d * d <= n; d += 2) if (n % d === 0) return false;
  return true;
}

/** Throws {@link MaglevTableSizeError} unless `m` is a usable table size. */
export function checkTableSize(m: number): void {
  if (!isPrime(m) || m < 3 || m > MAGLEV_MAX_TABLE_SIZE) throw new MaglevTableSizeError(m);
}

/** What the table is built from. */
export interface MaglevBackend {
  readonly key: string;
  readonly weight: number;
}

/** A built lookup table. `entries[slot]` is an index into `keys`. */
export interface MaglevTable {
  /** {@link MAGLEV_FORMAT}.version the table was built with. */
  readonly version: number;
  /** Table size (prime). */
  readonly m: number;
  /** Keys of the backends in the table (weight > 0), sorted. */
  readonly keys: readonly string[];
  /** Weights, parallel to `keys`. */
  readonly weights: Float64Array<ArrayBuffer>;
  /** Backend index per slot; -1 only when there are no backends. */
  readonly entries: Int32Array<ArrayBuffer>;
  /** Number of slots held by each backend, parallel to `keys`. */
  readonly counts: Uint32Array<ArrayBuffer>;
}

/** The offset and skip of a backend's permutation: slot j of its preference list is (offset + j·skip) mod m. */
export function maglevPermutation(key: string, m: number): { offset: number; skip: number } {
  return {
    offset: hashString31(key, MAGLEV_FORMAT.offsetSeed) % m,
    skip: (hashString31(key, MAGLEV_FORMAT.skipSeed) % (m - 1)) + 1,
  };
}

function compareKeys(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Sort, validate and drop weight-0 backends: the canonical input of a build.
 * Exported so that an off-thread builder can ship exactly this.
 */
export function canonicalBackends(backends: readonly MaglevBackend[]): MaglevBackend[] {
  const out: MaglevBackend[] = [];
  for (const b of backends) {
    if (!Number.isFinite(b.weight) || b.weight < 0) {
      throw new MaglevBackendsError(
        `backend "${b.key}" has weight ${b.weight}; weights must be finite and >= 0`,
      );
    }
    if (b.weight > 0) out.push({ key: b.key, weight: b.weight });
  }
  out.sort((a, b) => compareKeys(a.key, b.key));
  for (let i = 1; i < out.length; i++) {
    if (out[i]!.key === out[i - 1]!.key) {
      throw new MaglevBackendsError(`backend key "${out[i]!.key}" appears twice; keys must be unique`);
    }
  }
  return out;
}

/**
 * Build a table. Deterministic for the same set of backends in any order.
 * Cost is about M·ln M probes (a bitset keeps the probes in cache) plus
 * O(M) per weighted iteration; 65537 slots take a few ms.
 */
export function buildMaglevTable(
  backends: readonly MaglevBackend[],
  m = MAGLEV_DEFAULT_TABLE_SIZE,
): MaglevTable {
  checkTableSize(m);
  const sorted = canonicalBackends(backends);
  const n = sorted.length;
  if (n > m) throw new MaglevBackendsError(`${n} backends do not fit a maglev table of ${m} slots`);
  const keys = sorted.map((b) => b.key);
  const weights = Float64Array.from(sorted, (b) => b.weight);
  const entries = new Int32Array(m);
  const counts = new Uint32Array(n);
  if (n === 0) {
    entries.fill(-1);
    return { version: MAGLEV_FORMAT.version, m, keys, weights, entries, counts };
  }

  const offsets = new Int32Array(n);
  const skips = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    offsets[i] = hashString31(keys[i]!, MAGLEV_FORMAT.offsetSeed) % m;
    skips[i] = (hashString31(keys[i]!, MAGLEV_FORMAT.skipSeed) % (m - 1)) + 1;
  }
  populateMaglev(offsets, skips, weights, m, entries, counts);
  return { version: MAGLEV_FORMAT.version, m, keys, weights, entries, counts };
}

/**
 * Population by turns (the paper's Pseudocode 1, weighted): backend i's
 * permutation is offsets[i] + j·skips[i] (mod m). Fills `entries` (length m)
 * and `counts` (length n). Exposed for tests against the paper's example.
 */
export function populateMaglev(
  offsets: Int32Array,
  skips: Int32Array,
  weights: Float64Array,
  m: number,
  entries: Int32Array,
  counts: Uint32Array,
): void {
  const n = offsets.length;
  const next = Int32Array.from(offsets); // next position in each backend's permutation
  const due = new Float64Array(n); // running target for weighted turns
  let maxWeight = 0;
  for (let i = 0; i < n; i++) if (weights[i]! > maxWeight) maxWeight = weights[i]!;
  due.fill(maxWeight);
  counts.fill(0);

  const taken = new Int32Array((m + 31) >>> 5); // bitset of filled slots
  let filled = 0;
  outer: for (let iteration = 1; ; iteration++) {
    for (let i = 0; i < n; i++) {
      if (iteration * weights[i]! < due[i]!) continue;
      due[i]! += maxWeight;
      let c = next[i]!;
      const s = skips[i]!;
      while ((taken[c >>> 5]! & (1 << (c & 31))) !== 0) {
        c += s;
        if (c >= m) c -= m;
      }
      taken[c >>> 5]! |= 1 << (c & 31);
      entries[c] = i;
      counts[i]!++;
      c += s;
      next[i] = c >= m ? c - m : c;
      if (++filled === m) break outer;
    }
  }

  // A backend whose share is under one slot may have had no turn before the
  // table filled. Give it the first slot of its permutation whose holder has
  // more than one slot, so every backend with weight > 0 is reachable.
  for (let i = 0; i < n; i++) {
    if (counts[i] !== 0) continue;
    let c = offsets[i]!;
    const s = skips[i]!;
    while (counts[entries[c]!]! <= 1) {
      c += s;
      if (c >= m) c -= m;
    }
    counts[entries[c]!]!--;
    entries[c] = i;
    counts[i] = 1;
  }
}

/** Fraction of slots whose backend key differs between two tables of the same size. */
export function tableDisruption(a: MaglevTable, b: MaglevTable): number {
  if (a.m !== b.m) throw new RangeError('tables of different sizes');
  let changed = 0;
  for (let s = 0; s < a.m; s++) {
    const ka = a.keys[a.entries[s]!];
    const kb = b.keys[b.entries[s]!];
    if (ka !== kb) changed++;
  }
  return changed / a.m;
}

// ---------------------------------------------------------------------------
// The policy

/**
 * What a Maglev pick hashes:
 * - `five-tuple`: client address and port, local address and port, TCP. Every
 *   node computing it agrees (path changes behind ECMP keep their backend).
 * - `source-ip`: the client address under a netmask: stateless persistence,
 *   replicas agree without sharing anything.
 * - `header:NAME`, `cookie:NAME`: an HTTP header or cookie value (HTTP modes).
 * - `sni`: the TLS server name.
 * When the chosen key is absent from a pick, the 5-tuple is used, and without a
 * client address a rotating counter spreads picks.
 */
export type HashKey = 'five-tuple' | 'source-ip' | 'sni' | `header:${string}` | `cookie:${string}`;

/** Throws a HoldfastError for an unknown hash key; returns it otherwise. */
export function parseHashKey(value: string): HashKey {
  if (value === 'five-tuple' || value === 'source-ip' || value === 'sni') return value;
  const m = /^(header|cookie):([!#$%&'*+.^_`|~0-9A-Za-z-]+)$/.exec(value);
  if (m !== null) return `${m[1] as 'header' | 'cookie'}:${m[2]!}`;
  throw new HoldfastError(
    'HOLDFAST_ERR_HASH_KEY',
    `unknown hashKey "${value}": use five-tuple, source-ip, sni, header:NAME or cookie:NAME`,
  );
}

export interface MaglevOptions {
  /** Table size, a prime. Default {@link MAGLEV_DEFAULT_TABLE_SIZE}. */
  tableSize?: number | undefined;
  /** What to hash. Default `five-tuple`. */
  hashKey?: HashKey | undefined;
  /** IPv4 prefix length applied to the client address for `source-ip`. Default 32. */
  netmask?: number | undefined;
  /** IPv6 prefix length applied to the client address for `source-ip`. Default 128. */
  netmask6?: number | undefined;
}

const KEY_FIVE_TUPLE = 0;
const KEY_SOURCE_IP = 1;
const KEY_HEADER = 2;
const KEY_COOKIE = 3;
const KEY_SNI = 4;

/** The seed for lookups (distinct from the permutation seeds). */
const LOOKUP_SEED = 0x6d61676c;

interface MaglevState<T> {
  readonly table: MaglevTable;
  /** Target per table index (parallel to `table.keys`). */
  readonly byIndex: readonly T[];
}

/** A staged off-thread update, see {@link MaglevBalancer.stage}. */
export interface MaglevStaged<T> {
  readonly generation: number;
  readonly targets: readonly T[];
  readonly backends: readonly MaglevBackend[];
  readonly m: number;
}

/**
 * The Maglev policy. `setTargets` builds synchronously (fine at the default
 * size); for large tables use `stage` + an off-thread build + `commit` (see
 * `buildMaglevTableOffThread` in `maglev-worker.ts`) — picks keep using the old
 * table until the new one is swapped in as a single assignment.
 */
export class MaglevBalancer<T extends Target = Target> implements Balancer<T> {
  readonly name = 'maglev';
  readonly m: number;
  readonly hashKey: HashKey;
  readonly #keyKind: number;
  readonly #keyName: string;
  readonly #prefix4: number;
  readonly #prefix6: number;
  #state: MaglevState<T> | undefined;
  #generation = 0;
  #counter = 0;

  constructor(options: MaglevOptions = {}) {
    this.m = options.tableSize ?? MAGLEV_DEFAULT_TABLE_SIZE;
    checkTableSize(this.m);
    this.hashKey = parseHashKey(options.hashKey ?? 'five-tuple');
    this.#prefix4 = options.netmask ?? 32;
    this.#prefix6 = options.netmask6 ?? 128;
    if (!Number.isInteger(this.#prefix4) || this.#prefix4 < 0 || this.#prefix4 > 32) {
      throw new ConfigError(`netmask must be a prefix length 0-32, got ${this.#prefix4}`, {
        field: 'netmask',
      });
    }
    if (!Number.isInteger(this.#prefix6) || this.#prefix6 < 0 || this.#prefix6 > 128) {
      throw new ConfigError(`netmask6 must be a prefix length 0-128, got ${this.#prefix6}`, {
        field: 'netmask6',
      });
    }
    const kind = this.hashKey;
    if (kind === 'five-tuple') this.#keyKind = KEY_FIVE_TUPLE;
    else if (kind === 'source-ip') this.#keyKind = KEY_SOURCE_IP;
    else if (kind === 'sni') this.#keyKind = KEY_SNI;
    else if (kind.startsWith('header:')) this.#keyKind = KEY_HEADER;
    else this.#keyKind = KEY_COOKIE;
    this.#keyName = kind.includes(':') ? kind.slice(kind.indexOf(':') + 1).toLowerCase() : '';
    if (this.#keyKind === KEY_COOKIE) this.#keyName = kind.slice(7); // cookie names are case-sensitive
  }

  setTargets(targets: readonly T[]): void {
    const staged = this.stage(targets);
    this.commit(staged, buildMaglevTable(staged.backends, this.m));
  }

  /** Prepare an update to be built elsewhere. Any later stage or setTargets supersedes it. */
  stage(targets: readonly T[]): MaglevStaged<T> {
    return {
      generation: ++this.#generation,
      targets,
      backends: canonicalBackends(targets),
      m: this.m,
    };
  }

  /**
   * Swap in a table built for `staged`. Returns false (and changes nothing)
   * when a newer update was staged since, or the table does not match.
   */
  commit(staged: MaglevStaged<T>, table: MaglevTable): boolean {
    if (staged.generation !== this.#generation) return false;
    if (table.m !== this.m || table.version !== MAGLEV_FORMAT.version) return false;
    const byKey = new Map<string, T>();
    for (const t of staged.targets) if (t.weight > 0) byKey.set(t.key, t);
    if (byKey.size !== table.keys.length) return false;
    const byIndex: T[] = [];
    for (const key of table.keys) {
      const t = byKey.get(key);
      if (t === undefined) return false;
      byIndex.push(t);
    }
    this.#state = { table, byIndex };
    return true;
  }

  /** The table in use, if any. */
  get table(): MaglevTable | undefined {
    return this.#state?.table;
  }

  /** Slots held per backend key. */
  entryCounts(): Map<string, number> {
    const out = new Map<string, number>();
    const table = this.#state?.table;
    if (table !== undefined) table.keys.forEach((k, i) => out.set(k, table.counts[i]!));
    return out;
  }

  /** The 31-bit hash a pick with `ctx` uses. */
  hash(ctx: PickContext): number {
    const h = this.#keyHash(ctx);
    if (h >= 0) return h;
    return ctx.clientIp !== undefined
      ? hashFiveTuple31(
          ctx.clientIp,
          ctx.clientPort ?? 0,
          ctx.localIp ?? '',
          ctx.localPort ?? 0,
          6,
          LOOKUP_SEED,
        )
      : (Math.imul(++this.#counter, 0x9e3779b1) >>> 1) & 0x7fffffff;
  }

  /** Hash of the configured key when present in `ctx`, else -1. */
  #keyHash(ctx: PickContext): number {
    let h = -1;
    switch (this.#keyKind) {
      case KEY_FIVE_TUPLE:
        if (ctx.clientIp !== undefined) {
          h = hashFiveTuple31(
            ctx.clientIp,
            ctx.clientPort ?? 0,
            ctx.localIp ?? '',
            ctx.localPort ?? 0,
            6,
            LOOKUP_SEED,
          );
        }
        break;
      case KEY_SOURCE_IP:
        if (ctx.clientIp !== undefined)
          h = hashSourceIp31(ctx.clientIp, this.#prefix4, this.#prefix6, LOOKUP_SEED);
        break;
      case KEY_HEADER: {
        // Own fields only: header maps are plain objects, and `header:constructor` must not read Object.prototype.
        const hs = ctx.headers;
        const v = hs !== undefined && Object.hasOwn(hs, this.#keyName) ? hs[this.#keyName] : undefined;
        if (typeof v === 'string') h = hashString31(v, LOOKUP_SEED);
        else if (v !== undefined && v.length > 0) h = hashStrings31(v, LOOKUP_SEED);
        break;
      }
      case KEY_COOKIE:
        h = hashCookie31(ctx.headers?.cookie, this.#keyName, LOOKUP_SEED);
        break;
      case KEY_SNI:
        if (ctx.sni !== undefined) h = hashString31(ctx.sni, LOOKUP_SEED);
        break;
    }
    return h;
  }

  pick(ctx: PickContext, exclude?: ReadonlySet<T>): T | undefined {
    const state = this.#state;
    if (state === undefined) return undefined;
    const { entries, m } = state.table;
    const byIndex = state.byIndex;
    if (byIndex.length === 0) return undefined;
    let slot = this.hash(ctx) % m;
    const t = byIndex[entries[slot]!]!;
    if (exclude === undefined || exclude.size === 0 || !exclude.has(t)) return t;
    // Walk the table from the hashed slot: the next slots belong to backends in
    // a pseudo-random but deterministic order, so retries agree across nodes.
    let allowed = 0;
    for (const x of byIndex) if (!exclude.has(x)) allowed++;
    if (allowed === 0) return undefined;
    for (;;) {
      if (++slot === m) slot = 0;
      const u = byIndex[entries[slot]!]!;
      if (!exclude.has(u)) return u;
    }
  }

  /**
   * The backend a client is bound to by a client-keyed hash (`source-ip`,
   * `sni`, `header:`, `cookie:`): where its next connection would go too.
   * Undefined for `five-tuple` (a new connection has a new source port) and
   * when the key is absent from `ctx`.
   */
  affinity(ctx: PickContext): T | undefined {
    const state = this.#state;
    if (state === undefined || state.byIndex.length === 0 || this.#keyKind === KEY_FIVE_TUPLE)
      return undefined;
    const h = this.#keyHash(ctx);
    return h < 0 ? undefined : state.byIndex[state.table.entries[h % state.table.m]!];
  }
}

/**
 * Hash the value of cookie `name` in a Cookie header (`a=1; b=2`), 31 bits,
 * without splitting the header; -1 when absent.
 */
export function hashCookie31(header: string | readonly string[] | undefined, name: string, seed = 0): number {
  if (header === undefined) return -1;
  if (typeof header !== 'string') {
    for (const h of header) {
      const r = hashCookie31(h, name, seed);
      if (r >= 0) return r;
    }
    return -1;
  }
  const len = header.length;
  let i = 0;
  while (i < len) {
    while (i < len && (header.charCodeAt(i) === 32 || header.charCodeAt(i) === 59)) i++;
    if (header.startsWith(name, i) && header.charCodeAt(i + name.length) === 61 /* = */) {
      const start = i + name.length + 1;
      let end = header.indexOf(';', start);
      if (end < 0) end = len;
      while (end > start && header.charCodeAt(end - 1) === 32) end--;
      return hashString31(header, seed, start, end);
    }
    const semi = header.indexOf(';', i);
    if (semi < 0) break;
    i = semi + 1;
  }
  return -1;
}
