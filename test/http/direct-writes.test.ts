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
import {
  ACCEPTED,
  directWritePending,
  directWrites,
  FAILED,
  QUEUED,
  writeCounts,
  writeDirect,
  writeDirectOutcome,
  WROTE,
} from '../../src/proxy/socket-writes.ts';
import { dial, waitFor } from '../helpers/net.ts';
import { useHttpService } from './backends.ts';

/** A connected pair: `server` is the accepted side (not reading yet with `pauseOnConnect`). */
async function pair(pauseOnConnect = false): Promise<{ client: Socket; server: Socket; close: () => void }> {
  const srv: Server = createServer({ pauseOnConnect });
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

  it('says what became of the bytes: taken whole, accepted by socket.write(), queued, or failed', async () => {
    const { client, server, close } = await pair();
    client.pause();
    // Taken by the kernel at once: the caller may fill the buffer again.
    assert.equal(writeDirectOutcome(server, Buffer.from('whole')), WROTE);
    let i = 0;
    let outcome: number = WROTE;
    while (outcome === WROTE && i++ < 2000) outcome = writeDirectOutcome(server, Buffer.alloc(16_000, 120));
    assert.equal(outcome, QUEUED, 'once the kernel buffers are full, the rest is queued');
    // Behind a queued direct write, socket.write() takes bytes under its high-water mark.
    assert.equal(writeDirectOutcome(server, 'small'), ACCEPTED);
    close();

    // The peer resets before the socket ever read (so Node has not seen it): the handle refuses the write.
    const second = await pair(true);
    second.server.on('error', () => {});
    second.client.resetAndDestroy();
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(writeDirectOutcome(second.server, 'too late'), FAILED);
    assert.equal(second.server.destroyed, true);
    second.close();
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
