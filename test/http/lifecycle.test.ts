/**
 * Liveness and drain: a frozen backend is found by HTTP/2 PING, and SIGTERM
 * lets every request in flight finish while clients are told to go.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { request as httpRequest, Agent } from 'node:http';
import { connect as h2connect } from 'node:http2';
import { describe, it } from 'node:test';
import { startGateway, runHoldfast, writeConfig, NODE } from '../helpers/gateway.ts';
import { freePort, waitFor } from '../helpers/net.ts';
import { startH1Backend } from './backends.ts';

/** An HTTP/2 backend in its own process, so it can be frozen with SIGSTOP. */
const CHILD_BACKEND = `
const http2 = require('node:http2');
const server = http2.createServer();
server.on('stream', (stream, headers) => {
  stream.on('error', () => {});
  const ms = Number(new URL(headers[':path'], 'http://x').searchParams.get('ms') ?? 0);
  setTimeout(() => { if (!stream.destroyed) { stream.respond({ ':status': 200 }); stream.end('ok'); } }, ms);
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
`;

describe('HTTP/2 PING keepalive', () => {
  it('finds a backend frozen with SIGSTOP and fails its in-flight request at once instead of waiting', async () => {
    const child = spawn(NODE, ['-e', CHILD_BACKEND], { stdio: ['ignore', 'pipe', 'inherit'] });
    const [line] = (await once(child.stdout, 'data')) as [Buffer];
    const backendPort = Number(line.toString().trim());
    const port = await freePort();
    const { gateway, records } = await startGateway(`
services:
  - name: grpcish
    protocol: http
    listen: 127.0.0.1:${port}
    upstream: { protocol: http2 }
    http2: { ping: { interval: 200ms, timeout: 400ms } }
    httpTimeouts: { request: 30s }
    backends:
      static: [127.0.0.1:${backendPort}]
`);
    const session = h2connect(`http://127.0.0.1:${port}`);
    try {
      const get = (path: string): Promise<{ status: unknown; error: unknown; ms: number }> =>
        new Promise((resolve, reject) => {
          const t0 = Date.now();
          const req = session.request({ ':path': path });
          req.on('response', (h) => {
            req.resume();
            req.on('end', () =>
              resolve({ status: h[':status'], error: h['x-holdfast-error'], ms: Date.now() - t0 }),
            );
          });
          req.on('error', reject);
        });
      assert.equal((await get('/')).status, 200, 'the upstream session works before the freeze');
      const inflight = get('/?ms=5000');
      await new Promise((r) => setTimeout(r, 100));
      child.kill('SIGSTOP');
      const result = await inflight;
      assert.equal(result.status, 502);
      assert.equal(result.error, 'upstream-reset');
      assert.ok(
        result.ms < 4000,
        `the frozen backend was found by PING in ${result.ms} ms, well before its reply was due`,
      );
      assert.ok(records.some((r) => r.msg === 'backend HTTP/2 session missed its PING ACK; closing it'));
    } finally {
      session.close();
      child.kill('SIGCONT');
      child.kill('SIGKILL');
      await gateway.shutdown();
    }
  });
});

describe('SIGTERM drain', () => {
  it(
    'every request in flight completes; HTTP/2 clients get GOAWAY and HTTP/1.1 clients Connection: close',
    { timeout: 30_000 },
    async () => {
      const backends = await Promise.all([startH1Backend(), startH1Backend()]);
      const port = await freePort();
      const file = writeConfig(`
services:
  - name: web
    protocol: http
    listen: 127.0.0.1:${port}
    drain: { timeout: 10s }
    backends:
      static: [${backends.map((b) => `127.0.0.1:${b.port}`).join(', ')}]
`);
      const proc = runHoldfast(['serve', '--config', file, '--json']);
      const agent = new Agent({ keepAlive: true, maxSockets: 2 });
      await proc.waitForLog('holdfast started');
      const sessions = [h2connect(`http://127.0.0.1:${port}`), h2connect(`http://127.0.0.1:${port}`)];
      try {
        const told = new Set<unknown>();
        for (const s of sessions) {
          s.on('goaway', () => told.add(s));
          s.on('error', () => {});
        }
        const h2get = (i: number): Promise<number> =>
          new Promise((resolve, reject) => {
            const req = sessions[i % 2]!.request({ ':path': '/slow?ms=700' });
            req.on('response', (h) => {
              req.resume();
              req.on('end', () => resolve(Number(h[':status'])));
            });
            req.on('error', reject);
          });
        const h1get = (): Promise<[number, string | undefined]> =>
          new Promise((resolve, reject) => {
            const req = httpRequest({ host: '127.0.0.1', port, path: '/slow?ms=700', agent }, (res) => {
              res.resume();
              res.on('end', () => resolve([res.statusCode ?? 0, res.headers.connection]));
            });
            req.on('error', reject);
            req.end();
          });
        const h2 = Array.from({ length: 20 }, (_, i) => h2get(i));
        const h1 = [h1get(), h1get()];
        await waitFor(
          () => backends.reduce((n, b) => n + b.served, 0) >= 22,
          5_000,
          'all requests at the backends',
        );
        proc.kill('SIGTERM');
        const h2statuses = await Promise.all(h2);
        const h1results = await Promise.all(h1);
        assert.deepEqual(h2statuses, Array(20).fill(200), 'no HTTP/2 request failed');
        assert.deepEqual(
          h1results.map((r) => r[0]),
          [200, 200],
        );
        assert.ok(
          h1results.every((r) => r[1] === 'close'),
          'HTTP/1.1 responses during drain carry Connection: close',
        );
        await waitFor(() => told.size === 2, 5_000, 'GOAWAY on both client sessions');
        const exit = await proc.exited();
        assert.equal(exit.code, 0);
      } finally {
        for (const s of sessions) s.destroy();
        agent.destroy();
        proc.kill('SIGKILL');
        await Promise.all(backends.map((b) => b.close()));
      }
    },
  );
});
