import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { ManualClock } from '../../src/cluster/clock.ts';
import { startGateway } from '../helpers/gateway.ts';
import { freePort, waitFor } from '../helpers/net.ts';
import { TestDnsServer } from './dns-server.ts';

async function gatewayFor(dns: string, clock: ManualClock) {
  const listen = await freePort();
  const { gateway, records } = await startGateway(
    `
services:
  - name: svc
    listen: 127.0.0.1:${listen}
    backends:
      dns: ${dns}
`,
    { clock },
  );
  const cluster = gateway.services.get('svc')!.cluster;
  const active = () =>
    [...cluster.backends.values()]
      .filter((b) => b.state === 'active')
      .map((b) => b.key)
      .sort();
  return { gateway, records, cluster, active };
}

describe('dns discovery', () => {
  const cleanups: (() => unknown)[] = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  test('A records of a headless Service: follows changes on the TTL, within min/max, and survives the server going away', async () => {
    const name = 'backends.default.svc.cluster.local';
    const server = new TestDnsServer({
      A: {
        [name]: [
          { address: '127.0.0.2', ttl: 5 },
          { address: '127.0.0.3', ttl: 5 },
        ],
      },
    });
    await server.start();
    cleanups.push(() => server.stop());
    const clock = new ManualClock();
    const { gateway, records, active } = await gatewayFor(
      `{ name: ${name}, port: 8080, servers: ["127.0.0.1:${server.port}"], minInterval: 2s, maxInterval: 20s, timeout: 1s }`,
      clock,
    );
    cleanups.push(() => gateway.shutdown());
    await waitFor(() => active().length === 2, 5_000, 'the first answer');
    assert.deepEqual(active(), ['127.0.0.2:8080', '127.0.0.3:8080']);
    assert.match(String(records.find((r) => r.msg === 'endpoints changed')?.reason), /ttl 5s/);

    // A pod is replaced; nothing is asked before the TTL runs out.
    server.zone.A![name] = [
      { address: '127.0.0.3', ttl: 60 },
      { address: '127.0.0.4', ttl: 60 },
    ];
    const asked = server.queries.length;
    clock.advance(4_999);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(server.queries.length, asked, 'no query before the TTL');
    clock.advance(1);
    await waitFor(() => active().includes('127.0.0.4:8080'), 5_000, 'the new record');
    assert.deepEqual(active(), ['127.0.0.3:8080', '127.0.0.4:8080']);
    const changed = records.filter((r) => r.msg === 'endpoints changed').at(-1)!;
    assert.deepEqual(changed.added, ['127.0.0.4:8080']);
    assert.deepEqual(changed.removed, ['127.0.0.2:8080']);

    // TTL 60 s is capped by maxInterval (20 s).
    const before = server.queries.length;
    clock.advance(19_999);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(server.queries.length, before);
    clock.advance(1);
    await waitFor(() => server.queries.length > before, 5_000, 'a query at maxInterval');

    // The server goes away: the lookup fails, the last good set stays, it is logged and counted.
    await waitFor(() => records.filter((r) => r.msg === 'endpoints changed').length >= 2, 1_000, 'settle');
    await server.stop();
    clock.advance(20_000);
    await waitFor(
      () => records.some((r) => r.msg === 'discovery failed; keeping the last endpoint set'),
      5_000,
      'the failure',
    );
    const failure = records.find((r) => r.msg === 'discovery failed; keeping the last endpoint set')!;
    assert.ok(['refused', 'timeout'].includes(String(failure.reason)), String(failure.reason));
    assert.deepEqual(active(), ['127.0.0.3:8080', '127.0.0.4:8080']);
    // Retries back off from minInterval: 2 s, then 4 s.
    clock.advance(2_000);
    await waitFor(
      () => records.filter((r) => r.msg === 'discovery failed; keeping the last endpoint set').length === 2,
      5_000,
      'a retry',
    );
    const metrics = await gateway.metrics.metrics();
    assert.match(
      metrics,
      /holdfast_discovery_errors_total\{service="svc",source="dns",reason="(refused|timeout)"\} 2/,
    );

    // It comes back (same port) with a change, which is picked up on the next retry.
    server.zone.A![name] = [{ address: '127.0.0.5', ttl: 30 }];
    await server.start(server.port);
    clock.advance(4_000);
    await waitFor(() => active().length === 1 && active()[0] === '127.0.0.5:8080', 5_000, 'recovery');
  });

  test('an NXDOMAIN or empty answer keeps the last set rather than emptying the service', async () => {
    const name = 'gone.test';
    const server = new TestDnsServer({ A: { [name]: [{ address: '127.0.0.2', ttl: 1 }] } });
    await server.start();
    cleanups.push(() => server.stop());
    const clock = new ManualClock();
    const { gateway, records, active } = await gatewayFor(
      `{ name: ${name}, port: 80, servers: ["127.0.0.1:${server.port}"] }`,
      clock,
    );
    cleanups.push(() => gateway.shutdown());
    await waitFor(() => active().length === 1, 5_000, 'the first answer');
    server.zone = {};
    clock.advance(1_000);
    await waitFor(() => records.some((r) => r.reason === 'nxdomain'), 5_000, 'the NXDOMAIN');
    assert.deepEqual(active(), ['127.0.0.2:80']);
  });

  test('SRV records give targets and ports; addresses come from the additional section or an A lookup', async () => {
    const name = '_grpc._tcp.backends.test';
    const server = new TestDnsServer({
      SRV: {
        [name]: [
          { target: 'pod-a.backends.test', port: 9001, ttl: 10, glue: true, weight: 5 },
          { target: 'pod-b.backends.test', port: 9002, ttl: 10 },
          { target: 'backup.backends.test', port: 9003, ttl: 10, priority: 10 },
        ],
      },
      A: {
        'pod-a.backends.test': [{ address: '127.0.0.2', ttl: 30 }],
        'pod-b.backends.test': [{ address: '127.0.0.3', ttl: 3 }],
        'backup.backends.test': [{ address: '127.0.0.9', ttl: 30 }],
      },
    });
    await server.start();
    cleanups.push(() => server.stop());
    const clock = new ManualClock();
    const { gateway, cluster, active, records } = await gatewayFor(
      `{ name: "${name}", type: SRV, servers: ["127.0.0.1:${server.port}"] }`,
      clock,
    );
    cleanups.push(() => gateway.shutdown());
    await waitFor(() => active().length === 2, 5_000, 'the SRV answer');
    assert.deepEqual(active(), ['127.0.0.2:9001', '127.0.0.3:9002'], 'the backup priority is left out');
    assert.equal(cluster.backends.get('127.0.0.2:9001')!.weight, 5);
    assert.ok(server.queries.includes('A pod-b.backends.test'));
    assert.ok(!server.queries.includes('A pod-a.backends.test'), 'glue used');
    // The shortest TTL involved (pod-b's A record, 3 s) decides the next lookup.
    assert.match(String(records.find((r) => r.msg === 'endpoints changed')!.reason), /ttl 3s/);
  });
});
