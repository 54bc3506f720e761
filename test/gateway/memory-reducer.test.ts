import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import pino from 'pino';
import { ManualClock } from '../../src/cluster/clock.ts';
import { type GcFunction, MemoryReducer } from '../../src/memory-reducer.ts';

const MiB = 1024 * 1024;

/** A reducer on a manual clock, with the heap and CPU time the test sets. */
function setup(opts: { committed: number; used: number }) {
  const clock = new ManualClock();
  const state = { ...opts, cpuMicros: 0 };
  const calls: Parameters<GcFunction>[] = [];
  const reducer = new MemoryReducer({
    clock,
    log: pino({ level: 'silent' }),
    gc: (...args) => void calls.push(args),
    checkMs: 5_000,
    heap: () => ({ committed: state.committed, used: state.used }),
    cpuMicros: () => state.cpuMicros,
  });
  reducer.start();
  return { clock, state, calls, reducer };
}

describe('memory reducer', () => {
  test('a quiet process with much unused heap gets one memory-reducing collection', () => {
    const { clock, calls, reducer } = setup({ committed: 36 * MiB, used: 20 * MiB });
    clock.advance(5_000);
    assert.deepEqual(calls, [[{ type: 'major', execution: 'async', flavor: 'last-resort' }]]);
    // Not again within a minute, even if the heap still looks the same.
    clock.advance(50_000);
    assert.equal(calls.length, 1);
    reducer.stop();
  });

  test('a busy process is left alone, however much heap is unused', () => {
    const { clock, state, calls, reducer } = setup({ committed: 36 * MiB, used: 20 * MiB });
    for (let i = 0; i < 10; i++) {
      state.cpuMicros += 2_500_000; // half a core over each 5 s check
      clock.advance(5_000);
    }
    assert.equal(calls.length, 0);
    reducer.stop();
  });

  test('a heap without much slack is not collected', () => {
    const { clock, calls, reducer } = setup({ committed: 22 * MiB, used: 20 * MiB });
    clock.advance(60_000);
    assert.equal(calls.length, 0);
    reducer.stop();
  });

  test('a heap that grew with a burst is collected even while its garbage still counts as used', () => {
    // Right after a burst no full collection has marked the garbage yet, so
    // the heap looks full (no slack), but it has grown well past its size at
    // the start: that growth is what a burst leaves behind.
    const { clock, state, calls, reducer } = setup({ committed: 10 * MiB, used: 9 * MiB });
    state.committed = 30 * MiB;
    state.used = 29 * MiB;
    clock.advance(5_000);
    assert.equal(calls.length, 1);
    // Afterwards the old generation holds what is live: that is the new
    // baseline, and a heap that stays there is not collected again.
    state.committed = 22 * MiB;
    state.used = 21 * MiB;
    clock.advance(120_000);
    assert.equal(calls.length, 1);
    // Another burst: growth from the new baseline counts again.
    state.committed = 32 * MiB;
    state.used = 31 * MiB;
    clock.advance(5_000);
    assert.equal(calls.length, 2);
    reducer.stop();
  });

  test('growth smaller than a fifth of the heap is left alone', () => {
    const { clock, state, calls, reducer } = setup({ committed: 40 * MiB, used: 39 * MiB });
    state.committed = 46 * MiB;
    state.used = 45 * MiB;
    clock.advance(120_000);
    assert.equal(calls.length, 0);
    reducer.stop();
  });

  test('without an exposed gc it does nothing', () => {
    const clock = new ManualClock();
    const reducer = new MemoryReducer({ clock, log: pino({ level: 'silent' }), gc: undefined });
    reducer.start();
    clock.advance(60_000);
    reducer.stop();
  });
});
