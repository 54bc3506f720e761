import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { StreamTable } from '../../src/proxy/h2/stream-table.ts';

interface S {
  readonly id: number;
}

describe('h2 StreamTable', () => {
  test('a long-lived stream stays found while thousands of later streams open and close around it', () => {
    const t = new StreamTable<S>(16);
    const long = { id: 1 };
    t.add(long);
    const open: S[] = [];
    for (let id = 3; id < 20_000; id += 2) {
      const s = { id };
      t.add(s);
      open.push(s);
      // Eight requests in flight at a time, answered in order.
      if (open.length > 8) assert.equal(t.delete(open.shift()!.id), true);
      assert.equal(t.get(1), long);
    }
    assert.equal(t.size, 9);
    for (const s of open) assert.equal(t.get(s.id), s);
    assert.equal(t.get(20_001), undefined);
  });

  test('agrees with a Map under random opens and closes, through growth', () => {
    let seed = 7;
    const random = (): number => {
      seed = (seed * 1_103_515_245 + 12_345) & 0x7fffffff;
      return seed / 0x80000000;
    };
    const t = new StreamTable<S>(4);
    const m = new Map<number, S>();
    let next = 1;
    for (let step = 0; step < 50_000; step++) {
      if (m.size < 300 && random() < 0.55) {
        const s = { id: next };
        next += 2;
        t.add(s);
        m.set(s.id, s);
      } else if (m.size > 0) {
        // Close a random open stream (not only the oldest): long and short ones mix.
        const ids = [...m.keys()];
        const id = ids[Math.floor(random() * ids.length)]!;
        assert.equal(t.delete(id), true);
        m.delete(id);
      }
      if (step % 97 === 0) {
        assert.equal(t.size, m.size);
        for (const [id, s] of m) assert.equal(t.get(id), s);
        assert.equal(t.get(next), undefined);
      }
    }
    assert.deepEqual(
      t
        .values()
        .map((s) => s.id)
        .sort((a, b) => a - b),
      [...m.keys()].sort((a, b) => a - b),
    );
    assert.equal(t.delete(next), false, 'an id never added is not there');
    const all = t.clear();
    assert.equal(all.length, m.size);
    assert.equal(t.size, 0);
    assert.equal(t.get(all[0]?.id ?? 1), undefined);
  });
});
