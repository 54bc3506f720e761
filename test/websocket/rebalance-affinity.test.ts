/**
 * Rebalancing with maglev keyed on a request header or cookie: after
 * scale-out, a WebSocket whose key still maps to its backend is held there
 * (closing it would only bring its client straight back), and only those
 * whose key now maps elsewhere are asked to leave.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { WebSocket } from 'ws';
import { parseConfig } from '../../src/config/load.ts';
import { startGateway } from '../helpers/gateway.ts';
import { freePort, waitFor } from '../helpers/net.ts';
import { serviceYaml, startWsBackend } from './helpers.ts';

const USERS = 60;

/** Where each user's connection was asked to leave from (1012) and where its next one landed. */
interface Move {
  user: string;
  from: number;
  to: number | undefined;
}

const keys = [
  { key: 'header', hashKey: 'header:x-user', headers: (user: string) => ({ 'x-user': user }) },
  {
    key: 'cookie',
    hashKey: 'cookie:user',
    headers: (user: string) => ({ cookie: `theme=dark; user=${user}` }),
  },
] as const;

describe('WebSocket rebalancing with maglev on a client key', () => {
  for (const { key, hashKey, headers } of keys) {
    it(`after scale-out, moves only connections whose ${key} now maps to another backend`, async () => {
      const backends = await Promise.all([0, 1, 2].map(() => startWsBackend()));
      const port = await freePort();
      const yaml = (n: number): string =>
        serviceYaml({
          port,
          backends: backends.slice(0, n).map((b) => b.port),
          extra: `balance: maglev\nhashKey: "${hashKey}"\nrebalance: { maxSkew: 0.1, maxPerSecond: 100, minAge: 200ms }`,
        });
      const { gateway } = await startGateway(yaml(2));
      const live = new Set<WebSocket>();
      const moves: Move[] = [];
      let stopped = false;
      // A client that reconnects with the same key whenever the gateway asks it to.
      const keep = async (user: string, after?: Move): Promise<void> => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers: headers(user) });
        ws.on('error', () => {});
        const [greeting] = (await once(ws, 'message')) as [Buffer];
        const backend = Number(/hello from (\d+)/.exec(greeting.toString())?.[1]);
        if (after !== undefined) after.to = backend;
        live.add(ws);
        ws.once('close', (code: number) => {
          live.delete(ws);
          if (stopped || code !== 1012) return;
          const move: Move = { user, from: backend, to: undefined };
          moves.push(move);
          void keep(user, move);
        });
      };
      try {
        for (let i = 0; i < USERS; i += 20)
          await Promise.all(Array.from({ length: 20 }, (_, j) => keep(`user-${i + j}`)));
        assert.equal(backends[0]!.clients.size + backends[1]!.clients.size, USERS);
        await new Promise((r) => setTimeout(r, 300)); // past minAge

        await gateway.reload(parseConfig(yaml(3), 'test.yaml'));
        // Moves start within a rebalancer tick; give them time to happen and to settle.
        await waitFor(() => moves.length > 0, 5_000, 'the rebalancer moved a connection');
        await new Promise((r) => setTimeout(r, 1_500));
        await waitFor(
          () => live.size === USERS && moves.every((m) => m.to !== undefined),
          5_000,
          'every moved client reconnected',
        );

        const back = moves.filter((m) => m.to === m.from).map((m) => m.user);
        assert.deepEqual(back, [], 'clients asked to leave whose key brought them back to the same backend');
        // Nothing is asked to leave twice: once moved, a client is where its key maps.
        assert.equal(new Set(moves.map((m) => m.user)).size, moves.length);
      } finally {
        stopped = true;
        for (const ws of live) ws.terminate();
        await gateway.shutdown();
        await Promise.all(backends.map((b) => b.close()));
      }
    });
  }
});

describe('WebSocket rebalancing with persistence', () => {
  // Without `balance:`, WebSockets on an HTTP service are placed by the connection policy of its own.
  for (const balance of ['balance: least-connections\n', '']) {
    it(`after scale-out, leaves every connection on the backend its client network is held on (${balance === '' ? 'default policy' : 'least-connections named'})`, async () => {
      const backends = await Promise.all([0, 1].map(() => startWsBackend()));
      const port = await freePort();
      const yaml = (n: number): string =>
        serviceYaml({
          port,
          backends: backends.slice(0, n).map((b) => b.port),
          extra: `${balance}persistence: { timeout: 5m }\nrebalance: { maxSkew: 0.1, maxPerSecond: 100, minAge: 200ms }`,
        });
      const { gateway } = await startGateway(yaml(1));
      const clients: WebSocket[] = [];
      const codes: number[] = [];
      try {
        for (let i = 0; i < 20; i++) {
          const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
          ws.on('error', () => {});
          await once(ws, 'message');
          ws.once('close', (code: number) => codes.push(code));
          clients.push(ws);
        }
        await new Promise((r) => setTimeout(r, 300)); // past minAge
        await gateway.reload(parseConfig(yaml(2), 'test.yaml'));
        // Twenty on one backend, none on the other: without persistence, ten would be asked to move.
        await new Promise((r) => setTimeout(r, 1_500));
        assert.deepEqual(codes, []);
        assert.equal(backends[0]!.clients.size, 20);
      } finally {
        for (const ws of clients) ws.terminate();
        await gateway.shutdown();
        await Promise.all(backends.map((b) => b.close()));
      }
    });
  }
});
