import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DeadlineWheel, type WheelEntry } from '../../src/deadline-wheel.ts';

class Entry implements WheelEntry<Entry> {
  wheelAt = -1;
  wheelSlot = -1;
  wheelPrev: Entry | undefined = undefined;
  wheelNext: Entry | undefined = undefined;
  readonly name: string;
  constructor(name: string) {
    this.name = name;
  }
}

/** Advance tick by tick (as the WebSocket proxy's timer does) and note when each entry fires. */
function run(wheel: DeadlineWheel<Entry>, from: number, to: number, step: number): Map<string, number> {
  const fired = new Map<string, number>();
  for (let now = from; now <= to; now += step) wheel.advance(now, (e) => fired.set(e.name, now));
  return fired;
}

describe('DeadlineWheel', () => {
  test('fires each deadline at the first tick at or after it: never early, at most one slot late', () => {
    const wheel = new DeadlineWheel<Entry>(100, 0);
    const at = [1, 99, 100, 101, 250, 999, 5_000];
    for (const t of at) wheel.set(new Entry(String(t)), t);
    assert.equal(wheel.size, at.length);
    const fired = run(wheel, 100, 6_000, 100);
    for (const t of at) {
      const when = fired.get(String(t))!;
      assert.ok(when >= t && when < t + 100, `${t} fired at ${when}`);
    }
    assert.equal(wheel.size, 0);
  });

  test('a deadline several revolutions away is passed over until its turn', () => {
    const wheel = new DeadlineWheel<Entry>(1_000, 0);
    // 1,024 slots of 1 s: 30 minutes is almost two revolutions.
    wheel.set(new Entry('age'), 30 * 60_000);
    const fired = run(wheel, 1_000, 31 * 60_000, 1_000);
    assert.equal(fired.get('age'), 30 * 60_000);
  });

  test('after a stall longer than a revolution, everything overdue fires at the next tick', () => {
    const wheel = new DeadlineWheel<Entry>(10, 0);
    for (let i = 0; i < 50; i++) wheel.set(new Entry(`e${i}`), i * 997);
    wheel.set(new Entry('later'), 100_000);
    const fired = new Map<string, number>();
    wheel.advance(60_000, (e) => fired.set(e.name, 60_000));
    assert.equal(fired.size, 50);
    assert.equal(wheel.size, 1);
    wheel.advance(100_000, (e) => fired.set(e.name, 100_000));
    assert.equal(fired.get('later'), 100_000);
  });

  test('an entry moved, deleted or filed again from its own firing fires only when its new time comes', () => {
    const wheel = new DeadlineWheel<Entry>(100, 0);
    const moved = new Entry('moved');
    const gone = new Entry('gone');
    const again = new Entry('again');
    wheel.set(moved, 200);
    wheel.set(gone, 200);
    wheel.set(again, 200);
    wheel.set(moved, 700);
    wheel.delete(gone);
    wheel.delete(gone);
    const fired: string[] = [];
    for (let now = 100; now <= 1_000; now += 100) {
      wheel.advance(now, (e) => {
        fired.push(`${e.name}@${now}`);
        // Overdue already: it must come back at the next tick, not a revolution later.
        if (e === again && now < 500) wheel.set(e, now - 50);
      });
    }
    assert.deepEqual(fired, ['again@200', 'again@300', 'again@400', 'again@500', 'moved@700']);
  });

  test('entries without a deadline are members that never fire, and do not keep a tick running', () => {
    const wheel = new DeadlineWheel<Entry>(100, 0);
    const parked = new Entry('parked');
    const timed = new Entry('timed');
    wheel.set(parked, Infinity);
    wheel.set(timed, 300);
    assert.equal(wheel.size, 2);
    assert.equal(wheel.timed, 1);
    assert.deepEqual(new Set([...wheel].map((e) => e.name)), new Set(['parked', 'timed']));
    const fired = run(wheel, 100, 100_000, 100);
    assert.deepEqual([...fired.keys()], ['timed']);
    assert.equal(wheel.timed, 0);
    wheel.set(parked, 100_200);
    assert.equal(wheel.timed, 1);
    assert.equal(run(wheel, 100_100, 100_200, 100).get('parked'), 100_200);
  });

  test('a new slot width keeps every deadline', () => {
    const wheel = new DeadlineWheel<Entry>(1_000, 0);
    for (const t of [1_500, 4_200, 9_999]) wheel.set(new Entry(String(t)), t);
    wheel.resize(50, 1_000);
    const fired = run(wheel, 1_050, 12_000, 50);
    for (const t of [1_500, 4_200, 9_999]) {
      const when = fired.get(String(t))!;
      assert.ok(when >= t && when < t + 50, `${t} fired at ${when}`);
    }
  });
});
