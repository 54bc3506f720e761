import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type ServerOpts, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startGateway } from '../helpers/gateway.ts';
import {
  dial,
  type EchoBackend,
  freePort,
  freePorts,
  readUntil,
  startEchoBackend,
  waitFor,
} from '../helpers/net.ts';

const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function backends(n: number, opts: { allowHalfOpen?: boolean } = {}): Promise<EchoBackend[]> {
  const list = await Promise.all(Array.from({ length: n }, () => startEchoBackend({ greet: true, ...opts })));
  for (const b of list) cleanups.push(() => b.close());
  return list;
}

async function gateway(yaml: string) {
  const g = await startGateway(yaml);
  cleanups.push(() => g.gateway.shutdown());
  return g;
}

/** A gateway service in front of one backend whose connections `serve` handles; returns the service's port. */
async function serviceFor(name: string, serve: (s: Socket) => void, opts: ServerOpts = {}): Promise<number> {
  const port = await freePort();
  const backendPort = await freePort();
  const server = createServer(opts, serve);
  server.listen(backendPort, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(() => void server.close());
  await gateway(`
services:
  - name: ${name}
    listen: 127.0.0.1:${port}
    backends: { static: [127.0.0.1:${backendPort}] }
`);
  return port;
}

async function openMany(port: number, n: number): Promise<Socket[]> {
  const sockets: Socket[] = [];
  for (let i = 0; i < n; i++) {
    const s = await dial(port);
    await readUntil(s, '\n'); // greeting: the connection reached a backend
    sockets.push(s);
    cleanups.push(() => void s.destroy());
  }
  return sockets;
}

describe('TCP balancing of long-lived connections', () => {
  test('30 connections over 3 backends with least-connections land 10/10/10', async () => {
    const bs = await backends(3);
    const port = await freePort();
    await gateway(`
services:
  - name: even
    listen: 127.0.0.1:${port}
    balance: least-connections
    backends: { static: [${bs.map((b) => `127.0.0.1:${b.port}`).join(', ')}] }
`);
    await openMany(port, 30);
    await waitFor(() => bs.every((b) => b.sockets.size === 10), 5_000, '10/10/10');
    assert.deepEqual(
      bs.map((b) => b.sockets.size),
      [10, 10, 10],
    );
  });

  test('weights are honoured: weight 2 holds twice the connections of weight 1', async () => {
    const bs = await backends(3);
    const port = await freePort();
    await gateway(`
services:
  - name: weighted
    listen: 127.0.0.1:${port}
    backends:
      static:
        - 127.0.0.1:${bs[0]!.port}
        - { address: 127.0.0.1:${bs[1]!.port}, weight: 2 }
        - { address: 127.0.0.1:${bs[2]!.port}, weight: 3 }
`);
    await openMany(port, 30);
    await waitFor(() => bs.reduce((n, b) => n + b.sockets.size, 0) === 30);
    assert.deepEqual(
      bs.map((b) => b.sockets.size),
      [5, 10, 15],
    );
  });

  test('a refusing backend is skipped and every client still gets through', async () => {
    const bs = await backends(2);
    const dead = await freePort(); // nothing listens here: connect is refused
    const port = await freePort();
    const { gateway: g } = await gateway(`
services:
  - name: skip
    listen: 127.0.0.1:${port}
    backends: { static: [127.0.0.1:${dead}, 127.0.0.1:${bs[0]!.port}, 127.0.0.1:${bs[1]!.port}] }
`);
    await openMany(port, 10);
    assert.equal(bs[0]!.sockets.size + bs[1]!.sockets.size, 10);
    const metrics = await g.metrics.metrics();
    assert.match(
      metrics,
      new RegExp(
        `holdfast_backend_connect_failures_total\\{service="skip",backend="127.0.0.1:${dead}"\\} [1-9]`,
      ),
    );
  });

  test('half-close passes through: the client FIN reaches the backend, which can still answer', async () => {
    // A backend that answers only after the client has finished sending (like `nc -q`, or HTTP/1.0 bodies).
    const port = await serviceFor(
      'halfclose',
      (s) => {
        let got = '';
        s.on('data', (d: Buffer) => (got += d.toString()));
        s.on('end', () => s.end(`received ${got.length} bytes after your FIN`));
      },
      { allowHalfOpen: true },
    );
    const client = await dial(port);
    client.end('hello world');
    let reply = '';
    client.on('data', (d: Buffer) => (reply += d.toString()));
    await once(client, 'end');
    assert.equal(reply, 'received 11 bytes after your FIN');
  });

  test("a backend's reset reaches the client as a reset (ECONNRESET), not as a clean end", async () => {
    // A backend that aborts the connection (RST) when asked to.
    const port = await serviceFor('resets', (s) => {
      s.on('error', () => {});
      s.on('data', (d: Buffer) => {
        if (d.toString().includes('reset')) s.resetAndDestroy();
      });
    });
    const client = await dial(port);
    let ended = false;
    client.on('end', () => (ended = true));
    const failed = once(client, 'error') as Promise<[NodeJS.ErrnoException]>;
    client.write('reset please');
    const [err] = await failed;
    assert.equal(err.code, 'ECONNRESET');
    assert.equal(ended, false);
  });

  test('a client over the service connection limit is closed at once and counted; the others are unaffected', async () => {
    const bs = await backends(1);
    const port = await freePort();
    const { gateway: g } = await gateway(`
services:
  - name: limited
    listen: 127.0.0.1:${port}
    limits: { maxConnections: 2 }
    backends: { static: [127.0.0.1:${bs[0]!.port}] }
`);
    const [a, b] = await openMany(port, 2);
    const extra = await dial(port);
    await once(extra, 'close');
    a!.write('still here\n');
    assert.match(await readUntil(a!, 'still here'), /still here/);
    b!.write('me too\n');
    assert.match(await readUntil(b!, 'me too'), /me too/);
    assert.match(
      await g.metrics.metrics(),
      /holdfast_connections_refused_total\{service="limited",reason="limit"\} 1/,
    );
  });

  test('a backend at its own connection limit is passed over for the next one', async () => {
    const bs = await backends(2);
    const port = await freePort();
    await gateway(`
services:
  - name: perbackend
    listen: 127.0.0.1:${port}
    balance: round-robin
    backends:
      static: [{ address: 127.0.0.1:${bs[0]!.port}, maxConnections: 1 }, 127.0.0.1:${bs[1]!.port}]
`);
    await openMany(port, 6);
    assert.equal(bs[0]!.sockets.size, 1);
    assert.equal(bs[1]!.sockets.size, 5);
  });

  test('upstream connections use the source addresses round the list', async () => {
    const bs = await backends(1);
    const port = await freePort();
    await gateway(`
services:
  - name: sources
    listen: 127.0.0.1:${port}
    sourceAddresses: [127.0.0.2, 127.0.0.3]
    backends: { static: [127.0.0.1:${bs[0]!.port}] }
`);
    await openMany(port, 4);
    const seen = [...bs[0]!.sockets].map((s) => s.remoteAddress);
    assert.deepEqual(seen.sort(), ['127.0.0.2', '127.0.0.2', '127.0.0.3', '127.0.0.3']);
  });

  test('an idle connection is closed after the idle timeout', async () => {
    const bs = await backends(1);
    const port = await freePort();
    await gateway(`
services:
  - name: idle
    listen: 127.0.0.1:${port}
    timeouts: { idle: 300ms }
    backends: { static: [127.0.0.1:${bs[0]!.port}] }
`);
    const [s] = await openMany(port, 1);
    const started = Date.now();
    await once(s!, 'close');
    assert.ok(Date.now() - started < 3_000);
    await waitFor(() => bs[0]!.sockets.size === 0, 3_000, 'backend side closed too');
  });

  test('the admin listener serves metrics per backend and /healthz', async () => {
    const bs = await backends(2);
    const [port = 0, admin = 0] = await freePorts(2);
    const { gateway: g } = await gateway(`
admin: { listen: 127.0.0.1:${admin} }
services:
  - name: observed
    listen: 127.0.0.1:${port}
    backends: { static: [127.0.0.1:${bs[0]!.port}, 127.0.0.1:${bs[1]!.port}] }
`);
    const sockets = await openMany(port, 4);
    sockets[0]!.write('x'.repeat(1000));
    await readUntil(sockets[0]!, 'x'.repeat(1000));
    const metrics = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
    for (const b of bs) {
      assert.match(
        metrics,
        new RegExp(`holdfast_backend_connections\\{service="observed",backend="127.0.0.1:${b.port}"\\} 2`),
      );
    }
    assert.match(
      metrics,
      /holdfast_backend_bytes_total\{service="observed",backend="[^"]+",direction="out"\} 1000/,
    );
    assert.match(metrics, /holdfast_connections_accepted_total\{service="observed",protocol="tcp"\} 4/);
    const health = await fetch(`http://127.0.0.1:${admin}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(g.adminPort, admin);
  });

  test("a closed connection's bytes still count for its backend, whichever side closed first", async () => {
    const [port = 0, admin = 0, backendPort = 0] = await freePorts(3);
    // Echoes 1000 bytes, then closes first (the backend side of the relay closes before the client's).
    const server = createServer((s) => {
      let got = 0;
      s.on('data', (d: Buffer) => {
        got += d.length;
        if (got >= 1000) s.end('y'.repeat(1000));
      });
    });
    server.listen(backendPort, '127.0.0.1');
    await once(server, 'listening');
    cleanups.push(() => void server.close());
    await gateway(`
admin: { listen: 127.0.0.1:${admin} }
services:
  - name: closing
    listen: 127.0.0.1:${port}
    backends: { static: [127.0.0.1:${backendPort}] }
`);
    const client = await dial(port);
    client.write('x'.repeat(1000));
    await readUntil(client, 'y'.repeat(1000));
    await once(client, 'end');
    client.end();
    await once(client, 'close');
    const line = (direction: string): RegExp =>
      new RegExp(
        `holdfast_backend_bytes_total\\{service="closing",backend="[^"]+",direction="${direction}"\\} 1000\\b`,
      );
    await waitFor(
      async () => {
        const metrics = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
        return line('in').test(metrics) && line('out').test(metrics);
      },
      3_000,
      'bytes in and out counted once the connection closed',
    );
  });

  test('maglev over the source IP sends every connection of one client address to the same backend', async () => {
    const bs = await backends(3);
    const port = await freePort();
    await gateway(`
services:
  - name: sticky
    listen: 127.0.0.1:${port}
    balance: maglev
    hashKey: source-ip
    backends: { static: [${bs.map((b) => `127.0.0.1:${b.port}`).join(', ')}] }
`);
    const landed = new Map<string, Set<string>>();
    for (const client of ['127.0.0.11', '127.0.0.12', '127.0.0.13', '127.0.0.14']) {
      for (let i = 0; i < 4; i++) {
        const s = await dial(port, '127.0.0.1', { localAddress: client });
        cleanups.push(() => void s.destroy());
        const greeting = await readUntil(s, '\n');
        (landed.get(client) ?? landed.set(client, new Set()).get(client)!).add(greeting.trim());
      }
    }
    for (const [client, seen] of landed)
      assert.equal(seen.size, 1, `${client} reached ${[...seen].join(', ')}`);
  });

  test('persistence keeps a client network on its backend although least-connections would move it', async () => {
    const bs = await backends(2);
    const port = await freePort();
    await gateway(`
services:
  - name: persistent
    listen: 127.0.0.1:${port}
    persistence: { timeout: 5m, netmask: 24 }
    backends: { static: [127.0.0.1:${bs[0]!.port}, 127.0.0.1:${bs[1]!.port}] }
`);
    const seen = new Set<string>();
    for (const client of [
      '127.0.0.21',
      '127.0.0.22',
      '127.0.0.23',
      '127.0.0.24',
      '127.0.0.25',
      '127.0.0.26',
    ]) {
      const s = await dial(port, '127.0.0.1', { localAddress: client });
      cleanups.push(() => void s.destroy());
      seen.add((await readUntil(s, '\n')).trim());
    }
    assert.equal(seen.size, 1, 'one /24 network, one backend');
  });

  test('a persistence entry outlives its timeout while the client holds a connection', async () => {
    const bs = await backends(2);
    const port = await freePort();
    await gateway(`
services:
  - name: held
    listen: 127.0.0.1:${port}
    persistence: { timeout: 200ms }
    backends: { static: [127.0.0.1:${bs[0]!.port}, 127.0.0.1:${bs[1]!.port}] }
`);
    const open = async (): Promise<{ socket: Socket; backend: string }> => {
      const socket = await dial(port, '127.0.0.1', { localAddress: '127.0.0.31' });
      cleanups.push(() => void socket.destroy());
      return { socket, backend: (await readUntil(socket, '\n')).trim() };
    };
    const first = await open();
    await sleep(500); // well past the timeout, the first connection still open
    const second = await open();
    assert.equal(second.backend, first.backend, 'least-connections alone would pick the other backend');
    // (Expiry a timeout after the last connection closes: test/balance/persistence.test.ts.)
  });
});
