/**
 * A response from an HTTP/2 backend whose connection goes away mid-body (the
 * backend killed, its socket closed) is cut short, and the client is told so:
 * a gRPC call ends with UNAVAILABLE and x-holdfast-error, an HTTP/1.1 client
 * does not get the end of a chunked body, an HTTP/2 client gets its stream
 * reset. None of them may see it as a complete response.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { request as httpRequest } from 'node:http';
import { connect as h2connect, createServer as createH2, type Http2Server } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import type { Gateway } from '../../src/gateway.ts';
import { startGateway } from '../helpers/gateway.ts';
import { freePort } from '../helpers/net.ts';
import { EchoClient } from './backends.ts';

/** One length-prefixed gRPC message. */
function grpcMessage(text: string): Buffer {
  const body = Buffer.from(text);
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

/** An HTTP/2 backend that answers the head and part of the body, then drops its connection (no END_STREAM, no trailers). */
async function dyingBackend(): Promise<{ server: Http2Server; port: number }> {
  const server = createH2();
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    const grpcCall = headers['content-type'] === 'application/grpc';
    stream.respond({ ':status': 200, 'content-type': grpcCall ? 'application/grpc' : 'text/plain' });
    stream.write(grpcCall ? grpcMessage('first') : 'partial body ');
    setTimeout(() => stream.session?.socket.destroy(), 100);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as AddressInfo).port };
}

describe('HTTP/2 upstream: a backend connection lost mid-response', () => {
  let backend: Awaited<ReturnType<typeof dyingBackend>>;
  let gateway: Gateway;
  let port: number;
  before(async () => {
    backend = await dyingBackend();
    port = await freePort();
    ({ gateway } = await startGateway(`
services:
  - name: grpc
    protocol: http
    listen: 127.0.0.1:${port}
    upstream: { protocol: http2 }
    backends: { static: [127.0.0.1:${backend.port}] }
`));
  });
  after(async () => {
    await gateway.shutdown();
    backend.server.close();
  });

  it('ends a gRPC stream with UNAVAILABLE and x-holdfast-error, not as a call without a status', async () => {
    const client = new EchoClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as {
      chat(): grpc.ClientDuplexStream<Buffer, Buffer>;
      close(): void;
    };
    try {
      const call = client.chat();
      const got: string[] = [];
      call.on('data', (m: Buffer) => got.push(m.toString()));
      call.on('error', () => {});
      call.write(Buffer.from('hello'));
      const status = await new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve));
      assert.deepEqual(got, ['first']);
      assert.equal(status.code, grpc.status.UNAVAILABLE, status.details);
      assert.deepEqual(status.metadata.get('x-holdfast-error'), ['upstream-reset']);
    } finally {
      client.close();
    }
  });

  it('does not end a chunked HTTP/1.1 response as if it were complete', async () => {
    const outcome = await new Promise<string>((resolve) => {
      const req = httpRequest({ host: '127.0.0.1', port, path: '/' }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve(`complete: ${JSON.stringify(body)}`));
        res.on('error', () => resolve(`cut short after ${JSON.stringify(body)}`));
      });
      req.on('error', (e) => resolve(`request error ${e.message}`));
      req.end();
    });
    assert.equal(outcome, 'cut short after "partial body "');
  });

  it('resets an HTTP/2 client stream instead of ending it', async () => {
    const session = h2connect(`http://127.0.0.1:${port}`);
    session.on('error', () => {});
    try {
      const stream = session.request({ ':path': '/' });
      let body = '';
      stream.setEncoding('utf8');
      stream.on('data', (d: string) => (body += d));
      let ended = false;
      stream.on('end', () => (ended = true));
      stream.on('error', () => {});
      await new Promise((resolve) => stream.on('close', resolve));
      assert.equal(body, 'partial body ');
      assert.equal(ended, false, 'the stream ended as if the response were complete');
      assert.notEqual(stream.rstCode, 0);
    } finally {
      session.destroy();
    }
  });
});
