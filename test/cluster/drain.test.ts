import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createBalancer } from '../../src/balance/index.ts';
import type { Backend } from '../../src/cluster/backend.ts';
import { ManualClock } from '../../src/cluster/clock.ts';
import { Cluster } from '../../src/cluster/cluster.ts';
import type { LiveNode } from '../../src/live-set.ts';
import type { LeaveReason, ProxiedConnection } from '../../src/cluster/connection.ts';
import { memoryLogger } from '../helpers/gateway.ts';

/** A connection that records when it was asked to leave and closes when told. */
class FakeConn implements ProxiedConnection {
  backendNode: LiveNode<ProxiedConnection> | undefined = undefined;
  readonly openedAt = 0;
  leftAt: number | undefined;
  destroyedAt: number | undefined;
  reason: LeaveReason | undefined;
  readonly clock: ManualClock;
  readonly onClose: () => void;
  readonly closesOnLeave: boolean;
  constructor(clock: ManualClock, onClose: () => void, closesOnLeave: boolean) {
    this.clock = clock;
    this.onClose = onClose;
    this.closesOnLeave = closesOnLeave;
  }
  leave(reason: LeaveReason): void {
    this.leftAt ??= this.clock.now();
    this.reason = reason;
    if (this.closesOnLeave) this.onClose();
  }
  destroy(): void {
    this.destroyedAt ??= this.clock.now();
    this.onClose();
  }
}

function setup(drainTimeoutMs: number) {
  const clock = new ManualClock();
  const cluster = new Cluster({
    name: 'svc',
    balancer: createBalancer<Backend>('least-connections'),
    clock,
    log: memoryLogger().log,
    drainTimeoutMs,
  });
  cluster.update([
    { address: { host: '10.0.0.1', port: 80 }, weight: 1 },
    { address: { host: '10.0.0.2', port: 80 }, weight: 1 },
  ]);
  const open = (n: number, closesOnLeave = true): FakeConn[] =>
    Array.from({ length: n }, () => {
      const backend = cluster.pick({ now: clock.now() })!;
      const conn: FakeConn = new FakeConn(clock, () => cluster.unregister(backend, conn), closesOnLeave);
      cluster.register(backend, conn);
      return conn;
    });
  return { clock, cluster, open };
}

describe('drain', () => {
  test('a removed backend takes no new connections and its connections leave spread over the timeout', () => {
    const { clock, cluster, open } = setup(10_000);
    const conns = open(200);
    const removed = cluster.backends.get('10.0.0.2:80')!;
    const victims = conns.filter((c) => [...removed.connections].includes(c));
    assert.equal(victims.length, 100);
    cluster.update([{ address: { host: '10.0.0.1', port: 80 }, weight: 1 }]);
    assert.equal(removed.state, 'draining');
    for (let i = 0; i < 10; i++) assert.equal(cluster.pick({ now: clock.now() })?.key, '10.0.0.1:80');
    clock.advance(10_000);
    const times = victims.map((c) => c.leftAt!).sort((a, b) => a - b);
    assert.ok(
      times.every((t) => t !== undefined && t <= 5_000),
      'all asked within the first half',
    );
    // Spread, not all at once: no 100 ms window holds more than a fair share (+ one batch).
    for (let t = 0; t < 5_000; t += 100) {
      const inWindow = times.filter((x) => x >= t && x < t + 100).length;
      assert.ok(inWindow <= 4, `${inWindow} leaves in [${t}, ${t + 100})`);
    }
    assert.ok(victims.every((c) => c.reason === 'drain'));
    assert.equal(cluster.backends.has('10.0.0.2:80'), false, 'forgotten once empty');
    assert.ok(conns.filter((c) => !victims.includes(c)).every((c) => c.leftAt === undefined));
  });

  test('connections that ignore the request to leave are destroyed at the deadline', () => {
    const { clock, cluster, open } = setup(4_000);
    const conns = open(10, false);
    cluster.update([]);
    clock.advance(3_999);
    assert.ok(conns.every((c) => c.leftAt !== undefined && c.destroyedAt === undefined));
    clock.advance(1);
    assert.ok(conns.every((c) => c.destroyedAt === 4_000));
    assert.equal(cluster.connectionCount, 0);
  });

  test('a backend that returns while draining takes connections again', () => {
    const { clock, cluster, open } = setup(10_000);
    open(4);
    cluster.update([{ address: { host: '10.0.0.1', port: 80 }, weight: 1 }]);
    clock.advance(100);
    cluster.update([
      { address: { host: '10.0.0.1', port: 80 }, weight: 1 },
      { address: { host: '10.0.0.2', port: 80 }, weight: 1 },
    ]);
    assert.equal(cluster.backends.get('10.0.0.2:80')?.state, 'active');
  });

  test('close() resolves once every connection is gone', async () => {
    const { clock, cluster, open } = setup(1_000);
    open(6);
    let done = false;
    const closing = cluster.close('shutdown').then(() => (done = true));
    assert.equal(cluster.pick({ now: 0 }), undefined, 'no picks while closing');
    clock.advance(1_000);
    await closing;
    assert.equal(done, true);
  });
});
