/**
 * What a client sees when a request is malformed, too large, or cannot be
 * delivered: the right status, a reason, and headers handled as a proxy must.
 */
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { connect as h2connect } from 'node:http2';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { request } from 'undici';
import type { Gateway } from '../../src/gateway.ts';
import { startGateway } from '../helpers/gateway.ts';
import { dial, freePort, readUntil } from '../helpers/net.ts';
import {
  EchoClient,
  type HttpBackend,
  startGrpcBackend,
  startH1Backend,
  useHttpService,
} from './backends.ts';

async function raw(port: number, text: string): Promise<string> {
  const socket = await dial(port);
  try {
    socket.write(text);
    return await readUntil(socket, '\r\n\r\n');
  } finally {
    socket.destroy();
  }
}

const statusOf = (head: string): number => Number(head.split(' ')[1]);

describe('HTTP/1.1 request smuggling and header limits', () => {
  const svc = useHttpService('web', '    headerLimits: { maxSize: 4096, maxCount: 20 }\n');

  const cases: [string, string, number][] = [
    [
      'conflicting Content-Length headers',
      'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde',
      400,
    ],
    [
      'Content-Length together with Transfer-Encoding',
      'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      400,
    ],
    [
      'malformed chunked encoding',
      'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n',
      400,
    ],
    [
      'an obfuscated Transfer-Encoding',
      'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n',
      400,
    ],
    [
      'headers larger than the size limit',
      `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(5000)}\r\n\r\n`,
      431,
    ],
    [
      'more header fields than the count limit',
      `GET / HTTP/1.1\r\nHost: x\r\n${Array.from({ length: 30 }, (_, i) => `X-H${i}: v\r\n`).join('')}\r\n`,
      431,
    ],
  ];
  for (const [what, text, status] of cases) {
    it(`answers ${status} to ${what}, without reaching a backend`, async () => {
      const before = svc.backend.served;
      const head = await raw(svc.port, text);
      assert.equal(statusOf(head), status, head);
      assert.equal(svc.backend.served, before, 'the backend never saw the request');
    });
  }

  // Heads this hop acts on (an upgrade, TE, a client's own X-Forwarded-For) are
  // handled from a header map rather than passed through: the same refusals.
  const mapPath: [string, string][] = [
    ['an upgrade', 'Upgrade: websocket\r\nConnection: Upgrade\r\n'],
    ['TE: trailers', 'TE: trailers\r\n'],
    ['its own X-Forwarded-For', 'X-Forwarded-For: 203.0.113.9\r\n'],
  ];
  for (const [what, text, status] of cases.filter((c) => c[2] === 400)) {
    for (const [why, lines] of mapPath) {
      it(`answers ${status} to ${what} in a head with ${why}, without reaching a backend`, async () => {
        const before = svc.backend.served;
        const head = await raw(svc.port, text.replace('Host: x\r\n', `Host: x\r\n${lines}`));
        assert.equal(statusOf(head), status, head);
        assert.equal(svc.backend.served, before, 'the backend never saw the request');
      });
    }
  }

  it('strips hop-by-hop headers and appends X-Forwarded-For and Forwarded', async () => {
    const seen = await new Promise<Record<string, string>>((resolve, reject) => {
      const req = httpRequest(
        {
          host: '127.0.0.1',
          port: svc.port,
          path: '/headers',
          headers: {
            'x-forwarded-for': '203.0.113.9',
            'x-secret-hop': '1',
            connection: 'x-secret-hop',
            'keep-alive': 'timeout=5',
          },
        },
        (res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve(JSON.parse(body) as Record<string, string>));
        },
      );
      req.on('error', reject);
      req.end();
    });
    assert.equal(seen['x-forwarded-for'], '203.0.113.9, 127.0.0.1');
    assert.match(seen.forwarded!, /^for=127\.0\.0\.1;proto=http;host="127\.0\.0\.1:\d+"$/);
    assert.equal(seen['x-forwarded-proto'], 'http');
    assert.equal(seen['x-secret-hop'], undefined, 'a header named by Connection is not forwarded');
    assert.equal(seen['keep-alive'], undefined);
  });

  it('streams a large body both ways without buffering it whole', async () => {
    const size = 8 * 1024 * 1024;
    const res = await request(`http://127.0.0.1:${svc.port}/echo`, {
      method: 'POST',
      body: Buffer.alloc(size, 7),
    });
    let n = 0;
    for await (const chunk of res.body) n += (chunk as Buffer).length;
    assert.equal(n, size);
  });
});

describe('errors the proxy generates say why', () => {
  let gateway: Gateway;
  let port: number;
  let deadPort: number;
  let grpcBackend: HttpBackend;
  let grpcPort: number;
  let slowBackend: HttpBackend;
  let slowPort: number;
  before(async () => {
    [port, deadPort, grpcPort, slowPort] = [
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
    ];
    grpcBackend = await startGrpcBackend();
    slowBackend = await startH1Backend();
    ({ gateway } = await startGateway(`
services:
  - name: dead
    protocol: http
    listen: 127.0.0.1:${port}
    backends:
      static: [127.0.0.1:${deadPort}]
  - name: grpc
    protocol: http
    listen: 127.0.0.1:${grpcPort}
    upstream: { protocol: http2 }
    backends:
      static: [127.0.0.1:${deadPort}, 127.0.0.1:${grpcBackend.port}]
  - name: slow
    protocol: http
    listen: 127.0.0.1:${slowPort}
    httpTimeouts: { request: 300ms }
    backends:
      static: [127.0.0.1:${slowBackend.port}]
`));
  });
  after(async () => {
    await gateway.shutdown();
    await grpcBackend.close();
    await slowBackend.close();
  });

  it('502 with x-holdfast-error when no backend accepts the connection', async () => {
    const res = await request(`http://127.0.0.1:${port}/`);
    assert.equal(res.statusCode, 502);
    assert.equal(res.headers['x-holdfast-error'], 'connect-failed');
    assert.match(await res.body.text(), /could not connect to a backend/);
    assert.ok((gateway.services.get('dead')!.handler.stats.errors?.['connect-failed'] ?? 0) >= 1);
  });

  it('the same over HTTP/2', async () => {
    const session = h2connect(`http://127.0.0.1:${port}`);
    try {
      const status = await new Promise<unknown>((resolve, reject) => {
        const req = session.request({ ':path': '/' });
        req.on('response', (h) => resolve([h[':status'], h['x-holdfast-error']]));
        req.on('error', reject);
        req.resume();
      });
      assert.deepEqual(status, [502, 'connect-failed']);
    } finally {
      session.close();
    }
  });

  it('504 when the backend does not answer within the request timeout', async () => {
    const res = await request(`http://127.0.0.1:${slowPort}/slow?ms=2000`);
    assert.equal(res.statusCode, 504);
    assert.equal(res.headers['x-holdfast-error'], 'upstream-timeout');
    await res.body.text();
  });

  it('requests in flight together: each slow one times out on its own deadline, answered ones are untouched', async () => {
    const url = `http://127.0.0.1:${slowPort}/slow?ms=`;
    const delays = [2000, 0, 150, 2000, 50, 2000];
    const started = performance.now();
    const results = await Promise.all(
      delays.map(async (ms, i) => {
        // Staggered starts: the deadlines differ, and answered requests leave the list from its middle.
        await new Promise((r) => setTimeout(r, i * 20));
        const res = await request(`${url}${ms}`);
        await res.body.text();
        return [res.statusCode, performance.now() - started] as const;
      }),
    );
    assert.deepEqual(
      results.map(([status]) => status),
      [504, 200, 200, 504, 200, 504],
    );
    for (const [i, [status, at]] of results.entries()) {
      if (status === 504)
        assert.ok(at >= i * 20 + 290 && at < i * 20 + 1500, `request ${i} timed out at ${at} ms`);
    }
  });

  it('a gRPC call that reached no backend is retried on another one and succeeds', async () => {
    const client = new EchoClient(`127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure());
    try {
      for (let i = 0; i < 10; i++) {
        const reply = await new Promise<Buffer>((resolve, reject) =>
          client.makeUnaryRequest(
            '/test.Echo/Say',
            (b: Buffer) => b,
            (b: Buffer) => b,
            Buffer.from('hi'),
            (err, r) => (err ? reject(err) : resolve(r!)),
          ),
        );
        assert.equal(reply.toString(), String(grpcBackend.port));
      }
    } finally {
      client.close();
    }
  });

  it('grpc-timeout is honoured: DEADLINE_EXCEEDED from the proxy, trailers and statuses from the backend passed through', async () => {
    const client = new EchoClient(`127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure());
    const call = (text: string, deadlineMs?: number): Promise<grpc.ServiceError | null> =>
      new Promise((resolve) =>
        client.makeUnaryRequest(
          '/test.Echo/Say',
          (b: Buffer) => b,
          (b: Buffer) => b,
          Buffer.from(text),
          deadlineMs === undefined ? {} : { deadline: Date.now() + deadlineMs },
          (err) => resolve(err),
        ),
      );
    try {
      const late = await call('sleep:3000', 300);
      assert.equal(late?.code, grpc.status.DEADLINE_EXCEEDED);
      const failed = await call('fail');
      assert.equal(failed?.code, grpc.status.UNAVAILABLE);
      assert.equal(failed?.details, 'asked to fail');
    } finally {
      client.close();
    }
  });
});

describe('gRPC with no backend at all', () => {
  it('UNAVAILABLE with a reason from the proxy', async () => {
    const [port, dead] = [await freePort(), await freePort()];
    const { gateway } = await startGateway(`
services:
  - name: g
    protocol: http
    listen: 127.0.0.1:${port}
    upstream: { protocol: http2 }
    retries: 0
    backends:
      static: [127.0.0.1:${dead}]
`);
    const client = new EchoClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    try {
      const err = await new Promise<grpc.ServiceError | null>((resolve) =>
        client.makeUnaryRequest(
          '/test.Echo/Say',
          (b: Buffer) => b,
          (b: Buffer) => b,
          Buffer.from('x'),
          (e) => resolve(e),
        ),
      );
      assert.equal(err?.code, grpc.status.UNAVAILABLE);
      assert.match(err?.details ?? '', /holdfast/);
    } finally {
      client.close();
      await gateway.shutdown();
    }
  });
});
