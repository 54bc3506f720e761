/**
 * `workers: N`: several proxy processes on the same ports (SO_REUSEPORT),
 * one admin listener, signals relayed by the primary.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { after, test } from 'node:test';
import { runHoldfast, writeConfig } from '../helpers/gateway.ts';
import { dial, type EchoBackend, freePorts, readUntil, startEchoBackend, waitFor } from '../helpers/net.ts';

const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

function yaml(port: number, admin: number, bs: readonly EchoBackend[]): string {
  return `workers: 2
admin: { listen: 127.0.0.1:${admin} }
services:
  - name: spread
    listen: 127.0.0.1:${port}
    backends: { static: [${bs.map((b) => `127.0.0.1:${b.port}`).join(', ')}] }
    drain: { timeout: 2s }
`;
}

async function connect(port: number, n: number): Promise<{ socket: Socket; backend: number }[]> {
  const out: { socket: Socket; backend: number }[] = [];
  for (let i = 0; i < n; i++) {
    const socket = await dial(port);
    cleanups.push(() => void socket.destroy());
    out.push({ socket, backend: Number((await readUntil(socket, '\n')).trim()) });
  }
  return out;
}

test('two workers share the port, balance, reload, restart a dead worker and drain on SIGTERM', async () => {
  const bs = await Promise.all([0, 1, 2].map(() => startEchoBackend({ greet: true })));
  for (const b of bs) cleanups.push(() => b.close());
  const [port = 0, admin = 0] = await freePorts(2);
  const file = writeConfig(yaml(port, admin, bs.slice(0, 2)));
  const proc = runHoldfast(['serve', '--config', file, '--json']);
  cleanups.push(() => proc.kill('SIGKILL'));
  await proc.waitForLog('holdfast started', 20_000);

  // Balance: per-worker least-connections keeps the total within a connection or two per backend.
  const first = await connect(port, 40);
  const counts = [bs[0]!, bs[1]!].map((b) => first.filter((c) => c.backend === b.port).length);
  assert.ok(Math.abs(counts[0]! - counts[1]!) <= 4, `spread ${counts.join('/')}`);

  // Both workers hold connections, and the primary's admin listener sums them.
  const status = (await (await fetch(`http://127.0.0.1:${admin}/status`)).json()) as {
    workers: { services: { connections: number }[] }[];
  };
  assert.equal(status.workers.length, 2);
  assert.equal(
    status.workers.reduce((n, w) => n + w.services[0]!.connections, 0),
    40,
  );
  const metrics = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
  assert.match(metrics, /holdfast_service_connections\{service="spread"\} 40/);

  // SIGHUP reaches every worker: new connections go to the added, idle backend.
  writeFileSync(file, yaml(port, admin, bs));
  const mark = proc.logs.length;
  proc.kill('SIGHUP');
  await proc.waitForLog('config reloaded', 10_000, mark);
  const second = await connect(port, 6);
  assert.ok(
    second.every((c) => c.backend === bs[2]!.port),
    `went to ${second.map((c) => c.backend).join(',')}`,
  );

  // A worker that dies is replaced; the port keeps serving meanwhile.
  const pid = (status.workers[0] as unknown as { pid: number }).pid;
  const before = proc.logs.length;
  process.kill(pid, 'SIGKILL');
  await proc.waitForLog('worker died; restarting it', 10_000, before);
  await proc.waitForLog('worker started', 15_000, before);
  await connect(port, 2);

  // SIGTERM: every client still open gets a clean FIN, and the primary exits 0.
  const open = [...first, ...second].filter((c) => !c.socket.destroyed && !c.socket.readableEnded);
  const ended = open.map((c) => once(c.socket, 'close'));
  proc.kill('SIGTERM');
  const { code } = await proc.exited();
  assert.equal(code, 0);
  await Promise.all(ended);
  await waitFor(() => bs.every((b) => b.sockets.size === 0), 5_000, 'backends released');
});
