/**
 * An upgrade pipelined behind a plain HTTP/1.1 request on one connection,
 * sent before the client reads the first (large) response: the client gets
 * the whole response, then the 101, and the connection relays frames. The
 * HTTP/1.1 front switches the socket to reused read buffers; the upgrade
 * hands the same socket to the WebSocket relay.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { WebSocketServer } from 'ws';
import { startGateway } from '../helpers/gateway.ts';
import { dial, freePort } from '../helpers/net.ts';

const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

const BIG = Buffer.alloc(2 * 1024 * 1024, 'x');

describe('pipelined upgrade', () => {
  it('an upgrade queued behind a large response still opens and relays', { timeout: 30_000 }, async () => {
    // One backend serving both a large plain response and WebSocket echo.
    const http = createServer((_req, res) => {
      res.writeHead(200, { 'content-length': BIG.length });
      res.end(BIG);
    });
    const wss = new WebSocketServer({ server: http });
    wss.on('connection', (ws) => ws.on('message', (m, binary) => ws.send(m, { binary })));
    http.listen(0, '127.0.0.1');
    await once(http, 'listening');
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          for (const c of wss.clients) c.terminate();
          wss.close();
          http.closeAllConnections();
          http.close(() => resolve());
        }),
    );
    const port = await freePort();
    const g = await startGateway(`
log: { level: warn }
services:
  - name: mixed
    protocol: http
    listen: 127.0.0.1:${port}
    backends: { static: [127.0.0.1:${(http.address() as AddressInfo).port}] }
`);
    cleanups.push(() => g.gateway.shutdown());

    const socket = await dial(port);
    cleanups.push(() => void socket.destroy());
    socket.pause(); // read nothing yet: the large response stays queued in the gateway
    socket.write(
      'GET /big HTTP/1.1\r\nHost: a\r\n\r\n' +
        'GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
    );
    await sleep(300);
    let got = Buffer.alloc(0);
    socket.on('data', (d: Buffer) => (got = Buffer.concat([got, d])));
    socket.resume();
    const until = async (check: () => boolean): Promise<void> => {
      for (let i = 0; i < 500 && !check(); i++) await sleep(10);
      assert.ok(check(), `got ${got.length} bytes: ${got.subarray(0, 200).toString('latin1')}…`);
    };
    await until(() => got.includes('HTTP/1.1 101'));
    const bodyStart = got.indexOf('\r\n\r\n') + 4;
    const upgradeAt = got.indexOf('HTTP/1.1 101');
    assert.equal(upgradeAt - bodyStart, BIG.length, 'the whole first response, then the 101');
    // A masked text frame "ping!" (mask 0) comes back unmasked.
    const after101 = got.indexOf('\r\n\r\n', upgradeAt) + 4;
    socket.write(Buffer.from([0x81, 0x85, 0, 0, 0, 0, ...Buffer.from('ping!')]));
    await until(() => got.length >= after101 + 7);
    assert.deepEqual([...got.subarray(after101, after101 + 7)], [0x81, 0x05, ...Buffer.from('ping!')]);
  });
});
