import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { ManualClock } from '../../src/cluster/clock.ts';
import { startGateway } from '../helpers/gateway.ts';
import { freePort } from '../helpers/net.ts';
import { closed, openClient, serviceYaml, startWsBackend } from './helpers.ts';

const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 100));

describe('WebSocket timing on a hand-driven clock', () => {
  it('pings a client one interval after its last message, not before and not a tick late', async () => {
    const backend = await startWsBackend();
    const port = await freePort();
    const clock = new ManualClock();
    const { gateway } = await startGateway(
      serviceYaml({
        port,
        backends: [backend.port],
        extra: 'websocket: { ping: { interval: 10s, timeout: 5s } }\nmaxConnectionAge: off',
      }),
      { clock },
    );
    try {
      const { ws } = await openClient(port);
      const pings: number[] = [];
      ws.on('ping', () => pings.push(clock.now()));
      clock.advance(4_000);
      ws.send('still here');
      await once(ws, 'message');
      // A ping goes out once the client has been silent for the interval, within a tick (500 ms).
      clock.advance(10_000);
      await settle();
      assert.deepEqual(pings, [], 'no ping within the interval after the message');
      clock.advance(500);
      await settle();
      assert.deepEqual(pings, [14_500]);
      // Answered (ws pongs by itself): the next one follows an interval after the pong was seen.
      clock.advance(500);
      await settle();
      clock.advance(9_500);
      await settle();
      assert.deepEqual(pings, [14_500], 'not yet: the pong was seen at 15 s');
      clock.advance(500);
      await settle();
      assert.deepEqual(pings, [14_500, 25_000]);
      assert.equal(ws.readyState, ws.OPEN);
      ws.terminate();
    } finally {
      await gateway.shutdown();
      await backend.close();
    }
  });

  it('asks a connection to reconnect at its maxConnectionAge even when that is hours away', async () => {
    const backend = await startWsBackend();
    const port = await freePort();
    const clock = new ManualClock();
    const { gateway } = await startGateway(
      serviceYaml({
        port,
        backends: [backend.port],
        extra: 'websocket: { ping: off }\nmaxConnectionAge: 2h',
      }),
      { clock },
    );
    try {
      const { ws } = await openClient(port);
      const code = closed(ws);
      let closedAt = -1;
      void code.then(() => (closedAt = clock.now()));
      // ±10 % jitter: still open at 1 h 48 min, closed with 1012 by 2 h 12 min.
      for (let t = 0; t < 108 * 60_000; t += 60_000) clock.advance(60_000);
      await settle();
      assert.equal(closedAt, -1);
      for (let t = 0; t < 24 * 60_000 && closedAt < 0; t += 60_000) {
        clock.advance(60_000);
        await settle();
      }
      assert.equal((await code).code, 1012);
      assert.ok(closedAt > 108 * 60_000 && closedAt <= 132 * 60_000, `closed at ${closedAt} ms`);
    } finally {
      await gateway.shutdown();
      await backend.close();
    }
  });
});
