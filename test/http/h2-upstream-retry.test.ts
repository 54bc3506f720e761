/**
 * A request to HTTP/2 backends that one backend refuses is retried on
 * another, and reaches it with exactly the fields a first attempt would have
 * carried: the pseudo-headers once, the client's fields, this hop's
 * forwarding fields.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import {
  connect as h2connect,
  constants as h2c,
  createServer as createH2,
  type Http2Server,
  type IncomingHttpHeaders,
} from 'node:http2';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import type { Gateway } from '../../src/gateway.ts';
import { startGateway } from '../helpers/gateway.ts';
import { freePort } from '../helpers/net.ts';

/** An HTTP/2 backend: refuses every stream (REFUSED_STREAM), or answers with the request's fields as JSON. */
async function backend(refuse: boolean): Promise<{ server: Http2Server; port: number; seen: number }> {
  const server = createH2();
  const b = { server, port: 0, seen: 0 };
  server.on('stream', (stream, headers: IncomingHttpHeaders, _flags, rawHeaders: string[]) => {
    b.seen++;
    stream.on('error', () => {});
    if (refuse) return stream.close(h2c.NGHTTP2_REFUSED_STREAM);
    stream.respond({ ':status': 200, 'content-type': 'application/json' });
    stream.end(JSON.stringify(rawHeaders));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  b.port = (server.address() as AddressInfo).port;
  return b;
}

/** Raw [name, value, …] as name → values, in order. */
function fieldsOf(raw: string[]): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (let i = 0; i < raw.length; i += 2) (out[raw[i]!] ??= []).push(raw[i + 1]!);
  return out;
}

describe('HTTP/2 upstream: a request one backend refuses', () => {
  let refusing: Awaited<ReturnType<typeof backend>>;
  let answering: Awaited<ReturnType<typeof backend>>;
  let gateway: Gateway;
  let port: number;
  before(async () => {
    refusing = await backend(true);
    answering = await backend(false);
    port = await freePort();
    // Round robin from the refusing backend: every other request is refused first, then retried.
    ({ gateway } = await startGateway(`
services:
  - name: web
    protocol: http
    listen: 127.0.0.1:${port}
    balance: round-robin
    upstream: { protocol: http2 }
    backends: { static: [127.0.0.1:${refusing.port}, 127.0.0.1:${answering.port}] }
`));
  });
  after(async () => {
    await gateway.shutdown();
    refusing.server.close();
    answering.server.close();
  });

  it('reaches the next backend from an HTTP/2 client with exactly the fields the client sent plus the forwarding ones', async () => {
    const client = h2connect(`http://127.0.0.1:${port}`);
    try {
      const before = refusing.seen;
      for (let n = 0; n < 6; n++) {
        const stream = client.request({
          ':method': 'GET',
          ':path': `/items/${n}?q=1`,
          ':authority': 'app.example',
          'x-trace': `t${n}`,
          accept: ['text/plain', 'application/json'],
        });
        let body = '';
        stream.setEncoding('utf8');
        stream.on('data', (d: string) => (body += d));
        const [headers] = (await once(stream, 'response')) as [IncomingHttpHeaders];
        await once(stream, 'end');
        assert.equal(headers[':status'], 200);
        assert.deepEqual(fieldsOf(JSON.parse(body) as string[]), {
          ':method': ['GET'],
          ':path': [`/items/${n}?q=1`],
          ':scheme': ['http'],
          ':authority': ['app.example'],
          'x-trace': [`t${n}`],
          accept: ['text/plain', 'application/json'],
          'x-forwarded-for': ['127.0.0.1'],
          'x-forwarded-proto': ['http'],
          forwarded: ['for=127.0.0.1;proto=http;host="app.example"'],
        });
      }
      assert.ok(refusing.seen - before >= 3, 'requests were refused, then retried');
    } finally {
      client.close();
    }
  });

  it('the same from an HTTP/1.1 client', async () => {
    const before = refusing.seen;
    for (let n = 0; n < 6; n++) {
      const res = await request(`http://127.0.0.1:${port}/items/${n}`, {
        headers: { host: 'app.example', 'x-trace': `t${n}`, 'x-forwarded-for': '10.0.0.1' },
      });
      assert.equal(res.statusCode, 200);
      assert.deepEqual(fieldsOf((await res.body.json()) as string[]), {
        ':method': ['GET'],
        ':path': [`/items/${n}`],
        ':scheme': ['http'],
        ':authority': ['app.example'],
        'x-trace': [`t${n}`],
        'x-forwarded-for': ['10.0.0.1, 127.0.0.1'],
        'x-forwarded-proto': ['http'],
        forwarded: ['for=127.0.0.1;proto=http;host="app.example"'],
      });
    }
    assert.ok(refusing.seen - before >= 3, 'requests were refused, then retried');
  });
});
