import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createBalancer, isHeld, BALANCE_POLICIES, type BalancerOptions } from '../../src/balance/index.ts';
import { LeastConnections } from '../../src/balance/least-connections.ts';
import { MaglevBalancer } from '../../src/balance/maglev.ts';
import { Persistent } from '../../src/balance/persistence.ts';
import { RoundRobin } from '../../src/balance/round-robin.ts';
import { ConfigError, HoldfastError } from '../../src/errors.ts';
import { prng, target, targets, type TestTarget } from './_util.ts';

const from = (clientIp: string, now: number) => ({ now, clientIp, clientPort: 40000 });

function persistent(options: Partial<ConstructorParameters<typeof Persistent>[1]> = {}, ts = targets(4)) {
  const p = new Persistent<TestTarget>(new RoundRobin<TestTarget>(), { timeoutMs: 1000, ...options });
  p.setTargets(ts);
  return { p, ts };
}

describe('persistence', () => {
  it('keeps a client on its target while the entry is fresh, refreshed on use', () => {
    const { p } = persistent();
    const first = p.pick(from('192.0.2.1', 0))!;
    // Round-robin would move on; persistence holds. Each use refreshes the timeout.
    for (let now = 500; now <= 5000; now += 500) assert.equal(p.pick(from('192.0.2.1', now)), first);
    assert.ok(p.holds(from('192.0.2.1', 5500), first));
    // After a full timeout without use, the entry is gone.
    assert.equal(p.affinity(from('192.0.2.1', 6000)), undefined);
    assert.ok(!p.holds(from('192.0.2.1', 6000), first));
    p.pick(from('198.51.100.1', 6000)); // expires old entries
    assert.equal(p.stats().expirations, 1);
    assert.notEqual(p.pick(from('192.0.2.1', 6001)), first); // round-robin moved on
  });

  it('keeps an entry past its timeout while connections it placed are open, as LVS does', () => {
    const { p } = persistent({ timeoutMs: 1000 });
    const first = p.pick(from('192.0.2.1', 0))!;
    p.hold(from('192.0.2.1', 0)); // a long-lived connection
    p.hold(from('192.0.2.1', 0)); // and a second one
    // Long after the timeout, other clients' picks expire what they can; this entry stays.
    p.pick(from('198.51.100.1', 60_000));
    assert.equal(p.affinity(from('192.0.2.1', 60_000)), first);
    assert.equal(p.pick(from('192.0.2.1', 60_001)), first, 'a new connection joins the open ones');
    p.release(from('192.0.2.1', 70_000));
    p.pick(from('198.51.100.2', 80_000));
    assert.equal(p.affinity(from('192.0.2.1', 80_000)), first, 'one connection is still open');
    // The last one closes at 90 s: the timer starts again from there.
    p.release(from('192.0.2.1', 90_000));
    assert.equal(p.affinity(from('192.0.2.1', 90_999)), first);
    assert.equal(p.affinity(from('192.0.2.1', 91_000)), undefined);
    p.pick(from('198.51.100.3', 91_000));
    assert.equal(p.stats().expirations >= 1, true);
    // Releasing more than was held, or for an unknown client, changes nothing.
    p.release(from('192.0.2.1', 92_000));
    p.release(from('203.0.113.9', 92_000));
  });

  it('groups clients by netmask (IPv4 dotted or prefix, IPv6 prefix, mapped IPv4)', () => {
    const { p } = persistent({ netmask: '255.255.255.0', netmask6: 64 });
    const t = p.pick(from('192.0.2.10', 0))!;
    assert.equal(p.pick(from('192.0.2.200', 1)), t);
    assert.equal(p.pick(from('::ffff:192.0.2.99', 2)), t);
    assert.notEqual(p.pick(from('192.0.3.10', 3)), t);
    const u = p.pick(from('2001:db8:0:1::1', 4))!;
    assert.equal(p.pick(from('2001:db8:0:1:ffff::2', 5)), u);
    assert.equal(p.stats().entries, 3);
    const exact = persistent({ netmask: 32 }).p;
    const a = exact.pick(from('192.0.2.10', 0));
    assert.notEqual(exact.pick(from('192.0.2.11', 0)), a);
  });

  it('drops entries of targets that left the set, and re-balances excluded or weight-0 ones', () => {
    const { p, ts } = persistent();
    const t = p.pick(from('192.0.2.1', 0))!;
    const rest = ts.filter((x) => x !== t);
    p.setTargets(rest);
    assert.equal(p.stats().dropped, 1);
    assert.equal(p.affinity(from('192.0.2.1', 1)), undefined);
    const u = p.pick(from('192.0.2.1', 1))!;
    assert.ok(rest.includes(u));
    const v = p.pick(from('192.0.2.1', 2), new Set([u]))!;
    assert.notEqual(v, u);
    assert.equal(p.pick(from('192.0.2.1', 3)), v); // the entry now points at v
    v.weight = 0;
    assert.notEqual(p.pick(from('192.0.2.1', 4)), v);
  });

  it('keeps entries across setTargets that replace target objects with the same keys', () => {
    const { p, ts } = persistent();
    const t = p.pick(from('192.0.2.1', 0))!;
    const copies = ts.map((x) => target(x.key));
    p.setTargets(copies);
    assert.equal(p.pick(from('192.0.2.1', 1))!.key, t.key);
    assert.equal(
      p.pick(from('192.0.2.1', 1)),
      copies.find((x) => x.key === t.key),
    );
  });

  it('is bounded: evicts the least recently used entry and counts it', () => {
    const { p } = persistent({ maxEntries: 100, timeoutMs: 1e9 });
    for (let i = 0; i < 100; i++) p.pick(from(`10.0.${i >> 8}.${i & 255}`, i));
    assert.equal(p.stats().entries, 100);
    const held = p.affinity(from('10.0.0.0', 100))!;
    p.pick(from('10.0.0.0', 100)); // refresh the oldest: now 10.0.0.1 is the oldest
    for (let i = 0; i < 50; i++) p.pick(from(`172.16.0.${i}`, 200 + i));
    const s = p.stats();
    assert.equal(s.entries, 100);
    assert.equal(s.evictions, 50);
    assert.equal(p.affinity(from('10.0.0.0', 300)), held);
    assert.equal(p.affinity(from('10.0.0.1', 300)), undefined);
    assert.ok(p.affinity(from('10.0.0.51', 300)) !== undefined);
    assert.equal(p.affinity(from('10.0.0.50', 300)), undefined);
  });

  it('stays consistent under random churn (model check against a Map)', () => {
    const random = prng(21);
    const ts = targets(6);
    const p = new Persistent<TestTarget>(new LeastConnections<TestTarget>(), {
      timeoutMs: 50,
      maxEntries: 40,
      netmask: 30,
    });
    p.setTargets(ts);
    const model = new Map<string, { key: string; used: number }>();
    let now = 0;
    let live = ts;
    for (let step = 0; step < 20_000; step++) {
      now += Math.floor(random() * 3);
      if (random() < 0.002) {
        live = ts.filter(() => random() < 0.8);
        p.setTargets(live);
        const keys = new Set(live.map((t) => t.key));
        for (const [k, v] of model) if (!keys.has(v.key)) model.delete(k);
        continue;
      }
      const ip = `10.0.${Math.floor(random() * 4)}.${Math.floor(random() * 64)}`;
      const net = ip.replace(/\.\d+$/, (m) => `.${Number(m.slice(1)) & ~3}`);
      // Model: expire by timeout, then look up.
      for (const [k, v] of model) if (now - v.used >= 50) model.delete(k);
      const expected = model.get(net);
      const got = p.pick(from(ip, now));
      if (live.length === 0) {
        assert.equal(got, undefined);
        continue;
      }
      if (expected !== undefined) assert.equal(got!.key, expected.key, `step ${step}`);
      model.delete(net);
      model.set(net, { key: got!.key, used: now });
      if (model.size > 40) model.delete(model.keys().next().value!);
      assert.equal(p.stats().entries, model.size, `size at step ${step}`);
    }
  });

  it('validates its options', () => {
    const inner = new RoundRobin<TestTarget>();
    assert.throws(() => new Persistent(inner, { timeoutMs: 0 }), ConfigError);
    assert.throws(() => new Persistent(inner, { timeoutMs: 1, netmask: 33 }), ConfigError);
    assert.throws(() => new Persistent(inner, { timeoutMs: 1, netmask: '255.0.255.0' }), ConfigError);
    assert.throws(() => new Persistent(inner, { timeoutMs: 1, netmask6: 129 }), ConfigError);
    assert.throws(() => new Persistent(inner, { timeoutMs: 1, maxEntries: 0 }), ConfigError);
  });

  it('passes through clients without an address', () => {
    const { p } = persistent();
    assert.ok(p.pick({ now: 0 }) !== undefined);
    assert.equal(p.stats().entries, 0);
  });
});

describe('createBalancer', () => {
  it('builds every policy, with and without persistence', () => {
    for (const policy of BALANCE_POLICIES) {
      const b = createBalancer<TestTarget>(policy, { random: prng(1) });
      assert.equal(b.name, policy);
      b.setTargets(targets(3));
      assert.ok(b.pick(from('192.0.2.1', 0)) !== undefined);
      const p = createBalancer<TestTarget>(policy, {
        random: prng(1),
        persistence: { timeoutMs: 300_000, netmask: 24 },
      });
      assert.equal(p.constructor, Persistent);
      p.setTargets(targets(3));
      const t = p.pick(from('192.0.2.1', 0))!;
      assert.ok(isHeld(p, from('192.0.2.77', 1), t));
    }
  });

  it('wires maglev options: hash key, table size, netmask from persistence', () => {
    const b = createBalancer<TestTarget>('maglev', {
      hashKey: 'source-ip',
      tableSize: 251,
      persistence: { timeoutMs: 1000, netmask: '255.255.255.0' },
    });
    assert.ok(b instanceof Persistent && b.inner instanceof MaglevBalancer);
    assert.equal(b.inner.m, 251);
    const stateless = createBalancer<TestTarget>('maglev', { hashKey: 'source-ip', netmask: 24 });
    stateless.setTargets(targets(30));
    const t = stateless.pick(from('192.0.2.1', 0))!;
    assert.equal(stateless.pick(from('192.0.2.250', 0)), t);
    assert.ok(isHeld(stateless, from('192.0.2.9', 0), t));
  });

  it('rejects options that do not apply, naming the field', () => {
    const bad: [Parameters<typeof createBalancer>[0], BalancerOptions, string][] = [
      ['least-connections', { hashKey: 'source-ip' }, 'hashKey'],
      ['round-robin', { tableSize: 65537 }, 'tableSize'],
      ['maglev', { slowStart: { windowMs: 1000 } }, 'slowStart'],
      ['random', { peakEwma: true }, 'peakEwma'],
    ];
    for (const [policy, options, field] of bad) {
      assert.throws(
        () => createBalancer(policy, options),
        (e: unknown) => e instanceof ConfigError && e.field === field,
      );
    }
    assert.throws(
      () => createBalancer('maglev', { hashKey: 'nope' }),
      (e: unknown) => e instanceof HoldfastError && e.code === 'HOLDFAST_ERR_HASH_KEY',
    );
    assert.throws(
      () => createBalancer('maglev', { tableSize: 65536 }),
      (e: unknown) => e instanceof HoldfastError && e.code === 'HOLDFAST_ERR_MAGLEV_TABLE_SIZE',
    );
  });

  it('applies slow start to least-connections, round-robin, random and p2c', () => {
    for (const policy of ['least-connections', 'round-robin', 'random', 'p2c'] as const) {
      const b = createBalancer<TestTarget>(policy, { random: prng(2), slowStart: { windowMs: 10_000 } });
      const old = target('old');
      const fresh = target('fresh', 1, 0, 0);
      b.setTargets([old, fresh]);
      let n = 0;
      for (let i = 0; i < 1000; i++) {
        const t = b.pick({ now: 0 })!;
        if (t === fresh) n++;
        t.load++;
      }
      assert.ok(n < 200, `${policy}: fresh target got ${n} of 1000 at the start of its window`);
    }
  });
});
