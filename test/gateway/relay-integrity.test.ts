/**
 * The relays read into reused buffers (src/proxy/socket-reads.ts): quiet
 * sockets share one, busy ones own one while a view of it is queued. These
 * tests drive many connections at once through both relays, with bursts,
 * trickles and slow readers, and check every byte arrives in order.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { WebSocket } from 'ws';
import { ownedReadBuffers, readsOwnBuffers, readThrough } from '../../src/proxy/socket-reads.ts';
import { openLegs } from '../../src/proxy/stream-leg.ts';
import { startGateway } from '../helpers/gateway.ts';
import { dial, freePort, startEchoBackend } from '../helpers/net.ts';
import { serviceYaml, startWsBackend } from '../websocket/helpers.ts';

const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

/** Chunk sizes that move sockets between quiet and busy: bursts of 64 KiB and more, and trickles. */
function sizes(i: number): number[] {
  return [1, 70_000, 17, 16_384, 300_000, 3, 2_047, 65_536, 5, 131_072, 900].map((n) => n + i);
}

/** Send `total` bytes in the chunk pattern of `i`; resolve with their digest. */
async function sendPattern(socket: Socket, i: number, total: number): Promise<string> {
  const hash = createHash('sha256');
  const pattern = sizes(i);
  let sent = 0;
  for (let k = 0; sent < total; k++) {
    const chunk = randomBytes(Math.min(pattern[k % pattern.length]!, total - sent));
    hash.update(chunk);
    sent += chunk.length;
    if (!socket.write(chunk)) await once(socket, 'drain');
    if (k % 7 === 0) await sleep(1); // let the relay see a quiet moment
  }
  return hash.digest('hex');
}

/** Read `total` bytes, pausing now and then (a slow reader); resolve with their digest. */
function receive(socket: Socket, total: number, slow: boolean): Promise<string> {
  const hash = createHash('sha256');
  let got = 0;
  let sinceStall = 0;
  if (slow) {
    // Read nothing for a while: the kernel buffers fill and the relay's writes queue.
    socket.pause();
    setTimeout(() => socket.resume(), 300);
  }
  return new Promise((resolve, reject) => {
    socket.on('error', reject);
    socket.on('data', (d: Buffer) => {
      hash.update(d);
      got += d.length;
      sinceStall += d.length;
      if (slow && sinceStall > 1024 * 1024) {
        sinceStall = 0;
        socket.pause();
        setTimeout(() => socket.resume(), 30);
      }
      if (got >= total) resolve(hash.digest('hex'));
    });
    socket.on('close', () => {
      if (got < total) reject(new Error(`closed after ${got} of ${total} bytes`));
    });
  });
}

describe('relayed bytes arrive intact', () => {
  test(
    '12 concurrent TCP connections with bursts, trickles and slow readers echo byte for byte',
    { timeout: 30_000 },
    async () => {
      const backend = await startEchoBackend();
      cleanups.push(() => backend.close());
      const port = await freePort();
      const g = await startGateway(`
log: { level: warn }
services:
  - name: bulk
    listen: 127.0.0.1:${port}
    backends: { static: [127.0.0.1:${backend.port}] }
`);
      cleanups.push(() => g.gateway.shutdown());
      const total = 6 * 1024 * 1024;
      // While they relay, both sides of every connection are driven directly (no net.Socket).
      let mostLean = 0;
      let anySocketLeg = false;
      const sampler = setInterval(() => {
        mostLean = Math.max(mostLean, openLegs().handle);
        anySocketLeg ||= openLegs().socket > 0;
      }, 5);
      await Promise.all(
        Array.from({ length: 12 }, async (_, i) => {
          const s = await dial(port);
          cleanups.push(() => void s.destroy());
          const received = receive(s, total, i % 2 === 0);
          const sent = await sendPattern(s, i, total);
          assert.equal(await received, sent, `connection ${i}: echoed bytes differ from those sent`);
          s.end();
        }),
      );
      clearInterval(sampler);
      assert.ok(
        mostLean >= 2 && !anySocketLeg,
        `legs: up to ${mostLean} lean, socket legs seen: ${anySocketLeg}`,
      );
      // Busy sockets held read buffers of their own; closing gives every one back.
      await backend.close();
      await waitUntil(() => ownedReadBuffers() === 0);
    },
  );

  test(
    'WebSocket messages of every size, to slow and fast readers, come back unchanged',
    { timeout: 30_000 },
    async () => {
      const backend = await startWsBackend();
      cleanups.push(() => backend.close());
      const port = await freePort();
      const g = await startGateway(serviceYaml({ port, backends: [backend.port] }));
      cleanups.push(() => g.gateway.shutdown());
      await Promise.all(
        Array.from({ length: 12 }, async (_, i) => {
          const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
          cleanups.push(() => ws.terminate());
          ws.on('error', () => {});
          await once(ws, 'message'); // the backend's greeting
          const pattern = sizes(i);
          const sent: Buffer[] = [];
          for (let k = 0; k < 120; k++) sent.push(randomBytes(pattern[k % pattern.length]!));
          const echoed = new Promise<Buffer[]>((resolve) => {
            const got: Buffer[] = [];
            ws.on('message', (m: Buffer) => {
              got.push(m);
              if (i % 2 === 0 && got.length % 10 === 0) {
                // A slow reader: stop reading the socket for a moment.
                ws.pause();
                setTimeout(() => ws.resume(), 20);
              }
              if (got.length === sent.length) resolve(got);
            });
          });
          if (i % 2 === 0) {
            // Read nothing for a while: the relay's writes to this client queue.
            ws.pause();
            setTimeout(() => ws.resume(), 300);
          }
          for (const m of sent) ws.send(m);
          const got = await echoed;
          for (let k = 0; k < sent.length; k++)
            assert.ok(
              got[k]!.equals(sent[k]!),
              `client ${i}, message ${k} (${sent[k]!.length} bytes) differs`,
            );
          ws.close();
        }),
      );
      await backend.close();
      await waitUntil(() => ownedReadBuffers() === 0);
    },
  );

  test('on this Node, WebSocket relays drive both sockets directly, without net.Socket (no silent fallback)', async () => {
    // Lean legs (stream-leg.ts) rely on Node internals and fall back to legs
    // over net.Sockets when they change: correct but ~2 KB larger per
    // connection. This catches that on a Node upgrade.
    const backend = await startWsBackend();
    cleanups.push(() => backend.close());
    const port = await freePort();
    const g = await startGateway(serviceYaml({ port, backends: [backend.port] }));
    cleanups.push(() => g.gateway.shutdown());
    const clients = await Promise.all(
      Array.from({ length: 3 }, async () => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
        ws.on('error', () => {});
        await once(ws, 'message'); // the backend's greeting
        ws.send('through the legs');
        const [echo] = (await once(ws, 'message')) as [Buffer];
        assert.equal(echo.toString(), 'through the legs');
        return ws;
      }),
    );
    assert.deepEqual({ ...openLegs() }, { handle: 6, socket: 0 });
    // The service still counts them: the emptied net.Sockets closed, the connections did not.
    const held = async (): Promise<string | undefined> =>
      /holdfast_service_connections\{service="ws"\} (\d+)/.exec(await g.gateway.metrics.metrics())?.[1];
    assert.equal(await held(), '3');
    for (const ws of clients) ws.close();
    await waitUntil(() => openLegs().handle === 0);
    assert.equal(openLegs().socket, 0);
    assert.equal(await held(), '0');
  });

  test('on this Node, accepted sockets switch to reused read buffers (no silent fallback)', async () => {
    // The switch relies on Node internals and falls back to plain reads when
    // they change: correct but slower. This catches that on a Node upgrade.
    const server = createServer({ pauseOnConnect: true });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const accepted = once(server, 'connection') as Promise<[Socket]>;
    const client = await dial((server.address() as { port: number }).port);
    const [socket] = await accepted;
    let got = '';
    readThrough(socket, (n, buf) => {
      got += buf.toString('latin1', 0, n);
    });
    assert.equal(readsOwnBuffers(socket), true);
    socket.resume();
    client.write('through our buffer');
    await waitUntil(() => got === 'through our buffer');
    client.destroy();
    socket.destroy();
    server.close();
  });
});

async function waitUntil(check: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await sleep(10);
  assert.ok(check());
}
