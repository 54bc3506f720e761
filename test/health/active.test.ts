import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { createServer as createTcpServer, type AddressInfo } from 'node:net';
import { after, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { ManualClock } from '../../src/cluster/clock.ts';
import { parseConfig } from '../../src/config/load.ts';
import { HealthChecker } from '../../src/health/active.ts';
import { startGateway } from '../helpers/gateway.ts';
import { decodeHealthResponse, encodeHealthRequest } from '../../src/health/probe.ts';
import { dial, freePort, readUntil, startEchoBackend, waitFor } from '../helpers/net.ts';
import { health, reachable, testCluster } from './_util.ts';
import type { Cluster } from '../../src/cluster/cluster.ts';
import type { ProxiedConnection } from '../../src/cluster/connection.ts';

/** Advance one check interval and wait until every tracked backend has a new result. */
async function round(clock: ManualClock, cluster: Cluster, ms: number): Promise<void> {
  const total = (): number =>
    [...cluster.backends.values()].reduce((n, b) => n + b.checksPassed + b.checksFailed, 0);
  const before = total();
  const tracked = [...cluster.backends.values()].filter((b) => b.state !== 'draining').length;
  clock.advance(ms);
  await waitFor(() => total() >= before + tracked, 5_000, 'a round of health checks');
}

/**
 * An HTTP backend behind a per-source "firewall": 200 to 127.0.0.3 only, 403
 * to anyone else. Records the address of every request.
 */
async function sourceCheckingBackend(): Promise<{ port: number; seen: string[]; close: () => void }> {
  const seen: string[] = [];
  const server = createServer((req, res) => {
    const from = req.socket.remoteAddress ?? '';
    seen.push(from);
    res.writeHead(from === '127.0.0.3' ? 200 : 403).end();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: (server.address() as AddressInfo).port, seen, close: () => server.close() };
}

describe('active health checks', () => {
  const cleanups: (() => unknown)[] = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  /** A cluster of backends on `ports` under checks of `spec` (no jitter), after the first round. */
  const checking = async (ports: number[], spec: Record<string, unknown>, sourceAddresses?: string[]) => {
    const t = testCluster(ports);
    const checker = new HealthChecker(t.cluster, health({ jitter: 0, ...spec }), {
      clock: t.clock,
      log: t.log,
      sourceAddresses,
    });
    cleanups.push(() => checker.stop());
    checker.sync();
    await round(t.clock, t.cluster, 0);
    return t;
  };

  test('tcp: a stopped backend is marked down within interval × unhealthyThreshold, and up again after it returns', async () => {
    const a = await startEchoBackend();
    const b = await startEchoBackend();
    cleanups.push(
      () => a.close(),
      () => b.close(),
    );
    const { clock, cluster, records } = await checking([a.port, b.port], {
      type: 'tcp',
      interval: '1s',
      timeout: '500ms',
      unhealthyThreshold: 2,
      healthyThreshold: 2,
    });
    assert.deepEqual(reachable(cluster).size, 2);

    await a.close();
    await round(clock, cluster, 1_000);
    assert.equal(cluster.backends.get(`127.0.0.1:${a.port}`)!.state, 'active', 'one failure is not enough');
    await round(clock, cluster, 1_000);
    assert.equal(cluster.backends.get(`127.0.0.1:${a.port}`)!.state, 'unhealthy');
    assert.deepEqual([...reachable(cluster)], [`127.0.0.1:${b.port}`]);
    const down = records.find((r) => r.msg === 'backend unhealthy');
    assert.match(String(down?.reason), /2 consecutive tcp checks failed \(ECONNREFUSED\)/);

    const back = await startEchoBackend({ port: a.port });
    cleanups.push(() => back.close());
    await round(clock, cluster, 1_000);
    assert.equal(cluster.backends.get(`127.0.0.1:${a.port}`)!.state, 'unhealthy', 'one pass is not enough');
    await round(clock, cluster, 1_000);
    assert.equal(cluster.backends.get(`127.0.0.1:${a.port}`)!.state, 'active');
    assert.equal(reachable(cluster).size, 2);
    assert.ok(
      records.some(
        (r) => r.msg === 'backend healthy' && /2 consecutive tcp checks passed/.test(String(r.reason)),
      ),
    );
  });

  test('http: a status outside expectStatus fails the check; the path and Host header are sent', async () => {
    let status = 200;
    const seen: string[] = [];
    const server = createServer((req, res) => {
      seen.push(`${req.headers.host} ${req.url}`);
      res.writeHead(status).end();
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanups.push(() => server.close());
    const port = (server.address() as AddressInfo).port;
    const { clock, cluster } = await checking([port], {
      type: 'http',
      path: '/ready',
      host: 'app.local',
      expectStatus: '200-299',
      interval: '2s',
      timeout: '1s',
      unhealthyThreshold: 1,
      healthyThreshold: 1,
    });
    assert.equal(seen[0], 'app.local /ready');
    status = 503;
    await round(clock, cluster, 2_000);
    assert.equal([...cluster.backends.values()][0]!.state, 'unhealthy');
    assert.equal(cluster.pick({ now: 0 }), undefined);
    status = 204;
    await round(clock, cluster, 2_000);
    assert.equal([...cluster.backends.values()][0]!.state, 'active');
  });

  test('grpc: grpc.health.v1 Check against a grpc-js server follows SERVING / NOT_SERVING', async () => {
    let serving = 1;
    const server = new grpc.Server();
    const asked: string[] = [];
    server.addService(
      {
        Check: {
          path: '/grpc.health.v1.Health/Check',
          requestStream: false,
          responseStream: false,
          // Hand-written codec: the messages are one field each.
          requestSerialize: (s: string) => encodeHealthRequest(s).subarray(5),
          requestDeserialize: (b: Buffer) => (b.length > 2 ? b.subarray(2).toString() : ''),
          responseSerialize: (s: number) => Buffer.from([0x08, s]),
          responseDeserialize: (b: Buffer) =>
            decodeHealthResponse(Buffer.concat([Buffer.from([0, 0, 0, 0, b.length]), b])),
        },
      },
      {
        Check: (call: grpc.ServerUnaryCall<string, number>, cb: grpc.sendUnaryData<number>) => {
          asked.push(call.request);
          cb(null, serving);
        },
      },
    );
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      ),
    );
    cleanups.push(() => server.forceShutdown());
    const { clock, cluster } = await checking([port], {
      type: 'grpc',
      grpcService: 'echo.Echo',
      interval: '2s',
      timeout: '1s',
      unhealthyThreshold: 1,
      healthyThreshold: 1,
    });
    assert.equal(asked[0], 'echo.Echo');
    assert.equal([...cluster.backends.values()][0]!.checksPassed, 1);
    serving = 2; // NOT_SERVING
    await round(clock, cluster, 2_000);
    assert.equal([...cluster.backends.values()][0]!.state, 'unhealthy');
    serving = 1;
    await round(clock, cluster, 2_000);
    assert.equal([...cluster.backends.values()][0]!.state, 'active');
  });

  test('an unhealthy backend keeps its connections, unless closeOnUnhealthy drains them gracefully', async () => {
    for (const closeOnUnhealthy of [false, true]) {
      const backend = await startEchoBackend();
      cleanups.push(() => backend.close());
      const { cluster } = testCluster([backend.port]);
      cluster.closeOnUnhealthy = closeOnUnhealthy;
      // A registered connection that records how it was asked to leave.
      const socket = await dial(backend.port);
      cleanups.push(() => socket.destroy());
      const left: string[] = [];
      const conn: ProxiedConnection = {
        openedAt: 0,
        leave: (r: string) => left.push(r),
        destroy: () => left.push('destroyed'),
        backendNode: undefined,
      };
      const b = [...cluster.backends.values()][0]!;
      cluster.register(b, conn);
      cluster.markHealth(b.key, false, 'test says so');
      assert.equal(b.state, 'unhealthy');
      assert.deepEqual(left, closeOnUnhealthy ? ['unhealthy'] : []);
      assert.equal(b.connections.size, 1, 'still registered until it closes');
      socket.destroy();
    }
  });

  test('in a gateway: clients are sent only to backends that pass, and /metrics shows checks and states', async () => {
    const a = await startEchoBackend({ greet: true });
    const b = await startEchoBackend({ greet: true });
    cleanups.push(
      () => a.close(),
      () => b.close(),
    );
    const listen = await freePort();
    const clock = new ManualClock();
    const { gateway, records } = await startGateway(
      `
services:
  - name: svc
    listen: 127.0.0.1:${listen}
    balance: round-robin
    backends: { static: [127.0.0.1:${a.port}, 127.0.0.1:${b.port}] }
    health: { type: tcp, interval: 1s, timeout: 500ms, unhealthyThreshold: 1, healthyThreshold: 1, jitter: 0 }
`,
      { clock },
    );
    cleanups.push(() => gateway.shutdown());
    const cluster = gateway.services.get('svc')!.cluster;
    await round(clock, cluster, 0);
    await a.close();
    await round(clock, cluster, 1_000);
    assert.equal(cluster.backends.get(`127.0.0.1:${a.port}`)!.state, 'unhealthy');
    for (let i = 0; i < 4; i++) {
      const s = await dial(listen);
      assert.equal((await readUntil(s, '\n')).trim(), String(b.port));
      s.destroy();
    }
    const text = await gateway.metrics.metrics();
    assert.match(
      text,
      new RegExp(
        `holdfast_backend_state\\{service="svc",backend="127.0.0.1:${a.port}",state="unhealthy"\\} 1`,
      ),
    );
    assert.match(
      text,
      new RegExp(
        `holdfast_health_checks_total\\{service="svc",backend="127.0.0.1:${a.port}",result="fail"\\} 1`,
      ),
    );
    assert.ok(records.some((r) => r.msg === 'backend unhealthy' && r.backend === `127.0.0.1:${a.port}`));
    // Turning checks off on reload makes every backend eligible again.
    await gateway.reload(
      parseConfig(`
services:
  - name: svc
    listen: 127.0.0.1:${listen}
    balance: round-robin
    backends: { static: [127.0.0.1:${a.port}, 127.0.0.1:${b.port}] }
`),
    );
    assert.equal(cluster.backends.get(`127.0.0.1:${a.port}`)!.state, 'active');
    assert.ok(records.some((r) => r.msg === 'backend healthy' && r.reason === 'health checks turned off'));
  });
  test("probes come from the service's sourceAddresses, so a per-source firewall answers them as it answers traffic", async () => {
    const spec = {
      type: 'http',
      path: '/',
      interval: '1s',
      timeout: '500ms',
      unhealthyThreshold: 1,
      healthyThreshold: 1,
    };
    // Without source addresses the kernel picks 127.0.0.1, which the backend refuses.
    const plain = await sourceCheckingBackend();
    cleanups.push(plain.close);
    const unbound = await checking([plain.port], spec);
    assert.equal([...unbound.cluster.backends.values()][0]!.state, 'unhealthy');
    assert.deepEqual(plain.seen, ['127.0.0.1']);

    // An IPv6 address is skipped for an IPv4 backend, as it is for traffic.
    const fw = await sourceCheckingBackend();
    cleanups.push(fw.close);
    const { clock, cluster } = await checking([fw.port], spec, ['::1', '127.0.0.3']);
    await round(clock, cluster, 1_000);
    const b = [...cluster.backends.values()][0]!;
    assert.equal(b.state, 'active');
    assert.equal(b.checksFailed, 0);
    assert.deepEqual(fw.seen, ['127.0.0.3', '127.0.0.3']);
  });

  test('tcp and grpc probes bind the source addresses too, each backend going round the whole list', async () => {
    const seen: string[] = [];
    const tcp = createTcpServer((s) => {
      seen.push(s.remoteAddress ?? '');
      s.destroy();
    });
    tcp.listen(0, '127.0.0.1');
    await once(tcp, 'listening');
    cleanups.push(() => tcp.close());
    const t = await checking(
      [(tcp.address() as AddressInfo).port],
      { type: 'tcp', interval: '1s', timeout: '500ms' },
      ['127.0.0.2', '127.0.0.3'],
    );
    await round(t.clock, t.cluster, 1_000);
    await round(t.clock, t.cluster, 1_000);
    await waitFor(() => seen.length === 3, 2_000, 'three accepted probes');
    assert.deepEqual(seen, ['127.0.0.2', '127.0.0.3', '127.0.0.2']);

    const peers: string[] = [];
    const server = new grpc.Server();
    server.addService(
      {
        Check: {
          path: '/grpc.health.v1.Health/Check',
          requestStream: false,
          responseStream: false,
          requestSerialize: (s: string) => encodeHealthRequest(s).subarray(5),
          requestDeserialize: (b: Buffer) => (b.length > 2 ? b.subarray(2).toString() : ''),
          responseSerialize: (s: number) => Buffer.from([0x08, s]),
          responseDeserialize: (b: Buffer) =>
            decodeHealthResponse(Buffer.concat([Buffer.from([0, 0, 0, 0, b.length]), b])),
        },
      },
      {
        Check: (call: grpc.ServerUnaryCall<string, number>, cb: grpc.sendUnaryData<number>) => {
          peers.push(call.getPeer());
          cb(null, 1);
        },
      },
    );
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      ),
    );
    cleanups.push(() => server.forceShutdown());
    const g = await checking(
      [port],
      { type: 'grpc', grpcService: 'echo.Echo', interval: '1s', timeout: '1s' },
      ['127.0.0.3'],
    );
    assert.equal([...g.cluster.backends.values()][0]!.checksPassed, 1);
    assert.equal(peers.length, 1);
    assert.match(peers[0]!, /^(ipv4:)?127\.0\.0\.3:\d+$/);
  });

  test('in a gateway: probes follow sourceAddresses, and a reload that changes them changes where probes come from', async () => {
    const fw = await sourceCheckingBackend();
    cleanups.push(fw.close);
    const listen = await freePort();
    const clock = new ManualClock();
    const yaml = (sources: string): string => `
services:
  - name: svc
    listen: 127.0.0.1:${listen}
    sourceAddresses: [${sources}]
    backends: { static: [127.0.0.1:${fw.port}] }
    health: { type: http, path: /, interval: 1s, timeout: 500ms, unhealthyThreshold: 1, healthyThreshold: 1, jitter: 0 }
`;
    const { gateway } = await startGateway(yaml('127.0.0.3'), { clock });
    cleanups.push(() => gateway.shutdown());
    const cluster = gateway.services.get('svc')!.cluster;
    await round(clock, cluster, 0);
    const b = cluster.backends.get(`127.0.0.1:${fw.port}`)!;
    assert.equal(b.state, 'active');
    assert.deepEqual(fw.seen, ['127.0.0.3']);

    await gateway.reload(parseConfig(yaml('127.0.0.2')));
    // The new checker's first probe comes at once (no jitter).
    await round(clock, cluster, 0);
    assert.equal(b.state, 'unhealthy');
    assert.equal(fw.seen.at(-1), '127.0.0.2');
  });
});
