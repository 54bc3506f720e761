import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { after, describe, test } from 'node:test';
import { WebSocket } from 'ws';
import { ManualClock } from '../../src/cluster/clock.ts';
import { OutlierDetector } from '../../src/health/outlier.ts';
import { startGateway } from '../helpers/gateway.ts';
import { dial, freePorts, readUntil, startEchoBackend, waitFor } from '../helpers/net.ts';
import { closed, openClient, serviceYaml, startWsBackend } from '../websocket/helpers.ts';
import { outlier, reachable, testCluster } from './_util.ts';

describe('passive outlier detection', () => {
  const cleanups: (() => unknown)[] = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  test('refusing backends are ejected by the TCP proxy’s failures, never more than maxEjectionPercent, and come back after the ejection time', async () => {
    const live = [await startEchoBackend({ greet: true }), await startEchoBackend({ greet: true })];
    cleanups.push(...live.map((b) => () => b.close()));
    const [dead1, dead2, listen] = await freePorts(3);
    const clock = new ManualClock();
    const { gateway, records } = await startGateway(
      `
services:
  - name: svc
    listen: 127.0.0.1:${listen}
    balance: round-robin
    backends:
      static: [127.0.0.1:${live[0]!.port}, 127.0.0.1:${dead1}, 127.0.0.1:${live[1]!.port}, 127.0.0.1:${dead2}]
    outlierDetection:
      consecutiveFailures: 2
      baseEjectionTime: 30s
      maxEjectionTime: 5m
      maxEjectionPercent: 25
`,
      { clock },
    );
    cleanups.push(() => gateway.shutdown());
    const cluster = gateway.services.get('svc')!.cluster;
    const connectMany = async (n: number): Promise<void> => {
      for (let i = 0; i < n; i++) {
        const s = await dial(listen!);
        await readUntil(s, '\n'); // every client still gets through: the proxy retries elsewhere
        s.destroy();
      }
    };
    await connectMany(12);
    const states = () => [...cluster.backends.values()].map((b) => `${b.address.port}:${b.state}`).sort();
    const ejected = [...cluster.backends.values()].filter((b) => b.state === 'ejected');
    assert.equal(ejected.length, 1, `one of four may be ejected at 25%: ${states().join(' ')}`);
    assert.ok([dead1, dead2].includes(ejected[0]!.address.port));
    assert.ok(records.some((r) => r.msg === 'outlier not ejected: ejection cap reached'));
    const first = records.find((r) => r.msg === 'backend ejected');
    assert.equal(first?.forMs, 30_000);
    assert.match(String(first?.reason), /2 consecutive failures/);

    const text = await gateway.metrics.metrics();
    assert.match(
      text,
      new RegExp(
        `holdfast_outlier_ejections_total\\{service="svc",backend="127.0.0.1:${ejected[0]!.address.port}"\\} 1`,
      ),
    );
    assert.match(text, /holdfast_outlier_ejections_capped_total\{service="svc"\} [1-9]/);
    assert.match(
      text,
      new RegExp(
        `holdfast_backend_state\\{service="svc",backend="127.0.0.1:${ejected[0]!.address.port}",state="ejected"\\} 1`,
      ),
    );

    // The ejection ends on time; the backend is picked again and, still failing, is ejected for twice as long.
    clock.advance(30_000);
    assert.equal(ejected[0]!.state, 'active');
    assert.ok(records.some((r) => r.msg === 'backend back from ejection'));
    const before = records.filter((r) => r.msg === 'backend ejected').length;
    await connectMany(12);
    const again = records.filter((r) => r.msg === 'backend ejected').slice(before);
    assert.ok(again.length >= 1, 'ejected again');
    const repeat = again.find((r) => r.backend === ejected[0]!.key);
    if (repeat !== undefined) assert.equal(repeat.forMs, 60_000, 'the second ejection lasts twice the base');
    assert.equal([...cluster.backends.values()].filter((b) => b.state === 'ejected').length, 1);
  });

  test('a WebSocket backend that refuses connections is ejected after consecutiveFailures, and new clients stop trying it', async () => {
    const live = [await startWsBackend(), await startWsBackend()];
    cleanups.push(...live.map((b) => () => b.close()));
    const [dead, listen] = await freePorts(2);
    const { gateway, records } = await startGateway(
      serviceYaml({
        port: listen!,
        backends: [live[0]!.port, dead!, live[1]!.port],
        extra: 'balance: round-robin\noutlierDetection: { consecutiveFailures: 3, maxEjectionPercent: 50 }',
      }),
    );
    cleanups.push(() => gateway.shutdown());
    const cluster = gateway.services.get('ws')!.cluster;
    const refusing = [...cluster.backends.values()].find((b) => b.address.port === dead)!;
    const livePorts = live.map((b) => b.port);
    const clients = async (n: number): Promise<number[]> => {
      const reached: number[] = [];
      for (let i = 0; i < n; i++) {
        // Every client gets through: the proxy tries another backend after a refusal.
        const { ws, backend } = await openClient(listen!);
        reached.push(backend);
        ws.terminate();
      }
      return reached;
    };
    // Round robin over three: every third client is sent to the refusing backend first.
    await clients(9);
    assert.equal(refusing.connectFailures, 3);
    assert.equal(refusing.state, 'ejected', 'three connect failures in a row eject it');
    const ejected = records.find((r) => r.msg === 'backend ejected');
    assert.equal(ejected?.backend, refusing.key);
    assert.match(String(ejected?.reason), /3 consecutive failures \(last: connect\)/);
    // While it is out, new clients go straight to the others: no more attempts on it.
    const reached = await clients(8);
    assert.ok(reached.every((p) => livePorts.includes(p)));
    assert.equal(refusing.connectFailures, 3);
  });

  test('a WebSocket backend that answers every upgrade with 503 is ejected after consecutive5xx, and clients then reach the healthy backends', async () => {
    const live = [await startWsBackend(), await startWsBackend()];
    cleanups.push(...live.map((b) => () => b.close()));
    // Accepts connections but refuses every upgrade, as an overloaded app behind its own proxy would.
    const failing = createServer();
    failing.on('upgrade', (_req, socket: Duplex) => {
      socket.end('HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
    });
    failing.listen(0, '127.0.0.1');
    await once(failing, 'listening');
    cleanups.push(() => new Promise<void>((r) => failing.close(() => r())));
    const failingPort = (failing.address() as AddressInfo).port;
    const [listen] = await freePorts(1);
    const { gateway, records } = await startGateway(
      serviceYaml({
        port: listen!,
        backends: [live[0]!.port, failingPort, live[1]!.port],
        extra: 'balance: round-robin\noutlierDetection: { consecutive5xx: 3, maxEjectionPercent: 50 }',
      }),
    );
    cleanups.push(() => gateway.shutdown());
    const cluster = gateway.services.get('ws')!.cluster;
    const refusing = [...cluster.backends.values()].find((b) => b.address.port === failingPort)!;
    // What each client got: the backend that greeted it, or the status its upgrade was refused with.
    const clients = async (n: number): Promise<(number | string)[]> => {
      const got: (number | string)[] = [];
      for (let i = 0; i < n; i++) got.push(await upgrade(listen!));
      return got;
    };
    // Round robin over three: every third client is sent to the failing backend, which answers 503.
    const first = await clients(9);
    assert.deepEqual(
      first.filter((g) => typeof g === 'string'),
      ['503', '503', '503'],
      'the backend’s 503 reaches the client as it is',
    );
    assert.equal(refusing.state, 'ejected', 'three 503 answers in a row eject it');
    const ejected = records.find((r) => r.msg === 'backend ejected');
    assert.equal(ejected?.backend, refusing.key);
    assert.match(String(ejected?.reason), /3 consecutive HTTP 5xx answers/);
    // While it is out, every client is upgraded, on the healthy backends.
    const after = await clients(8);
    assert.deepEqual(
      after.filter((g) => !live.some((b) => b.port === g)),
      [],
      'no client sees a 503 once it is ejected',
    );
  });

  test('a WebSocket backend that resets its open connections is ejected, and reconnecting clients land on the healthy backend', async () => {
    const healthy = await startWsBackend();
    const resetting = await startWsBackend();
    cleanups.push(
      () => healthy.close(),
      () => resetting.close(),
    );
    const [listen] = await freePorts(1);
    const { gateway, records } = await startGateway(
      serviceYaml({
        port: listen!,
        backends: [healthy.port, resetting.port],
        extra: 'balance: round-robin\noutlierDetection: { consecutiveFailures: 3, maxEjectionPercent: 50 }',
      }),
    );
    cleanups.push(() => gateway.shutdown());
    const cluster = gateway.services.get('ws')!.cluster;
    const bad = [...cluster.backends.values()].find((b) => b.address.port === resetting.port)!;
    const open = await Promise.all(Array.from({ length: 8 }, () => openClient(listen!)));
    assert.equal(open.filter((c) => c.backend === resetting.port).length, 4);
    const cut = open.filter((c) => c.backend === resetting.port).map((c) => closed(c.ws));
    // The backend cuts its connections with a TCP reset (a crash with unread data, SO_LINGER 0).
    for (const ws of resetting.clients) (ws as unknown as { _socket: Socket })._socket.resetAndDestroy();
    for (const c of await Promise.all(cut))
      assert.deepEqual(
        c,
        { code: 1014, reason: 'backend connection reset' },
        'the client is told in close terms',
      );
    await waitFor(() => bad.state === 'ejected');
    const ejected = records.find((r) => r.msg === 'backend ejected');
    assert.equal(ejected?.backend, bad.key);
    assert.match(String(ejected?.reason), /consecutive failures \(last: reset\)/);
    // The cut clients reconnect: all land on the backend that stayed up.
    const again = await Promise.all(Array.from({ length: 4 }, () => openClient(listen!)));
    assert.deepEqual(
      again.map((c) => c.backend),
      [healthy.port, healthy.port, healthy.port, healthy.port],
    );
    // The healthy backend's clients were not disturbed.
    for (const c of open.filter((o) => o.backend === healthy.port)) {
      c.ws.send('still here');
      const [echo] = (await once(c.ws, 'message')) as [Buffer];
      assert.equal(echo.toString(), 'still here');
    }
    for (const c of [...open, ...again]) c.ws.terminate();
  });

  test('WebSockets that clients close or abandon, or that the backend closes properly, do not count against it', async () => {
    const backend = await startWsBackend();
    cleanups.push(() => backend.close());
    const [listen] = await freePorts(1);
    const { gateway } = await startGateway(
      serviceYaml({
        port: listen!,
        backends: [backend.port],
        extra: 'outlierDetection: { consecutiveFailures: 1, maxEjectionPercent: 100 }',
      }),
    );
    cleanups.push(() => gateway.shutdown());
    const cluster = gateway.services.get('ws')!.cluster;
    const only = [...cluster.backends.values()][0]!;
    // Clients that vanish (terminate: no close frame), clients that close
    // properly, and a backend that closes properly (going away).
    for (let i = 0; i < 3; i++) {
      const a = await openClient(listen!);
      a.ws.terminate();
      const b = await openClient(listen!);
      b.ws.close(1000);
      await closed(b.ws);
      const c = await openClient(listen!);
      const gone = closed(c.ws);
      for (const ws of backend.clients) ws.close(1001);
      assert.equal((await gone).code, 1001);
    }
    await waitFor(() => only.connections.size === 0);
    assert.equal(only.state, 'active');
  });

  test('consecutive 5xx eject through the HTTP hook; a success in between starts the count again', () => {
    const { clock, cluster, log } = testCluster([7001, 7002, 7003, 7004]);
    const detector = new OutlierDetector(
      cluster,
      outlier({ consecutive5xx: 3, consecutiveFailures: 0, maxEjectionPercent: 50, baseEjectionTime: '10s' }),
      { clock, log },
    );
    cluster.observer = detector;
    const b = cluster.backends.get('127.0.0.1:7001')!;
    cluster.reportFailure(b, 'http-5xx');
    cluster.reportFailure(b, 'http-5xx');
    cluster.reportSuccess(b);
    cluster.reportFailure(b, 'http-5xx');
    cluster.reportFailure(b, 'http-5xx');
    assert.equal(b.state, 'active');
    cluster.reportFailure(b, 'http-5xx');
    assert.equal(b.state, 'ejected');
    assert.ok(!reachable(cluster).has(b.key));
    // consecutiveFailures: 0 turns connect failures off.
    const c = cluster.backends.get('127.0.0.1:7002')!;
    for (let i = 0; i < 10; i++) cluster.reportFailure(c, 'connect');
    assert.equal(c.state, 'active');
    clock.advance(10_000);
    assert.equal(b.state, 'active');
    assert.equal(b.ejections, 1);
  });

  test('the cap counts the whole cluster: at 50% two of four can be out, the third stays', () => {
    const { clock, cluster, log } = testCluster([7001, 7002, 7003, 7004]);
    const detector = new OutlierDetector(
      cluster,
      outlier({ consecutiveFailures: 1, maxEjectionPercent: 50 }),
      { clock, log },
    );
    cluster.observer = detector;
    for (const b of cluster.backends.values()) cluster.reportFailure(b, 'reset');
    assert.equal([...cluster.backends.values()].filter((b) => b.state === 'ejected').length, 2);
    assert.equal(detector.capped, 2);
    assert.equal(reachable(cluster).size, 2);
  });
});

/** A ws client's upgrade through the gateway: the backend port that greeted it, or the status it was refused with. */
function upgrade(port: number): Promise<number | string> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
    ws.once('unexpected-response', (_req, res) => {
      resolve(String(res.statusCode));
      res.resume();
      ws.terminate();
    });
    ws.once('message', (greeting: Buffer) => {
      resolve(Number(/hello from (\d+)/.exec(greeting.toString())?.[1]));
      ws.terminate();
    });
    // Terminating a refused client may report an error after the answer; only one before it counts.
    ws.on('error', reject);
  });
}
