/**
 * Bench helper: what one idle HTTP/2 client connection retains in holdfast's
 * heap. `node bench/_h2-heap.ts [N] [--tls]`: starts an nginx backend and
 * holdfast (as shipped, through startHoldfast), opens 100 connections (one
 * request each, as bench/_h2-idle.ts does), takes a heap snapshot (SIGUSR2),
 * opens N more (default 3000), takes another, and prints the difference
 * grouped by constructor, in bytes per connection.
 *
 * `node bench/_h2-heap.ts cpu [N] [SECONDS] [--tls]`: opens N connections,
 * waits 12 s, then prints holdfast's CPU over SECONDS (default 30) and where
 * its CPU profile (`--cpu-prof`) puts the samples of that window.
 */
import { fork } from 'node:child_process';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePorts } from '../test/helpers/net.ts';
import { ask } from './lib/ws-load.ts';
import { cpuMs, LAUNCHER_FLAGS, ROOT, rssBytes, startHoldfast, startNginx, tempDir } from './lib/peers.ts';
import { groups, printProfileWindow, snap } from './lib/heap-snapshot.ts';

const tls = process.argv.includes('--tls');
const args = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const mode = args[0] === 'cpu' ? 'cpu' : 'heap';
if (mode === 'cpu') args.shift();
const extra = Number(args[0] ?? 3000);
const cpuSeconds = Number(args[1] ?? 30);

const dir = tempDir('h2-heap');
process.chdir(dir);
const [backendPort, port] = await freePorts(2);
const backend = await startNginx(
  `http { access_log off; server { listen 127.0.0.1:${backendPort}; keepalive_timeout 1h; location / { return 200 "ok"; } } }`,
  backendPort!,
);
if (typeof backend === 'string') throw new Error(backend);
let tlsLine: string[] = [];
if (tls) {
  const r = spawnSync('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    join(dir, 'k.pem'),
    '-out',
    join(dir, 'c.pem'),
    '-days',
    '1',
    '-subj',
    '/CN=localhost',
  ]);
  if (r.status !== 0) throw new Error('openssl failed');
  tlsLine = [`    tls: { cert: ${join(dir, 'c.pem')}, key: ${join(dir, 'k.pem')} }`];
}
process.env.HOLDFAST_BENCH_NODE_FLAGS = `${LAUNCHER_FLAGS} ${mode === 'cpu' ? `--cpu-prof --cpu-prof-dir=${dir}` : '--heapsnapshot-signal=SIGUSR2'}`;
const hf = await startHoldfast(
  [
    'log: { level: warn }',
    'services:',
    '  - name: h2',
    '    protocol: http',
    `    listen: 127.0.0.1:${port}`,
    `    backends: { static: [127.0.0.1:${backendPort}] }`,
    ...tlsLine,
  ].join('\n'),
  port!,
);
const pid = hf.pids()[0]!;
const clients = fork(join(ROOT, 'bench/_h2-clients.ts'), { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
const url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
if (mode === 'cpu') {
  await ask(clients, { cmd: 'open', url, n: extra, batch: 50 });
  await sleep(12_000);
  // Per thread (main, V8's and libuv's helpers), user and system ticks.
  const threads = (): Map<string, [number, number]> => {
    const out = new Map<string, [number, number]>();
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const st = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const name = st.slice(st.indexOf('(') + 1, st.lastIndexOf(')'));
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      const prev = out.get(name) ?? [0, 0];
      out.set(name, [prev[0] + Number(f[11]), prev[1] + Number(f[12])]);
    }
    return out;
  };
  const th0 = threads();
  const t0 = cpuMs(pid);
  const w0 = performance.now();
  const mark = Date.now();
  await sleep(cpuSeconds * 1000);
  const used = cpuMs(pid) - t0;
  console.log(`CPU ${((used / (performance.now() - w0)) * 100).toFixed(2)} % of a core over ${cpuSeconds} s`);
  for (const [name, [u, sy]] of threads()) {
    const [u0, s0] = th0.get(name) ?? [0, 0];
    if (u - u0 + sy - s0 > 0) console.log(`  ${name}: user ${(u - u0) * 10} ms, system ${(sy - s0) * 10} ms`);
  }
  clients.kill('SIGKILL');
  await hf.stop();
  await backend.stop();
  await sleep(1000);
  printProfileWindow(dir, mark, cpuSeconds);
  process.exit(0);
}
try {
  await ask(clients, { cmd: 'open', url, n: 100, batch: 50 });
  await sleep(1000);
  const a = await snap(pid, dir, 0);
  const rss0 = rssBytes(pid);
  await ask(clients, { cmd: 'open', url, n: extra, batch: 50 });
  await sleep(2000);
  const rss1 = rssBytes(pid);
  const b = await snap(pid, dir, 1);
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
  console.log(`RSS delta per connection (unsettled): ${Math.round((rss1 - rss0) / extra)} B`);
  console.log(`heap delta per connection: ${Math.round(total / extra)} B`);
  console.log('| kind | objects/conn | bytes/conn |');
  for (const [k, c, d] of rows) console.log(`| ${k} | ${c.toFixed(2)} | ${d.toFixed(0)} |`);
} finally {
  clients.kill('SIGKILL');
  await hf.stop();
  await backend.stop();
}
