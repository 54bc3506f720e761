/** Shared by the health tests: a cluster on a ManualClock over real backends. */
import { createBalancer } from '../../src/balance/index.ts';
import type { Backend } from '../../src/cluster/backend.ts';
import { ManualClock } from '../../src/cluster/clock.ts';
import { Cluster } from '../../src/cluster/cluster.ts';
import { healthSchema, outlierSchema } from '../../src/config/health.ts';
import { memoryLogger } from '../helpers/gateway.ts';

export function testCluster(ports: number[], drainTimeoutMs = 5_000) {
  const clock = new ManualClock();
  const { log, records } = memoryLogger();
  const cluster = new Cluster({
    name: 'svc',
    balancer: createBalancer<Backend>('round-robin'),
    clock,
    log,
    drainTimeoutMs,
  });
  cluster.update(ports.map((port) => ({ address: { host: '127.0.0.1', port }, weight: 1 })));
  return { clock, cluster, log, records };
}

export const health = (o: Record<string, unknown>) => healthSchema.parse(o);
export const outlier = (o: Record<string, unknown>) => outlierSchema.parse(o);

/** Keys of the backends a run of picks reaches. */
export function reachable(cluster: Cluster, n = 20): Set<string> {
  const out = new Set<string>();
  for (let i = 0; i < n; i++) {
    const b = cluster.pick({ now: 0 });
    if (b !== undefined) out.add(b.key);
  }
  return out;
}
