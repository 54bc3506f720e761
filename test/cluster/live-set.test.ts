import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { LiveSet } from '../../src/live-set.ts';

const values = <T>(set: LiveSet<T>): T[] => [...set];

describe('LiveSet', () => {
  test('keeps arrival order, oldest first, through deletes at the head, middle and tail', () => {
    const set = new LiveSet<number>();
    const nodes = [1, 2, 3, 4, 5].map((v) => set.add(v));
    assert.equal(set.size, 5);
    assert.equal(set.first, 1);
    assert.equal(set.delete(nodes[2]!), true);
    assert.equal(set.delete(nodes[0]!), true);
    assert.equal(set.delete(nodes[4]!), true);
    assert.deepEqual(values(set), [2, 4]);
    assert.equal(set.size, 2);
    assert.equal(set.first, 2);
  });

  test('a member that left keeps no links to its former neighbours, and deleting it again is a no-op', () => {
    const set = new LiveSet<string>();
    set.add('a');
    const b = set.add('b');
    set.add('c');
    set.delete(b);
    assert.deepEqual([b.prev, b.next, b.set], [undefined, undefined, undefined]);
    assert.equal(set.has(b), false);
    assert.equal(set.delete(b), false);
    assert.equal(set.size, 2);
  });

  test('a node comes back as the newest member, in this set or another, without a new node', () => {
    const one = new LiveSet<string>();
    const two = new LiveSet<string>();
    const a = one.add('a');
    one.add('b');
    assert.throws(() => two.attach(a), /still in a set/, 'one set at a time');
    one.delete(a);
    one.attach(a);
    assert.deepEqual(values(one), ['b', 'a']);
    one.delete(a);
    two.attach(a);
    assert.equal(two.has(a), true);
    assert.equal(one.has(a), false);
    assert.deepEqual([one.size, two.size], [1, 1]);
  });

  test('a loop may close the member it is visiting and still sees every other one', () => {
    const set = new LiveSet<number>();
    const nodes = new Map([1, 2, 3, 4, 5, 6].map((v) => [v, set.add(v)]));
    const seen: number[] = [];
    for (const v of set) {
      seen.push(v);
      if (v === 5) set.add(7);
      if (v % 2 === 0) set.delete(nodes.get(v)!);
    }
    assert.deepEqual(seen, [1, 2, 3, 4, 5, 6, 7], 'a member added during the loop is visited');
    assert.deepEqual(values(set), [1, 3, 5, 7]);
  });
});
