import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { endpointsOf } from '../../src/discovery/kubernetes.ts';
import { startGateway } from '../helpers/gateway.ts';
import { dial, freePort, readUntil, startEchoBackend, waitFor } from '../helpers/net.ts';
import { FakeApiServer, slice } from './fake-apiserver.ts';

function kubeconfig(server: string, token: string, namespace = 'default'): string {
  const dir = mkdtempSync(join(tmpdir(), 'holdfast-kube-'));
  const file = join(dir, 'config');
  writeFileSync(
    file,
    `apiVersion: v1
kind: Config
current-context: test
clusters:
  - name: test
    cluster: { server: "${server}" }
users:
  - name: test
    user: { token: ${token} }
contexts:
  - name: test
    context: { cluster: test, user: test, namespace: ${namespace} }
`,
  );
  return file;
}

async function gatewayFor(api: FakeApiServer, extra = '') {
  const listen = await freePort();
  const { gateway, records } = await startGateway(`
services:
  - name: svc
    listen: 127.0.0.1:${listen}
    drain: { timeout: 5s }
    backends:
      kubernetes:
        service: echo
        port: http
        kubeconfig: ${kubeconfig(api.server, api.token)}
        backoff: 50ms
        maxBackoff: 200ms
        ${extra}
`);
  const cluster = gateway.services.get('svc')!.cluster;
  const states = () =>
    Object.fromEntries(
      [...cluster.backends.values()]
        .map((b) => [b.key, b.state] as const)
        .sort(([a], [b]) => a.localeCompare(b)),
    );
  return { gateway, records, cluster, states, listen };
}

const PORTS = [
  { name: 'http', port: 0 },
  { name: 'metrics', port: 9090 },
];

describe('kubernetes discovery', () => {
  const cleanups: (() => unknown)[] = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  test('list then watch: ADDED/MODIFIED/DELETED/BOOKMARK converge, and a terminating endpoint drains its connections', async () => {
    const port = await freePort();
    const a = await startEchoBackend({ host: '127.0.0.2', port, greet: true });
    const b = await startEchoBackend({ host: '127.0.0.3', port, greet: true });
    cleanups.push(
      () => a.close(),
      () => b.close(),
    );
    const ports = [{ name: 'http', port }, PORTS[1]!];
    const api = new FakeApiServer();
    await api.start();
    cleanups.push(() => api.stop());
    api.put(
      slice(
        'echo-abc',
        'echo',
        [{ ip: '127.0.0.2' }, { ip: '10.9.9.9', ready: false, serving: false }],
        ports,
      ),
    );
    api.put(slice('other-xyz', 'other', [{ ip: '10.0.0.1' }], ports));
    const { gateway, records, states, listen } = await gatewayFor(api);
    cleanups.push(() => gateway.shutdown());

    await waitFor(() => api.watchers === 1, 5_000, 'the watch');
    assert.deepEqual(
      states(),
      { [`127.0.0.2:${port}`]: 'active' },
      'not-ready endpoints and other services are left out',
    );
    assert.deepEqual(api.requests.slice(0, 2), [
      'list',
      `watch rv=${Number(api.resourceVersion)} bookmarks=true`,
    ]);
    const client = await dial(listen);
    cleanups.push(() => client.destroy());
    assert.equal((await readUntil(client, '\n')).trim(), String(port));

    // A second slice appears.
    api.put(slice('echo-def', 'echo', [{ ip: '127.0.0.3' }], ports));
    await waitFor(() => states()[`127.0.0.3:${port}`] === 'active', 5_000, 'ADDED');
    assert.ok(
      records.some((r) => r.msg === 'endpoints changed' && r.reason === 'EndpointSlice echo-def ADDED'),
    );

    // The first pod terminates: serving + terminating → draining; its connection is asked to leave (FIN).
    api.put(
      slice('echo-abc', 'echo', [{ ip: '127.0.0.2', ready: false, serving: true, terminating: true }], ports),
    );
    await waitFor(() => states()[`127.0.0.2:${port}`] !== 'active', 5_000, 'MODIFIED');
    await waitFor(() => client.readableEnded, 5_000, 'the drained connection to close gracefully');
    assert.ok(records.some((r) => r.msg === 'backend draining' && r.reason === 'terminating'));
    const next = await dial(listen);
    cleanups.push(() => next.destroy());
    assert.equal((await readUntil(next, '\n')).trim(), String(port));
    assert.equal(b.total, 1, 'new connections go to the ready pod');

    // A bookmark moves the version on; the next watch starts from it.
    api.bookmark();
    const bookmarkRv = api.resourceVersion;
    await new Promise((r) => setTimeout(r, 100));
    api.dropStreams();
    await waitFor(
      () => api.requests.includes(`watch rv=${bookmarkRv} bookmarks=true`),
      5_000,
      'a watch from the bookmark',
    );

    // The slice is deleted: its endpoints leave.
    api.delete('echo-abc');
    await waitFor(() => states()[`127.0.0.2:${port}`] === undefined, 5_000, 'DELETED');
    assert.deepEqual(states(), { [`127.0.0.3:${port}`]: 'active' });
    const metrics = await gateway.metrics.metrics();
    assert.match(metrics, /holdfast_discovery_endpoints\{service="svc",source="kubernetes"\} 1/);
    assert.match(
      metrics,
      /holdfast_discovery_errors_total\{service="svc",source="kubernetes",reason="dropped"\} 1/,
    );
    assert.ok(
      records.some(
        (r) =>
          r.msg === 'discovery failed; keeping the last endpoint set' &&
          /watch stream dropped/.test(String(r.err)),
      ),
    );
  });

  test('410 Gone (as an ERROR event, or as a status) makes it list again and converge on what changed meanwhile', async () => {
    for (const goneAsStatus of [false, true]) {
      const api = new FakeApiServer();
      api.goneAsStatus = goneAsStatus;
      await api.start();
      cleanups.push(() => api.stop());
      api.put(
        slice('echo-1', 'echo', [{ ip: '10.0.0.1' }, { ip: '10.0.0.2' }], [{ name: 'http', port: 8080 }]),
      );
      const { gateway, records, states } = await gatewayFor(api);
      cleanups.push(() => gateway.shutdown());
      await waitFor(() => api.watchers === 1, 5_000, 'the watch');
      // The gateway loses its stream (mid-event), history is compacted and changes happen meanwhile.
      api.dropStreams(true);
      api.put(
        slice('echo-1', 'echo', [{ ip: '10.0.0.2' }, { ip: '10.0.0.3' }], [{ name: 'http', port: 8080 }]),
      );
      api.compact();
      await waitFor(() => states()['10.0.0.3:8080'] === 'active', 5_000, 'the re-list');
      assert.deepEqual(states(), { '10.0.0.2:8080': 'active', '10.0.0.3:8080': 'active' });
      assert.equal(api.requests.filter((r) => r === 'list').length, 2);
      assert.ok(records.some((r) => r.msg === 'kubernetes watch expired; listing again'));
      await gateway.shutdown();
    }
  });

  test('a slow stream delivering events a few bytes at a time is read correctly', async () => {
    const api = new FakeApiServer();
    await api.start();
    cleanups.push(() => api.stop());
    api.put(slice('echo-1', 'echo', [{ ip: '10.0.0.1' }], [{ name: 'http', port: 8080 }]));
    const { gateway, states } = await gatewayFor(api);
    cleanups.push(() => gateway.shutdown());
    await waitFor(() => api.watchers === 1, 5_000, 'the watch');
    api.slow = { chunk: 40, delayMs: 5 };
    api.put(
      slice('echo-1', 'echo', [{ ip: '10.0.0.1' }, { ip: '10.0.0.7' }], [{ name: 'http', port: 8080 }]),
    );
    api.put(slice('echo-2', 'echo', [{ ip: '10.0.0.8' }], [{ name: 'http', port: 8080 }]));
    await waitFor(() => Object.keys(states()).length === 3, 10_000, 'both slow events');
    assert.deepEqual(Object.values(states()), ['active', 'active', 'active']);
  });

  test('a refused list (RBAC) is logged with what to fix, retried with back-off, and the set converges once allowed', async () => {
    const api = new FakeApiServer();
    await api.start();
    cleanups.push(() => api.stop());
    api.failWith = 403;
    api.put(slice('echo-1', 'echo', [{ ip: '10.0.0.1' }], [{ name: 'http', port: 8080 }]));
    const { gateway, records, states } = await gatewayFor(api);
    cleanups.push(() => gateway.shutdown());
    await waitFor(
      () => records.filter((r) => r.msg === 'discovery failed; keeping the last endpoint set').length >= 2,
      5_000,
      'retries',
    );
    const err = records.find((r) => r.msg === 'discovery failed; keeping the last endpoint set')!;
    assert.equal(err.reason, 'http-403');
    assert.match(String(err.err), /get, list and watch on endpointslices/);
    api.failWith = undefined;
    await waitFor(() => states()['10.0.0.1:8080'] === 'active', 5_000, 'recovery');
  });

  test('ports: by name, by number, the only one by default; several without a choice is reported', () => {
    const slices = [
      slice(
        's',
        'echo',
        [{ ip: '10.0.0.1' }, { ip: '10.0.0.2', ready: false, serving: true, terminating: true }],
        [
          { name: 'http', port: 8080 },
          { name: 'grpc', port: 9000 },
        ],
      ),
    ];
    assert.deepEqual(
      endpointsOf(slices, 'grpc').map((s) => [s.address.host, s.address.port, s.draining === true]),
      [
        ['10.0.0.1', 9000, false],
        ['10.0.0.2', 9000, true],
      ],
    );
    assert.deepEqual(
      endpointsOf(slices, 8080).map((s) => s.address.port),
      [8080, 8080],
    );
    const problems: string[] = [];
    assert.deepEqual(
      endpointsOf(slices, undefined, (m) => problems.push(m)),
      [],
    );
    assert.match(problems[0]!, /has 2 ports \(http, grpc\); set backends.kubernetes.port/);
    const single = [slice('s', 'echo', [{ ip: '10.0.0.1' }], [{ port: 7000 }])];
    assert.deepEqual(
      endpointsOf(single, undefined).map((s) => s.address.port),
      [7000],
    );
    // Unset ready means ready (the API's definition); an endpoint in two slices mid-update counts once, ready winning.
    const dup = [
      slice(
        'a',
        'echo',
        [{ ip: '10.0.0.1', ready: false, serving: true, terminating: true }],
        [{ port: 7000 }],
      ),
      slice('b', 'echo', [{ ip: '10.0.0.1' }], [{ port: 7000 }]),
    ];
    assert.deepEqual(
      endpointsOf(dup, undefined).map((s) => s.draining === true),
      [false],
    );
  });
});
