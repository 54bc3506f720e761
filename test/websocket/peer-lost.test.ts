/**
 * A peer of an open WebSocket that goes away without a close frame (a TCP
 * reset, or a FIN): the gateway tells the other peer in close terms rather
 * than dropping its connection, where it is between frames.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { after, describe, it } from 'node:test';
import type { WebSocket } from 'ws';
import { startGateway } from '../helpers/gateway.ts';
import { freePort, waitFor } from '../helpers/net.ts';
import {
  closed,
  openClient,
  rawClient,
  readCloseCode,
  serviceYaml,
  startWsBackend,
  type WsBackend,
} from './helpers.ts';

const socketOf = (ws: WebSocket): Socket => (ws as unknown as { _socket: Socket })._socket;

describe('WebSocket peer lost without a close frame', () => {
  const cleanups: (() => unknown)[] = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  /** A gateway over one ws echo backend; outlier detection counts every failure. */
  const setup = async (extra = '') => {
    const backend = await startWsBackend();
    const port = await freePort();
    const { gateway } = await startGateway(
      serviceYaml({
        port,
        backends: [backend.port],
        extra: `outlierDetection: { consecutiveFailures: 1, maxEjectionPercent: 100 }\n${extra}`,
      }),
    );
    cleanups.push(
      () => gateway.shutdown(),
      () => backend.close(),
    );
    const cluster = gateway.services.get('ws')!.cluster;
    const only = [...cluster.backends.values()][0]!;
    return { backend, port, gateway, only };
  };

  /** The backend's server side of its one open client. */
  const serverSide = async (backend: WsBackend): Promise<WebSocket> => {
    await waitFor(() => backend.clients.size === 1, 5_000, 'the backend to hold the client');
    return [...backend.clients][0]!;
  };

  it('a backend reset reaches the client as close 1014 with a reason, and still counts against the backend', async () => {
    const { backend, port, only } = await setup();
    const { ws } = await openClient(port);
    const server = await serverSide(backend);
    const gone = closed(ws);
    socketOf(server).resetAndDestroy();
    assert.deepEqual(await gone, { code: 1014, reason: 'backend connection reset' });
    // Outlier detection saw the reset, as before.
    await waitFor(() => only.state === 'ejected', 5_000, 'the backend ejected');
    await waitFor(() => only.connections.size === 0, 5_000, 'the connection released');
  });

  it('a backend that ends its TCP connection without a close frame: the client gets 1014 too, and the backend is not counted', async () => {
    const { backend, port, only } = await setup();
    const { ws } = await openClient(port);
    // Messages before the FIN still arrive, in order, before the close.
    ws.send('last words');
    await once(ws, 'message');
    const server = await serverSide(backend);
    const gone = closed(ws);
    socketOf(server).end();
    assert.deepEqual(await gone, { code: 1014, reason: 'backend closed the connection' });
    await waitFor(() => only.connections.size === 0, 5_000, 'the connection released');
    assert.equal(only.state, 'active', 'a FIN is not a failure');
  });

  it('a client that never answers the 1014 close is cut after closeTimeout', async () => {
    const { backend, port, only } = await setup('websocket: { closeTimeout: 300ms }');
    const { socket, rest } = await rawClient(port);
    const server = await serverSide(backend);
    const started = Date.now();
    const code = readCloseCode(socket, rest);
    socketOf(server).resetAndDestroy();
    assert.equal(await code, 1014);
    // The raw client answers nothing: the gateway ends it once the close timeout is over.
    await once(socket, 'close');
    const took = Date.now() - started;
    assert.ok(took >= 250 && took < 3_000, `closed after ${took} ms`);
    await waitFor(() => only.connections.size === 0, 5_000, 'the connection released');
  });

  it('a backend lost in the middle of a frame cuts the client as before: no close can be framed there', async () => {
    const { backend, port, only } = await setup();
    const { ws } = await openClient(port);
    const server = await serverSide(backend);
    const conn = [...only.connections][0]!;
    const before = conn.bytesIn ?? 0;
    const gone = closed(ws);
    // A binary frame announcing 1000 bytes of payload, of which 10 come, and
    // then (once the gateway has relayed them) a reset.
    const s = socketOf(server);
    s.write(Buffer.concat([Buffer.from([0x82, 126, 1000 >> 8, 1000 & 0xff]), Buffer.alloc(10, 1)]));
    await waitFor(() => (conn.bytesIn ?? 0) >= before + 14, 5_000, 'the partial frame read by the gateway');
    s.resetAndDestroy();
    assert.equal((await gone).code, 1006);
    await waitFor(() => only.state === 'ejected', 5_000, 'the reset counted');
    await waitFor(() => only.connections.size === 0, 5_000, 'the connection released');
  });

  it('a client reset or FIN reaches the backend as close 1001 with a reason, not counted against it', async () => {
    const { backend, port, only } = await setup();
    for (const [how, reason] of [
      ['reset', 'client connection reset'],
      ['fin', 'client closed the connection'],
    ] as const) {
      const { ws } = await openClient(port);
      const server = await serverSide(backend);
      const seen = closed(server);
      if (how === 'reset') socketOf(ws).resetAndDestroy();
      else socketOf(ws).end();
      assert.deepEqual(await seen, { code: 1001, reason }, how);
      await waitFor(() => only.connections.size === 0, 5_000, 'the connection released');
      await waitFor(() => backend.clients.size === 0, 5_000, 'the backend side closed');
    }
    assert.equal(only.state, 'active');
  });
});
