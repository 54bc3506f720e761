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

  test('without an exposed gc it does nothing', () => {
    const clock = new ManualClock();
    const reducer = new MemoryReducer({ clock, log: pino({ level: 'silent' }), gc: undefined });
    reducer.start();
    clock.advance(60_000);
    reducer.stop();
  });
});
