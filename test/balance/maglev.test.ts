import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HoldfastError } from '../../src/errors.ts';
import {
  buildMaglevTable,
  hashCookie31,
  isPrime,
  MAGLEV_FORMAT,
  MaglevBackendsError,
  MaglevBalancer,
  maglevPermutation,
  MaglevTableSizeError,
  parseHashKey,
  populateMaglev,
  tableDisruption,
  type MaglevBackend,
} from '../../src/balance/maglev.ts';
import { buildMaglevTableOffThread, setTargetsOffThread } from '../../src/balance/maglev-worker.ts';
import { prng, shuffle, target, targets, type TestTarget } from './_util.ts';

const keys5 = ['10.0.0.1:8080', '10.0.0.2:8080', '10.0.0.3:8080', '10.0.0.4:8080', '10.0.0.5:8080'];
const unweighted = (n: number): MaglevBackend[] => targets(n).map((t) => ({ key: t.key, weight: 1 }));

describe('maglev table', () => {
  it('follows the paper: population by turns over explicit permutations (NSDI 2016, Table 1)', () => {
    // The paper's example: M = 7, B0 (offset 3, skip 4), B1 (0, 2), B2 (3, 1).
    const entries = new Int32Array(7);
    const counts = new Uint32Array(3);
    populateMaglev(
      Int32Array.of(3, 0, 3),
      Int32Array.of(4, 2, 1),
      Float64Array.of(1, 1, 1),
      7,
      entries,
      counts,
    );
    assert.deepEqual([...entries], [1, 0, 1, 0, 2, 2, 0]);
    assert.deepEqual([...counts], [3, 2, 2]);
  });

  it('matches a naive implementation of the paper pseudo-code with N×M permutations (small M)', () => {
    const random = prng(7);
    for (const m of [7, 13, 31, 101, 251]) {
      for (let round = 0; round < 10; round++) {
        const n = 1 + Math.floor(random() * Math.min(m, 20));
        const bs = unweighted(n).map((b, i) => ({ ...b, key: `${b.key}#${round}-${i}` }));
        const table = buildMaglevTable(bs, m);
        // Naive reference: permutation[i][j] = (offset + j·skip) mod M, Pseudocode 1.
        const perms = table.keys.map((k) => {
          const { offset, skip } = maglevPermutation(k, m);
          return Array.from({ length: m }, (_, j) => (offset + j * skip) % m);
        });
        const next = new Array<number>(n).fill(0);
        const entry = new Array<number>(m).fill(-1);
        let filled = 0;
        for (;;) {
          let done = false;
          for (let i = 0; i < n; i++) {
            let c = perms[i]![next[i]!]!;
            while (entry[c]! >= 0) c = perms[i]![++next[i]!]!;
            entry[c] = i;
            next[i]!++;
            if (++filled === m) {
              done = true;
              break;
            }
          }
          if (done) break;
        }
        assert.deepEqual([...table.entries], entry, `m=${m} n=${n}`);
      }
    }
  });

  it('rejects table sizes that are not prime, with a stable code', () => {
    for (const m of [65536, 1, 0, -7, 1.5, 100, 655370]) {
      assert.throws(
        () => buildMaglevTable(unweighted(3), m),
        (e: unknown) =>
          e instanceof MaglevTableSizeError &&
          e instanceof HoldfastError &&
          e.code === 'HOLDFAST_ERR_MAGLEV_TABLE_SIZE',
      );
    }
    assert.throws(() => new MaglevBalancer({ tableSize: 1000 }), MaglevTableSizeError);
    assert.ok(isPrime(65537) && isPrime(655373) && !isPrime(65535));
  });

  it('rejects duplicate keys, bad weights and more backends than slots', () => {
    const code = (e: unknown): boolean =>
      e instanceof MaglevBackendsError && e.code === 'HOLDFAST_ERR_MAGLEV_BACKENDS';
    assert.throws(
      () =>
        buildMaglevTable(
          [
            { key: 'a', weight: 1 },
            { key: 'a', weight: 2 },
          ],
          7,
        ),
      code,
    );
    assert.throws(() => buildMaglevTable([{ key: 'a', weight: -1 }], 7), code);
    assert.throws(() => buildMaglevTable([{ key: 'a', weight: NaN }], 7), code);
    assert.throws(() => buildMaglevTable(unweighted(8), 7), code);
  });

  it('balances unweighted backends to ⌊M/N⌋ or ⌈M/N⌉ entries', () => {
    for (const [n, m] of [
      [1, 65537],
      [3, 65537],
      [100, 65537],
      [1000, 65537],
      [7, 7],
      [5, 13],
      [250, 251],
    ] as const) {
      const t = buildMaglevTable(unweighted(n), m);
      const lo = Math.floor(m / n);
      const hi = Math.ceil(m / n);
      for (const c of t.counts) assert.ok(c === lo || c === hi, `n=${n} m=${m}: ${c} not in [${lo}, ${hi}]`);
      assert.equal(
        t.counts.reduce((a, b) => a + b, 0),
        m,
      );
    }
  });

  it('builds the same table for any input order', () => {
    const random = prng(42);
    const bs = targets(50).map((t, i) => ({ key: t.key, weight: 1 + (i % 4) }));
    const reference = buildMaglevTable(bs, 65537);
    for (let round = 0; round < 5; round++) {
      const t = buildMaglevTable(shuffle(bs, random), 65537);
      assert.deepEqual(t.keys, reference.keys);
      assert.ok(Buffer.from(t.entries.buffer).equals(Buffer.from(reference.entries.buffer)));
    }
  });

  it('gives weighted backends M·w/W entries within max(1.5 entries, 1.5 %)', () => {
    const random = prng(3);
    for (const m of [65537, 655373]) {
      for (let round = 0; round < (m > 100_000 ? 2 : 8); round++) {
        const n = 2 + Math.floor(random() * 200);
        const bs = targets(n).map((t) => ({ key: t.key, weight: 1 + Math.floor(random() * 100) }));
        const t = buildMaglevTable(bs, m);
        const total = bs.reduce((s, b) => s + b.weight, 0);
        t.keys.forEach((_, i) => {
          const ideal = (m * t.weights[i]!) / total;
          const tolerance = Math.max(1.5, ideal * 0.015);
          assert.ok(
            Math.abs(t.counts[i]! - ideal) <= tolerance,
            `m=${m} n=${n} w=${t.weights[i]}: ${t.counts[i]} vs ${ideal}`,
          );
        });
      }
    }
  });

  it('gives every backend with weight > 0 at least one entry, even with extreme weights', () => {
    const bs = [{ key: 'heavy', weight: 1e9 }, ...unweighted(20).map((b) => ({ ...b, weight: 1 }))];
    const t = buildMaglevTable(bs, 251);
    for (const c of t.counts) assert.ok(c >= 1);
    assert.equal(t.counts[t.keys.indexOf('heavy')], 251 - 20);
    const z = buildMaglevTable(
      [
        { key: 'zero', weight: 0 },
        { key: 'one', weight: 1 },
      ],
      7,
    );
    assert.deepEqual(z.keys, ['one']);
    assert.deepEqual([...z.entries], [0, 0, 0, 0, 0, 0, 0]);
  });

  it('is pinned by golden vectors (format version 1)', () => {
    assert.equal(MAGLEV_FORMAT.version, 1);
    assert.deepEqual(maglevPermutation('10.0.0.1:8080', 65537), { offset: 22065, skip: 62398 });
    assert.deepEqual(maglevPermutation('[2001:db8::7]:8080', 65537), { offset: 8602, skip: 18299 });
    const bs = keys5.map((key) => ({ key, weight: 1 }));
    const t = buildMaglevTable(bs, 65537);
    assert.deepEqual(
      [0, 1, 2, 3, 1000, 12345, 65536].map((s) => t.entries[s]),
      [1, 2, 2, 4, 3, 0, 1],
    );
    assert.deepEqual([...t.counts], [13108, 13108, 13107, 13107, 13107]);
    const w = buildMaglevTable(
      keys5.map((key, i) => ({ key, weight: i + 1 })),
      65537,
    );
    assert.deepEqual(
      [0, 1, 2, 3, 1000, 12345, 65536].map((s) => w.entries[s]),
      [1, 3, 2, 4, 3, 2, 3],
    );
    assert.deepEqual([...w.counts], [4369, 8738, 13108, 17476, 21846]);
    assert.deepEqual([...buildMaglevTable(bs, 13).entries], [4, 0, 2, 2, 3, 3, 0, 1, 2, 1, 4, 0, 1]);
  });

  it('moves close to the ideal 1/(N+1) of entries when a backend leaves', () => {
    const bs = unweighted(101);
    const full = buildMaglevTable(bs, 65537);
    const less = buildMaglevTable(bs.slice(1), 65537);
    const ratio = tableDisruption(full, less) * 101;
    assert.ok(ratio >= 1 && ratio <= 1.7, `disruption ${ratio}× ideal`);
  });

  it('builds off thread to the same table', async () => {
    const bs = targets(300).map((t, i) => ({ key: t.key, weight: 1 + (i % 5) }));
    const off = await buildMaglevTableOffThread(bs, 65537);
    const on = buildMaglevTable(bs, 65537);
    assert.deepEqual(off.keys, on.keys);
    assert.ok(Buffer.from(off.entries.buffer).equals(Buffer.from(on.entries.buffer)));
    assert.deepEqual([...off.counts], [...on.counts]);
    await assert.rejects(buildMaglevTableOffThread(bs, 100), MaglevTableSizeError);
  });
});

describe('maglev policy', () => {
  const ctx = (
    clientIp: string,
    clientPort = 40000,
  ): { now: number; clientIp: string; clientPort: number; localIp: string; localPort: number } => ({
    now: 0,
    clientIp,
    clientPort,
    localIp: '10.9.9.9',
    localPort: 443,
  });

  it('picks the same backend for the same flow, whatever the target order', () => {
    const ts = targets(20);
    const a = new MaglevBalancer<TestTarget>();
    const b = new MaglevBalancer<TestTarget>();
    a.setTargets(ts);
    b.setTargets(shuffle(ts, prng(9)));
    for (let p = 1000; p < 1200; p++)
      assert.equal(a.pick(ctx('192.0.2.1', p))!.key, b.pick(ctx('192.0.2.1', p))!.key);
    assert.equal(a.entryCounts().size, 20);
  });

  it('spreads flows and skips excluded targets deterministically', () => {
    const ts = targets(4);
    const b = new MaglevBalancer<TestTarget>({ tableSize: 251 });
    b.setTargets(ts);
    const seen = new Set<string>();
    for (let p = 0; p < 200; p++) seen.add(b.pick(ctx('192.0.2.1', p))!.key);
    assert.equal(seen.size, 4);
    const first = b.pick(ctx('192.0.2.1', 5))!;
    const second = b.pick(ctx('192.0.2.1', 5), new Set([first]))!;
    assert.notEqual(second, first);
    assert.equal(b.pick(ctx('192.0.2.1', 5), new Set([first])), second);
    assert.equal(b.pick(ctx('192.0.2.1', 5), new Set(ts)), undefined);
    assert.equal(new MaglevBalancer().pick(ctx('192.0.2.1')), undefined);
  });

  it('hashes the masked source IP for stateless persistence, and reports affinity', () => {
    const ts = targets(50);
    const b = new MaglevBalancer<TestTarget>({ hashKey: 'source-ip', netmask: 24 });
    b.setTargets(ts);
    const t = b.pick(ctx('198.51.100.7', 1))!;
    for (let host = 0; host < 256; host += 17) assert.equal(b.pick(ctx(`198.51.100.${host}`, host)), t);
    assert.equal(b.affinity(ctx('198.51.100.200')), t);
    const five = new MaglevBalancer<TestTarget>();
    five.setTargets(ts);
    assert.equal(five.affinity(ctx('198.51.100.7')), undefined);
  });

  it('hashes headers and cookies, falling back to the 5-tuple when absent', () => {
    const ts = targets(50);
    const h = new MaglevBalancer<TestTarget>({ hashKey: 'header:X-User' });
    h.setTargets(ts);
    const withHeader = (v: string, port: number) => ({ ...ctx('192.0.2.1', port), headers: { 'x-user': v } });
    assert.equal(h.pick(withHeader('alice', 1)), h.pick(withHeader('alice', 2)));
    assert.ok(h.pick(ctx('192.0.2.1', 1)) !== undefined);
    const c = new MaglevBalancer<TestTarget>({ hashKey: 'cookie:sid' });
    c.setTargets(ts);
    const withCookie = (v: string) => ({ ...ctx('192.0.2.1'), headers: { cookie: v } });
    assert.equal(c.pick(withCookie('a=1; sid=xyz; b=2')), c.pick(withCookie('sid=xyz')));
    assert.equal(hashCookie31('a=1; sid=xyz; b=2', 'sid'), hashCookie31('sid=xyz', 'sid'));
    assert.equal(hashCookie31('xsid=1; sid2=3', 'sid'), -1);
    assert.equal(hashCookie31(['a=1', 'sid=xyz'], 'sid'), hashCookie31('sid=xyz', 'sid'));
  });

  it('a header key named like an Object.prototype member counts as absent when the client does not send it', () => {
    const ts = targets(50);
    const proto = new MaglevBalancer<TestTarget>({ hashKey: 'header:constructor' });
    const plain = new MaglevBalancer<TestTarget>({ hashKey: 'header:x-absent' });
    proto.setTargets(ts);
    plain.setTargets(ts);
    // Absent: both fall back to the same 5-tuple hash.
    for (let port = 1; port < 20; port++) {
      const c = { ...ctx('192.0.2.1', port), headers: {} };
      assert.equal(proto.pick(c), plain.pick(c));
    }
    assert.equal(proto.affinity({ ...ctx('192.0.2.1'), headers: {} }), undefined);
  });

  it('validates hash keys', () => {
    assert.equal(parseHashKey('header:x-tenant'), 'header:x-tenant');
    assert.throws(
      () => parseHashKey('header:'),
      (e: unknown) => e instanceof HoldfastError && e.code === 'HOLDFAST_ERR_HASH_KEY',
    );
    assert.throws(() => parseHashKey('url'), HoldfastError);
  });

  it('swaps an off-thread table in atomically and drops superseded builds', async () => {
    const b = new MaglevBalancer<TestTarget>();
    const first = targets(10);
    b.setTargets(first);
    const before = b.table;
    const more = [...first, target('10.1.0.1:8080')];
    const pending = setTargetsOffThread(b, more);
    assert.equal(b.table, before); // still serving the old table
    assert.equal(await pending, true);
    assert.equal(b.table!.keys.length, 11);
    // A sync update while a build is in flight wins.
    const stale = setTargetsOffThread(b, first);
    b.setTargets(more.slice(2));
    assert.equal(await stale, false);
    assert.equal(b.table!.keys.length, 9);
  });
});
