/**
 * Writes straight to socket handles (socket-writes.ts): taken on the Node we
 * ship, in order and complete when the kernel cannot take everything at once
 * (a client that stops reading), with backpressure, and through the gateway
 * under pipelined bursts.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { directWritePending, directWrites, writeCounts, writeDirect } from '../../src/proxy/socket-writes.ts';
import { dial, waitFor } from '../helpers/net.ts';
import { useHttpService } from './backends.ts';

/** A connected pair: `server` is the accepted side. */
async function pair(): Promise<{ client: Socket; server: Socket; close: () => void }> {
  const srv: Server = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const accepted = once(srv, 'connection') as Promise<[Socket]>;
  const client = await dial((srv.address() as { port: number }).port);
  const [server] = await accepted;
  return {
    client,
    server,
    close: () => {
      client.destroy();
      server.destroy();
      srv.close();
    },
  };
}

describe('direct socket writes', () => {
  it('on this Node, writes go straight to the handle (no silent fallback)', async () => {
    // The direct path relies on Node internals and falls back to socket.write
    // when they change: correct but slower. This catches that on a Node upgrade.
    assert.equal(directWrites(), true);
    const { client, server, close } = await pair();
    let got = '';
    client.on('data', (d: Buffer) => (got += d.toString('latin1')));
    const before = writeCounts();
    assert.equal(writeDirect(server, 'a latin1 string, '), true);
    assert.equal(writeDirect(server, Buffer.from('then bytes')), true);
    assert.equal(writeCounts().direct, before.direct + 2);
    assert.equal(writeCounts().plain, before.plain);
    await waitFor(() => got === 'a latin1 string, then bytes');
    assert.equal(server.bytesWritten, 'a latin1 string, then bytes'.length);
    close();
  });

  it('a peer that stops reading: bytes stay in order, write() says wait, and drain comes once all is flushed', async () => {
    const { client, server, close } = await pair();
    client.pause();
    const chunk = (i: number): Buffer => Buffer.alloc(16_000, 97 + (i % 26));
    let i = 0;
    let full = false;
    // Write until the kernel's buffers are full: the rest is queued.
    while (!full && i < 2000) full = !writeDirect(server, chunk(i++));
    assert.ok(full, 'the kernel buffers filled up');
    assert.ok(directWritePending(server) || server.writableLength > 0);
    // More writes while one is in flight go behind it, through socket.write.
    const plainBefore = writeCounts().plain;
    for (let k = 0; k < 5; k++) writeDirect(server, chunk(i++));
    assert.equal(writeCounts().plain, plainBefore + 5);
    const drained = once(server, 'drain');
    const total = i * 16_000;
    const received: Buffer[] = [];
    let n = 0;
    client.on('data', (d: Buffer) => {
      received.push(d);
      n += d.length;
    });
    client.resume();
    await drained;
    await waitFor(() => n === total, 10_000, 'every byte');
    const all = Buffer.concat(received);
    for (let k = 0; k < i; k++) {
      assert.equal(all[k * 16_000], 97 + (k % 26), `chunk ${k} in its place`);
      assert.equal(all[k * 16_000 + 15_999], 97 + (k % 26));
    }
    assert.equal(directWritePending(server), false);
    // Nothing queued any more: direct again.
    assert.equal(writeDirect(server, 'x'), true);
    close();
  });

  it('end() after a queued direct write still delivers everything before the FIN', async () => {
    const { client, server, close } = await pair();
    client.pause();
    let i = 0;
    while (writeDirect(server, Buffer.alloc(16_000, 120)) && i < 2000) i++;
    server.end('the end');
    const received: Buffer[] = [];
    client.on('data', (d: Buffer) => received.push(d));
    client.resume();
    await once(client, 'end');
    const all = Buffer.concat(received);
    assert.equal(all.length, (i + 1) * 16_000 + 'the end'.length);
    assert.equal(all.subarray(all.length - 7).toString(), 'the end');
    close();
  });
});

describe('direct writes through the gateway', () => {
  const svc = useHttpService('burst', '', (req, res) => {
    req.resume();
    const n = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('n'));
    // Bodies under and over the one-write size, each saying which request it answers.
    const size = n % 4 === 0 ? 40_000 : 6_000;
    res.end(`<${n}>`.padEnd(size, '.'));
    return true;
  });

  it('a large pipelined burst read slowly is answered whole and in order', async () => {
    const socket = await dial(svc.port);
    socket.pause();
    const count = 400;
    let burst = '';
    for (let n = 0; n < count; n++) burst += `GET /?n=${n} HTTP/1.1\r\nHost: h\r\n\r\n`;
    socket.write(burst);
    // Let the gateway fill the socket's buffers before anything is read.
    await new Promise((r) => setTimeout(r, 300));
    const received: Buffer[] = [];
    socket.on('data', (d: Buffer) => received.push(d));
    socket.resume();
    let expected = 0;
    for (let n = 0; n < count; n++) expected += n % 4 === 0 ? 40_000 : 6_000;
    const bodies = (): number => {
      const text = Buffer.concat(received).toString('latin1');
      return text.split('HTTP/1.1 200 OK\r\n').length - 1;
    };
    await waitFor(() => bodies() === count, 20_000, 'every response');
    const text = Buffer.concat(received).toString('latin1');
    const responses = text.split('HTTP/1.1 200 OK\r\n').slice(1);
    let bodyBytes = 0;
    responses.forEach((r, n) => {
      const body = r.slice(r.indexOf('\r\n\r\n') + 4);
      assert.ok(body.startsWith(`<${n}>`), `response ${n} answers request ${n}: ${body.slice(0, 12)}`);
      bodyBytes += body.length;
    });
    assert.equal(bodyBytes, expected);
    socket.destroy();
  });
});
