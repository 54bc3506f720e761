/**
 * After scale-out, long-lived TCP connections stay where they are unless
 * `rebalance:` is on: then the busiest backends ask a few at a time to
 * leave (FIN), and clients that reconnect land on the new ones.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, test } from 'node:test';
import { parseConfig } from '../../src/config/load.ts';
import { startGateway } from '../helpers/gateway.ts';
import { type EchoBackend, freePort, startEchoBackend, waitFor } from '../helpers/net.ts';

const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

function yaml(port: number, bs: readonly EchoBackend[]): string {
  return `services:
  - name: moving
    listen: 127.0.0.1:${port}
    backends: { static: [${bs.map((b) => `127.0.0.1:${b.port}`).join(', ')}] }
    rebalance: { maxSkew: 0.1, maxPerSecond: 20, minAge: 500ms }
`;
}

/** A client that reconnects whenever its connection ends, as AMQP/NATS/MQTT clients do. */
function reconnectingClient(port: number, stopped: () => boolean): void {
  const open = (): void => {
    const s: Socket = connect(port, '127.0.0.1');
    s.on('error', () => {});
    s.on('end', () => s.end());
    s.on('close', () => {
      if (!stopped()) setTimeout(open, 10);
    });
    cleanups.push(() => void s.destroy());
  };
  open();
}

test('rebalance moves connections to backends added by a reload, a bounded number per second', async () => {
  const bs = await Promise.all([0, 1, 2, 3].map(() => startEchoBackend()));
  for (const b of bs) cleanups.push(() => b.close());
  const port = await freePort();
  const { gateway } = await startGateway(yaml(port, bs.slice(0, 2)));
  let stopped = false;
  cleanups.push(async () => {
    stopped = true;
    await gateway.shutdown();
  });
  for (let i = 0; i < 60; i++) reconnectingClient(port, () => stopped);
  await waitFor(() => bs[0]!.sockets.size + bs[1]!.sockets.size === 60, 5_000, '60 connected');

  const totalsBefore = bs.map((b) => b.total);
  await gateway.reload(parseConfig(yaml(port, bs), 'test.yaml'));
  const perSecond: number[] = [];
  const sampler = setInterval(
    () => perSecond.push(gateway.services.get('moving')!.handler.stats.closed),
    1_000,
  );
  cleanups.push(() => clearInterval(sampler));
  await waitFor(
    () => bs.every((b) => Math.abs(b.sockets.size - 15) <= 2),
    20_000,
    '15 ± 2 on each of 4 backends',
  );
  clearInterval(sampler);
  // Never more closes in one second than maxPerSecond (plus one for the sampling edge).
  for (let i = 1; i < perSecond.length; i++) assert.ok(perSecond[i]! - perSecond[i - 1]! <= 21);
  // The moved clients reconnected to the new backends.
  assert.ok(bs[2]!.total - totalsBefore[2]! >= 13 && bs[3]!.total - totalsBefore[3]! >= 13);
});

test('without rebalance, connections stay where they were after scale-out', async () => {
  const bs = await Promise.all([0, 1, 2].map(() => startEchoBackend()));
  for (const b of bs) cleanups.push(() => b.close());
  const port = await freePort();
  const plain = (list: readonly EchoBackend[]): string =>
    yaml(port, list).replace(/\n\s+rebalance:.*\n/, '\n');
  const { gateway } = await startGateway(plain(bs.slice(0, 2)));
  let stopped = false;
  cleanups.push(async () => {
    stopped = true;
    await gateway.shutdown();
  });
  for (let i = 0; i < 20; i++) reconnectingClient(port, () => stopped);
  await waitFor(() => bs[0]!.sockets.size + bs[1]!.sockets.size === 20, 5_000, '20 connected');
  await gateway.reload(parseConfig(plain(bs), 'test.yaml'));
  await new Promise((r) => setTimeout(r, 1_500));
  assert.equal(bs[2]!.sockets.size, 0);
  assert.equal(gateway.services.get('moving')!.handler.stats.closed, 0);
});

test('with maglev on the source address, rebalancing moves only clients whose address now maps to another backend', async () => {
  const bs = await Promise.all([0, 1, 2].map(() => startEchoBackend({ greet: true })));
  for (const b of bs) cleanups.push(() => b.close());
  const port = await freePort();
  const hashed = (list: readonly EchoBackend[]): string =>
    yaml(port, list).replace('    rebalance:', '    balance: maglev\n    hashKey: source-ip\n    rebalance:');
  const { gateway } = await startGateway(hashed(bs.slice(0, 2)));
  let stopped = false;
  cleanups.push(async () => {
    stopped = true;
    await gateway.shutdown();
  });
  // Clients that reconnect from the same address when the gateway lets them go (FIN).
  const moves: { from: string; to: string | undefined }[] = [];
  let open = 0;
  const keep = (address: string, move?: { from: string; to: string | undefined }): void => {
    const s: Socket = connect({ port, host: '127.0.0.1', localAddress: address });
    s.on('error', () => {});
    let landed = '';
    s.on('data', (d: Buffer) => {
      if (landed !== '') return;
      landed = d.toString().trim();
      open++;
      if (move !== undefined) move.to = landed;
    });
    s.on('end', () => s.end());
    s.on('close', () => {
      if (landed !== '') open--;
      if (stopped) return;
      const next = { from: landed, to: undefined };
      moves.push(next);
      setTimeout(() => keep(address, next), 10);
    });
    cleanups.push(() => void s.destroy());
  };
  for (let i = 0; i < 40; i++) keep(`127.0.0.${100 + i}`);
  await waitFor(() => open === 40, 5_000, '40 connected');
  await new Promise((r) => setTimeout(r, 600)); // past minAge

  await gateway.reload(parseConfig(hashed(bs), 'test.yaml'));
  await waitFor(() => moves.length > 0, 5_000, 'the rebalancer moved a connection');
  await new Promise((r) => setTimeout(r, 1_500));
  await waitFor(
    () => open === 40 && moves.every((m) => m.to !== undefined),
    5_000,
    'every moved client reconnected',
  );
  // A client let go only to come back to the same backend would be a pointless move (and the next tick would repeat it).
  assert.deepEqual(
    moves.filter((m) => m.to === m.from),
    [],
  );
});
