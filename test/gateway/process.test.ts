/**
 * The gateway as a user runs it: a real `holdfast` process, reloaded with
 * SIGHUP and stopped with SIGTERM, with real clients and backends.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { runHoldfast, writeConfig } from '../helpers/gateway.ts';
import { dial, type EchoBackend, freePort, readUntil, startEchoBackend, waitFor } from '../helpers/net.ts';

const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function backends(n: number): Promise<EchoBackend[]> {
  const list = await Promise.all(Array.from({ length: n }, () => startEchoBackend({ greet: true })));
  for (const b of list) cleanups.push(() => b.close());
  return list;
}

function yaml(port: number, bs: readonly EchoBackend[], extra = ''): string {
  return `services:
  - name: echo
    listen: 127.0.0.1:${port}
    backends: { static: [${bs.map((b) => `127.0.0.1:${b.port}`).join(', ')}] }
    drain: { timeout: 2s }
${extra}`;
}

async function start(file: string) {
  const proc = runHoldfast(['serve', '--config', file, '--json']);
  cleanups.push(() => proc.kill('SIGKILL'));
  await proc.waitForLog('holdfast started');
  return proc;
}

async function connectMany(port: number, n: number): Promise<{ socket: Socket; backend: number }[]> {
  const out: { socket: Socket; backend: number }[] = [];
  for (let i = 0; i < n; i++) {
    const socket = await dial(port);
    cleanups.push(() => void socket.destroy());
    const greeting = await readUntil(socket, '\n');
    out.push({ socket, backend: Number(greeting.trim()) });
  }
  return out;
}

async function stillEchoes(socket: Socket, text: string): Promise<void> {
  socket.write(`${text}\n`);
  await readUntil(socket, text);
}

describe('reload and drain of a running gateway', () => {
  test('SIGHUP adding a backend leaves existing connections untouched and sends new ones to it', async () => {
    const [a, b, c] = await backends(3);
    const port = await freePort();
    const file = writeConfig(yaml(port, [a!, b!]));
    const proc = await start(file);
    const before = await connectMany(port, 6);
    writeFileSync(file, yaml(port, [a!, b!, c!]));
    const mark = proc.logs.length;
    proc.kill('SIGHUP');
    await proc.waitForLog('config reloaded', 10_000, mark);
    for (const { socket } of before) await stillEchoes(socket, 'after reload');
    assert.equal(a!.sockets.size + b!.sockets.size, 6);
    const added = await connectMany(port, 3);
    assert.deepEqual(
      added.map((x) => x.backend),
      [c!.port, c!.port, c!.port],
      'least-connections sends new connections to the idle new backend',
    );
  });

  test('SIGHUP removing a backend drains its connections within the drain timeout; others stay', async () => {
    const [a, b] = await backends(2);
    const port = await freePort();
    const file = writeConfig(yaml(port, [a!, b!]));
    const proc = await start(file);
    const conns = await connectMany(port, 6);
    const onRemoved = conns.filter((x) => x.backend === b!.port);
    const onKept = conns.filter((x) => x.backend === a!.port);
    assert.equal(onRemoved.length, 3);
    writeFileSync(file, yaml(port, [a!]));
    const started = Date.now();
    proc.kill('SIGHUP');
    // Each drained client sees a clean end of stream (FIN), not a reset.
    await Promise.all(onRemoved.map(({ socket }) => once(socket, 'end')));
    assert.ok(Date.now() - started < 4_000, 'drained within the 2 s timeout (plus slack)');
    await waitFor(() => b!.sockets.size === 0, 3_000, 'backend connections closed');
    for (const { socket } of onKept) await stillEchoes(socket, 'kept');
    const fresh = await connectMany(port, 2);
    assert.ok(fresh.every((x) => x.backend === a!.port));
  });

  test('a bad config on SIGHUP is rejected with its error and the running config stays', async () => {
    const [a] = await backends(1);
    const port = await freePort();
    const file = writeConfig(yaml(port, [a!]));
    const proc = await start(file);
    const [conn] = await connectMany(port, 1);
    writeFileSync(file, yaml(port, [a!]).replace('drain: { timeout: 2s }', 'drain: { timeout: soon }'));
    const mark = proc.logs.length;
    proc.kill('SIGHUP');
    const rejected = await proc.waitForLog('reload rejected; the running config stays', 10_000, mark);
    assert.match(
      String(rejected.err),
      /holdfast\.yaml:5: services\[0\]\.drain\.timeout: "soon" is not a duration/,
    );
    await stillEchoes(conn!.socket, 'unchanged');
    await connectMany(port, 1);
  });

  test('SIGTERM closes clients gracefully and exits 0', async () => {
    const [a] = await backends(1);
    const port = await freePort();
    const file = writeConfig(yaml(port, [a!]));
    const proc = await start(file);
    const conns = await connectMany(port, 5);
    const ended = conns.map(({ socket }) => once(socket, 'end'));
    proc.kill('SIGTERM');
    await Promise.all(ended);
    const { code } = await proc.exited();
    assert.equal(code, 0);
  });
});

describe('holdfast check-config', () => {
  const cases: [string, string, RegExp][] = [
    [
      'an unknown field',
      'services:\n  - name: x\n    listen: 127.0.0.1:1\n    balanse: random\n    backends: { static: [127.0.0.1:2] }\n',
      /:4: services\[0\]: unknown field "balanse"/,
    ],
    [
      'a bad port',
      'services:\n  - name: x\n    listen: 127.0.0.1:70000\n    backends: { static: [127.0.0.1:2] }\n',
      /:3: services\[0\]\.listen: port 70000 in "127\.0\.0\.1:70000" is outside 1-65535/,
    ],
    [
      'a policy that does not exist',
      'services:\n  - name: x\n    listen: 127.0.0.1:1\n    balance: fastest\n    backends: { static: [127.0.0.1:2] }\n',
      /:4: services\[0\]\.balance: must be one of "least-connections"/,
    ],
    [
      'a duration without unit',
      'services:\n  - name: x\n    listen: 127.0.0.1:1\n    drain: { timeout: 30 }\n    backends: { static: [127.0.0.1:2] }\n',
      /:4: services\[0\]\.drain\.timeout: write a duration with its unit/,
    ],
    [
      'no backends',
      'services:\n  - name: x\n    listen: 127.0.0.1:1\n    backends: { static: [] }\n',
      /:4: services\[0\]\.backends: list at least one backend/,
    ],
    [
      'two services on one port',
      'services:\n  - name: x\n    listen: 127.0.0.1:1\n    backends: { static: [127.0.0.1:2] }\n  - name: y\n    listen: 127.0.0.1:1\n    backends: { static: [127.0.0.1:2] }\n',
      /:6: services\[1\]\.listen\[0\]: port 1 on 127\.0\.0\.1 is already a listener of service "x"/,
    ],
    ['broken YAML', 'services:\n  - name: x\n   listen: [\n', /YAML syntax error/],
  ];
  for (const [what, text, expected] of cases) {
    test(`names the file, line and field for ${what}, and exits 1`, async () => {
      const file = writeConfig(text);
      const proc = runHoldfast(['check-config', file]);
      const { code } = await proc.exited();
      assert.equal(code, 1);
      assert.match(proc.stderr(), expected);
      assert.ok(proc.stderr().includes(file), 'the message names the file');
    });
  }

  test('a missing file says so', async () => {
    const proc = runHoldfast(['check-config', '/nonexistent/holdfast.yaml']);
    assert.equal((await proc.exited()).code, 1);
    assert.match(
      proc.stderr(),
      /\/nonexistent\/holdfast\.yaml: cannot read the config file \(no such file\)/,
    );
  });

  test('the examples are valid', async () => {
    const { readdirSync } = await import('node:fs');
    const dir = new URL('../../examples/', import.meta.url).pathname;
    const files = readdirSync(dir).filter((f) => f.endsWith('.yaml'));
    assert.ok(files.length > 0);
    for (const f of files) {
      const proc = runHoldfast(['check-config', dir + f]);
      const { code } = await proc.exited();
      assert.equal(code, 0, `${f}: ${proc.stderr()}`);
    }
  });
});
