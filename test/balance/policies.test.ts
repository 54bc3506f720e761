import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LeastConnections } from '../../src/balance/least-connections.ts';
import { PowerOfTwoChoices } from '../../src/balance/p2c.ts';
import { RandomPick } from '../../src/balance/random.ts';
import { RoundRobin } from '../../src/balance/round-robin.ts';
import { SlowStart } from '../../src/balance/slow-start.ts';
import { ConfigError } from '../../src/errors.ts';
import { prng, target, targets, type TestTarget } from './_util.ts';

const at = (now: number) => ({ now });

describe('least-connections', () => {
  it('never picks a target with more connections while a less-loaded eligible one exists (equal weights)', () => {
    const random = prng(11);
    const lc = new LeastConnections<TestTarget>();
    for (let round = 0; round < 2000; round++) {
      const ts = targets(1 + Math.floor(random() * 12));
      for (const t of ts) t.load = Math.floor(random() * 5);
      const exclude = new Set(ts.filter(() => random() < 0.2));
      lc.setTargets(ts);
      const chosen = lc.pick(at(0), exclude);
      const eligible = ts.filter((t) => !exclude.has(t));
      if (eligible.length === 0) {
        assert.equal(chosen, undefined);
        continue;
      }
      const min = Math.min(...eligible.map((t) => t.load));
      assert.ok(chosen !== undefined && !exclude.has(chosen));
      assert.equal(chosen.load, min);
    }
  });

  it('minimises load per weight, idle first, and counts weights as HAProxy does', () => {
    const random = prng(12);
    const lc = new LeastConnections<TestTarget>();
    for (let round = 0; round < 2000; round++) {
      const ts = targets(2 + Math.floor(random() * 8));
      for (const t of ts) {
        t.weight = 1 + Math.floor(random() * 4);
        t.load = Math.floor(random() * 10);
      }
      lc.setTargets(ts);
      const chosen = lc.pick(at(0))!;
      const min = Math.min(...ts.map((t) => t.load / t.weight));
      assert.equal(chosen.load / chosen.weight, min);
      if (ts.some((t) => t.load === 0)) assert.equal(chosen.load, 0);
    }
  });

  it('shares ties fairly instead of always taking the first', () => {
    const ts = [target('a'), target('b', 1, 5), target('c')];
    const lc = new LeastConnections<TestTarget>();
    lc.setTargets(ts);
    const counts = new Map<string, number>();
    for (let i = 0; i < 100; i++) {
      const t = lc.pick(at(0))!;
      counts.set(t.key, (counts.get(t.key) ?? 0) + 1);
    }
    assert.deepEqual(Object.fromEntries(counts), { a: 50, c: 50 });
  });

  it('fills a fleet evenly as connections arrive, weighted', () => {
    const ts = [target('a', 1), target('b', 2), target('c', 3)];
    const lc = new LeastConnections<TestTarget>();
    lc.setTargets(ts);
    for (let i = 0; i < 600; i++) lc.pick(at(0))!.load++;
    assert.deepEqual(
      ts.map((t) => t.load),
      [100, 200, 300],
    );
  });

  it('skips weight-0 targets and returns undefined when nothing is eligible', () => {
    const lc = new LeastConnections<TestTarget>();
    lc.setTargets([target('a', 0)]);
    assert.equal(lc.pick(at(0)), undefined);
    lc.setTargets([]);
    assert.equal(lc.pick(at(0)), undefined);
  });

  it('ramps a new target with slow start instead of sending it everything', () => {
    const old = [target('a', 1, 100), target('b', 1, 100)];
    const fresh = target('new', 1, 0, 1000);
    const lc = new LeastConnections<TestTarget>({ slowStart: { windowMs: 10_000 } });
    lc.setTargets([...old, fresh]);
    // At 10 % of its weight (the floor) the fresh target takes connections only up to ~10 % of the others' load.
    for (let i = 0; i < 100; i++) lc.pick(at(1000))!.load++;
    const others = Math.min(old[0]!.load, old[1]!.load);
    assert.ok(
      fresh.load <= others * 0.1 + 1 && fresh.load >= others * 0.1 - 1,
      `fresh ${fresh.load}, others ${others}`,
    );
    // Without slow start it would take all 100.
    const plain = new LeastConnections<TestTarget>();
    const f2 = target('new', 1, 0, 1000);
    plain.setTargets([target('a', 1, 100), target('b', 1, 100), f2]);
    for (let i = 0; i < 100; i++) plain.pick(at(1000))!.load++;
    assert.equal(f2.load, 100);
  });
});

describe('slow start', () => {
  it('ramps linearly from the floor to 1 over the window (Envoy formula)', () => {
    const s = new SlowStart({ windowMs: 1000 });
    assert.equal(s.factor(0, 0), 0.1);
    assert.equal(s.factor(0, 50), 0.1);
    assert.equal(s.factor(0, 500), 0.5);
    assert.equal(s.factor(0, 1000), 1);
    assert.equal(s.factor(-Infinity, 0), 1);
    const aggressive = new SlowStart({ windowMs: 1000, aggression: 2, minWeightPercent: 0 });
    assert.ok(Math.abs(aggressive.factor(0, 250) - 0.5) < 1e-12);
    assert.throws(() => new SlowStart({ windowMs: -1 }), ConfigError);
    assert.throws(() => new SlowStart({ windowMs: 1, aggression: 0 }), ConfigError);
  });
});

describe('round-robin', () => {
  it('interleaves weights smoothly', () => {
    const rr = new RoundRobin<TestTarget>();
    rr.setTargets([target('a', 5), target('b', 1), target('c', 1)]);
    const order = Array.from({ length: 7 }, () => rr.pick(at(0))!.key).join('');
    assert.equal(order, 'aabacaa');
  });

  it('honours exclude and slow start', () => {
    const rr = new RoundRobin<TestTarget>({ slowStart: { windowMs: 1000 } });
    const a = target('a');
    const b = target('b', 1, 0, 0);
    rr.setTargets([a, b]);
    let bCount = 0;
    for (let i = 0; i < 1000; i++) if (rr.pick(at(0)) === b) bCount++;
    assert.ok(bCount > 80 && bCount < 100, `b got ${bCount}`); // 0.1 / 1.1 of picks
    assert.equal(rr.pick(at(2000), new Set([a])), b);
  });
});

describe('random', () => {
  it('picks in proportion to weight', () => {
    const r = new RandomPick<TestTarget>(prng(5));
    const ts = [target('a', 1), target('b', 3)];
    r.setTargets(ts);
    let b = 0;
    for (let i = 0; i < 10_000; i++) if (r.pick(at(0)) === ts[1]) b++;
    assert.ok(b > 7300 && b < 7700, `b got ${b}`);
    assert.equal(r.pick(at(0), new Set(ts)), undefined);
  });
});

describe('p2c', () => {
  it('never picks the more loaded of its two choices, and with N = 2 always the less loaded', () => {
    const p = new PowerOfTwoChoices<TestTarget>({ random: prng(6) });
    const ts = [target('a', 1, 3), target('b', 1, 1)];
    p.setTargets(ts);
    for (let i = 0; i < 100; i++) assert.equal(p.pick(at(0)), ts[1]);
  });

  it('keeps a fleet balanced better than random', () => {
    const ts = targets(20);
    const p = new PowerOfTwoChoices<TestTarget>({ random: prng(8) });
    p.setTargets(ts);
    for (let i = 0; i < 2000; i++) p.pick(at(0))!.load++;
    const loads = ts.map((t) => t.load);
    assert.ok(Math.max(...loads) - Math.min(...loads) <= 4, `spread ${loads.join(',')}`);
  });

  it('honours exclude, weight 0 and an empty set', () => {
    const p = new PowerOfTwoChoices<TestTarget>({ random: prng(9) });
    const ts = [target('a'), target('b'), target('c', 0)];
    p.setTargets(ts);
    for (let i = 0; i < 50; i++) assert.equal(p.pick(at(0), new Set([ts[0]!])), ts[1]);
    assert.equal(p.pick(at(0), new Set([ts[0]!, ts[1]!])), undefined);
    p.setTargets([]);
    assert.equal(p.pick(at(0)), undefined);
  });

  it('with peak-EWMA prefers the faster target and reacts to a latency peak at once', () => {
    const ts = [target('fast'), target('slow')];
    const p = new PowerOfTwoChoices<TestTarget>({
      random: prng(10),
      peakEwma: { decayMs: 1000, defaultRttMs: 50 },
    });
    p.setTargets(ts);
    p.observe(ts[0]!, 10, 0);
    p.observe(ts[1]!, 100, 0);
    assert.equal(p.pick(at(0)), ts[0]);
    // Same load, faster target wins until its load outweighs the latency gap.
    ts[0]!.load = 5;
    assert.equal(p.pick(at(0)), ts[0]); // 10×6 < 100×1
    ts[0]!.load = 12;
    assert.equal(p.pick(at(0)), ts[1]); // 10×13 > 100×1
    // A slow sample on the fast target counts in full immediately (peak).
    ts[0]!.load = 0;
    p.observe(ts[0]!, 500, 1);
    assert.equal(p.latency(ts[0]!, 1), 500);
    assert.equal(p.pick(at(1)), ts[1]);
    // Faster samples pull it down over time, and idle estimates decay.
    p.observe(ts[0]!, 10, 1001);
    const est = p.latency(ts[0]!, 1001)!;
    assert.ok(est < 500 * Math.exp(-1) + 10 && est > 10, `estimate ${est}`);
    assert.ok(p.latency(ts[1]!, 10_000)! < 1);
    // State follows the key across setTargets.
    p.setTargets([target('fast'), target('slow')]);
    assert.equal(p.latency(target('fast'), 1001), est);
  });
});
