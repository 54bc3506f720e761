/**
 * Per-request balancing: two client connections, five backends, 5,000
 * requests: every backend serves 20 % ± 3 %, over HTTP/1.1 keep-alive,
 * HTTP/2 and gRPC.
 */
import assert from 'node:assert/strict';
import { connect as h2connect, type ClientHttp2Session } from 'node:http2';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { Pool } from 'undici';
import type { Gateway } from '../../src/gateway.ts';
import { startGateway } from '../helpers/gateway.ts';
import { freePort } from '../helpers/net.ts';
import { EchoClient, type HttpBackend, startGrpcBackend, startH1Backend } from './backends.ts';

const TOTAL = 5_000;

export function gatewayYaml(port: number, backends: readonly HttpBackend[], extra = ''): string {
  return `
services:
  - name: web
    protocol: http
    listen: 127.0.0.1:${port}
    backends:
      static: [${backends.map((b) => `127.0.0.1:${b.port}`).join(', ')}]
${extra}`;
}

function assertEven(backends: readonly HttpBackend[], total: number): void {
  const shares = backends.map((b) => b.served / total);
  for (const share of shares) {
    assert.ok(
      Math.abs(share - 0.2) <= 0.03,
      `each backend should serve 20 % ± 3 %, got ${shares.map((s) => (s * 100).toFixed(1)).join(' / ')} %`,
    );
  }
}

/** Run `total` requests over `lanes` concurrent loops. */
async function spread(total: number, lanes: number, one: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: lanes }, async () => {
      while (next < total) await one(next++);
    }),
  );
}

describe('HTTP/1.1 keep-alive: two client connections spread their requests over five backends', () => {
  let backends: HttpBackend[];
  let gateway: Gateway;
  let port: number;
  before(async () => {
    backends = await Promise.all(Array.from({ length: 5 }, () => startH1Backend()));
    port = await freePort();
    ({ gateway } = await startGateway(gatewayYaml(port, backends)));
  });
  after(async () => {
    await gateway.shutdown();
    await Promise.all(backends.map((b) => b.close()));
  });

  it('each backend serves 20 % ± 3 % of 5,000 requests from two undici connections', async () => {
    const pool = new Pool(`http://127.0.0.1:${port}`, { connections: 2, pipelining: 1 });
    let sockets = 0;
    pool.on('connect', () => sockets++);
    try {
      await spread(TOTAL, 4, async () => {
        const res = await pool.request({ path: '/', method: 'GET' });
        assert.equal(res.statusCode, 200);
        await res.body.text();
      });
    } finally {
      await pool.close();
    }
    assert.equal(sockets, 2, 'the client used two keep-alive connections');
    assertEven(backends, TOTAL);
  });
});

describe('HTTP/2: two client sessions spread their streams over five backends', () => {
  let backends: HttpBackend[];
  let gateway: Gateway;
  let port: number;
  before(async () => {
    backends = await Promise.all(Array.from({ length: 5 }, () => startH1Backend()));
    port = await freePort();
    ({ gateway } = await startGateway(gatewayYaml(port, backends)));
  });
  after(async () => {
    await gateway.shutdown();
    await Promise.all(backends.map((b) => b.close()));
  });

  it('each backend serves 20 % ± 3 % of 5,000 streams from two node:http2 sessions', async () => {
    const sessions: ClientHttp2Session[] = [
      h2connect(`http://127.0.0.1:${port}`),
      h2connect(`http://127.0.0.1:${port}`),
    ];
    try {
      await spread(TOTAL, 8, async (i) => {
        const session = sessions[i % 2]!;
        await new Promise<void>((resolve, reject) => {
          const req = session.request({ ':path': '/' });
          req.on('response', (h) => {
            if (h[':status'] !== 200) reject(new Error(`status ${h[':status']}`));
          });
          req.on('error', reject);
          req.resume();
          req.on('end', resolve);
        });
      });
    } finally {
      for (const s of sessions) s.close();
    }
    assertEven(backends, TOTAL);
  });
});

describe('gRPC over HTTP/2 upstreams: two channels spread their calls over five backends', () => {
  let backends: HttpBackend[];
  let gateway: Gateway;
  let port: number;
  before(async () => {
    backends = await Promise.all(Array.from({ length: 5 }, () => startGrpcBackend()));
    port = await freePort();
    ({ gateway } = await startGateway(gatewayYaml(port, backends, '    upstream: { protocol: http2 }\n')));
  });
  after(async () => {
    await gateway.shutdown();
    await Promise.all(backends.map((b) => b.close()));
  });

  it('each backend serves 20 % ± 3 % of 5,000 unary calls from two grpc-js channels', async () => {
    // Distinct channel options keep grpc-js from sharing one subchannel between the clients.
    const clients = [0, 1].map(
      (n) =>
        new EchoClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
          'grpc.holdfast-test-channel': n,
        }),
    );
    try {
      await spread(TOTAL, 8, async (i) => {
        const client = clients[i % 2]!;
        await new Promise<void>((resolve, reject) =>
          client.makeUnaryRequest(
            '/test.Echo/Say',
            (b: Buffer) => b,
            (b: Buffer) => b,
            Buffer.from('hi'),
            (err: grpc.ServiceError | null) => (err ? reject(err) : resolve()),
          ),
        );
      });
    } finally {
      for (const c of clients) c.close();
    }
    assertEven(backends, TOTAL);
  });

  it('a bidirectional stream relays every message both ways and counts on its backend while open', async () => {
    const client = new EchoClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    try {
      const call = client.makeBidiStreamRequest(
        '/test.Echo/Chat',
        (b: Buffer) => b,
        (b: Buffer) => b,
      );
      const got: string[] = [];
      call.on('data', (m: Buffer) => got.push(m.toString()));
      const ended = new Promise<void>((resolve, reject) => {
        call.on('end', resolve);
        call.on('error', reject);
      });
      for (let i = 0; i < 50; i++) call.write(Buffer.from(`m${i}`));
      const cluster = gateway.services.get('web')!.cluster;
      const start = Date.now();
      while (got.length < 50 && Date.now() - start < 10_000) await new Promise((r) => setTimeout(r, 20));
      assert.equal(cluster.connectionCount, 1, 'the open stream is registered on one backend');
      call.end();
      await ended;
      assert.equal(got.length, 50);
      const prefix = got[0]!.split(':')[0];
      assert.ok(
        got.every((m, i) => m === `${prefix}:m${i}`),
        'messages arrive in order from one backend',
      );
      assert.equal(cluster.connectionCount, 0, 'the finished stream is unregistered');
    } finally {
      client.close();
    }
  });
});
