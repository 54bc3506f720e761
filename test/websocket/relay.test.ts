import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { createServer, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';
import type { Gateway } from '../../src/gateway.ts';
import { startGateway } from '../helpers/gateway.ts';
import { freePort, waitFor } from '../helpers/net.ts';
import {
  closed,
  frame,
  openClient,
  rawClient,
  readCloseCode,
  serviceYaml,
  startWsBackend,
  type WsBackend,
} from './helpers.ts';

describe('WebSocket relay through the gateway', () => {
  let backend: WsBackend;
  let gateway: Gateway;
  let port: number;
  const errors = (): Record<string, number> => gateway.services.get('ws')!.handler.stats.errors ?? {};

  before(async () => {
    backend = await startWsBackend();
    port = await freePort();
    ({ gateway } = await startGateway(
      serviceYaml({
        port,
        backends: [backend.port],
        extra: 'websocket: { maxFrameSize: 4KiB, maxMessageSize: 8KiB }',
      }),
    ));
  });
  after(async () => {
    await gateway.shutdown();
    await backend.close();
  });

  it('echoes text and binary messages, small and large, and tells the backend who the client is', async () => {
    const { ws, backend: reached } = await openClient(port, '/chat?room=1');
    assert.equal(reached, backend.port);
    ws.send('hi there');
    const [text] = (await once(ws, 'message')) as [Buffer];
    assert.equal(text.toString(), 'hi there');
    const big = Buffer.alloc(4000, 7);
    ws.send(big);
    const [bin] = (await once(ws, 'message')) as [Buffer];
    assert.ok(bin.equals(big));
    const req = backend.requests.at(-1)!;
    assert.equal(req['x-forwarded-for'], '127.0.0.1');
    assert.match(String(req.forwarded), /for=127\.0\.0\.1;host="127\.0\.0\.1:\d+";proto=http/);
    ws.close(1000, 'bye');
    assert.equal((await closed(ws)).code, 1000);
  });

  it("passes the peers' own pings and pongs through untouched", async () => {
    const { ws } = await openClient(port);
    ws.ping(Buffer.from('client-ping'));
    const [payload] = (await once(ws, 'pong')) as [Buffer];
    assert.equal(payload.toString(), 'client-ping');
    ws.close();
    await closed(ws);
  });

  it('relays many messages in order across chunk boundaries', async () => {
    const { ws } = await openClient(port);
    const got: string[] = [];
    ws.on('message', (d: Buffer) => got.push(d.toString()));
    for (let i = 0; i < 500; i++) ws.send(`m${i}-${'x'.repeat(i % 300)}`);
    await waitFor(() => got.length === 500, 10_000, 'all echoes');
    for (let i = 0; i < 500; i++) assert.equal(got[i], `m${i}-${'x'.repeat(i % 300)}`);
    ws.close();
    await closed(ws);
  });

  const badFrames: [string, Buffer, number, string][] = [
    [
      'an unmasked client frame',
      frame(0x1, Buffer.from('hi'), { mask: false }),
      1002,
      'ws-unmasked-client-frame',
    ],
    ['a reserved opcode', frame(0x3, Buffer.from('hi')), 1002, 'ws-reserved-opcode'],
    ['a reserved control opcode', frame(0xb, Buffer.from('hi')), 1002, 'ws-reserved-opcode'],
    [
      'reserved bits without an extension',
      frame(0x1, Buffer.from('hi'), { rsv: 2 }),
      1002,
      'ws-reserved-bits',
    ],
    ['a control frame over 125 bytes', frame(0x9, Buffer.alloc(126)), 1002, 'ws-control-frame-too-large'],
    [
      'a fragmented control frame',
      frame(0x9, Buffer.from('p'), { fin: false }),
      1002,
      'ws-fragmented-control-frame',
    ],
    ['an invalid close code', frame(0x8, Buffer.from([0x03, 0xed])), 1002, 'ws-invalid-close-code'],
    ['a close code 1005', frame(0x8, Buffer.from([0x03, 0xed + 0x18])), 1002, 'ws-invalid-close-code'],
    ['a continuation with no message', frame(0x0, Buffer.from('x')), 1002, 'ws-unexpected-continuation'],
    ['a frame over maxFrameSize', frame(0x2, Buffer.alloc(5000)), 1009, 'ws-frame-too-large'],
    [
      'a message over maxMessageSize',
      Buffer.concat([
        frame(0x2, Buffer.alloc(3000), { fin: false }),
        frame(0x0, Buffer.alloc(3000), { fin: false }),
        frame(0x0, Buffer.alloc(3000)),
      ]),
      1009,
      'ws-message-too-large',
    ],
  ];
  for (const [what, bytes, code, reason] of badFrames) {
    it(`closes a client that sends ${what} with ${code}, counts it, and leaves other connections alone`, async () => {
      const bystander = await openClient(port);
      const before = errors()[reason] ?? 0;
      const { socket, response, rest } = await rawClient(port);
      assert.match(response, /^HTTP\/1\.1 101/);
      socket.write(bytes);
      assert.equal(await readCloseCode(socket, rest), code);
      socket.destroy();
      await waitFor(() => (errors()[reason] ?? 0) === before + 1, 5_000, `${reason} counted`);
      bystander.ws.send('still here');
      const [echo] = (await once(bystander.ws, 'message')) as [Buffer];
      assert.equal(echo.toString(), 'still here');
      bystander.ws.close();
      await closed(bystander.ws);
    });
  }

  it('answers handshake errors with 400 and 426', async () => {
    const bad = await rawHttp(
      port,
      'GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n',
    );
    assert.match(bad, /^HTTP\/1\.1 400/);
    const old = await rawHttp(
      port,
      'GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n',
    );
    assert.match(old, /^HTTP\/1\.1 426/);
    assert.match(old, /sec-websocket-version: 13/i);
    assert.ok((errors()['ws-bad-handshake'] ?? 0) >= 1);
    assert.ok((errors()['ws-unsupported-version'] ?? 0) >= 1);
  });
});

describe('WebSocket handshake failures', () => {
  it('answers 502 connect-failed when no backend can be reached and 503 no-backend when every backend is full, saying so in x-holdfast-error', async () => {
    const dead = await freePort();
    const port = await freePort();
    const { gateway } = await startGateway(serviceYaml({ port, backends: [dead] }));
    try {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
      ws.on('error', () => {});
      const [, res] = (await once(ws, 'unexpected-response')) as [unknown, IncomingMessage];
      assert.equal(res.statusCode, 502);
      // A backend's own 502 reaches the client unchanged: the header is what tells the two apart.
      assert.equal(res.headers['x-holdfast-error'], 'connect-failed');
      ws.terminate();
    } finally {
      await gateway.shutdown();
    }
    const backend = await startWsBackend();
    const port2 = await freePort();
    const { gateway: g2 } = await startGateway(
      serviceYaml({
        port: port2,
        backends: [backend.port],
        extra: 'limits: { maxConnectionsPerBackend: 1 }',
      }),
    );
    try {
      const first = await openClient(port2);
      const ws = new WebSocket(`ws://127.0.0.1:${port2}/`);
      ws.on('error', () => {});
      const [, res] = (await once(ws, 'unexpected-response')) as [unknown, IncomingMessage];
      assert.equal(res.statusCode, 503);
      assert.equal(res.headers['x-holdfast-error'], 'no-backend');
      ws.terminate();
      first.ws.close();
      await closed(first.ws);
    } finally {
      await g2.shutdown();
      await backend.close();
    }
  });

  it('closes the client with 1011 when the backend breaks the protocol (a masked server frame)', async () => {
    const server = createServer((s: Socket) => {
      s.on('error', () => {});
      s.once('data', (d: Buffer) => {
        const key = /sec-websocket-key: (.*)\r\n/i.exec(d.toString())![1]!;
        const accept = createAccept(key);
        s.write(
          `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
        );
        s.write(frame(0x1, Buffer.from('masked!'), { mask: true }));
      });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const bport = (server.address() as { port: number }).port;
    const port = await freePort();
    const { gateway } = await startGateway(serviceYaml({ port, backends: [bport] }));
    try {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
      ws.on('error', () => {});
      assert.equal((await closed(ws)).code, 1011);
      assert.equal(gateway.services.get('ws')!.handler.stats.errors!['ws-masked-server-frame'], 1);
    } finally {
      await gateway.shutdown();
      server.close();
    }
  });
});

import { createHash } from 'node:crypto';
function createAccept(key: string): string {
  return createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
}

async function rawHttp(port: number, request: string): Promise<string> {
  const { connect } = await import('node:net');
  const socket = connect({ port, host: '127.0.0.1' });
  socket.on('error', () => {});
  await once(socket, 'connect');
  socket.write(request);
  let got = '';
  socket.on('data', (d: Buffer) => (got += d.toString()));
  await once(socket, 'close');
  return got;
}
