import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createBalancer, MaglevBalancer } from '../../src/balance/index.ts';
import type { Backend } from '../../src/cluster/backend.ts';
import { ManualClock } from '../../src/cluster/clock.ts';
import { Cluster } from '../../src/cluster/cluster.ts';
import { memoryLogger } from '../helpers/gateway.ts';
import { waitFor } from '../helpers/net.ts';

const spec = (i: number) => ({ address: { host: `10.0.${i >> 8}.${i & 255}`, port: 80 }, weight: 1 });

test('a large Maglev table is rebuilt off the event loop; meanwhile picks never name a backend that left', async () => {
  const balancer = createBalancer<Backend>('maglev', { tableSize: 655_373 });
  assert.ok(balancer instanceof MaglevBalancer);
  const cluster = new Cluster({
    name: 'big',
    balancer,
    clock: new ManualClock(),
    log: memoryLogger().log,
    drainTimeoutMs: 1_000,
  });
  cluster.update(Array.from({ length: 1000 }, (_, i) => spec(i)));
  // The first table is built at once: picks work immediately.
  assert.ok(
    cluster.pick({ now: 0, clientIp: '192.0.2.1', clientPort: 1, localIp: '127.0.0.1', localPort: 80 }),
  );

  const started = performance.now();
  cluster.update(Array.from({ length: 999 }, (_, i) => spec(i + 1))); // 10.0.0.0 leaves
  assert.ok(performance.now() - started < 20, 'update returned without building the table inline');
  const gone = '10.0.0.0:80';
  for (let p = 0; p < 20_000; p++) {
    const b = cluster.pick({
      now: 0,
      clientIp: `192.0.${p >> 8}.${p & 255}`,
      clientPort: p,
      localIp: '127.0.0.1',
      localPort: 80,
    });
    assert.notEqual(b?.key, gone);
  }
  await waitFor(() => !balancer.entryCounts().has(gone), 10_000, 'the new table swapped in');
  assert.equal(balancer.entryCounts().size, 999);
});
