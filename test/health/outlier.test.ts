import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { ManualClock } from '../../src/cluster/clock.ts';
import { OutlierDetector } from '../../src/health/outlier.ts';
import { startGateway } from '../helpers/gateway.ts';
import { dial, freePorts, readUntil, startEchoBackend } from '../helpers/net.ts';
import { openClient, serviceYaml, startWsBackend } from '../websocket/helpers.ts';
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
