import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.ts';
import { NODE, runHoldfast, startGateway, writeConfig } from '../helpers/gateway.ts';
import { freePort, waitFor } from '../helpers/net.ts';
import { closed, openClient, serviceYaml, startWsBackend } from './helpers.ts';
import type { WebSocket } from 'ws';

async function spawnBackend(): Promise<{ port: number; pid: number; kill: () => void }> {
  const child = spawn(NODE, [new URL('./backend-process.ts', import.meta.url).pathname], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const [line] = (await once(child.stdout, 'data')) as [Buffer];
  return { port: Number(line.toString().trim()), pid: child.pid!, kill: () => void child.kill('SIGKILL') };
}

describe('WebSocket connection lifecycle', () => {
  it('finds a frozen backend (SIGSTOP) within interval + timeout, closes its clients with 1011, and they reconnect to a healthy one', async () => {
    const frozen = await spawnBackend();
    const healthy = await startWsBackend();
    const port = await freePort();
    const { gateway } = await startGateway(
      serviceYaml({
        port,
        backends: [frozen.port, healthy.port],
        extra: 'websocket: { ping: { interval: 500ms, timeout: 500ms } }\ntimeouts: { connect: 1s }',
      }),
    );
    try {
      const clients = await Promise.all(Array.from({ length: 6 }, () => openClient(port)));
      const onFrozen = clients.filter((c) => c.backend === frozen.port);
      assert.ok(onFrozen.length >= 2, 'least-connections spreads the clients');
      process.kill(frozen.pid, 'SIGSTOP');
      const stoppedAt = Date.now();
      const codes = await Promise.all(onFrozen.map((c) => closed(c.ws)));
      const took = Date.now() - stoppedAt;
      for (const c of codes) assert.equal(c.code, 1011);
      assert.ok(took < 500 + 500 + 700, `closed after ${took} ms`);
      // Reconnecting clients land on the healthy backend: the frozen one still accepts in the
      // kernel, but its handshake times out and the gateway tries the next backend.
      for (const _c of onFrozen) {
        const again = await openClient(port);
        assert.equal(again.backend, healthy.port);
        again.ws.terminate();
      }
      for (const c of clients.filter((c) => c.backend === healthy.port)) assert.equal(c.ws.readyState, 1);
      assert.ok(
        (gateway.services.get('ws')!.handler.stats.errors!['ws-backend-heartbeat-timeout'] ?? 0) >=
          onFrozen.length,
      );
      for (const c of clients) c.ws.terminate();
    } finally {
      process.kill(frozen.pid, 'SIGCONT');
      frozen.kill();
      await gateway.shutdown();
      await healthy.close();
    }
  });

  it('frees the backend with 1001 when a client stops answering pings', async () => {
    const backend = await startWsBackend();
    const port = await freePort();
    const { gateway } = await startGateway(
      serviceYaml({
        port,
        backends: [backend.port],
        extra: 'websocket: { ping: { interval: 300ms, timeout: 300ms } }',
      }),
    );
    try {
      const { ws } = await openClient(port);
      // A client that never answers: pause its socket so no pong goes out.
      (ws as unknown as { _socket: { pause(): void } })._socket.pause();
      const serverSide = [...backend.clients][0]!;
      const [code] = (await once(serverSide, 'close')) as [number];
      assert.equal(code, 1001);
      ws.terminate();
    } finally {
      await gateway.shutdown();
      await backend.close();
    }
  });

  it('asks connections older than maxConnectionAge to reconnect with 1012', async () => {
    const backend = await startWsBackend();
    const port = await freePort();
    const { gateway } = await startGateway(
      serviceYaml({ port, backends: [backend.port], extra: 'maxConnectionAge: 400ms' }),
    );
    try {
      const { ws } = await openClient(port);
      const t = Date.now();
      assert.equal((await closed(ws)).code, 1012);
      assert.ok(Date.now() - t >= 300);
    } finally {
      await gateway.shutdown();
      await backend.close();
    }
  });

  it('drains a removed backend with 1001 spread over the drain timeout', async () => {
    const a = await startWsBackend();
    const b = await startWsBackend();
    const port = await freePort();
    const yaml = (backends: number[]): string =>
      serviceYaml({ port, backends, extra: 'drain: { timeout: 2s }' });
    const { gateway } = await startGateway(yaml([a.port, b.port]));
    try {
      const clients = await Promise.all(Array.from({ length: 10 }, () => openClient(port)));
      const onA = clients.filter((c) => c.backend === a.port);
      const times: number[] = [];
      const start = Date.now();
      await gateway.reload(parseConfig(yaml([b.port])));
      const codes = await Promise.all(
        onA.map((c) => closed(c.ws).then((r) => (times.push(Date.now() - start), r.code))),
      );
      assert.deepEqual(new Set(codes), new Set([1001]));
      assert.ok(Math.max(...times) - Math.min(...times) >= 300, `spread: ${JSON.stringify(times)}`);
      for (const c of clients.filter((c) => c.backend === b.port)) assert.equal(c.ws.readyState, 1);
      for (const c of clients) c.ws.terminate();
    } finally {
      await gateway.shutdown();
      await a.close();
      await b.close();
    }
  });

  it('SIGTERM closes clients with 1001 and the process exits once they are gone', async () => {
    const backend = await startWsBackend();
    const port = await freePort();
    const file = writeConfig(
      serviceYaml({ port, backends: [backend.port], extra: 'drain: { timeout: 3s }' }).replace(
        'log: { level: warn }',
        'log: { level: info }',
      ),
    );
    const proc = runHoldfast(['serve', '--config', file, '--json']);
    try {
      await proc.waitForLog('holdfast started');
      const clients = await Promise.all(Array.from({ length: 4 }, () => openClient(port)));
      proc.kill('SIGTERM');
      const codes = await Promise.all(clients.map((c) => closed(c.ws)));
      for (const c of codes) assert.equal(c.code, 1001);
      const exit = await proc.exited();
      assert.equal(exit.code, 0);
    } finally {
      proc.kill('SIGKILL');
      await backend.close();
    }
  });
});

describe('WebSocket rebalancing after scale-out', () => {
  it('200 clients on 2 backends, 3 added by SIGHUP reload: within 30 s each holds 40 ± 4, never more than maxPerSecond closes a second', async () => {
    const backends = await Promise.all(Array.from({ length: 5 }, () => startWsBackend()));
    const port = await freePort();
    const yaml = (n: number): string =>
      serviceYaml({
        port,
        backends: backends.slice(0, n).map((b) => b.port),
        extra:
          'rebalance: { maxSkew: 0.1, maxPerSecond: 20, minAge: 2s }\nwebsocket: { ping: { interval: 5s, timeout: 5s } }',
      }).replace('log: { level: warn }', 'log: { level: info }');
    const file = writeConfig(yaml(2));
    const proc = runHoldfast(['serve', '--config', file, '--json']);
    const live = new Set<WebSocket>();
    const closes: number[] = [];
    let stopped = false;
    const keep = async (): Promise<void> => {
      const { ws } = await openClient(port);
      live.add(ws);
      ws.once('close', (code: number) => {
        live.delete(ws);
        if (code === 1012) closes.push(Date.now());
        if (!stopped) void keep();
      });
    };
    try {
      await proc.waitForLog('holdfast started');
      for (let i = 0; i < 200; i += 20) await Promise.all(Array.from({ length: 20 }, () => keep()));
      assert.equal(backends[0]!.clients.size + backends[1]!.clients.size, 200);
      const { writeFileSync } = await import('node:fs');
      writeFileSync(file, yaml(5));
      const t0 = Date.now();
      proc.kill('SIGHUP');
      await waitFor(
        () => live.size === 200 && backends.every((b) => Math.abs(b.clients.size - 40) <= 4),
        30_000,
        'every backend at 40 ± 4',
      );
      const tookMs = Date.now() - t0;
      // No one-second window holds more than maxPerSecond closes.
      for (let i = 0; i < closes.length; i++) {
        const inWindow = closes.filter((t) => t >= closes[i]! && t < closes[i]! + 1000).length;
        assert.ok(inWindow <= 20, `${inWindow} closes within one second`);
      }
      assert.ok(closes.length >= 100, `moved ${closes.length}`);
      console.log(
        `rebalanced ${closes.length} connections in ${tookMs} ms: ${backends.map((b) => b.clients.size).join(', ')}`,
      );
    } finally {
      stopped = true;
      for (const ws of live) ws.terminate();
      proc.kill('SIGKILL');
      await Promise.all(backends.map((b) => b.close()));
    }
  });
});
