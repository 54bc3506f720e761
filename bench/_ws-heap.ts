/**
 * Bench helper: what one idle proxied WebSocket retains in holdfast's heap.
 * `node bench/_ws-heap.ts [N]`: starts the ws echo backend and holdfast (as
 * shipped, through startHoldfast), opens 100 connections, takes a heap
 * snapshot (SIGUSR2), opens N more (default 5000), takes another, and prints
 * the difference grouped by constructor, in bytes per connection.
 */
import { fork, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { cpuMs, LAUNCHER_FLAGS, ROOT, rssBytes, startHoldfast, tempDir } from './lib/peers.ts';
import { groups, printProfileWindow, snap } from './lib/heap-snapshot.ts';

const mode = process.argv[2] === 'cpu' ? 'cpu' : 'heap';
const extra = Number(process.argv[mode === 'cpu' ? 3 : 2] ?? 5000);
const cpuSeconds = Number(process.argv[4] ?? 30);

const dir = tempDir('ws-heap');
process.chdir(dir);
const backendProc = spawn(process.execPath, [join(ROOT, 'bench/_ws-backend.ts')], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
const [line] = (await once(backendProc.stdout, 'data')) as [Buffer];
const backend = Number(line.toString().trim());
const port = 20000 + Math.floor(Math.random() * 20000);
process.env.HOLDFAST_BENCH_NODE_FLAGS = `${LAUNCHER_FLAGS} ${mode === 'cpu' ? (process.env.NOPROF === undefined ? `--cpu-prof --cpu-prof-dir=${dir}` : '') : '--heapsnapshot-signal=SIGUSR2'}`;
const hf = await startHoldfast(
  [
    'log: { level: warn }',
    'services:',
    '  - name: ws',
    '    protocol: http',
    `    listen: 127.0.0.1:${port}`,
    `    backends: { static: [127.0.0.1:${backend}] }`,
    `    websocket: { ping: ${process.env.WS_PING ?? '{ interval: 10s, timeout: 5s }'} }`,
    '    maxConnectionAge: off',
    '    drain: { timeout: 1s }',
  ].join('\n'),
  port,
);
const pid = hf.pids()[0]!;
const clients = fork(join(ROOT, 'bench/_ws-clients.ts'), { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
function ask(msg: unknown): Promise<unknown> {
  return new Promise((resolve) => {
    clients.once('message', resolve);
    clients.send(msg as never);
  });
}
if (mode === 'cpu') {
  await ask({ cmd: 'open', port, n: extra });
  await sleep(12_000);
  const st = (): number[] =>
    readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ').slice(11, 13).map(Number);
  const s0 = st();
  const t0 = cpuMs(pid);
  const w0 = performance.now();
  const mark = Date.now();
  await sleep(cpuSeconds * 1000);
  const used = cpuMs(pid) - t0;
  const s1 = st();
  console.log(`utime ${(s1[0]! - s0[0]!) * 10} ms, stime ${(s1[1]! - s0[1]!) * 10} ms`);
  console.log(`CPU ${((used / (performance.now() - w0)) * 100).toFixed(2)} % of a core over ${cpuSeconds} s`);
  clients.kill('SIGKILL');
  await hf.stop();
  backendProc.kill('SIGKILL');
  await sleep(1000);
  if (process.env.NOPROF !== undefined) process.exit(0);
  printProfileWindow(dir, mark, cpuSeconds);
  process.exit(0);
}
try {
  await ask({ cmd: 'open', port, n: 100 });
  await sleep(1000);
  const a = await snap(pid, dir, 0);
  const rss0 = rssBytes(pid);
  await ask({ cmd: 'open', port, n: extra });
  await sleep(2000);
  const rss1 = rssBytes(pid);
  const b = await snap(pid, dir, 1);
  await sleep(1000);
  const rss2 = rssBytes(pid);
  const ga = groups(a);
  const gb = groups(b);
  const rows: [string, number, number][] = [];
  let total = 0;
  for (const [k, v] of gb) {
    const o = ga.get(k) ?? { count: 0, size: 0 };
    const d = v.size - o.size;
    total += d;
    if (Math.abs(d) / extra >= 8) rows.push([k, (v.count - o.count) / extra, d / extra]);
  }
  rows.sort((x, y) => y[2] - x[2]);
  console.log(`RSS delta per connection: ${Math.round((rss1 - rss0) / extra)} B`);
  console.log(
    `RSS delta per connection after the snapshot's full GC: ${Math.round((rss2 - rss0) / extra)} B`,
  );
  console.log(`heap delta per connection: ${Math.round(total / extra)} B`);
  console.log('| kind | objects/conn | bytes/conn |');
  for (const [k, c, d] of rows) console.log(`| ${k} | ${c.toFixed(2)} | ${d.toFixed(0)} |`);
} finally {
  clients.kill('SIGKILL');
  await hf.stop();
  backendProc.kill('SIGKILL');
}
